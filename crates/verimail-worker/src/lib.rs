//! The worker: turns queued dispatch ids into exactly one mail each, or a
//! recorded failure with its reason.

pub mod acks;
pub mod consumer;
pub mod erasure;
pub mod mail;
pub mod maintenance;
pub mod process;
pub mod settings;
pub mod sweeper;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use sqlx::PgPool;
use tokio::sync::watch;
use verimail_domain::secrets::{Keys, SecretUrl};
use verimail_infra::amqp::Topology;
use verimail_infra::publisher::{Publisher, PublisherSettings};

pub use process::{Next, Processor};
pub use settings::WorkerSettings;

/// Runs consumer and sweeper until `shutdown` resolves, then drains.
pub async fn run(
    settings: WorkerSettings,
    pool: PgPool,
    keys: Keys,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    run_until(settings, pool, keys, stopped).await
}

/// Like `run`, stopped through a watch channel (for tests and `verimail all`).
pub async fn run_until(
    settings: WorkerSettings,
    pool: PgPool,
    keys: Keys,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let transport = mail::Transport::from_url(
        settings.smtp_url.as_ref().map(SecretUrl::expose),
        &settings.outbox,
        settings.smtp_connections,
        settings.smtp_timeout,
        settings.smtp_timeout,
    )
    .context("setting up the mail transport")?;
    tracing::info!(transport = %transport, "mail transport ready");
    // Retries and re-publishes go out on a connection of their own, so a
    // consumer channel error does not take them down, and the reverse.
    let publisher = Arc::new(Publisher::new(PublisherSettings {
        url: settings.amqp_url.clone(),
        topology: Topology::new(settings.prefix.clone()),
        timeout: settings.publish_timeout,
        retry_delays: settings.retry_delays.clone(),
    }));
    let processor = Arc::new(Processor::new(pool, keys, transport, Arc::new(settings)));
    let sweeper = tokio::spawn(sweeper::run(
        processor.clone(),
        publisher.clone(),
        stopped.clone(),
    ));
    let maintenance = (!processor.settings.maintenance_interval.is_zero()).then(|| {
        tokio::spawn(maintenance::run_every(
            processor.pool.clone(),
            maintenance::Policy {
                retention: processor.settings.retention,
            },
            processor.settings.maintenance_interval,
            stopped.clone(),
        ))
    });
    let result = consumer::run(processor.clone(), publisher, stopped).await;
    sweeper.abort();
    if let Some(maintenance) = maintenance {
        maintenance.abort();
    }
    processor.transport.close().await;
    result
}
