//! Webhook delivery (README, "Webhooks"): every worker drains the outbox
//! that `dispatches`' trigger fills (migrations/0019), at least once per
//! event. Deliveries run beside the mail, on tasks of their own, holding no
//! database connection while they wait on an endpoint: a slow, failing or
//! dead endpoint never delays a mail. Per endpoint, at most
//! [`PER_ENDPOINT`] deliveries are in flight in one worker, so one dead
//! endpoint cannot take the slots other partners' events need.

pub mod http;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore, watch};
use tracing::Instrument;
use uuid::Uuid;
use verimail_domain::secrets::Keys;
use verimail_domain::webhook::DeliverySchedule;
use verimail_infra::metrics as m;
use verimail_infra::store::webhook_events::{self, ClaimedEvent};

use self::http::Attempt;

/// Deliveries one worker has in flight to one endpoint at most.
pub const PER_ENDPOINT: usize = 8;
/// Deliveries one worker has in flight in all at most.
const IN_FLIGHT: usize = 64;
/// How often an idle worker looks for due events.
const POLL: Duration = Duration::from_millis(250);
/// How often the pending gauge is refreshed.
const PENDING_EVERY: Duration = Duration::from_secs(15);
/// A claim outlasts the attempt's timeout by this much before another
/// worker may take the event over.
const LEASE_MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// When failed deliveries are tried again (VERIMAIL_WEBHOOK_RETRY_SCHEDULE).
    pub schedule: DeliverySchedule,
    /// Longest one attempt may take, connection included.
    pub timeout: Duration,
    /// Endpoints over plain http and in this side's own network are
    /// delivered to (VERIMAIL_WEBHOOK_ALLOW_INSECURE, tests and compose).
    pub allow_insecure: bool,
}

impl WebhookSettings {
    pub const DEFAULT_SCHEDULE: &'static str = "5s,30s,2m,10m,1h,6h";
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        Self {
            schedule: DeliverySchedule::new(vec![
                Duration::from_secs(5),
                Duration::from_secs(30),
                minutes(2),
                minutes(10),
                minutes(60),
                minutes(360),
            ])
            .unwrap_or_else(|| unreachable!("the list is not empty")),
            timeout: Self::DEFAULT_TIMEOUT,
            allow_insecure: false,
        }
    }
}

struct Deliverer {
    pool: PgPool,
    keys: Keys,
    client: http::Client,
    settings: WebhookSettings,
    /// Deliveries in flight per partner endpoint.
    in_flight: Mutex<HashMap<Uuid, usize>>,
    finished: Notify,
}

/// Claims due events and delivers each on a task of its own until `stopped`.
/// Deliveries cut short by the stop are due again once their claim lapses.
pub async fn run(
    pool: PgPool,
    keys: Keys,
    settings: WebhookSettings,
    mut stopped: watch::Receiver<bool>,
) {
    let client = match http::Client::new(settings.timeout, settings.allow_insecure) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "webhook delivery is off");
            return;
        }
    };
    let deliverer = Arc::new(Deliverer {
        pool,
        keys,
        client,
        settings,
        in_flight: Mutex::new(HashMap::new()),
        finished: Notify::new(),
    });
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let lease = deliverer.settings.timeout + LEASE_MARGIN;
    let mut pending_counted = Instant::now() - PENDING_EVERY;
    while !*stopped.borrow() {
        if pending_counted.elapsed() >= PENDING_EVERY {
            pending_counted = Instant::now();
            match webhook_events::pending(&deliverer.pool).await {
                Ok(n) => metrics::gauge!(m::WEBHOOK_EVENTS_PENDING).set(n as f64),
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "counting pending webhook events")
                }
            }
        }
        let free = slots.available_permits();
        let claimed = if free == 0 {
            Vec::new()
        } else {
            let busy = deliverer.busy();
            let per_endpoint = PER_ENDPOINT as i64 / 2;
            webhook_events::claim(&deliverer.pool, free as i64, per_endpoint, &busy, lease)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = format!("{e:#}"), "claiming webhook events");
                    Vec::new()
                })
        };
        let full = !claimed.is_empty() && claimed.len() == free;
        let idle = claimed.is_empty();
        for event in claimed {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            deliverer.started(event.partner_id);
            let deliverer = deliverer.clone();
            tokio::spawn(async move {
                let partner = event.partner_id;
                deliverer.deliver(event).await;
                deliverer.ended(partner);
                drop(slot);
            });
        }
        if idle || full {
            tokio::select! {
                () = deliverer.finished.notified() => {}
                () = tokio::time::sleep(POLL) => {}
                _ = stopped.changed() => {}
            }
        }
    }
}

impl Deliverer {
    /// Partners with half their endpoint's share in flight: a claim adds at
    /// most the other half, so no endpoint ever has more than `PER_ENDPOINT`.
    fn busy(&self) -> Vec<Uuid> {
        let in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        in_flight
            .iter()
            .filter(|(_, n)| **n >= PER_ENDPOINT / 2)
            .map(|(partner, _)| *partner)
            .collect()
    }

    fn started(&self, partner: Uuid) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        *in_flight.entry(partner).or_default() += 1;
    }

    fn ended(&self, partner: Uuid) {
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = in_flight.get_mut(&partner) {
                *n -= 1;
                if *n == 0 {
                    in_flight.remove(&partner);
                }
            }
        }
        self.finished.notify_one();
    }

    async fn deliver(&self, event: ClaimedEvent) {
        let span = tracing::info_span!(
            "webhook delivery",
            event = %event.id,
            partner = %event.partner_id,
            kind = %event.kind,
            attempt = event.attempt,
        );
        self.attempt(event).instrument(span).await;
    }

    async fn attempt(&self, event: ClaimedEvent) {
        let attempt = self.client.attempt(&self.keys, &event).await;
        let recorded = match attempt {
            Attempt::Delivered => {
                let lag = (OffsetDateTime::now_utc() - event.created_at).as_seconds_f64();
                metrics::counter!(m::WEBHOOK_DELIVERED).increment(1);
                metrics::histogram!(m::WEBHOOK_DELIVERY_LAG).record(lag.max(0.0));
                webhook_events::delivered(&self.pool, event.id, event.attempt).await
            }
            Attempt::Gone => {
                metrics::counter!(m::WEBHOOK_FAILURES, "reason" => "gone").increment(1);
                let reason = "the endpoint answered 410 Gone";
                match webhook_events::disable_endpoint(&self.pool, event.partner_id, reason).await {
                    Ok(abandoned) => {
                        metrics::counter!(m::WEBHOOK_ABANDONED, "reason" => "gone")
                            .increment(abandoned);
                        tracing::warn!(
                            abandoned,
                            "the webhook endpoint answered 410 Gone: disabled (`verimail webhook set` enables it again)"
                        );
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Attempt::Failed { reason, detail } => {
                metrics::counter!(m::WEBHOOK_FAILURES, "reason" => reason).increment(1);
                let age = (OffsetDateTime::now_utc() - event.created_at)
                    .try_into()
                    .unwrap_or(Duration::ZERO);
                let attempt = u32::try_from(event.attempt).unwrap_or(1);
                match self.settings.schedule.next(attempt, age) {
                    Some(wait) => {
                        tracing::info!(reason, detail = %detail, retry_in = ?wait, "webhook delivery failed");
                        webhook_events::retry(&self.pool, event.id, event.attempt, wait, &detail)
                            .await
                    }
                    None => {
                        metrics::counter!(m::WEBHOOK_ABANDONED, "reason" => "expired").increment(1);
                        tracing::warn!(reason, detail = %detail, "webhook event given up: its retry window is over");
                        webhook_events::abandon(&self.pool, event.id, event.attempt, &detail).await
                    }
                }
            }
        };
        if let Err(e) = recorded {
            // The claim lapses and the event is delivered again: at least once.
            tracing::warn!(
                error = format!("{e:#}"),
                "recording a webhook delivery's outcome"
            );
        }
    }
}
