//! Hands dispatch ids to RabbitMQ: persistent, mandatory, confirmed, and
//! never waiting longer than the publish timeout.
//!
//! One confirm-mode channel is shared by every request (confirms are matched
//! per publish by lapin). When the broker goes away the channel is dropped
//! and the next request reconnects; while it stays away requests fail fast.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection};
use uuid::Uuid;
use verimail_core::DispatchMessage;
use verimail_core::amqp::{self, DISPATCH_ROUTING_KEY, Topology};
use verimail_core::metrics as m;

use crate::settings::AmqpSettings;

/// How often a dead broker is re-tried: requests in between fail at once
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

struct Link {
    // Kept so the connection lives as long as its channel.
    _connection: Connection,
    channel: Channel,
}

pub struct Publisher {
    settings: AmqpSettings,
    topology: Topology,
    link: Mutex<Option<Link>>,
    connecting: tokio::sync::Mutex<Option<Instant>>,
}

impl Publisher {
    pub fn new(settings: AmqpSettings) -> Self {
        let topology = Topology::new(settings.prefix.clone());
        Self {
            settings,
            topology,
            link: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(None),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Publishes one dispatch id and waits for the broker's confirm.
    pub async fn publish(&self, dispatch_id: Uuid) -> Result<(), PublishError> {
        let timeout = self.settings.publish_timeout;
        let started = Instant::now();
        let result = self.publish_bounded(dispatch_id, timeout).await;
        metrics::histogram!(m::PUBLISH_DURATION).record(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            metrics::counter!(m::PUBLISH_FAILURES, "reason" => error.kind()).increment(1);
        }
        result
    }

    async fn publish_bounded(
        &self,
        dispatch_id: Uuid,
        timeout: Duration,
    ) -> Result<(), PublishError> {
        match tokio::time::timeout(timeout, self.publish_unbounded(dispatch_id)).await {
            Ok(result) => result,
            Err(_) => {
                // A silent broker: start afresh on the next request.
                self.drop_link();
                Err(PublishError::Timeout(timeout))
            }
        }
    }

    async fn publish_unbounded(&self, dispatch_id: Uuid) -> Result<(), PublishError> {
        let channel = self.channel().await.map_err(PublishError::Unreachable)?;
        let properties = amqp::dispatch_properties(dispatch_id);
        let payload = DispatchMessage::new(dispatch_id).encode();
        let outcome = async {
            channel
                .basic_publish(
                    self.topology.dispatch_exchange().into(),
                    DISPATCH_ROUTING_KEY.into(),
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
                self.drop_link();
                return Err(error.into());
            }
        };
        if confirmation.is_nack() {
            return Err(PublishError::Nacked);
        }
        match confirmation.take_message() {
            Some(returned) => Err(PublishError::Returned(returned.reply_text.to_string())),
            None => Ok(()),
        }
    }

    /// Whether the broker can be reached now (for `/readyz`).
    pub async fn ready(&self) -> anyhow::Result<()> {
        tokio::time::timeout(self.settings.publish_timeout, self.channel())
            .await
            .map_err(|_| anyhow::anyhow!("connecting to the broker timed out"))?
            .map(|_| ())
    }

    fn current(&self) -> Option<Channel> {
        let link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        link.as_ref()
            .filter(|l| l.channel.status().connected())
            .map(|l| l.channel.clone())
    }

    fn drop_link(&self) {
        self.link.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
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
                let channel = link.channel.clone();
                *self.link.lock().unwrap_or_else(|e| e.into_inner()) = Some(link);
                tracing::info!("connected to RabbitMQ");
                Ok(channel)
            }
            Err(error) => {
                *last_failure = Some(Instant::now());
                tracing::warn!(error = format!("{error:#}"), "RabbitMQ is unreachable");
                Err(error)
            }
        }
    }

    async fn connect(&self) -> anyhow::Result<Link> {
        let connection = amqp::connect(&self.settings.url, self.settings.publish_timeout).await?;
        let channel = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        self.topology
            .declare(&channel, &self.settings.retry_delays)
            .await?;
        Ok(Link {
            _connection: connection,
            channel,
        })
    }
}
