//! HTTP routes, one file per resource.

pub mod check;
pub mod dispatches;
pub mod health;
pub mod send;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use verimail_domain::ErrorCode;

use crate::error::ApiError;

/// Bodies over 16 KiB are parameter errors (CBC.0100).
pub const BODY_LIMIT: usize = 16 * 1024;

/// Reads the body ourselves so an oversized one is a CBC error, not axum's
/// plain-text 413, and a stalled one ends within `timeout`.
pub async fn read_body(body: Body, timeout: std::time::Duration) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, BODY_LIMIT)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ApiError::with_message(
            ErrorCode::ParameterError,
            "Parameter error. The body exceeds 16 KiB.",
        )),
        Err(_) => Err(ApiError::with_message(
            ErrorCode::ParameterError,
            "Parameter error. The body did not arrive in time.",
        )),
    }
}

/// Only JSON is accepted (`application/json`, any parameters).
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::with_message(
            ErrorCode::ParameterError,
            "Parameter error. Content-Type must be application/json.",
        ))
    }
}

/// A JSON call in the documented order of checks: read the body (≤ 16 KiB), authenticate
/// (the signature covers the body), then insist on JSON. Handlers that take
/// it only parse fields.
pub struct AuthenticatedJson {
    pub caller: crate::auth::Caller,
    pub body: Bytes,
}

impl axum::extract::FromRequest<crate::state::AppState> for AuthenticatedJson {
    type Rejection = ApiError;

    async fn from_request(
        request: axum::extract::Request,
        state: &crate::state::AppState,
    ) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let body = match read_body(body, state.settings.http.body_timeout).await {
            Ok(body) => body,
            Err(too_large) => {
                // Authentication comes first even here: the credentials are
                // checked as far as they can be without the body (a token
                // fully, an access key by existence), so a stranger's
                // oversized body is a 401, not a 400.
                let presented = crate::auth::Presented {
                    method: &parts.method,
                    uri: &parts.uri,
                    headers: &parts.headers,
                    body: &[],
                };
                state.auth.authenticate_unsigned(&presented).await?;
                return Err(too_large);
            }
        };
        let presented = crate::auth::Presented {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            body: &body,
        };
        let caller = state.auth.authenticate(&presented).await?;
        require_json(&parts.headers)?;
        Ok(Self { caller, body })
    }
}
