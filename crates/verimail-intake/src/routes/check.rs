//! `POST /v2/bases/verificationcode/check`: consumes the newest
//! code the calling partner requested for the address.

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use verimail_domain::{CheckRequest, ErrorCode};

use crate::error::{ApiError, Result};
use crate::routes::AuthenticatedJson;
use crate::state::AppState;
use verimail_infra::store::dispatches::check::{self, CheckOutcome};

pub async fn check(
    State(state): State<AppState>,
    AuthenticatedJson { caller, body }: AuthenticatedJson,
) -> Result<Response> {
    let request = CheckRequest::parse(&body)?;
    let mut conn = state
        .pool
        .acquire()
        .await
        .context("acquiring a connection for the check")?;
    let outcome = check::check_code(&mut conn, &state.keys, caller.partner_id, &request).await?;
    tracing::info!(outcome = ?outcome, email = verimail_infra::telemetry::redact(request.email.as_str()), "code checked");
    match outcome {
        CheckOutcome::Verified(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        CheckOutcome::Wrong => Err(ApiError::new(ErrorCode::CodeWrong)),
        CheckOutcome::Void => Err(ApiError::new(ErrorCode::CodeVoid)),
        CheckOutcome::NotPending => Err(ApiError::new(ErrorCode::CodeExpired)),
    }
}
