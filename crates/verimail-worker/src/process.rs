//! The worker's core: one dispatch id in, one recorded outcome out. A plain
//! async function over Postgres and the mail transport, so tests can call it
//! without a broker; the consumer only decodes, calls it and acks.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;
use verimail_domain::DispatchStatus;
use verimail_domain::secrets::Keys;
use verimail_infra::metrics as m;
use verimail_infra::telemetry::trace_context;

use crate::WorkerSettings;
use crate::mail::{self, CodeMail, SendError, Transport};
use crate::retry::RetryPolicy;
use crate::senders::{SENDER_TTL, Senders};
use verimail_infra::store::dispatches::{self as store, Claim, ClaimToken, Claimed, Outcome};

/// What the consumer does with the message once the outcome is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Ack,
    /// Re-deliver after at least this long (through a delay queue), then ack.
    Park(Duration),
    /// Look again after about this long (the end of another worker's lease,
    /// or of a newer code's hand-off), then ack.
    Recheck(Duration),
    /// Not processable: send to the dead-letter queue.
    DeadLetter(String),
}

pub struct Processor {
    pool: PgPool,
    keys: Keys,
    transport: Arc<Transport>,
    settings: Arc<WorkerSettings>,
    /// Claims and outcomes, group-committed across concurrent `process` calls.
    writes: store::Writes,
    /// Each partner's sender, kept for a few seconds.
    senders: Senders,
}

/// Backoff between tries of an outcome write that failed (Postgres away).
const RECORD_BACKOFF: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
];

/// How long an outcome write is retried before the worker gives up and lets
/// the message go back to the queue (the lease then ends, and another worker
/// may send again: only an outage longer than this can cause that).
pub const RECORD_PATIENCE: Duration = Duration::from_secs(300);

impl Processor {
    /// Needs a Tokio runtime: the group-commit writers run as tasks.
    pub fn new(
        pool: PgPool,
        keys: Keys,
        transport: Arc<Transport>,
        settings: Arc<WorkerSettings>,
    ) -> Self {
        let writes = store::Writes::new(&pool, settings.lease);
        let senders = Senders::new(pool.clone(), &settings.mail, SENDER_TTL);
        Self {
            pool,
            keys,
            transport,
            settings,
            writes,
            senders,
        }
    }

    /// Tells the intake waiting for this dispatch (`Prefer: wait`) that its
    /// first attempt's outcome is recorded. Best effort: the intake reads
    /// the dispatch itself when its wait runs out.
    pub async fn announce_first_attempt(&self, id: Uuid) {
        if let Err(error) = store::awaited::announce(&self.pool, id).await {
            tracing::warn!(error = format!("{error:#}"), dispatch_id = %id, "announcing the first attempt failed");
        }
    }

    #[tracing::instrument(skip_all, fields(dispatch_id = %id))]
    pub async fn process(&self, id: Uuid) -> anyhow::Result<Next> {
        let claim = self.writes.claim(id).await?;
        let (outcome, token) = match claim {
            Claim::Mine(claimed, token) => {
                if claimed.taken_over {
                    metrics::counter!(m::CLAIMS_TAKEN_OVER).increment(1);
                    tracing::info!("took over a dispatch whose lease had run out");
                }
                // The lease is renewed while the send and its record are in
                // progress, so it outlives any wait for an SMTP connection.
                let work = async {
                    let outcome = self.attempt_and_decide(id, &claimed).await;
                    let recorded = self.record(id, token, &outcome).await;
                    (outcome, recorded)
                };
                let (outcome, recorded) = self.holding_lease(id, token, work).await;
                return self.after_record(outcome, recorded?);
            }
            Claim::Undecodable(reason, token) => {
                tracing::error!(reason, "the stored dispatch cannot be mailed");
                (Outcome::Failed(reason), token)
            }
            Claim::Finished(status) => {
                tracing::debug!(
                    status = status.as_str(),
                    "already finished; duplicate message"
                );
                return Ok(Next::Ack);
            }
            Claim::Expired => return Ok(ended_without_mail(DispatchStatus::Expired)),
            Claim::Superseded => return Ok(ended_without_mail(DispatchStatus::Superseded)),
            Claim::Leased(wait) | Claim::Held(wait) => return Ok(Next::Recheck(wait)),
            Claim::Missing => return Ok(Next::DeadLetter("no such dispatch".into())),
        };
        let recorded = self.record(id, token, &outcome).await?;
        self.after_record(outcome, recorded)
    }

    /// Runs `work` while renewing the claim's lease every third of it.
    async fn holding_lease<T>(
        &self,
        id: Uuid,
        token: ClaimToken,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let lease = self.settings.lease;
        let renew = async {
            let mut lost = false;
            loop {
                tokio::time::sleep(lease / 3).await;
                match store::renew(&self.pool, id, token, lease).await {
                    Ok(true) => {}
                    Ok(false) if !lost => {
                        lost = true;
                        tracing::warn!("the claim was taken over while sending");
                    }
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(error = format!("{error:#}"), "renewing the lease failed")
                    }
                }
            }
        };
        tokio::select! {
            done = work => done,
            never = renew => never,
        }
    }

    /// Writes the outcome, retrying while Postgres is away: an accepted mail
    /// must not be forgotten. `Ok(false)`: the claim was taken over (or the
    /// code used), and the write was refused.
    async fn record(&self, id: Uuid, token: ClaimToken, outcome: &Outcome) -> anyhow::Result<bool> {
        let started = tokio::time::Instant::now();
        let mut tries = 0usize;
        loop {
            match self.writes.finish(id, token, outcome).await {
                Ok(recorded) => return Ok(recorded),
                Err(error) if started.elapsed() < RECORD_PATIENCE => {
                    if tries == 0 {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "recording the outcome failed; retrying"
                        );
                    }
                    let pause = RECORD_BACKOFF[tries.min(RECORD_BACKOFF.len() - 1)];
                    tries += 1;
                    tokio::time::sleep(pause).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn after_record(&self, outcome: Outcome, recorded: bool) -> anyhow::Result<Next> {
        if !recorded {
            tracing::warn!(
                "the dispatch changed while sending (claim taken over, or the code was already used); outcome not recorded"
            );
            return Ok(Next::Ack);
        }
        let status = outcome.status();
        if status.is_terminal() {
            metrics::counter!(m::DISPATCHES_FINISHED, "status" => status.as_str()).increment(1);
        } else {
            metrics::counter!(m::SMTP_RETRIES).increment(1);
        }
        match outcome {
            Outcome::Sent => {
                tracing::debug!("mail sent");
                Ok(Next::Ack)
            }
            Outcome::Retry { reason, after } => {
                tracing::warn!(retry_in = ?after, reason, "transient failure; will retry");
                Ok(Next::Park(after))
            }
            Outcome::Failed(reason) | Outcome::Expired(reason) => {
                tracing::warn!(reason, "dispatch ended without a mail");
                Ok(Next::Ack)
            }
        }
    }

    async fn attempt_and_decide(&self, id: Uuid, claimed: &Claimed) -> Outcome {
        if claimed.attempts == 1 {
            // How long the first claim came after the request: the consumer lag.
            let lag = (OffsetDateTime::now_utc() - claimed.created_at)
                .as_seconds_f64()
                .max(0.0);
            metrics::histogram!(m::CLAIM_LAG).record(lag);
        }
        tracing::debug!(
            attempts = claimed.attempts,
            to = verimail_infra::telemetry::redact(claimed.email.as_str()),
            "sending"
        );
        match self.attempt(id, claimed).await {
            Ok(()) => Outcome::Sent,
            Err(SendError::Permanent(reason)) => Outcome::Failed(reason),
            Err(SendError::Transient(reason)) => after_transient(
                &self.settings.retry,
                reason,
                claimed.attempts,
                OffsetDateTime::now_utc(),
                claimed.expires_at,
            ),
        }
    }

    async fn attempt(&self, id: Uuid, claimed: &Claimed) -> Result<(), SendError> {
        let sender = self.senders.of(claimed.partner_id).await.map_err(|error| {
            SendError::Transient(format!("the partner's sender could not be read: {error:#}"))
        })?;
        let code = self.keys.open_code(id, &claimed.code_sealed).map_err(|_| {
            tracing::error!("cannot open the sealed code: does this worker share VERIMAIL_SECRET with the intake?");
            SendError::Transient("the sealed code could not be opened (VERIMAIL_SECRET mismatch?)".into())
        })?;
        let mail = CodeMail {
            dispatch_id: id,
            to: claimed.email.as_str(),
            lang: claimed.lang,
            code: code.expose(),
            valid_minutes: claimed.ttl.minutes(),
        };
        let message = mail::render_as(&self.settings.mail, &sender, &mail)
            .map_err(|e| SendError::Permanent(format!("the mail could not be rendered: {e}")))?;
        drop(code);
        let started = std::time::Instant::now();
        let span = if trace_context::is_exporting() {
            tracing::info_span!("smtp send", otel.kind = "client")
        } else {
            tracing::Span::none()
        };
        let sent = self.transport.send(&message).instrument(span).await;
        let result = match &sent {
            Ok(()) => "ok",
            Err(SendError::Transient(_)) => "transient",
            Err(SendError::Permanent(_)) => "permanent",
        };
        metrics::histogram!(m::SMTP_DURATION, "result" => result)
            .record(started.elapsed().as_secs_f64());
        sent
    }
}

/// A dispatch the claim found void (expired, or a newer code handed off).
fn ended_without_mail(status: DispatchStatus) -> Next {
    metrics::counter!(m::DISPATCHES_FINISHED, "status" => status.as_str()).increment(1);
    tracing::info!(status = status.as_str(), "ended without a mail");
    Next::Ack
}

/// What a transient failure of attempt number `attempts` leads to: another
/// try after the schedule's wait, unless the attempts are used up or the code
/// would expire first.
pub fn after_transient(
    policy: &RetryPolicy,
    reason: String,
    attempts: u32,
    now: OffsetDateTime,
    expires_at: OffsetDateTime,
) -> Outcome {
    if attempts >= policy.max_attempts() {
        return Outcome::Failed(format!("gave up after {attempts} attempts: {reason}"));
    }
    let after = policy.wait_after(attempts);
    if now + after >= expires_at {
        return Outcome::Expired(format!(
            "the code expires before the next attempt: {reason}"
        ));
    }
    Outcome::Retry { reason, after }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retry_delays: &[u64], max_attempts: u32) -> RetryPolicy {
        let schedule = retry_delays.iter().copied().map(Duration::from_secs);
        RetryPolicy::new(schedule.collect(), max_attempts)
    }

    #[test]
    fn transient_failures_follow_the_schedule_until_attempts_or_time_run_out() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let minutes = |m: i64| now + time::Duration::minutes(m);
        let retry = |secs: u64| Outcome::Retry {
            reason: "451".into(),
            after: Duration::from_secs(secs),
        };
        // (schedule, max attempts, attempts so far, code expires at, expected)
        let cases = [
            (&[5, 30][..], 5, 1, minutes(10), retry(5)),
            (&[5, 30], 5, 2, minutes(10), retry(30)),
            // The last wait repeats.
            (&[5, 30], 5, 4, minutes(10), retry(30)),
            (
                &[5, 30],
                5,
                5,
                minutes(10),
                Outcome::Failed("gave up after 5 attempts: 451".into()),
            ),
            (
                &[5],
                1,
                1,
                minutes(10),
                Outcome::Failed("gave up after 1 attempts: 451".into()),
            ),
            // The next try would come after the code is dead.
            (
                &[120],
                5,
                1,
                minutes(2),
                Outcome::Expired("the code expires before the next attempt: 451".into()),
            ),
            (&[120], 5, 1, minutes(3), retry(120)),
        ];
        for (schedule, max, attempts, expires_at, expected) in cases {
            let got = after_transient(
                &policy(schedule, max),
                "451".into(),
                attempts,
                now,
                expires_at,
            );
            assert_eq!(
                got, expected,
                "schedule {schedule:?}, max {max}, attempt {attempts}"
            );
        }
    }
}
