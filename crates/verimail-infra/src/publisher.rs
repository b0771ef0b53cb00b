//! The one way a dispatch id reaches RabbitMQ, for the intake's hand-off,
//! the worker's retries and the sweeper alike: persistent, mandatory,
//! confirmed, never waiting longer than the publish timeout, on a connection
//! of its own.
//!
//! One confirm-mode channel is shared by every caller (confirms are matched
//! per publish by lapin). When the broker goes away the channel is dropped
//! and the next publish reconnects; while it stays away publishes fail fast.
//! A nack drops it too: after a cluster node died, RabbitMQ 3.10 went on
//! nacking every publish on a channel that had sent to the dead node's queue
//! leader until that node came back (20 s in `scripts/ha-failover.sh`),
//! while a new channel publishes to the new leader at once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use uuid::Uuid;

use crate::amqp::{self, DISPATCH_ROUTING_KEY, Topology};
use crate::metrics as m;
use verimail_domain::DispatchMessage;

/// How often a dead broker is re-tried: publishes in between fail at once
/// instead of queueing behind connection attempts.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker did not confirm within {0:?}")]
    Timeout(Duration),
    #[error("the broker is unreachable: {0:#}")]
    Unreachable(anyhow::Error),
    #[error("publishing failed: {0}")]
    Channel(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the message was unroutable: {0}")]
    Returned(String),
}

/// Every `reason` of `verimail_publish_failures_total` (`PublishError::kind`).
const FAILURE_KINDS: [&str; 5] = ["timeout", "unreachable", "channel", "nack", "unroutable"];

/// Starts `verimail_publish_failures_total` at 0 for every reason on these
/// routes: alerts read it with `rate()`, and a series that appears with its
/// first failure shows Prometheus no increase.
pub fn start_failure_counters_at_zero(routes: &[Route]) {
    for route in routes {
        for reason in FAILURE_KINDS {
            metrics::counter!(m::PUBLISH_FAILURES, "route" => route.label(), "reason" => reason)
                .increment(0);
        }
    }
}

impl PublishError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Unreachable(_) => "unreachable",
            Self::Channel(_) => "channel",
            Self::Nacked => "nack",
            Self::Returned(_) => "unroutable",
        }
    }
}

/// Where a dispatch message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The dispatch queue, for a worker to take now.
    Dispatch,
    /// The delay queue of this length (one of the declared retry delays),
    /// which dead-letters it back to the dispatch queue.
    Retry(Duration),
    /// The re-check queue, for about this long (a per-message TTL): a look
    /// at the end of another worker's lease, not at the next retry bucket.
    Recheck(Duration),
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Self::Dispatch => "dispatch",
            Self::Retry(_) => "retry",
            Self::Recheck(_) => "recheck",
        }
    }
}

/// What a publisher connects to and declares.
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    pub url: verimail_domain::secrets::SecretUrl,
    pub topology: Topology,
    /// Bounds connecting and each publish's confirm.
    pub timeout: Duration,
    /// Retry queues to declare; empty for a process that never parks a
    /// message (the intake).
    pub retry_delays: Vec<Duration>,
}

struct Link {
    // Kept so the connection lives as long as its channel.
    _connection: Connection,
    channel: Channel,
    /// Which link this is, so a late failure on an old one does not drop
    /// the one that replaced it.
    generation: u64,
}

pub struct Publisher {
    settings: PublisherSettings,
    link: Mutex<Option<Link>>,
    connecting: tokio::sync::Mutex<Option<Instant>>,
    generations: AtomicU64,
}

impl Publisher {
    pub fn new(settings: PublisherSettings) -> Self {
        Self {
            settings,
            link: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(None),
            generations: AtomicU64::new(0),
        }
    }

    /// Publishes one dispatch id and waits for the broker's confirm, at most
    /// the publish timeout.
    pub async fn publish(&self, dispatch_id: Uuid, route: Route) -> Result<(), PublishError> {
        self.publish_marked(dispatch_id, route, false).await
    }

    /// As [`Publisher::publish`], for a send that waits for the first SMTP
    /// attempt: the message carries [`amqp::AWAITED_HEADER`].
    pub async fn publish_awaited(&self, dispatch_id: Uuid) -> Result<(), PublishError> {
        self.publish_marked(dispatch_id, Route::Dispatch, true)
            .await
    }

    async fn publish_marked(
        &self,
        dispatch_id: Uuid,
        route: Route,
        awaited: bool,
    ) -> Result<(), PublishError> {
        let timeout = self.settings.timeout;
        let started = Instant::now();
        let unbounded = self.publish_unbounded(dispatch_id, route, awaited);
        let result = match tokio::time::timeout(timeout, unbounded).await {
            Ok(result) => result,
            Err(_) => {
                // A silent broker: start afresh on the next publish.
                self.drop_link();
                Err(PublishError::Timeout(timeout))
            }
        };
        metrics::histogram!(m::PUBLISH_DURATION, "route" => route.label())
            .record(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            metrics::counter!(m::PUBLISH_FAILURES, "route" => route.label(), "reason" => error.kind())
                .increment(1);
        }
        result
    }

    async fn publish_unbounded(
        &self,
        dispatch_id: Uuid,
        route: Route,
        awaited: bool,
    ) -> Result<(), PublishError> {
        let (channel, generation) = self.channel().await.map_err(PublishError::Unreachable)?;
        let topology = &self.settings.topology;
        let (exchange, routing_key) = match route {
            Route::Dispatch => (
                topology.dispatch_exchange(),
                DISPATCH_ROUTING_KEY.to_owned(),
            ),
            Route::Retry(delay) => (
                topology.delay_exchange(),
                Topology::retry_routing_key(delay),
            ),
            Route::Recheck(_) => (
                topology.delay_exchange(),
                amqp::RECHECK_ROUTING_KEY.to_owned(),
            ),
        };
        let mut properties = amqp::dispatch_properties(dispatch_id);
        if let Route::Recheck(after) = route {
            // At least a millisecond: an expiration of 0 means "now or never".
            let ms = after.as_millis().clamp(1, u128::from(u32::MAX));
            properties = properties.with_expiration(ms.to_string().into());
        }
        let mut headers = FieldTable::default();
        crate::telemetry::trace_context::inject_current(&mut headers);
        if awaited {
            headers.insert(
                amqp::AWAITED_HEADER.into(),
                lapin::types::AMQPValue::Boolean(true),
            );
        }
        if !headers.inner().is_empty() {
            properties = properties.with_headers(headers);
        }
        let payload = DispatchMessage::new(dispatch_id).encode();
        let outcome = async {
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &payload,
                    properties,
                )
                .await?
                .await
        }
        .await;
        let confirmation = match outcome {
            Ok(confirmation) => confirmation,
            Err(error) => {
                self.drop_link_of(generation);
                return Err(error.into());
            }
        };
        if confirmation.is_nack() {
            self.drop_link_of(generation);
            return Err(PublishError::Nacked);
        }
        match confirmation.take_message() {
            Some(returned) => Err(PublishError::Returned(returned.reply_text.to_string())),
            None => Ok(()),
        }
    }

    /// Whether the broker can be reached now (for `/readyz`).
    pub async fn ready(&self) -> anyhow::Result<()> {
        tokio::time::timeout(self.settings.timeout, self.channel())
            .await
            .map_err(|_| anyhow::anyhow!("connecting to the broker timed out"))?
            .map(|_| ())
    }

    /// Messages waiting in one of the topology's queues (for the depth gauge).
    pub async fn message_count(&self, queue: &str) -> anyhow::Result<u32> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = tokio::time::timeout(self.settings.timeout, async {
            let (channel, _) = self.channel().await?;
            channel
                .queue_declare(queue.into(), passive, FieldTable::default())
                .await
                .context("reading the queue depth")
        })
        .await
        .map_err(|_| anyhow::anyhow!("reading the queue depth timed out"))?;
        if declared.is_err() {
            // A failed passive declare closes the channel.
            self.drop_link();
        }
        Ok(declared?.message_count())
    }

    fn current(&self) -> Option<(Channel, u64)> {
        let link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        link.as_ref()
            .filter(|l| l.channel.status().connected())
            .map(|l| (l.channel.clone(), l.generation))
    }

    fn drop_link(&self) {
        self.link.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Drops the link if it is still the one of `generation`.
    fn drop_link_of(&self, generation: u64) {
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        if link.as_ref().is_some_and(|l| l.generation == generation) {
            link.take();
        }
    }

    async fn channel(&self) -> anyhow::Result<(Channel, u64)> {
        if let Some(channel) = self.current() {
            return Ok(channel);
        }
        let mut last_failure = self.connecting.lock().await;
        if let Some(channel) = self.current() {
            return Ok(channel);
        }
        if last_failure.is_some_and(|at| at.elapsed() < RECONNECT_BACKOFF) {
            anyhow::bail!("the broker was unreachable moments ago");
        }
        match self.connect().await {
            Ok(link) => {
                *last_failure = None;
                let current = (link.channel.clone(), link.generation);
                *self.link.lock().unwrap_or_else(|e| e.into_inner()) = Some(link);
                tracing::info!("publisher connected to RabbitMQ");
                Ok(current)
            }
            Err(error) => {
                *last_failure = Some(Instant::now());
                tracing::warn!(error = format!("{error:#}"), "RabbitMQ is unreachable");
                Err(error)
            }
        }
    }

    async fn connect(&self) -> anyhow::Result<Link> {
        let settings = &self.settings;
        let connection = amqp::connect(settings.url.expose(), settings.timeout).await?;
        let channel = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        settings.topology.declare_dispatch(&channel).await?;
        if !settings.retry_delays.is_empty() {
            settings
                .topology
                .declare_retries(&channel, &settings.retry_delays)
                .await?;
        }
        Ok(Link {
            _connection: connection,
            channel,
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_reason_is_one_started_at_zero() {
        // `Channel` wraps a lapin error, which has no public constructor; its
        // reason is spelled once, in `kind`, beside the others.
        let errors = [
            PublishError::Timeout(Duration::ZERO),
            PublishError::Unreachable(anyhow::anyhow!("refused")),
            PublishError::Nacked,
            PublishError::Returned("no route".into()),
        ];
        for error in &errors {
            assert!(FAILURE_KINDS.contains(&error.kind()), "{}", error.kind());
        }
    }
}
