//! `POST /v2/bases/verificationcode/send`, checks in the documented order:
//! authentication → parameters → rate limit → record → hand-off → 204.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use verimail_core::code::Code;
use verimail_core::publisher::Route;
use verimail_core::{ErrorCode, SendRequest};

use crate::error::{ApiError, Result};
use crate::request_id::RequestId;
use crate::routes::AuthenticatedJson;
use crate::state::AppState;
use crate::store::{self, Admission, NewDispatch};

pub async fn send(
    State(state): State<AppState>,
    Extension(RequestId(id)): Extension<RequestId>,
    AuthenticatedJson { caller, body }: AuthenticatedJson,
) -> Result<Response> {
    let request = SendRequest::parse(&body)?;
    tracing::debug!(partner_id = %caller.partner_id, email = request.email.redacted(), "send accepted for checks");

    // The request id doubles as the dispatch id, so X-Request-Id of a 204
    // names the dispatch and every log line of the request carries it.
    let code = Code::generate(state.settings.code_length);
    let new = NewDispatch {
        id,
        partner_id: caller.partner_id,
        email: &request.email,
        lang: request.lang,
        ttl: request.ttl,
        code_digest: state.keys.code_digest(id, code.expose()),
        code_sealed: state.keys.seal_code(id, code.expose()),
    };
    drop(code);
    match store::accept(&state.pool, new, state.settings.rate_limit).await {
        Ok(Admission::Accepted) => {}
        Ok(Admission::RateLimited) => return Err(ApiError::new(ErrorCode::RateLimited)),
        Err(error) => return Err(ApiError::infra(ErrorCode::CodeNotRecorded, error)),
    }

    if let Err(error) = state.publisher.publish(id, Route::Dispatch).await {
        tracing::error!(
            error = format!("{error:#}"),
            "handing the dispatch to RabbitMQ failed"
        );
        if let Err(db_error) = store::mark_handoff_failed(&state.pool, id, &error.to_string()).await
        {
            // The row stays queued: the worker's sweeper will still deliver it.
            tracing::error!(
                error = format!("{db_error:#}"),
                "recording the failed hand-off failed"
            );
        }
        return Err(ApiError::new(ErrorCode::HandOffFailed));
    }
    tracing::debug!(dispatch_id = %id, ttl_minutes = request.ttl.minutes(), lang = request.lang.as_str(), "dispatch queued");
    Ok(StatusCode::NO_CONTENT.into_response())
}
