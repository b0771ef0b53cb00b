//! Typed settings of the intake; the binary fills them from the environment,
//! tests build them directly.

use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_hour: u32,
    pub per_day: u32,
}

impl RateLimit {
    pub const DEFAULT: Self = Self {
        per_hour: 15,
        per_day: 60,
    };

    /// `"15/60"`: sends per recipient per rolling hour / per rolling day.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (hour, day) = s.split_once('/').ok_or("expected HOUR/DAY, like 15/60")?;
        let parse = |v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| "expected HOUR/DAY, like 15/60".to_owned())
        };
        let limit = Self {
            per_hour: parse(hour)?,
            per_day: parse(day)?,
        };
        if limit.per_hour == 0 || limit.per_day < limit.per_hour {
            return Err("need 0 < HOUR <= DAY".into());
        }
        Ok(limit)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse_and_refuse_nonsense() {
        assert_eq!(RateLimit::parse("15/60"), Ok(RateLimit::DEFAULT));
        for bad in ["15", "a/b", "0/10", "20/10", "-1/5"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
    }
}
