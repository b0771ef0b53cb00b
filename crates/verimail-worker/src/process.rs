//! The worker's core: one dispatch id in, one recorded outcome out. A plain
//! async function over Postgres and the mail transport, so tests can call it
//! without a broker; the consumer only decodes, calls it and acks.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;
use verimail_core::Lang;
use verimail_core::metrics as m;
use verimail_core::request::redact;
use verimail_core::secrets::Keys;

use crate::WorkerSettings;
use crate::mail::{self, CodeMail, SendError, Transport};
use crate::store::{self, Claim, Outcome};

/// What the consumer does with the message once the outcome is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Ack,
    /// Re-deliver after at least this long (through a delay queue), then ack.
    Park(Duration),
    /// Not processable: send to the dead-letter queue.
    DeadLetter(String),
}

pub struct Processor {
    pub pool: PgPool,
    pub keys: Keys,
    pub transport: Transport,
    pub settings: Arc<WorkerSettings>,
}

impl Processor {
    #[tracing::instrument(skip_all, fields(dispatch_id = %id))]
    pub async fn process(&self, id: Uuid) -> anyhow::Result<Next> {
        let claimed = match store::claim(&self.pool, id, self.settings.lease).await? {
            Claim::Mine(claimed) => claimed,
            Claim::Finished(status) => {
                tracing::debug!(
                    status = status.as_str(),
                    "already finished; duplicate message"
                );
                return Ok(Next::Ack);
            }
            Claim::Expired => {
                metrics::counter!(m::DISPATCHES_FINISHED, "status" => "expired").increment(1);
                tracing::info!("expired before it could be sent");
                return Ok(Next::Ack);
            }
            Claim::Leased(wait) => return Ok(Next::Park(wait)),
            Claim::Missing => return Ok(Next::DeadLetter("no such dispatch".into())),
        };
        let attempts = u32::try_from(claimed.attempts).unwrap_or(u32::MAX);
        if attempts == 1 {
            // How long the first claim came after the request: the consumer lag.
            let created =
                claimed.expires_at - time::Duration::minutes(i64::from(claimed.ttl_minutes));
            let lag = (OffsetDateTime::now_utc() - created)
                .as_seconds_f64()
                .max(0.0);
            metrics::histogram!(m::CLAIM_LAG).record(lag);
        }
        let outcome = match self.attempt(id, &claimed).await {
            Ok(()) => Outcome::Sent,
            Err(SendError::Permanent(reason)) => Outcome::Failed(reason),
            Err(SendError::Transient(reason)) => {
                self.after_transient(reason, attempts, claimed.expires_at)
            }
        };
        let recorded = store::finish(&self.pool, id, outcome.clone(), false).await?;
        if !recorded {
            tracing::warn!(
                "the dispatch changed while sending (lease ran out, or the code was already used); outcome not recorded"
            );
            return Ok(Next::Ack);
        }
        let final_status = match &outcome {
            Outcome::Sent => Some("sent"),
            Outcome::Failed(_) => Some("failed"),
            Outcome::Expired(_) => Some("expired"),
            Outcome::Retry { .. } => None,
        };
        match final_status {
            Some(status) => {
                metrics::counter!(m::DISPATCHES_FINISHED, "status" => status).increment(1)
            }
            None => metrics::counter!(m::SMTP_RETRIES).increment(1),
        }
        match outcome {
            Outcome::Sent => {
                tracing::debug!(attempts, to = redact(&claimed.email), "mail sent");
                Ok(Next::Ack)
            }
            Outcome::Retry { reason, after } => {
                tracing::warn!(attempts, retry_in = ?after, reason, "transient failure; will retry");
                Ok(Next::Park(after))
            }
            Outcome::Failed(reason) | Outcome::Expired(reason) => {
                tracing::warn!(attempts, reason, "dispatch ended without a mail");
                Ok(Next::Ack)
            }
        }
    }

    async fn attempt(&self, id: Uuid, claimed: &store::Claimed) -> Result<(), SendError> {
        let Some(sealed) = &claimed.code_sealed else {
            return Err(SendError::Permanent("the sealed code is gone".into()));
        };
        let code = self.keys.open_code(id, sealed).map_err(|_| {
            tracing::error!("cannot open the sealed code: does this worker share VERIMAIL_SECRET with the intake?");
            SendError::Transient("the sealed code could not be opened (VERIMAIL_SECRET mismatch?)".into())
        })?;
        let lang = Lang::from_tag(&claimed.lang).unwrap_or(Lang::ZhCn);
        let mail = CodeMail {
            dispatch_id: id,
            to: &claimed.email,
            lang,
            code: &code,
            valid_minutes: u32::try_from(claimed.ttl_minutes).unwrap_or(10),
        };
        let message = mail::render(&self.settings.mail, &mail)
            .map_err(|e| SendError::Permanent(format!("the mail could not be rendered: {e}")))?;
        drop(code);
        let started = std::time::Instant::now();
        let sent = self.transport.send(&message).await;
        let result = match &sent {
            Ok(()) => "ok",
            Err(SendError::Transient(_)) => "transient",
            Err(SendError::Permanent(_)) => "permanent",
        };
        metrics::histogram!(m::SMTP_DURATION, "result" => result)
            .record(started.elapsed().as_secs_f64());
        sent
    }

    fn after_transient(
        &self,
        reason: String,
        attempts: u32,
        expires_at: OffsetDateTime,
    ) -> Outcome {
        if attempts >= self.settings.max_attempts {
            return Outcome::Failed(format!("gave up after {attempts} attempts: {reason}"));
        }
        let after = self.settings.retry_delay(attempts);
        if OffsetDateTime::now_utc() + after >= expires_at {
            return Outcome::Expired(format!(
                "the code expires before the next attempt: {reason}"
            ));
        }
        Outcome::Retry { reason, after }
    }
}
