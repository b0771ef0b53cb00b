//! What a worker clears away on the sweeper's interval: `.eml` files past
//! `VERIMAIL_OUTBOX_RETENTION` (they hold plain codes) and remembered send
//! answers past their life (`send_replays::prune`); and on the same beat, the
//! age of the oldest dispatch waiting for a worker (a gauge for alerts).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

use crate::mail::Transport;
use verimail_infra::metrics as m;
use verimail_infra::store::{dispatches, send_replays};

pub async fn run(
    pool: PgPool,
    transport: Arc<Transport>,
    interval: Duration,
    outbox_retention: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        match transport.prune_outbox(outbox_retention) {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "removed old .eml files"),
            Err(error) => tracing::warn!(error = %error, "pruning the outbox failed"),
        }
        if let Err(error) = send_replays::prune(&pool).await {
            tracing::warn!(error = format!("{error:#}"), "pruning send answers failed");
        }
        match dispatches::waiting::oldest_queued_age(&pool).await {
            Ok(age) => metrics::gauge!(m::OLDEST_QUEUED).set(age.unwrap_or(0.0)),
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "reading the oldest queued dispatch failed"
                )
            }
        }
    }
}
