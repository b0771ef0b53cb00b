//! `POST /v2/bases/verificationcode/send`, checks in the documented order:
//! authentication → parameters → rate limit → record → hand-off → 204.
//!
//! Everything after authentication runs in one task of its own, detached
//! from the client: a client that hangs up drops the handler, but must not
//! strand a committed dispatch (it is still published, or marked failed, at
//! once), a replay key without its answer, or a record still to be voided.
//! The task hands the answer back as soon as it has one and finishes what
//! must follow it (voiding an unconfirmed record) on its own.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;
use tracing::Instrument;
use uuid::Uuid;
use verimail_domain::code::Code;
use verimail_domain::{DispatchStatus, ErrorCode, SendRequest};
use verimail_infra::publisher::Route;
use verimail_infra::store::dispatches::{self as store, Admission, NewDispatch};

use std::time::Duration;

use crate::error::{ApiError, Result};
use crate::first_attempts;
use crate::replays;
use crate::request_id::{self, RequestId};
use crate::routes::AuthenticatedJson;
use crate::state::AppState;

pub async fn send(
    State(state): State<AppState>,
    Extension(RequestId(id)): Extension<RequestId>,
    headers: HeaderMap,
    AuthenticatedJson { caller, body }: AuthenticatedJson,
) -> Result<Response> {
    let key = replays::key_of(headers.get(replays::HEADER), caller.signature).map_err(|why| {
        ApiError::with_message(
            ErrorCode::ParameterError,
            format!("Parameter error. {why}."),
        )
    })?;
    let wait = first_attempts::requested_wait(
        headers
            .get_all(PREFER)
            .iter()
            .filter_map(|value| value.to_str().ok()),
    );
    let (answer_to, answer) = oneshot::channel();
    tokio::spawn(
        async move {
            let (result, after) =
                answer_send(&state, id, caller.partner_id, key, &body, wait).await;
            let _ = answer_to.send(result);
            if let After::VoidUnconfirmed = after {
                void_unconfirmed(&state.pool, id).await;
            }
        }
        .in_current_span(),
    );
    answer
        .await
        .map_err(|_| anyhow::anyhow!("the send task ended without an answer"))?
}

/// What the send task still owes once the client has its answer.
enum After {
    Nothing,
    /// The record failed with an error but may have committed: void it.
    VoidUnconfirmed,
}

/// The answer to a send, with or without a replay key.
async fn answer_send(
    state: &AppState,
    id: Uuid,
    partner_id: Uuid,
    key: Option<String>,
    body: &[u8],
    wait: Option<Duration>,
) -> (Result<Response>, After) {
    let Some(key) = key else {
        return send_once(state, id, partner_id, body, wait).await;
    };
    let claim = match replays::claim(&state.pool, partner_id, &key, body, id).await {
        Ok(claim) => claim,
        Err(error) => return (Err(error.into()), After::Nothing),
    };
    let answer = match claim {
        replays::Claim::First => {
            let (result, after) = send_once(state, id, partner_id, body, wait).await;
            let accepted = result.is_ok();
            if let Err(error) = replays::record(&state.pool, partner_id, &key, id, accepted).await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "remembering the answer failed"
                );
            }
            return (result, after);
        }
        replays::Claim::Repeat(first) => {
            tracing::info!(first = %first.dispatch_id, "a repeated send; answered as the first");
            let mut response = StatusCode::NO_CONTENT.into_response();
            if let Ok(value) = HeaderValue::from_str(&first.dispatch_id.to_string()) {
                response.headers_mut().insert(request_id::HEADER, value);
            }
            Ok(response)
        }
        replays::Claim::OtherBody => Err(ApiError::with_message(
            ErrorCode::ParameterError,
            "Parameter error. This Idempotency-Key was used with another body.",
        )),
        replays::Claim::InProgress => Err(ApiError::with_message(
            ErrorCode::ParameterError,
            "Parameter error. A request with this Idempotency-Key is still in progress; try again.",
        )),
    };
    (answer, After::Nothing)
}

async fn send_once(
    state: &AppState,
    id: Uuid,
    partner_id: Uuid,
    body: &[u8],
    wait: Option<Duration>,
) -> (Result<Response>, After) {
    let request = match SendRequest::parse(body) {
        Ok(request) => request,
        Err(rejection) => return (Err(rejection.into()), After::Nothing),
    };
    if let Some(depth) = state.backlog.over_limit() {
        tracing::debug!(depth, "shedding a send: the workers are behind");
        metrics::counter!(verimail_infra::metrics::SHED, "reason" => "backlog").increment(1);
        let busy = ApiError::busy(
            "The service is busy: too many codes are waiting to be sent. Try again later.",
            crate::backlog::RETRY_AFTER_SECS,
        );
        return (Err(busy), After::Nothing);
    }
    tracing::debug!(%partner_id, email = verimail_infra::telemetry::redact(request.email.as_str()), "send accepted for checks");
    // Registered before the message exists, so no announcement comes
    // before its listener; beyond the bound, the send does not wait.
    let waiting = wait.and_then(|wait| Some((wait, state.waiters.register(id)?)));
    match record_and_hand_off(state, id, partner_id, &request, waiting.is_some()).await {
        Ok(()) => match waiting {
            None => (Ok(StatusCode::NO_CONTENT.into_response()), After::Nothing),
            Some((wait, waiting)) => {
                waiting.until_announced(wait).await;
                (
                    Ok(waited_answer(state, id, partner_id, wait).await),
                    After::Nothing,
                )
            }
        },
        Err((error, after)) => (Err(error), after),
    }
}

/// The answer of a send that waited (`Prefer: wait=N`): where its dispatch
/// stands once the first attempt's outcome is recorded, or the wait is
/// over. A relay that refused it for good makes it CBC.99004003, not
/// counted toward the limit; anything else is a 204 (the mail is sent, or
/// still on its way). `Preference-Applied` names the wait applied and
/// `X-Dispatch-Status` the state, whenever the dispatch could be read.
async fn waited_answer(state: &AppState, id: Uuid, partner_id: Uuid, wait: Duration) -> Response {
    let status = match store::view::find(&state.pool, id, partner_id).await {
        Ok(view) => view.map(|view| view.status),
        Err(error) => {
            tracing::warn!(
                error = format!("{error:#}"),
                "reading the waited dispatch failed"
            );
            None
        }
    };
    let mut response = if status == Some(DispatchStatus::Failed) {
        if let Err(error) = store::awaited::uncount_failed(&state.pool, id).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "the refused send still counts toward the limit"
            );
        }
        ApiError::new(ErrorCode::HandOffFailed).into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    };
    let headers = response.headers_mut();
    if let Ok(applied) = HeaderValue::from_str(&format!("wait={}", wait.as_secs())) {
        headers.insert(PREFERENCE_APPLIED, applied);
    }
    if let Some(status) = status {
        headers.insert(DISPATCH_STATUS, HeaderValue::from_static(status.as_str()));
    }
    response
}

/// RFC 7240's request and response headers, and where a waited dispatch stands.
const PREFER: &str = "prefer";
const PREFERENCE_APPLIED: &str = "preference-applied";
const DISPATCH_STATUS: &str = "x-dispatch-status";

/// How long a possibly committed record is tried to be voided. The sweeper
/// leaves a dispatch alone for its hand-off window plus its grace (a minute
/// by default), so a Postgres outage shorter than that cannot mail it first.
const VOID_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

async fn void_unconfirmed(pool: &sqlx::PgPool, id: Uuid) {
    let started = std::time::Instant::now();
    while let Err(error) = store::accept::void_unconfirmed(pool, id).await {
        if started.elapsed() > VOID_PATIENCE {
            tracing::error!(
                error = format!("{error:#}"),
                "could not void a record whose request was answered with an error"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

async fn record_and_hand_off(
    state: &AppState,
    id: Uuid,
    partner_id: Uuid,
    request: &SendRequest,
    awaited: bool,
) -> std::result::Result<(), (ApiError, After)> {
    // The request id doubles as the dispatch id, so X-Request-Id of a 204
    // names the dispatch and every log line of the request carries it.
    let code = Code::generate(state.settings.code_length);
    let new = NewDispatch {
        id,
        partner_id,
        email: request.email.clone(),
        lang: request.lang,
        ttl: request.ttl,
        code_digest: state.keys.code_digest(id, code.expose()),
        code_sealed: state.keys.seal_code(id, code.expose()),
    };
    drop(code);
    let older_waiting = match state.records.accept(new).await {
        Ok(Admission::Accepted { older_waiting }) => older_waiting,
        Ok(Admission::RateLimited) => {
            return Err((ApiError::new(ErrorCode::RateLimited), After::Nothing));
        }
        Err(error) => {
            let error = ApiError::infra(ErrorCode::CodeNotRecorded, error);
            return Err((error, After::VoidUnconfirmed));
        }
    };

    let published = if awaited {
        state.publisher.publish_awaited(id).await
    } else {
        state.publisher.publish(id, Route::Dispatch).await
    };
    let Err(error) = published else {
        if older_waiting {
            // Best effort: a worker claiming either code settles it too.
            if let Err(error) = store::accept::supersede_older(&state.pool, id).await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "superseding older codes failed"
                );
            }
        }
        tracing::debug!(
            ttl_minutes = request.ttl.minutes(),
            lang = request.lang.as_str(),
            "dispatch queued"
        );
        return Ok(());
    };
    tracing::error!(
        error = format!("{error:#}"),
        "handing the dispatch to RabbitMQ failed"
    );
    // CBC.99004003 promises the code will never arrive, so it is answered
    // only once the dispatch is recorded as failed. Otherwise it is already
    // on its way (the confirm was lost, not the message) or will be (the
    // sweeper publishes it), and the truthful answer is 204.
    match store::accept::mark_handoff_failed(&state.pool, id, &error.to_string()).await {
        Ok(true) => Err((ApiError::new(ErrorCode::HandOffFailed), After::Nothing)),
        Ok(false) => {
            tracing::warn!("the dispatch is already on its way despite the failed confirm");
            Ok(())
        }
        Err(db_error) => {
            tracing::error!(
                error = format!("{db_error:#}"),
                "recording the failed hand-off failed; the sweeper will deliver the dispatch"
            );
            Ok(())
        }
    }
}
