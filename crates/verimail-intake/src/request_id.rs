//! Every request gets an id (UUID v7) before anything else runs: it names the
//! request's log span, answers as `X-Request-Id`, and becomes the dispatch id
//! when the request creates one.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use uuid::Uuid;
use verimail_infra::metrics as m;
use verimail_infra::telemetry::trace_context;

pub const HEADER: &str = "x-request-id";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(pub Uuid);

pub async fn layer(mut request: Request, next: Next) -> Response {
    let id = Uuid::now_v7();
    // The route template, not the raw path: ids in paths would explode the label set.
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    request.extensions_mut().insert(RequestId(id));
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path());
    // The caller's trace, when it sent one: the worker's spans join it too.
    trace_context::continue_from_http(&span, |name| {
        request.headers().get(name).and_then(|v| v.to_str().ok())
    });
    async move {
        let started = std::time::Instant::now();
        let mut response = next.run(request).await;
        // A repeated send answers with the first one's id (routes/send.rs).
        if !response.headers().contains_key(HEADER)
            && let Ok(value) = HeaderValue::from_str(&id.to_string())
        {
            response.headers_mut().insert(HEADER, value);
        }
        let code = response
            .extensions()
            .get::<verimail_domain::ErrorCode>()
            .map(|c| c.code());
        let outcome = code.map_or_else(|| response.status().as_u16().to_string(), str::to_owned);
        metrics::counter!(m::HTTP_REQUESTS, "endpoint" => endpoint.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!(m::HTTP_DURATION, "endpoint" => endpoint)
            .record(started.elapsed().as_secs_f64());
        let status = response.status().as_u16();
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        // Successes are counted by the metrics; at INFO they cost ~10% of the
        // intake's CPU under load (see BENCHMARKS.md), so only failures are.
        if status < 400 {
            tracing::debug!(status, elapsed_ms, "request done");
        } else {
            tracing::info!(status, error_code = code, elapsed_ms, "request done");
        }
        response
    }
    .instrument(span)
    .await
}
