//! The API's one error type and its one `IntoResponse`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use verimail_domain::ErrorCode;
use verimail_domain::request::Rejection;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    /// A precise message for the client; `None` uses the table's message.
    message: Option<String>,
    /// An infrastructure failure behind the answer: logged with its cause
    /// chain when the response is written, never shown to the client.
    cause: Option<anyhow::Error>,
    /// Seconds for a `Retry-After` header (load shedding).
    retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            message: None,
            cause: None,
            retry_after: None,
        }
    }

    /// A shed request (503 CBC.0999): nothing was done; retry after `secs`.
    pub fn busy(message: impl Into<String>, secs: u32) -> Self {
        Self {
            retry_after: Some(secs),
            ..Self::with_message(ErrorCode::Busy, message)
        }
    }

    pub fn with_message(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: Some(message.into()),
            cause: None,
            retry_after: None,
        }
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// An infrastructure failure answered with `code` and its generic
    /// message; the cause chain goes to the log when the response is written.
    pub fn infra(code: ErrorCode, cause: anyhow::Error) -> Self {
        Self {
            cause: Some(cause),
            ..Self::new(code)
        }
    }
}

/// Any unexpected failure is a CBC.0999; give it context with `anyhow`.
impl From<anyhow::Error> for ApiError {
    fn from(cause: anyhow::Error) -> Self {
        Self::infra(ErrorCode::Internal, cause)
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
        if let Some(cause) = &self.cause {
            tracing::error!(
                error = format!("{cause:#}"),
                error_code = self.code.code(),
                "request failed"
            );
        }
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
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(self.code);
        response
    }
}
