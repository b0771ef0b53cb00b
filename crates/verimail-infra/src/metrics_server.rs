//! The metrics listener of every process: Prometheus `/metrics` and
//! `/healthz`, on an address of its own (`VERIMAIL_METRICS_LISTEN` for a
//! worker, `VERIMAIL_INTAKE_METRICS_LISTEN` for an intake), never on the
//! public API port. Intake and worker bind it in their `build` and serve it
//! from their run, both through `MetricsListener`.

use std::future::Future;
use std::net::SocketAddr;

use crate::metrics;
use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

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

/// A process's metrics listener, bound (port 0 picks a free port, for
/// tests) but not serving yet.
pub struct MetricsListener {
    listener: TcpListener,
    /// Which process serves it, for the log line ("intake", "worker").
    role: &'static str,
}

impl MetricsListener {
    /// Binds `addr` if there is one; a failure names the listener as
    /// `binding {name} {addr}`.
    pub async fn bind(
        addr: Option<SocketAddr>,
        role: &'static str,
        name: &str,
    ) -> anyhow::Result<Option<Self>> {
        let Some(addr) = addr else {
            return Ok(None);
        };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {name} {addr}"))?;
        Ok(Some(Self { listener, role }))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves in a task of its own until `stopped` turns true (or its
    /// sender is gone).
    pub fn spawn(self, stopped: &watch::Receiver<bool>) -> JoinHandle<anyhow::Result<()>> {
        if let Some(addr) = self.local_addr() {
            tracing::info!(%addr, "{} metrics listening", self.role);
        }
        let mut stopped = stopped.clone();
        tokio::spawn(serve(self.listener, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }))
    }
}
