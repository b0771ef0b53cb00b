//! The worker's conditional state changes. Each is an `UPDATE … WHERE
//! status = ANY(…)`, so a duplicate message or a second worker cannot move a
//! dispatch twice. State names come from `DispatchStatus` as parameters.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;
use verimail_core::{CodeTtl, DispatchStatus, Email, Lang};

/// A claimed dispatch as the row stores it; decoded once into `Claimed`.
#[derive(Debug, sqlx::FromRow)]
struct ClaimedRow {
    email: String,
    lang: String,
    ttl_minutes: i32,
    code_sealed: Option<Vec<u8>>,
    attempts: i32,
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
}

/// A dispatch this worker owns, in domain types.
#[derive(Debug)]
pub struct Claimed {
    pub email: Email,
    pub lang: Lang,
    pub ttl: CodeTtl,
    pub code_sealed: Vec<u8>,
    /// Attempts started, this one included.
    pub attempts: u32,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

impl TryFrom<ClaimedRow> for Claimed {
    /// Why the row cannot be mailed: recorded as the dispatch's `last_error`.
    type Error = String;

    fn try_from(row: ClaimedRow) -> Result<Self, Self::Error> {
        let email = Email::parse(&row.email)
            .map_err(|e| format!("the stored address does not parse: {e}"))?;
        let lang = Lang::from_tag(&row.lang)
            .ok_or_else(|| format!("the stored language {:?} is unknown", row.lang))?;
        let ttl = CodeTtl::from_stored(i64::from(row.ttl_minutes))
            .ok_or_else(|| format!("the stored lifetime {} is out of range", row.ttl_minutes))?;
        let code_sealed = row.code_sealed.ok_or("the sealed code is gone")?;
        let attempts = u32::try_from(row.attempts)
            .map_err(|_| format!("the stored attempt count {} is negative", row.attempts))?;
        Ok(Self {
            email,
            lang,
            ttl,
            code_sealed,
            attempts,
            created_at: row.created_at,
            expires_at: row.expires_at,
        })
    }
}

#[derive(Debug)]
pub enum Claim {
    /// This worker owns the dispatch until its lease ends.
    Mine(Claimed),
    /// This worker owns the dispatch, but its row cannot be mailed (why).
    Undecodable(String),
    /// Another worker holds a live lease; look again after this long.
    Leased(Duration),
    /// Already in a final state: nothing to do.
    Finished(DispatchStatus),
    /// It expired before it could be sent; now recorded as `expired`.
    Expired,
    /// No such dispatch (a stray message).
    Missing,
}

pub async fn claim(pool: &PgPool, id: Uuid, lease: Duration) -> anyhow::Result<Claim> {
    let claimed: Option<ClaimedRow> = sqlx::query_as(
        "UPDATE dispatches
            SET status = $3, attempts = attempts + 1,
                lease_until = now() + make_interval(secs => $2::float8),
                next_attempt_at = now() + make_interval(secs => $2::float8),
                updated_at = now()
          WHERE id = $1 AND expires_at > now()
            AND (status = ANY($4) OR (status = $3 AND lease_until < now()))
      RETURNING email, lang, ttl_minutes, code_sealed, attempts, created_at, expires_at",
    )
    .bind(id)
    .bind(lease.as_secs_f64())
    .bind(DispatchStatus::Sending)
    .bind(&DispatchStatus::WAITING[..])
    .fetch_optional(pool)
    .await
    .context("claiming the dispatch")?;
    if let Some(row) = claimed {
        return Ok(match Claimed::try_from(row) {
            Ok(claimed) => Claim::Mine(claimed),
            Err(reason) => Claim::Undecodable(reason),
        });
    }

    let row: Option<(DispatchStatus, Option<f64>, bool)> = sqlx::query_as(
        "SELECT status, extract(epoch FROM lease_until - now())::float8, expires_at <= now()
           FROM dispatches WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .context("reading the dispatch")?;
    let Some((status, lease_left, expired)) = row else {
        return Ok(Claim::Missing);
    };
    if status.is_terminal() {
        return Ok(Claim::Finished(status));
    }
    if expired {
        let done = finish(
            pool,
            id,
            &Outcome::Expired("the code expired before it could be sent".into()),
            Holder::Nobody,
        )
        .await?;
        return Ok(if done {
            Claim::Expired
        } else {
            Claim::Leased(Duration::from_secs(1))
        });
    }
    let wait = lease_left
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_millis(100));
    Ok(Claim::Leased(wait))
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Failed(String),
    Expired(String),
    /// Try again after `after`, keeping `reason` as `last_error`.
    Retry {
        reason: String,
        after: Duration,
    },
}

impl Outcome {
    /// The state the outcome moves the dispatch to: the one mapping, used
    /// for the SQL and for the metric label alike.
    pub fn status(&self) -> DispatchStatus {
        match self {
            Self::Sent => DispatchStatus::Sent,
            Self::Failed(_) => DispatchStatus::Failed,
            Self::Expired(_) => DispatchStatus::Expired,
            Self::Retry { .. } => DispatchStatus::Retrying,
        }
    }

    fn reason(&self) -> Option<&str> {
        match self {
            Self::Sent => None,
            Self::Failed(reason) | Self::Expired(reason) | Self::Retry { reason, .. } => {
                Some(reason)
            }
        }
    }
}

/// Who may record an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// The worker holding the `sending` claim.
    Claimant,
    /// Nobody holds it (expiry found at claim time): a waiting dispatch, or
    /// one whose lease ran out.
    Nobody,
}

/// Records an outcome; returns whether the row changed.
pub async fn finish(
    pool: &PgPool,
    id: Uuid,
    outcome: &Outcome,
    holder: Holder,
) -> anyhow::Result<bool> {
    let retry_after = match outcome {
        Outcome::Retry { after, .. } => Some(after.as_secs_f64()),
        _ => None,
    };
    let status = outcome.status();
    // The sealed code is wiped as soon as no worker will need it again.
    let done = sqlx::query(
        "UPDATE dispatches
            SET status = $2,
                last_error = $3,
                lease_until = NULL,
                sent_at = CASE WHEN $5 THEN now() ELSE sent_at END,
                code_sealed = CASE WHEN $6 THEN NULL ELSE code_sealed END,
                next_attempt_at = COALESCE(now() + make_interval(secs => $4::float8),
                                           next_attempt_at),
                updated_at = now()
          WHERE id = $1
            AND ((status = $7 AND (NOT $8 OR lease_until < now()))
                 OR ($8 AND status = ANY($9)))",
    )
    .bind(id)
    .bind(status)
    .bind(outcome.reason())
    .bind(retry_after)
    .bind(status == DispatchStatus::Sent)
    .bind(status.is_terminal())
    .bind(DispatchStatus::Sending)
    .bind(holder == Holder::Nobody)
    .bind(&DispatchStatus::WAITING[..])
    .execute(pool)
    .await
    .context("recording the outcome")?;
    Ok(done.rows_affected() == 1)
}

/// Open dispatches whose message should have arrived long ago (lost before
/// publishing, or a lease that ran out). Marks them so concurrent sweepers
/// do not both pick them.
pub async fn overdue(pool: &PgPool, grace: Duration, limit: i64) -> anyhow::Result<Vec<Uuid>> {
    // The state list is spelled out (not bound) so the planner can use the
    // partial index `dispatches_open`, whose predicate is the same set
    // (`DispatchStatus::OPEN`; tests/schema.rs keeps them equal).
    sqlx::query_scalar(
        "WITH stuck AS (
            SELECT id FROM dispatches
             WHERE status IN ('queued', 'sending', 'retrying')
               AND next_attempt_at < now() - make_interval(secs => $1::float8)
             ORDER BY next_attempt_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED)
         UPDATE dispatches d SET next_attempt_at = now()
           FROM stuck WHERE d.id = stuck.id
         RETURNING d.id",
    )
    .bind(grace.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await
    .context("finding overdue dispatches")
}
