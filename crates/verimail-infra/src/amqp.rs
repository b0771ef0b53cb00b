//! RabbitMQ topology: the names, and what each side declares. Every name carries the
//! configured prefix so tests and tenants can share one broker.
//!
//! ```text
//! {p}.dispatch (direct) ──"dispatch"──▶ {p}.dispatch (quorum queue) ──▶ workers
//!        ▲  │                                │ nack, no requeue
//!        │  └──"due"──▶ {p}.due (quorum) ──▶ workers, beside the dispatch queue
//!        │ dead-letter after TTL             ▼
//! {p}.retry (direct) ──"<ms>"──▶ {p}.retry.<ms>ms    {p}.dead (fanout) ──▶ {p}.dead (queue)
//!                    ──"recheck.due"──▶ {p}.recheck.due (per-message TTL) ──▶ "due"
//! ```
//!
//! A re-check (the end of another worker's lease) comes back through
//! `{p}.due`, not the dispatch queue: behind a backlog (after an outage) the
//! dispatch queue would hold it for as long as the backlog takes, and the
//! dispatches of a killed worker would wait that long past their lease.

use std::time::Duration;

use anyhow::Context;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

pub const DISPATCH_ROUTING_KEY: &str = "dispatch";
/// Routes a message to the re-check queue (on the retry exchange).
pub const RECHECK_ROUTING_KEY: &str = "recheck.due";
/// Routes a message whose wait is over to the due queue (on the dispatch
/// exchange), where the re-check queue dead-letters it.
pub const DUE_ROUTING_KEY: &str = "due";
/// The re-check queue of workers before `{p}.due` (it dead-letters into the
/// dispatch queue): still declared, so workers not yet upgraded keep theirs.
const LEGACY_RECHECK_ROUTING_KEY: &str = "recheck";

#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn dispatch_exchange(&self) -> String {
        format!("{}.dispatch", self.prefix)
    }

    pub fn dispatch_queue(&self) -> String {
        format!("{}.dispatch", self.prefix)
    }

    pub fn retry_exchange(&self) -> String {
        format!("{}.retry", self.prefix)
    }

    pub fn retry_routing_key(delay: Duration) -> String {
        delay.as_millis().to_string()
    }

    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}ms", self.prefix, delay.as_millis())
    }

    /// Messages that wait for their own expiration (a lease's end), then
    /// dead-letter to the due queue. (A queue's arguments cannot change, so
    /// this is a new name: `{p}.recheck` dead-letters to the dispatch queue.)
    pub fn recheck_queue(&self) -> String {
        format!("{}.recheck.due", self.prefix)
    }

    fn legacy_recheck_queue(&self) -> String {
        format!("{}.recheck", self.prefix)
    }

    /// Re-checks whose wait is over: workers consume it beside the dispatch
    /// queue, so a backlog there does not hold them.
    pub fn due_queue(&self) -> String {
        format!("{}.due", self.prefix)
    }

    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Every queue name, for cleanup in tests and tooling.
    pub fn queues(&self, retry_delays: &[Duration]) -> Vec<String> {
        let mut queues = vec![
            self.dispatch_queue(),
            self.dead_queue(),
            self.recheck_queue(),
            self.legacy_recheck_queue(),
            self.due_queue(),
        ];
        queues.extend(retry_delays.iter().map(|d| self.retry_queue(*d)));
        queues
    }

    /// Declares everything a worker uses (idempotent).
    pub async fn declare(
        &self,
        channel: &Channel,
        retry_delays: &[Duration],
    ) -> anyhow::Result<()> {
        self.declare_dispatch(channel).await?;
        self.declare_retries(channel, retry_delays).await
    }

    /// The dispatch exchange and queue, and the dead-letter queue they feed:
    /// what every publisher and consumer needs. The dispatch queue is a quorum
    /// queue: replicated, and it confirmed twice as fast as a classic durable
    /// queue here.
    pub async fn declare_dispatch(&self, channel: &Channel) -> anyhow::Result<()> {
        let (durable, queue_opts) = durable_options();

        channel
            .exchange_declare(
                self.dead_exchange().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await
            .context("declaring the dead-letter exchange")?;
        channel
            .queue_declare(
                self.dead_queue().into(),
                queue_opts,
                quorum(FieldTable::default()),
            )
            .await
            .context("declaring the dead-letter queue")?;
        channel
            .queue_bind(
                self.dead_queue().into(),
                self.dead_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("binding the dead-letter queue")?;

        channel
            .exchange_declare(
                self.dispatch_exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await
            .context("declaring the dispatch exchange")?;
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            string(&self.dead_exchange()),
        );
        channel
            .queue_declare(self.dispatch_queue().into(), queue_opts, quorum(args))
            .await
            .context("declaring the dispatch queue")?;
        channel
            .queue_bind(
                self.dispatch_queue().into(),
                self.dispatch_exchange().into(),
                DISPATCH_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("binding the dispatch queue")?;
        Ok(())
    }

    /// The retry exchange and one delay queue per retry delay: only the
    /// worker, which parks messages, needs them.
    pub async fn declare_retries(
        &self,
        channel: &Channel,
        retry_delays: &[Duration],
    ) -> anyhow::Result<()> {
        let (durable, _) = durable_options();
        channel
            .exchange_declare(
                self.retry_exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await
            .context("declaring the retry exchange")?;
        let (_, queue_opts) = durable_options();
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            string(&self.dead_exchange()),
        );
        channel
            .queue_declare(self.due_queue().into(), queue_opts, quorum(args))
            .await
            .context("declaring the due queue")?;
        channel
            .queue_bind(
                self.due_queue().into(),
                self.dispatch_exchange().into(),
                DUE_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("binding the due queue")?;
        // Per-message TTLs expire only at the head of a queue; every wait
        // parked here is at most a lease long, so the head is never far behind.
        self.declare_delay_queue(
            channel,
            &self.recheck_queue(),
            RECHECK_ROUTING_KEY,
            None,
            DUE_ROUTING_KEY,
        )
        .await
        .context("declaring the re-check queue")?;
        self.declare_delay_queue(
            channel,
            &self.legacy_recheck_queue(),
            LEGACY_RECHECK_ROUTING_KEY,
            None,
            DISPATCH_ROUTING_KEY,
        )
        .await
        .context("declaring the former re-check queue")?;
        for delay in retry_delays {
            self.declare_delay_queue(
                channel,
                &self.retry_queue(*delay),
                &Self::retry_routing_key(*delay),
                Some(*delay),
                DISPATCH_ROUTING_KEY,
            )
            .await
            .with_context(|| format!("declaring the retry queue for {delay:?}"))?;
        }
        Ok(())
    }

    /// A queue without consumers, bound to the retry exchange under
    /// `routing_key`: messages wait out their TTL (the queue's `ttl`, or their
    /// own expiration), then dead-letter to the dispatch exchange under
    /// `then_key` (the dispatch queue, or the due queue).
    async fn declare_delay_queue(
        &self,
        channel: &Channel,
        name: &str,
        routing_key: &str,
        ttl: Option<Duration>,
        then_key: &str,
    ) -> anyhow::Result<()> {
        let (_, queue_opts) = durable_options();
        let mut args = FieldTable::default();
        if let Some(ttl) = ttl {
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(ttl.as_millis() as i64),
            );
        }
        args.insert(
            "x-dead-letter-exchange".into(),
            string(&self.dispatch_exchange()),
        );
        args.insert("x-dead-letter-routing-key".into(), string(then_key));
        channel
            .queue_declare(name.into(), queue_opts, args)
            .await
            .context("declaring")?;
        channel
            .queue_bind(
                name.into(),
                self.retry_exchange().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("binding")?;
        Ok(())
    }
}

/// Properties of every dispatch message: persistent (survives a broker
/// restart), JSON, and the dispatch id as message id for tracing.
pub fn dispatch_properties(dispatch_id: uuid::Uuid) -> lapin::BasicProperties {
    lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(dispatch_id.to_string().into())
}

fn durable_options() -> (ExchangeDeclareOptions, QueueDeclareOptions) {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let queue_opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    (durable, queue_opts)
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

fn quorum(mut args: FieldTable) -> FieldTable {
    args.insert(ShortString::from("x-queue-type"), string("quorum"));
    args
}

/// Connects with a bound on the whole handshake, so a dead broker is
/// reported instead of hanging the caller.
pub async fn connect(url: &str, timeout: Duration) -> anyhow::Result<Connection> {
    tokio::time::timeout(
        timeout,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connecting to RabbitMQ timed out after {timeout:?}"))?
    .context("connecting to RabbitMQ")
}
