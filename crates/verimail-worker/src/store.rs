//! The worker's conditional state changes. Each is an `UPDATE … WHERE
//! status …`, so a duplicate message or a second worker cannot move a
//! dispatch twice.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;
use verimail_core::DispatchStatus;

#[derive(Debug, sqlx::FromRow)]
pub struct Claimed {
    pub email: String,
    pub lang: String,
    pub ttl_minutes: i32,
    pub code_sealed: Option<Vec<u8>>,
    pub attempts: i32,
    pub expires_at: OffsetDateTime,
}

#[derive(Debug)]
pub enum Claim {
    /// This worker owns the dispatch until its lease ends.
    Mine(Claimed),
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
    let claimed: Option<Claimed> = sqlx::query_as(
        "UPDATE dispatches
            SET status = 'sending', attempts = attempts + 1,
                lease_until = now() + make_interval(secs => $2::float8),
                next_attempt_at = now() + make_interval(secs => $2::float8),
                updated_at = now()
          WHERE id = $1 AND expires_at > now()
            AND (status IN ('queued', 'retrying') OR (status = 'sending' AND lease_until < now()))
      RETURNING email, lang, ttl_minutes, code_sealed, attempts, expires_at",
    )
    .bind(id)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await
    .context("claiming the dispatch")?;
    if let Some(claimed) = claimed {
        return Ok(Claim::Mine(claimed));
    }

    let row: Option<(String, Option<f64>, bool)> = sqlx::query_as(
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
    let status =
        DispatchStatus::parse(&status).with_context(|| format!("unknown status {status:?}"))?;
    if status.is_terminal() {
        return Ok(Claim::Finished(status));
    }
    if expired {
        let done = finish(
            pool,
            id,
            Outcome::Expired("the code expired before it could be sent".into()),
            true,
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
    /// Try again at `at`, keeping `reason` as `last_error`.
    Retry {
        reason: String,
        after: Duration,
    },
}

/// Records an outcome. `from_open` allows finishing a dispatch nobody holds
/// (expiry found at claim time); otherwise only the `sending` holder may.
/// Returns whether the row changed.
pub async fn finish(
    pool: &PgPool,
    id: Uuid,
    outcome: Outcome,
    from_open: bool,
) -> anyhow::Result<bool> {
    let guard = if from_open {
        "(status IN ('queued', 'retrying') OR (status = 'sending' AND lease_until < now()))"
    } else {
        "status = 'sending'"
    };
    let (status, reason, retry_after) = match &outcome {
        Outcome::Sent => ("sent", None, None),
        Outcome::Failed(r) => ("failed", Some(r.as_str()), None),
        Outcome::Expired(r) => ("expired", Some(r.as_str()), None),
        Outcome::Retry { reason, after } => {
            ("retrying", Some(reason.as_str()), Some(after.as_secs_f64()))
        }
    };
    // The sealed code is wiped as soon as no worker will need it again.
    let sql = format!(
        "UPDATE dispatches
            SET status = $2,
                last_error = $3,
                lease_until = NULL,
                sent_at = CASE WHEN $2 = 'sent' THEN now() ELSE sent_at END,
                code_sealed = CASE WHEN $2 = 'retrying' THEN code_sealed ELSE NULL END,
                next_attempt_at = CASE WHEN $4::float8 IS NULL THEN next_attempt_at
                                       ELSE now() + make_interval(secs => $4::float8) END,
                updated_at = now()
          WHERE id = $1 AND {guard}"
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(status)
        .bind(reason)
        .bind(retry_after)
        .execute(pool)
        .await
        .context("recording the outcome")?;
    Ok(done.rows_affected() == 1)
}

/// Open dispatches whose message should have arrived long ago (lost before
/// publishing, or a lease that ran out). Marks them so concurrent sweepers
/// do not both pick them.
pub async fn overdue(pool: &PgPool, grace: Duration, limit: i64) -> anyhow::Result<Vec<Uuid>> {
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
