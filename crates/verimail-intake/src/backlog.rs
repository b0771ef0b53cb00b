//! Load shedding when the workers fall behind (README, "Back-pressure"). The
//! intake samples how many dispatch messages wait in `{prefix}.dispatch`;
//! above `VERIMAIL_MAX_BACKLOG` a send is answered 503 with a `Retry-After`
//! before anything is recorded, so codes are not queued only to expire
//! there, and a retry later has a real chance.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use verimail_infra::metrics as m;
use verimail_infra::publisher::Publisher;

/// How often the queue depth is read (one passive declare each time).
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// The `Retry-After` of a shed send, in seconds.
pub const RETRY_AFTER_SECS: u32 = 5;

const UNKNOWN: u64 = u64::MAX;

#[derive(Debug)]
pub struct Backlog {
    limit: Option<u64>,
    depth: AtomicU64,
}

impl Backlog {
    pub fn new(limit: Option<u64>) -> Self {
        Self {
            limit,
            depth: AtomicU64::new(UNKNOWN),
        }
    }

    /// The waiting messages, when that is more than the limit. An unknown
    /// depth (the broker cannot be asked) sheds nothing: the hand-off
    /// itself then fails or succeeds on its own terms.
    pub fn over_limit(&self) -> Option<u64> {
        let limit = self.limit?;
        let depth = self.depth.load(Ordering::Relaxed);
        (depth != UNKNOWN && depth > limit).then_some(depth)
    }

    fn set(&self, depth: Option<u64>) {
        self.depth
            .store(depth.unwrap_or(UNKNOWN), Ordering::Relaxed);
    }
}

/// Samples the dispatch queue's depth until the intake is dropped.
pub fn spawn_sampler(backlog: &Arc<Backlog>, publisher: &Arc<Publisher>, queue: String) {
    let Some(limit) = backlog.limit else {
        return;
    };
    metrics::gauge!(m::BACKLOG_LIMIT).set(limit as f64);
    let (backlog, publisher): (Weak<Backlog>, Weak<Publisher>) =
        (Arc::downgrade(backlog), Arc::downgrade(publisher));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (Some(backlog), Some(publisher)) = (backlog.upgrade(), publisher.upgrade()) else {
                return;
            };
            match publisher.message_count(&queue).await {
                Ok(count) => {
                    backlog.set(Some(u64::from(count)));
                    metrics::gauge!(m::QUEUE_DEPTH, "queue" => queue.clone()).set(f64::from(count));
                }
                Err(error) => {
                    backlog.set(None);
                    tracing::debug!(error = format!("{error:#}"), "queue depth unknown");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_only_above_a_known_depth() {
        let backlog = Backlog::new(Some(10));
        assert_eq!(backlog.over_limit(), None, "unknown depth");
        backlog.set(Some(10));
        assert_eq!(backlog.over_limit(), None);
        backlog.set(Some(11));
        assert_eq!(backlog.over_limit(), Some(11));
        backlog.set(None);
        assert_eq!(backlog.over_limit(), None);
        let off = Backlog::new(None);
        off.set(Some(1_000_000));
        assert_eq!(off.over_limit(), None);
    }
}
