//! Typed settings of the intake; the binary fills them from the environment,
//! tests build them directly.

use std::net::SocketAddr;
use std::time::Duration;

pub use verimail_domain::RateLimit;

#[derive(Debug, Clone)]
pub struct AmqpSettings {
    pub url: verimail_domain::secrets::SecretUrl,
    pub prefix: String,
    pub publish_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct IntakeSettings {
    pub listen: SocketAddr,
    /// Where Prometheus `/metrics` is served (not on the API port); `None`
    /// serves none.
    pub metrics_listen: Option<SocketAddr>,
    pub amqp: AmqpSettings,
    pub rate_limit: RateLimit,
    pub code_length: usize,
    /// How long a verified credential is trusted without asking Postgres:
    /// the bound on how late a revocation or suspension takes effect.
    pub auth_cache_ttl: Duration,
    /// How long after recording a dispatch the intake may still record its
    /// hand-off as failed (CBC.99004003): at least the publish timeout plus
    /// the time the failure record may take. Past it, the dispatch is mailed.
    pub handoff_window: Duration,
    pub http: crate::serve::HttpLimits,
    /// Dispatch messages waiting for a worker above which sends are shed
    /// (503, `Retry-After`); `None` never sheds.
    pub max_backlog: Option<u64>,
}
