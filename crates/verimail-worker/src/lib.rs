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
pub mod settings;
pub mod sweeper;

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
use verimail_infra::publisher::{Publisher, PublisherSettings};

pub use process::{Next, Processor};
pub use retry::RetryPolicy;
pub use settings::WorkerSettings;

/// A worker, wired and its metrics listener bound, not running yet.
pub struct Worker {
    settings: Arc<WorkerSettings>,
    pool: PgPool,
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
        .context("setting up the mail transport")?;
        tracing::info!(transport = %transport, "mail transport ready");
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
            keys,
            transport.clone(),
            settings.clone(),
        ));
        Ok(Self {
            settings,
            pool,
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

    /// Sweeper, housekeeping and (unless its interval is zero) maintenance.
    fn spawn_background(&self, stopped: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let settings = &self.settings;
        let schedule = sweeper::Schedule {
            interval: settings.sweep_interval,
            grace: settings.sweep_grace,
        };
        let mut tasks = vec![
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
            shutdown_grace: second,
            sweep_interval: second,
            sweep_grace: second,
            retention: second,
            maintenance_interval: Duration::ZERO,
            metrics_listen,
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
