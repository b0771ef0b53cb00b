//! Safety net for "nothing 204'd is lost": re-publishes open dispatches
//! whose message should have been handled long ago (an intake that died
//! between commit and publish, a lease that ran out). Duplicates are harmless
//! because claiming is atomic.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sqlx::PgPool;
use tokio::sync::watch;
use verimail_infra::metrics as m;
use verimail_infra::publisher::{Publisher, Route};

use verimail_infra::store::dispatches as store;

const BATCH: i64 = 500;

/// Confirms awaited at once while re-publishing a batch.
const IN_FLIGHT: usize = 32;

/// When the sweeper looks, and what it counts as overdue.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// How often it looks.
    pub interval: Duration,
    /// How overdue an open dispatch must be before it is re-published.
    pub grace: Duration,
}

pub async fn run(
    pool: PgPool,
    publisher: Arc<Publisher>,
    schedule: Schedule,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(schedule.interval) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(error) = sweep(&pool, &publisher, schedule.grace).await {
            tracing::warn!(error = format!("{error:#}"), "sweep failed; will try again");
        }
    }
}

/// One sweep: returns how many dispatches were re-published. A publish that
/// fails leaves its row overdue, so the next sweep tries it again.
pub async fn sweep(pool: &PgPool, publisher: &Publisher, grace: Duration) -> anyhow::Result<usize> {
    let ids = store::overdue(pool, grace, BATCH).await?;
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
