//! Typed settings of the worker; the binary fills them from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use verimail_domain::secrets::SecretUrl;

use crate::mail::MailSettings;
use crate::retry::RetryPolicy;
use crate::webhooks::WebhookSettings;

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub amqp_url: SecretUrl,
    pub prefix: String,
    /// Longest wait for the broker's confirm of a retry or a re-publish.
    pub publish_timeout: Duration,
    /// Waits between SMTP attempts, attempts in all, and the delay queues
    /// that hold the waits.
    pub retry: RetryPolicy,
    pub prefetch: u16,
    /// How long a claim protects a dispatch in `sending` from other workers.
    pub lease: Duration,
    pub mail: MailSettings,
    pub smtp_url: Option<SecretUrl>,
    pub outbox: PathBuf,
    /// How long `.eml` files stay in the outbox.
    pub outbox_retention: Duration,
    pub smtp_connections: usize,
    pub smtp_timeout: Duration,
    /// How long a relay that failed several sends in a row is skipped.
    pub smtp_cooldown: Duration,
    pub shutdown_grace: Duration,
    /// How often open dispatches whose message may be gone are re-published
    /// (and old `.eml` files and send answers pruned).
    pub sweep_interval: Duration,
    /// How overdue an open dispatch must be before the sweeper acts.
    pub sweep_grace: Duration,
    /// Dispatch rows older than this go, a whole partition at a time.
    pub retention: Duration,
    /// How often this worker runs maintenance (zero: never).
    pub maintenance_interval: Duration,
    /// Where `/metrics` is served (port 0 picks a free port); `None`: not
    /// by the worker (`verimail all` serves the intake's only).
    pub metrics_listen: Option<SocketAddr>,
    /// Delivery of the webhook outbox.
    pub webhooks: WebhookSettings,
}
