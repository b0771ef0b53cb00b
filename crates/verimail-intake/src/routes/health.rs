//! Liveness and readiness.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use verimail_infra::db;

use crate::state::AppState;

/// The API's OpenAPI 3.1 document (`openapi.json` beside this crate's
/// manifest, held to the router by `tests/api/openapi.rs`).
pub const OPENAPI: &str = include_str!("../../openapi.json");

pub async fn openapi() -> (
    [(axum::http::header::HeaderName, &'static str); 1],
    &'static str,
) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when Postgres answers and the broker can be reached.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let db = tokio::time::timeout(Duration::from_secs(2), db::ping(&state.pool)).await;
    let db_ok = matches!(db, Ok(Ok(_)));
    let broker_ok = state.publisher.ready().await.is_ok();
    let status = if db_ok && broker_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    (
        status,
        Json(json!({"postgres": word(db_ok), "rabbitmq": word(broker_ok)})),
    )
}
