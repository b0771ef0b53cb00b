//! The API's one error type and its one `IntoResponse`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use verimail_core::ErrorCode;
use verimail_core::request::Rejection;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    /// A precise message for the client; `None` uses the table's message.
    message: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            message: None,
        }
    }

    pub fn with_message(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: Some(message.into()),
        }
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// An infrastructure failure: the cause chain goes to the log, the client
    /// gets `code` with its generic message.
    pub fn infra(code: ErrorCode, what: &str, error: &anyhow::Error) -> Self {
        tracing::error!(error = format!("{error:#}"), "{what}");
        Self::new(code)
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        Self::with_message(
            rejection.code,
            format!("{} {}", rejection.code.message(), rejection.reason),
        )
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error_code: &'a str,
    error_msg: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = Body {
            error_code: self.code.code(),
            error_msg: self.message.as_deref().unwrap_or(self.code.message()),
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (status, json).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=UTF-8"),
        );
        response.extensions_mut().insert(self.code);
        response
    }
}
