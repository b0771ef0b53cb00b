//! The metrics listener of every process: Prometheus `/metrics` and
//! `/healthz`, on an address of its own (`VERIMAIL_METRICS_LISTEN` for a
//! worker, `VERIMAIL_INTAKE_METRICS_LISTEN` for an intake), never on the
//! public API port.

use std::future::Future;

use crate::metrics;
use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::routing::get;
use tokio::net::TcpListener;

pub fn router() -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
                    metrics::render(),
                )
            }),
        )
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
}

pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    metrics::install();
    axum::serve(listener, router())
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving metrics")
}
