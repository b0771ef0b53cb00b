//! Safety net for "nothing 204'd is lost": re-publishes open dispatches
//! whose message should have been handled long ago (an intake that died
//! between commit and publish, a lease that ran out). Duplicates are harmless
//! because claiming is atomic.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use tokio::sync::watch;
use verimail_core::DispatchMessage;
use verimail_core::amqp::{self, DISPATCH_ROUTING_KEY, Topology};

use crate::process::Processor;
use crate::store;

const BATCH: i64 = 500;

pub async fn run(processor: Arc<Processor>, mut shutdown: watch::Receiver<bool>) {
    let settings = processor.settings.clone();
    let topology = Topology::new(settings.prefix.clone());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(settings.sweep_interval) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(error) = sweep(&processor, &topology).await {
            tracing::warn!(error = format!("{error:#}"), "sweep failed; will try again");
        }
    }
}

pub async fn sweep(processor: &Processor, topology: &Topology) -> anyhow::Result<usize> {
    let settings = &processor.settings;
    let ids = store::overdue(&processor.pool, settings.sweep_grace, BATCH).await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let connection = amqp::connect(&settings.amqp_url, Duration::from_secs(10)).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    for id in &ids {
        let properties = amqp::dispatch_properties(*id);
        channel
            .basic_publish(
                topology.dispatch_exchange().into(),
                DISPATCH_ROUTING_KEY.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &DispatchMessage::new(*id).encode(),
                properties,
            )
            .await?;
    }
    channel.wait_for_confirms().await?;
    let _ = connection.close(200, "sweep done".into()).await;
    tracing::info!(count = ids.len(), "re-published overdue dispatches");
    Ok(ids.len())
}
