//! A metrics-only HTTP server, for processes without the API (the worker).

use std::future::Future;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::routes::health;

pub fn router() -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
}

pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    verimail_core::metrics::install();
    axum::serve(listener, router())
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving metrics")
}
