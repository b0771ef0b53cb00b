//! Prometheus metrics: one recorder per process, names in one place.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "verimail_http_requests_total";
pub const HTTP_DURATION: &str = "verimail_http_request_duration_seconds";
pub const PUBLISH_DURATION: &str = "verimail_publish_duration_seconds";
pub const PUBLISH_FAILURES: &str = "verimail_publish_failures_total";
pub const DISPATCHES_FINISHED: &str = "verimail_dispatches_finished_total";
pub const SMTP_DURATION: &str = "verimail_smtp_send_duration_seconds";
pub const SMTP_RETRIES: &str = "verimail_smtp_retries_total";
/// SMTP sends per relay (`host:port`) and result (ok, transient, permanent).
pub const SMTP_RELAY_SENDS: &str = "verimail_smtp_relay_sends_total";
/// 1 while a relay is skipped for its cool-down, by relay.
pub const SMTP_RELAY_SKIPPED: &str = "verimail_smtp_relay_skipped";
/// Mails rendered without a DKIM signature (no key for their From domain).
pub const MAILS_UNSIGNED: &str = "verimail_mails_unsigned_total";
pub const DEAD_LETTERED: &str = "verimail_dead_lettered_total";
pub const CLAIM_LAG: &str = "verimail_dispatch_claim_lag_seconds";
pub const QUEUE_DEPTH: &str = "verimail_queue_depth";
/// Connections opened to RabbitMQ, by node (`host:port`): which node of a
/// cluster a process went to, and how often it had to.
pub const AMQP_CONNECTS: &str = "verimail_amqp_connections_total";
/// Times a process moved its Postgres pool to another host of `DATABASE_URL`.
pub const DB_FAILOVERS: &str = "verimail_db_failovers_total";
/// 1 for the Postgres host (`host:port`) the pool connects to now, 0 for the others.
pub const DB_HOST: &str = "verimail_db_host";
pub const SWEPT: &str = "verimail_swept_total";
pub const MAINTENANCE_RUNS: &str = "verimail_maintenance_runs_total";
pub const PARTITIONS_CREATED: &str = "verimail_partitions_created_total";
pub const PARTITIONS_DROPPED: &str = "verimail_partitions_dropped_total";
/// Seconds from now to the end of the partitions ready for new dispatches.
pub const PARTITIONS_AHEAD: &str = "verimail_partitions_ready_ahead_seconds";
/// The end of the partitions ready for new dispatches, as Unix time: unlike
/// `PARTITIONS_AHEAD`, an alert can count it down when no run sets it again.
pub const PARTITIONS_READY_UNTIL: &str = "verimail_partitions_ready_until_timestamp_seconds";
/// Sends answered 503 without being recorded, by `reason` (`backlog`,
/// `connections`).
pub const SHED: &str = "verimail_shed_total";
/// The intake's `VERIMAIL_MAX_BACKLOG`, so alerts compare the depth with it.
pub const BACKLOG_LIMIT: &str = "verimail_backlog_limit";
/// Claims of a dispatch whose previous claim's lease had run out.
pub const CLAIMS_TAKEN_OVER: &str = "verimail_claims_taken_over_total";
/// Age of the oldest dispatch still waiting for its first claim.
pub const OLDEST_QUEUED: &str = "verimail_oldest_queued_dispatch_age_seconds";
/// Webhook events neither delivered nor given up (issue 24).
pub const WEBHOOK_EVENTS_PENDING: &str = "verimail_webhook_events_pending";
/// Webhook events an endpoint answered 2xx for.
pub const WEBHOOK_DELIVERED: &str = "verimail_webhook_events_delivered_total";
/// Failed delivery attempts, by `reason` (timeout, connect, http_5xx,
/// http_status, gone, refused_address, unresolved, …).
pub const WEBHOOK_FAILURES: &str = "verimail_webhook_delivery_failures_total";
/// Webhook events given up, by `reason`: `expired` (retry window over) or
/// `gone` (the endpoint answered 410 and was disabled).
pub const WEBHOOK_ABANDONED: &str = "verimail_webhook_events_abandoned_total";
/// From the state change that made an event to its 2xx.
pub const WEBHOOK_DELIVERY_LAG: &str = "verimail_webhook_delivery_lag_seconds";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const LAG_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// This process's metrics in the text format.
pub fn render() -> String {
    install().render()
}

/// Installs the process-wide recorder once and returns the handle that
/// renders the text format. Later calls return the same handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(CLAIM_LAG.into()), LAG_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(WEBHOOK_DELIVERY_LAG.into()),
                        LAG_BUCKETS,
                    )
                });
            match builder {
                Ok(builder) => {
                    let recorder = builder.build_recorder();
                    let handle = recorder.handle();
                    // Another recorder may already be installed (by an embedding
                    // program); ours then renders nothing, which is harmless.
                    let _ = metrics::set_global_recorder(recorder);
                    handle
                }
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}
