//! The worker's HTTP listener: Prometheus `/metrics` and `/healthz` on
//! `VERIMAIL_METRICS_LISTEN` (the worker has no API port).

use std::future::Future;

use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::routing::get;
use tokio::net::TcpListener;
use verimail_core::metrics;

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
