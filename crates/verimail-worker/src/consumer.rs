//! The broker side: consume with manual acks and a bounded prefetch, run
//! `Processor::process` per message concurrently, ack only after the outcome
//! is committed (in runs, with `multiple`: see `acks`), park retries in delay
//! queues, dead-letter what cannot be decoded. Reconnects by itself; on
//! shutdown it stops consuming, lets in-flight messages finish within the
//! grace period, and hands back the rest.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;
use verimail_domain::DispatchMessage;
use verimail_infra::amqp::{self, Topology};
use verimail_infra::metrics as m;
use verimail_infra::publisher::{Publisher, Route};
use verimail_infra::telemetry::trace_context;

use crate::WorkerSettings;
use crate::acks::Acks;
use crate::process::{Next, Processor};
use crate::retry::RetryPolicy;

/// Waits after an infrastructure error before the message is handed back, so
/// an outage does not become a hot redelivery loop.
const INFRA_BACKOFF: Duration = Duration::from_secs(1);

pub async fn run(
    processor: Arc<Processor>,
    publisher: Arc<Publisher>,
    settings: Arc<WorkerSettings>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let topology = Topology::new(settings.prefix.clone());
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        match session(&processor, &publisher, &settings, &topology, &mut shutdown).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "consumer session ended; reconnecting"
                );
                tokio::select! {
                    _ = tokio::time::sleep(INFRA_BACKOFF) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

/// One connection's worth of consuming. `Ok` only after a clean shutdown.
async fn session(
    processor: &Arc<Processor>,
    publisher: &Arc<Publisher>,
    settings: &Arc<WorkerSettings>,
    topology: &Topology,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let connection = amqp::connect(settings.amqp_url.expose(), Duration::from_secs(10)).await?;
    let channel = connection
        .create_channel()
        .await
        .context("opening the consumer channel")?;
    topology
        .declare(&channel, &settings.retry.delay_queues())
        .await?;
    channel
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await
        .context("setting the prefetch")?;
    let mut consumer = channel
        .basic_consume(
            topology.dispatch_queue().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("starting to consume")?;
    // Re-checks whose wait is over (a lease's end) arrive on a consumer of
    // their own, with a window of its own (the prefetch applies per consumer
    // to consumers started after it), so a backlog in the dispatch queue and
    // a full dispatch window do not hold them.
    let due_prefetch = (settings.prefetch / 4).max(1);
    channel
        .basic_qos(due_prefetch, BasicQosOptions::default())
        .await
        .context("setting the due queue's prefetch")?;
    let mut due = channel
        .basic_consume(
            topology.due_queue().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("starting to consume the due queue")?;
    tracing::info!(
        queue = topology.dispatch_queue(),
        prefetch = settings.prefetch,
        due_prefetch,
        "worker consuming"
    );

    // Finished messages held behind a slow one before they are acked singly:
    // a quarter of the prefetch window at most stays tied up that way.
    let acks = Arc::new(Acks::new(usize::from(settings.prefetch / 4)));
    let mut ack_sender = AbortOnDrop(tokio::spawn({
        let acks = acks.clone();
        async move { acks.send_until_closed().await }
    }));
    let mut in_flight = JoinSet::new();
    let mut depth_tick = tokio::time::interval(DEPTH_SAMPLE_EVERY);
    let result = loop {
        tokio::select! {
            _ = shutdown.changed() => break Ok(()),
            _ = depth_tick.tick() => sample_depths(publisher, topology).await,
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Err(error) = done {
                    tracing::error!(error = %error, "a message task panicked");
                }
            }
            delivery = futures_util::future::select(consumer.next(), due.next()) => match delivery.factor_first().0 {
                Some(Ok(delivery)) => {
                    acks.open(delivery.delivery_tag);
                    let processor = processor.clone();
                    let publisher = publisher.clone();
                    let settings = settings.clone();
                    let acks = acks.clone();
                    let span = trace_context::delivery_span(delivery.properties.headers().as_ref());
                    in_flight.spawn(async move { handle(&processor, &publisher, &settings.retry, &acks, delivery).await }.instrument(span));
                }
                Some(Err(error)) => break Err(anyhow::Error::from(error).context("consuming")),
                None => break Err(anyhow::anyhow!("the broker ended the consumer")),
            },
        }
    };

    if result.is_ok() {
        // Stop new deliveries, then let the ones in hand finish.
        for tag in [consumer.tag(), due.tag()] {
            let _ = channel
                .basic_cancel(tag, BasicCancelOptions::default())
                .await;
        }
        let drained = tokio::time::timeout(settings.shutdown_grace, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = in_flight.len(),
                "grace period over; unfinished messages go back to the queue"
            );
            in_flight.abort_all();
        }
        // Every finished message's ack goes out before the channel closes;
        // aborted ones stay unacked and are delivered again.
        acks.close();
        if tokio::time::timeout(ACK_FLUSH_GRACE, &mut ack_sender.0)
            .await
            .is_err()
        {
            tracing::warn!("the last acks were not sent in time; those messages come back");
        }
        let _ = channel.close(200, "shutdown".into()).await;
        let _ = connection.close(200, "shutdown".into()).await;
        tracing::info!("worker stopped consuming");
    } else {
        // The broker went away, not the work: tasks finish their send and
        // record the outcome (their acks fail; the redelivered messages then
        // find the dispatch final or leased). Aborting them would forget
        // mails SMTP had already accepted.
        in_flight.detach_all();
    }
    result
}

/// The ack sender ends with its session, however the session ends (a
/// worker task aborted from outside included).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a shutdown waits for the last acks to be sent.
const ACK_FLUSH_GRACE: Duration = Duration::from_secs(5);

async fn handle(
    processor: &Processor,
    publisher: &Publisher,
    retry: &RetryPolicy,
    acks: &Acks,
    delivery: Delivery,
) {
    let Err(error) = handle_inner(processor, publisher, retry, acks, &delivery).await else {
        return;
    };
    tracing::error!(
        error = format!("{error:#}"),
        "processing failed; the message will be delivered again"
    );
    // Parked for a re-check rather than requeued: a requeue counts as a
    // delivery, and quorum queues dead-letter a message after their delivery
    // limit (20 by default on RabbitMQ 4), which a long Postgres outage would
    // reach with valid dispatches.
    if let Ok(message) = DispatchMessage::decode(&delivery.data) {
        let parked = publisher
            .publish(message.dispatch_id, Route::Recheck(INFRA_BACKOFF))
            .await;
        if parked.is_ok() {
            acks.finished(delivery.delivery_tag, delivery.acker.clone());
            return;
        }
    }
    tokio::time::sleep(INFRA_BACKOFF).await;
    let requeue = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    match delivery.nack(requeue).await {
        Ok(_) => acks.settled(delivery.delivery_tag),
        // Left unsettled in the window too, so no multiple ack covers it.
        Err(error) => {
            tracing::warn!(error = %error, "nack failed; the broker will redeliver on reconnect")
        }
    }
}

async fn handle_inner(
    processor: &Processor,
    publisher: &Publisher,
    retry: &RetryPolicy,
    acks: &Acks,
    delivery: &Delivery,
) -> anyhow::Result<()> {
    let message = match DispatchMessage::decode(&delivery.data) {
        Ok(message) => message,
        Err(error) => return dead_letter(acks, delivery, &error.to_string()).await,
    };
    let next = processor.process(message.dispatch_id).await?;
    // A waiting sender hears of the first attempt once its outcome is
    // recorded: sent or failed (Ack), or to be retried (Park).
    if matches!(next, Next::Ack | Next::Park(_)) && awaited(delivery) {
        processor.announce_first_attempt(message.dispatch_id).await;
    }
    match next {
        Next::Ack => {}
        Next::Park(wait) => {
            // Parked in the delay queue that waits at least `wait`; it
            // dead-letters back to the dispatch queue when its TTL runs out.
            let delay = retry.queue_for(wait);
            publisher
                .publish(message.dispatch_id, Route::Retry(delay))
                .await
                .context("parking for retry")?;
        }
        Next::Recheck(wait) => {
            publisher
                .publish(message.dispatch_id, Route::Recheck(wait))
                .await
                .context("parking for a re-check")?;
        }
        Next::DeadLetter(reason) => return dead_letter(acks, delivery, &reason).await,
    }
    acks.finished(delivery.delivery_tag, delivery.acker.clone());
    Ok(())
}

/// Whether the message's sender waits for its first attempt.
fn awaited(delivery: &Delivery) -> bool {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(amqp::AWAITED_HEADER))
        .is_some_and(|value| matches!(value, lapin::types::AMQPValue::Boolean(true)))
}

/// How often the queue depths (the backlog workers have not taken yet) are sampled.
const DEPTH_SAMPLE_EVERY: Duration = Duration::from_secs(5);

async fn sample_depths(publisher: &Publisher, topology: &Topology) {
    for queue in [
        topology.dispatch_queue(),
        topology.due_queue(),
        topology.dead_queue(),
    ] {
        if let Ok(count) = publisher.message_count(&queue).await {
            metrics::gauge!(m::QUEUE_DEPTH, "queue" => queue).set(f64::from(count));
        }
    }
}

async fn dead_letter(acks: &Acks, delivery: &Delivery, reason: &str) -> anyhow::Result<()> {
    tracing::warn!(reason, "message sent to the dead-letter queue");
    metrics::counter!(m::DEAD_LETTERED).increment(1);
    // The dispatch queue's dead-letter exchange takes it; it is never requeued.
    let options = BasicNackOptions {
        requeue: false,
        ..Default::default()
    };
    delivery.nack(options).await.context("dead-lettering")?;
    acks.settled(delivery.delivery_tag);
    Ok(())
}
