//! Typed settings of the worker; the binary fills them from the environment.

use std::path::PathBuf;
use std::time::Duration;

use verimail_domain::secrets::SecretUrl;

use crate::mail::MailSettings;

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub amqp_url: SecretUrl,
    pub prefix: String,
    /// Longest wait for the broker's confirm of a retry or a re-publish.
    pub publish_timeout: Duration,
    /// Waits between SMTP attempts: the n-th retry waits `retry_delays[n-1]`
    /// (the last entry repeats).
    pub retry_delays: Vec<Duration>,
    pub max_attempts: u32,
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
    pub shutdown_grace: Duration,
    /// How often open dispatches whose message may be gone are re-published.
    pub sweep_interval: Duration,
    /// How overdue an open dispatch must be before the sweeper acts.
    pub sweep_grace: Duration,
    /// Dispatch rows older than this go, a whole partition at a time.
    pub retention: Duration,
    /// How often this worker runs maintenance (zero: never).
    pub maintenance_interval: Duration,
}

impl WorkerSettings {
    /// The wait before the attempt after `attempts` failed ones.
    pub fn retry_delay(&self, attempts: u32) -> Duration {
        let index = (attempts.max(1) as usize - 1).min(self.retry_delays.len().saturating_sub(1));
        self.retry_delays
            .get(index)
            .copied()
            .unwrap_or(Duration::from_secs(5))
    }

    /// The declared delay queue to park a message in for at least `wait`.
    pub fn park_delay(&self, wait: Duration) -> Duration {
        let mut delays = self.retry_delays.clone();
        delays.sort();
        delays
            .iter()
            .copied()
            .find(|d| *d >= wait)
            .or(delays.last().copied())
            .unwrap_or(wait)
    }
}
