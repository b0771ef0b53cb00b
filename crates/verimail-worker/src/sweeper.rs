//! Safety net for "nothing 204'd is lost": re-publishes open dispatches
//! whose message should have been handled long ago (an intake that died
//! between commit and publish, a lease that ran out). Duplicates are harmless
//! because claiming is atomic.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::watch;
use verimail_infra::metrics as m;
use verimail_infra::publisher::{Publisher, Route};

use crate::process::Processor;
use verimail_infra::store::{dispatches as store, send_replays};

const BATCH: i64 = 500;

/// Confirms awaited at once while re-publishing a batch.
const IN_FLIGHT: usize = 32;

pub async fn run(
    processor: Arc<Processor>,
    publisher: Arc<Publisher>,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = processor.settings.sweep_interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(error) = sweep(&processor, &publisher).await {
            tracing::warn!(error = format!("{error:#}"), "sweep failed; will try again");
        }
        match processor
            .transport
            .prune_outbox(processor.settings.outbox_retention)
        {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "removed old .eml files"),
            Err(error) => tracing::warn!(error = %error, "pruning the outbox failed"),
        }
        if let Err(error) = send_replays::prune(&processor.pool).await {
            tracing::warn!(error = format!("{error:#}"), "pruning send answers failed");
        }
    }
}

/// One sweep: returns how many dispatches were re-published. A publish that
/// fails leaves its row overdue, so the next sweep tries it again.
pub async fn sweep(processor: &Processor, publisher: &Publisher) -> anyhow::Result<usize> {
    let settings = &processor.settings;
    let ids = store::overdue(&processor.pool, settings.sweep_grace, BATCH).await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let results: Vec<_> = futures_util::stream::iter(ids.iter().copied())
        .map(|id| publisher.publish(id, Route::Dispatch))
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let published = results.iter().filter(|r| r.is_ok()).count();
    metrics::counter!(m::SWEPT).increment(published as u64);
    if let Some(Err(error)) = results.into_iter().find(Result::is_err) {
        anyhow::bail!(
            "re-published {published} of {} overdue dispatches: {error}",
            ids.len()
        );
    }
    tracing::info!(count = published, "re-published overdue dispatches");
    Ok(published)
}
