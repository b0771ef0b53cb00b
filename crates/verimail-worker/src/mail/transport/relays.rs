//! Several SMTP relays, tried in order, each behind a circuit breaker.
//!
//! A transient failure on one relay (refused or timed-out connection, a
//! failed handshake or login, a 4xx reply) sends the same message, byte for
//! byte (so with the same Message-ID), through the next one at once, within
//! the same attempt. A permanent reply (5xx to MAIL, RCPT or DATA) is about
//! the message, and another relay would only say it again: it ends the send.
//! A relay that failed `OPEN_AFTER` sends in a row is skipped for the
//! cool-down, then one send probes it; the breaker's state is this worker's
//! own.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use verimail_infra::metrics as m;

use super::error::SendError;
use super::pool::Pool;

/// Transient failures in a row after which a relay is skipped.
const OPEN_AFTER: u32 = 3;

/// `VERIMAIL_SMTP_COOLDOWN`'s default.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);

pub(super) struct Relay {
    pub(super) pool: Pool,
    /// `host:port`, for `last_error`, logs and the metrics' `relay` label:
    /// never the credentials.
    pub(super) label: String,
    breaker: Mutex<Breaker>,
}

#[derive(Default)]
struct Breaker {
    failures: u32,
    /// Set while the relay is skipped (and after, until a probe ends).
    open_until: Option<Instant>,
    /// A send is probing the relay after its cool-down.
    probing: bool,
}

/// Whether a send may use a relay now.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Yes,
    /// The cool-down is over and this send is the one probe.
    Probe,
    No,
}

impl Relay {
    pub(super) fn new(pool: Pool) -> Self {
        let label = pool.config().relay();
        Self {
            pool,
            label,
            breaker: Mutex::new(Breaker::default()),
        }
    }

    fn breaker(&self) -> MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn admit(&self, now: Instant) -> Admit {
        let mut b = self.breaker();
        match b.open_until {
            None => Admit::Yes,
            Some(until) if now < until || b.probing => Admit::No,
            Some(_) => {
                b.probing = true;
                Admit::Probe
            }
        }
    }

    /// A reply from the relay, good or bad for the message: the relay works.
    fn worked(&self) {
        let mut b = self.breaker();
        if b.open_until.is_some() {
            tracing::info!(relay = %self.label, "SMTP relay works again; using it");
            metrics::gauge!(m::SMTP_RELAY_SKIPPED, "relay" => self.label.clone()).set(0.0);
        }
        *b = Breaker::default();
    }

    fn failed(&self, now: Instant, cooldown: Duration, reason: &str) {
        let mut b = self.breaker();
        b.failures += 1;
        let probe_failed = b.probing;
        b.probing = false;
        if b.failures >= OPEN_AFTER || probe_failed {
            if b.open_until.is_none() {
                tracing::warn!(
                    relay = %self.label,
                    failures = b.failures,
                    reason,
                    cooldown = ?cooldown,
                    "SMTP relay failed repeatedly; skipping it for the cool-down"
                );
                metrics::gauge!(m::SMTP_RELAY_SKIPPED, "relay" => self.label.clone()).set(1.0);
            }
            b.open_until = Some(now + cooldown);
        }
    }
}

pub(super) struct Relays {
    pub(super) list: Vec<Relay>,
    pub(super) cooldown: Duration,
}

impl Relays {
    /// One attempt: the relays in order, skipping those cooling down (unless
    /// every one is: then all are tried, rather than none).
    pub(super) async fn send(&self, envelope: &Envelope, message: &[u8]) -> Result<(), SendError> {
        let now = Instant::now();
        let admitted: Vec<&Relay> = self
            .list
            .iter()
            .filter(|r| r.admit(now) != Admit::No)
            .collect();
        let order = if admitted.is_empty() {
            self.list.iter().collect()
        } else {
            admitted
        };
        let mut last = None;
        for relay in order {
            let sent = relay.pool.send(envelope, message).await;
            let result = match &sent {
                Ok(()) => "ok",
                Err(SendError::Transient(_)) => "transient",
                Err(SendError::Permanent(_)) => "permanent",
            };
            metrics::counter!(m::SMTP_RELAY_SENDS, "relay" => relay.label.clone(), "result" => result)
                .increment(1);
            match sent {
                Ok(()) => {
                    relay.worked();
                    return Ok(());
                }
                Err(SendError::Permanent(reason)) => {
                    relay.worked();
                    return Err(SendError::Permanent(format!("{}: {reason}", relay.label)));
                }
                Err(SendError::Transient(reason)) => {
                    relay.failed(Instant::now(), self.cooldown, &reason);
                    tracing::debug!(relay = %relay.label, reason, "SMTP relay failed; trying the next");
                    last = Some(SendError::Transient(format!("{}: {reason}", relay.label)));
                }
            }
        }
        Err(last.unwrap_or_else(|| SendError::Transient("no SMTP relay configured".to_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::transport::config::SmtpConfig;

    fn relay() -> Relay {
        let config = SmtpConfig::parse("smtp://127.0.0.1:1").expect("url");
        let second = Duration::from_secs(1);
        Relay::new(Pool::new(config, 1, second, second))
    }

    #[test]
    fn a_relay_is_skipped_after_failures_in_a_row_then_probed_once() {
        let relay = relay();
        let cooldown = Duration::from_secs(30);
        let t0 = Instant::now();
        for _ in 0..OPEN_AFTER - 1 {
            relay.failed(t0, cooldown, "x");
            assert_eq!(relay.admit(t0), Admit::Yes);
        }
        relay.failed(t0, cooldown, "x");
        assert_eq!(relay.admit(t0), Admit::No);
        assert_eq!(relay.admit(t0 + cooldown / 2), Admit::No);

        let later = t0 + cooldown;
        assert_eq!(relay.admit(later), Admit::Probe);
        assert_eq!(relay.admit(later), Admit::No, "one probe at a time");
        relay.failed(later, cooldown, "x");
        assert_eq!(relay.admit(later), Admit::No, "a failed probe opens again");
        assert_eq!(relay.admit(later + cooldown), Admit::Probe);
        relay.worked();
        assert_eq!(relay.admit(later + cooldown), Admit::Yes);
    }

    #[test]
    fn a_success_between_failures_resets_the_count() {
        let relay = relay();
        let t0 = Instant::now();
        for _ in 0..3 * OPEN_AFTER {
            relay.failed(t0, DEFAULT_COOLDOWN, "x");
            relay.failed(t0, DEFAULT_COOLDOWN, "x");
            relay.worked();
        }
        assert_eq!(relay.admit(t0), Admit::Yes);
    }
}
