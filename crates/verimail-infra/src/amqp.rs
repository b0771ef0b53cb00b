//! RabbitMQ topology: the names, and what each side declares. Every name carries the
//! configured prefix so tests and tenants can share one broker.
//!
//! ```text
//! {p}.dispatch (direct) ──"dispatch"──▶ {p}.dispatch (quorum queue) ──▶ workers
//!        ▲  │                                │ nack, no requeue
//!        │  └──"due"──▶ {p}.due (quorum) ──▶ workers, beside the dispatch queue
//!        │ dead-letter after TTL             ▼
//! {p}.delay (direct) ──"<ms>"──▶ {p}.delay.<ms>ms    {p}.dead (fanout) ──▶ {p}.dead (queue)
//!                    ──"recheck"──▶ {p}.delay.recheck (per-message TTL) ──▶ "due"
//! ```
//!
//! Every queue is a quorum queue, so the loss of one node of a cluster
//! leaves each of them usable and each re-declarable from the other nodes.
//! The delay queues dead-letter at least once (the message stays in its
//! queue until the dispatch or due queue has confirmed it), so a retry is
//! not dropped while its target has no leader. They replace the classic
//! delay queues of earlier versions (`{p}.retry` and its `{p}.retry.<ms>ms`,
//! `{p}.recheck.due`, `{p}.recheck`): a queue's type cannot change, so the
//! new ones have new names. Nothing declares the old ones any more; their
//! messages still dead-letter into the dispatch exchange when their time
//! comes, after which an operator may delete them (README, "Upgrading").
//!
//! A re-check (the end of another worker's lease) comes back through
//! `{p}.due`, not the dispatch queue: behind a backlog (after an outage) the
//! dispatch queue would hold it for as long as the backlog takes, and the
//! dispatches of a killed worker would wait that long past their lease.

use std::time::Duration;

use anyhow::Context;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use rand::seq::SliceRandom;

use crate::metrics as m;

pub const DISPATCH_ROUTING_KEY: &str = "dispatch";
/// Routes a message to the re-check queue (on the delay exchange).
pub const RECHECK_ROUTING_KEY: &str = "recheck";
/// Routes a message whose wait is over to the due queue (on the dispatch
/// exchange), where the re-check queue dead-letters it.
pub const DUE_ROUTING_KEY: &str = "due";
/// A header on a dispatch message whose sender waits for the first SMTP
/// attempt (`Prefer: wait`): the worker announces that attempt's outcome.
/// Retries are published without it, so it is announced once.
pub const AWAITED_HEADER: &str = "x-verimail-awaited";

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

    /// The exchange the delay queues hang off (retries and re-checks).
    pub fn delay_exchange(&self) -> String {
        format!("{}.delay", self.prefix)
    }

    pub fn retry_routing_key(delay: Duration) -> String {
        delay.as_millis().to_string()
    }

    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.delay.{}ms", self.prefix, delay.as_millis())
    }

    /// Messages that wait for their own expiration (a lease's end), then
    /// dead-letter to the due queue.
    pub fn recheck_queue(&self) -> String {
        format!("{}.delay.recheck", self.prefix)
    }

    /// The classic delay queues of earlier versions (see the module's
    /// notes), which nothing declares any more: for cleanup and tooling.
    pub fn legacy_queues(&self, retry_delays: &[Duration]) -> Vec<String> {
        let mut queues = vec![
            format!("{}.recheck.due", self.prefix),
            format!("{}.recheck", self.prefix),
        ];
        queues.extend(
            retry_delays
                .iter()
                .map(|d| format!("{}.retry.{}ms", self.prefix, d.as_millis())),
        );
        queues
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
            self.due_queue(),
        ];
        queues.extend(retry_delays.iter().map(|d| self.retry_queue(*d)));
        queues.extend(self.legacy_queues(retry_delays));
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

    /// The delay exchange, one delay queue per retry delay, the re-check
    /// queue and the due queue it feeds: only the worker, which parks
    /// messages, needs them.
    pub async fn declare_retries(
        &self,
        channel: &Channel,
        retry_delays: &[Duration],
    ) -> anyhow::Result<()> {
        let (durable, _) = durable_options();
        channel
            .exchange_declare(
                self.delay_exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await
            .context("declaring the delay exchange")?;
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

    /// A queue without consumers, bound to the delay exchange under
    /// `routing_key`: messages wait out their TTL (the queue's `ttl`, or their
    /// own expiration), then dead-letter to the dispatch exchange under
    /// `then_key` (the dispatch queue, or the due queue). At-least-once
    /// dead-lettering needs `reject-publish` overflow; no length limit is
    /// set, so nothing is ever rejected for it.
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
        args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
        args.insert("x-overflow".into(), string("reject-publish"));
        channel
            .queue_declare(name.into(), queue_opts, quorum(args))
            .await
            .context("declaring")?;
        channel
            .queue_bind(
                name.into(),
                self.delay_exchange().into(),
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

/// The node URLs of one cluster in `AMQP_URL`: one URL, or a comma-separated
/// list (the address list of RabbitMQ's Java and .NET clients). Each must be
/// an `amqp://` or `amqps://` URL; the error names none of them, as they may
/// hold a password.
pub fn node_urls(list: &str) -> Result<Vec<&str>, String> {
    let nodes: Vec<&str> = list.split(',').map(str::trim).collect();
    for (i, node) in nodes.iter().enumerate() {
        let place = if nodes.len() == 1 {
            String::new()
        } else {
            format!(" (node {} of the list)", i + 1)
        };
        if node.is_empty() {
            return Err(format!("an empty URL{place}"));
        }
        if !(node.starts_with("amqp://") || node.starts_with("amqps://")) {
            return Err(format!("expected an amqp:// or amqps:// URL{place}"));
        }
        node.parse::<AMQPUri>()
            .map_err(|e| format!("not an AMQP URL{place}: {e}"))?;
    }
    Ok(nodes)
}

/// `host:port` of a node, for logs and metrics (never its credentials).
fn node_label(uri: &AMQPUri) -> String {
    format!("{}:{}", uri.authority.host, uri.authority.port)
}

/// Connects to one node of `urls` (see [`node_urls`]), with a bound on each
/// node's handshake, so a dead broker is reported instead of hanging the
/// caller. A list is tried in a shuffled order, so the processes of a
/// deployment spread over the cluster and a dead first node is skipped by
/// everyone. Every connection of every process comes through here: after
/// its node dies, the caller's reconnect lands on another.
pub async fn connect(urls: &str, timeout: Duration) -> anyhow::Result<Connection> {
    let mut nodes = node_urls(urls)
        .map_err(anyhow::Error::msg)
        .context("AMQP_URL")?;
    if let [url] = nodes[..] {
        return connect_node(url, timeout).await;
    }
    nodes.shuffle(&mut rand::thread_rng());
    let mut failures = Vec::with_capacity(nodes.len());
    for url in nodes {
        match connect_node(url, timeout).await {
            Ok(connection) => return Ok(connection),
            Err(error) => failures.push(format!("{error:#}")),
        }
    }
    anyhow::bail!("no RabbitMQ node answered: {}", failures.join("; "))
}

async fn connect_node(url: &str, timeout: Duration) -> anyhow::Result<Connection> {
    let node = url
        .parse::<AMQPUri>()
        .map(|uri| node_label(&uri))
        .map_err(anyhow::Error::msg)?;
    let connection = tokio::time::timeout(
        timeout,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connecting to RabbitMQ at {node} timed out after {timeout:?}"))?
    .with_context(|| format!("connecting to RabbitMQ at {node}"))?;
    tracing::info!(node, "connected to RabbitMQ");
    metrics::counter!(m::AMQP_CONNECTS, "node" => node).increment(1);
    Ok(connection)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_or_a_list_of_nodes_is_accepted() {
        assert_eq!(
            node_urls("amqp://guest:guest@127.0.0.1:5672/%2f").expect("one"),
            ["amqp://guest:guest@127.0.0.1:5672/%2f"]
        );
        assert_eq!(
            node_urls("amqp://u:p@a:5672/v, amqps://u:p@b:5671/v,amqp://c").expect("a list"),
            ["amqp://u:p@a:5672/v", "amqps://u:p@b:5671/v", "amqp://c"]
        );
    }

    #[test]
    fn bad_lists_are_refused_without_showing_a_password() {
        for bad in [
            "",
            "http://x",
            "amqp://u:secret@a:5672/v,",
            "amqp://u:secret@a:5672/v,,amqp://b",
            "amqp://u:secret@a:5672/v,b:5672",
            "amqp://u:secret@a:notaport/v",
        ] {
            let error = node_urls(bad).expect_err(bad);
            assert!(
                !error.contains("secret") && !error.contains('\n'),
                "{error}"
            );
        }
    }
}
