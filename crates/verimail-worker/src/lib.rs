//! The worker: turns queued dispatch ids into exactly one mail each, or a
//! recorded failure with its reason. `Worker::build` wires it (as the
//! intake's `Application::build` does), `Worker::run_until_stopped` runs it.

pub mod acks;
pub mod consumer;
pub mod erasure;
pub mod housekeeping;
pub mod mail;
pub mod maintenance;
pub mod process;
pub mod retry;
pub mod senders;
pub mod settings;
pub mod sweeper;
pub mod webhooks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use verimail_domain::secrets::{Keys, SecretUrl};
use verimail_infra::amqp::Topology;
use verimail_infra::metrics_server::MetricsListener;
use verimail_infra::publisher::{Publisher, PublisherSettings, Route};

pub use process::{Next, Processor};
pub use retry::RetryPolicy;
pub use settings::WorkerSettings;

/// A worker, wired and its metrics listener bound, not running yet.
pub struct Worker {
    settings: Arc<WorkerSettings>,
    pool: PgPool,
    keys: Keys,
    transport: Arc<mail::Transport>,
    publisher: Arc<Publisher>,
    processor: Arc<Processor>,
    metrics: Option<MetricsListener>,
}

impl Worker {
    /// Binds the metrics listener (port 0 picks a free port, for tests) and
    /// sets up the mail transport; connects to nothing yet.
    pub async fn build(settings: WorkerSettings, pool: PgPool, keys: Keys) -> anyhow::Result<Self> {
        verimail_infra::metrics::install();
        start_alerted_counters_at_zero();
        let metrics =
            MetricsListener::bind(settings.metrics_listen, "worker", "VERIMAIL_METRICS_LISTEN")
                .await?;
        let transport = mail::Transport::from_url(
            settings.smtp_url.as_ref().map(SecretUrl::expose),
            &settings.outbox,
            settings.smtp_connections,
            settings.smtp_timeout,
            settings.smtp_timeout,
        )
        .context("setting up the mail transport")?
        .with_relay_cooldown(settings.smtp_cooldown);
        tracing::info!(transport = %transport, "mail transport ready");
        let dkim = &settings.mail.dkim;
        let sender_domain = settings.mail.sender.domain();
        if dkim.has_key_for(sender_domain) {
            tracing::info!(selector = dkim.selector(), domains = ?dkim.domains(), "DKIM signing");
        } else if dkim.domains().is_empty() {
            tracing::info!("DKIM signing is off (no keys in VERIMAIL_DKIM_KEYS, or it is unset)");
        } else {
            tracing::warn!(
                domain = sender_domain,
                "no DKIM key for VERIMAIL_MAIL_FROM's domain in VERIMAIL_DKIM_KEYS: mails go out unsigned"
            );
        }
        let default_domain = sender_domain.to_ascii_lowercase();
        let keyless: Vec<&str> = (settings.mail.sender_domains.iter())
            .filter(|d| *d != default_domain && !dkim.has_key_for(d))
            .collect();
        if !dkim.domains().is_empty() && !keyless.is_empty() {
            tracing::warn!(
                domains = ?keyless,
                "no DKIM key for these VERIMAIL_ALLOWED_SENDER_DOMAINS: partners' mails from them go out unsigned"
            );
        }
        let transport = Arc::new(transport);
        // Retries and re-publishes go out on a connection of their own, so a
        // consumer channel error does not take them down, and the reverse.
        let publisher = Arc::new(Publisher::new(PublisherSettings {
            url: settings.amqp_url.clone(),
            topology: Topology::new(settings.prefix.clone()),
            timeout: settings.publish_timeout,
            retry_delays: settings.retry.delay_queues(),
        }));
        let settings = Arc::new(settings);
        let processor = Arc::new(Processor::new(
            pool.clone(),
            keys.clone(),
            transport.clone(),
            settings.clone(),
        ));
        Ok(Self {
            settings,
            pool,
            keys,
            transport,
            publisher,
            processor,
            metrics,
        })
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(MetricsListener::local_addr)
    }

    /// Runs consumer, sweeper, housekeeping, maintenance timer and metrics
    /// listener until `shutdown` resolves, then drains in-flight messages.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, stopped) = watch::channel(false);
        let background = self.spawn_background(&stopped);
        let metrics = self.metrics.map(|listener| listener.spawn(&stopped));
        let consuming = consumer::run(
            self.processor,
            self.publisher,
            self.settings.clone(),
            stopped,
        );
        tokio::pin!(consuming);
        let consumed = tokio::select! {
            consumed = &mut consuming => consumed,
            () = shutdown => {
                let _ = stop.send(true);
                consuming.await
            }
        };
        for task in background {
            task.abort();
        }
        self.transport.close().await;
        consumed?;
        if let Some(metrics) = metrics {
            metrics.await.context("metrics task")??;
        }
        Ok(())
    }

    /// Sweeper, housekeeping, webhook delivery and (unless its interval is
    /// zero) maintenance.
    fn spawn_background(&self, stopped: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let settings = &self.settings;
        let schedule = sweeper::Schedule {
            interval: settings.sweep_interval,
            grace: settings.sweep_grace,
        };
        let mut tasks = vec![
            tokio::spawn(check_transport(self.transport.clone())),
            tokio::spawn(sweeper::run(
                self.pool.clone(),
                self.publisher.clone(),
                schedule,
                stopped.clone(),
            )),
            tokio::spawn(housekeeping::run(
                self.pool.clone(),
                self.transport.clone(),
                settings.sweep_interval,
                settings.outbox_retention,
                stopped.clone(),
            )),
            tokio::spawn(webhooks::run(
                self.pool.clone(),
                self.keys.clone(),
                settings.webhooks.clone(),
                stopped.clone(),
            )),
        ];
        if !settings.maintenance_interval.is_zero() {
            tasks.push(tokio::spawn(maintenance::run_every(
                self.pool.clone(),
                maintenance::Policy {
                    retention: settings.retention,
                },
                settings.maintenance_interval,
                stopped.clone(),
            )));
        }
        tasks
    }
}

/// The worker's counters that alert rules read with `increase()` or
/// `rate()`, at 0 from the start: a series that appears with its first
/// event shows Prometheus no increase, and the first takeover, dead letter
/// or failed maintenance run would go unseen.
fn start_alerted_counters_at_zero() {
    use verimail_infra::metrics as m;
    metrics::counter!(m::CLAIMS_TAKEN_OVER).increment(0);
    metrics::counter!(m::DEAD_LETTERED).increment(0);
    metrics::counter!(m::WEBHOOK_DELIVERED).increment(0);
    for reason in ["expired", "gone"] {
        metrics::counter!(m::WEBHOOK_ABANDONED, "reason" => reason).increment(0);
    }
    for outcome in ["done", "busy", "failed"] {
        metrics::counter!(m::MAINTENANCE_RUNS, "outcome" => outcome).increment(0);
    }
    verimail_infra::publisher::start_failure_counters_at_zero(&[
        Route::Dispatch,
        Route::Retry(std::time::Duration::ZERO),
        Route::Recheck(std::time::Duration::ZERO),
    ]);
}

/// The start-up check: one session set up and closed with every relay, each
/// outcome logged, so an operator sees a relay that refuses our login (or
/// cannot be reached) as soon as the worker starts. Beside the consumer, not
/// before it: a relay down at start is no reason to leave the queue unread.
async fn check_transport(transport: Arc<mail::Transport>) {
    for (relay, checked) in transport.check().await {
        match checked {
            Ok(()) => tracing::info!(relay, "start-up check: the SMTP relay works"),
            Err(e) => tracing::error!(
                relay,
                reason = e.reason(),
                "start-up check: the SMTP relay cannot send; mails go to the next relay, or wait and retry"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use verimail_domain::secrets::MasterSecret;

    use super::*;

    fn settings(outbox: &std::path::Path, metrics_listen: Option<SocketAddr>) -> WorkerSettings {
        let second = Duration::from_secs(1);
        WorkerSettings {
            amqp_url: SecretUrl::new("amqp://127.0.0.1:1"),
            prefix: "t".into(),
            publish_timeout: second,
            retry: RetryPolicy::new(vec![second], 2),
            prefetch: 1,
            lease: second * 30,
            mail: mail::MailSettings::new("t <t@example.com>".parse().expect("mailbox"), "t"),
            smtp_url: None,
            outbox: outbox.to_path_buf(),
            outbox_retention: second,
            smtp_connections: 1,
            smtp_timeout: second,
            smtp_cooldown: second,
            shutdown_grace: second,
            sweep_interval: second,
            sweep_grace: second,
            retention: second,
            maintenance_interval: Duration::ZERO,
            metrics_listen,
            webhooks: webhooks::WebhookSettings::default(),
        }
    }

    async fn build(settings: WorkerSettings) -> anyhow::Result<Worker> {
        let pool = PgPool::connect_lazy("postgres://127.0.0.1:1/none")?;
        Worker::build(settings, pool, Keys::derive(&MasterSecret::ephemeral())).await
    }

    #[tokio::test]
    async fn build_binds_the_metrics_listener_it_is_given() {
        let outbox = tempfile::tempdir().expect("tempdir");
        let any_port = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        let worker = build(settings(outbox.path(), any_port))
            .await
            .expect("builds");
        let addr = worker.metrics_addr().expect("bound");
        assert_ne!(addr.port(), 0);
        let taken = build(settings(outbox.path(), Some(addr))).await;
        let error = format!("{:#}", taken.err().expect("the port is taken"));
        assert!(
            error.starts_with(&format!("binding VERIMAIL_METRICS_LISTEN {addr}")),
            "{error}"
        );
        let without = build(settings(outbox.path(), None)).await.expect("builds");
        assert_eq!(without.metrics_addr(), None);
    }
}
