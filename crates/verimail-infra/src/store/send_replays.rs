//! Every statement on `send_replays` (migrations/0005): the remembered
//! answers of keyed or signed sends, so a repeat within `WINDOW` gets the
//! first answer and mails nothing new.

use std::time::Duration;

use anyhow::Context;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// How long an answer is remembered.
pub const WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The first request's row of a key.
#[derive(Debug)]
pub struct First {
    pub body_digest: Vec<u8>,
    pub dispatch_id: Uuid,
    /// The HTTP status of its answer, once it has one.
    pub status: Option<i16>,
    pub error_code: Option<String>,
}

/// Claims `key` for `dispatch_id`, unless a request within the window holds
/// it; answers the dispatch that owns the key now (`None`: held by another).
pub async fn claim(
    pool: &PgPool,
    partner_id: Uuid,
    key: &str,
    body_digest: &[u8],
    dispatch_id: Uuid,
) -> anyhow::Result<Option<Uuid>> {
    sqlx::query_scalar!(
        "INSERT INTO send_replays (partner_id, key, body_digest, dispatch_id)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (partner_id, key) DO UPDATE
            SET body_digest = EXCLUDED.body_digest, dispatch_id = EXCLUDED.dispatch_id,
                status = NULL, error_code = NULL, created_at = now()
          WHERE send_replays.created_at < now() - make_interval(secs => $5::float8)
         RETURNING dispatch_id",
        partner_id,
        key,
        body_digest,
        dispatch_id,
        WINDOW.as_secs_f64(),
    )
    .fetch_optional(pool)
    .await
    .context("claiming the idempotency key")
}

/// The request that holds `key`, if any.
pub async fn first(pool: &PgPool, partner_id: Uuid, key: &str) -> anyhow::Result<Option<First>> {
    sqlx::query_as!(
        First,
        "SELECT body_digest, dispatch_id, status, error_code FROM send_replays
          WHERE partner_id = $1 AND key = $2",
        partner_id,
        key,
    )
    .fetch_optional(pool)
    .await
    .context("reading the first answer")
}

/// The first request was answered 204: remembered for repeats.
pub async fn remember_accepted(
    pool: &PgPool,
    partner_id: Uuid,
    key: &str,
    dispatch_id: Uuid,
) -> anyhow::Result<()> {
    sqlx::query!(
        "UPDATE send_replays SET status = 204
          WHERE partner_id = $1 AND key = $2 AND dispatch_id = $3",
        partner_id,
        key,
        dispatch_id,
    )
    .execute(pool)
    .await
    .context("recording the answer for its idempotency key")?;
    Ok(())
}

/// The first request was answered with an error, so nothing was mailed:
/// the key is released and a retry runs afresh.
pub async fn release(
    pool: &PgPool,
    partner_id: Uuid,
    key: &str,
    dispatch_id: Uuid,
) -> anyhow::Result<()> {
    sqlx::query!(
        "DELETE FROM send_replays WHERE partner_id = $1 AND key = $2 AND dispatch_id = $3",
        partner_id,
        key,
        dispatch_id,
    )
    .execute(pool)
    .await
    .context("recording the answer for its idempotency key")?;
    Ok(())
}

/// Forgets remembered send answers past `WINDOW`, in batches until none is
/// left or about a second has gone: one batch per sweep could not keep up
/// with 1,000 keyed sends/s.
pub async fn prune(pool: &PgPool) -> anyhow::Result<u64> {
    const BATCH: i64 = 5000;
    let started = std::time::Instant::now();
    let mut removed = 0;
    loop {
        let done = sqlx::query!(
            "DELETE FROM send_replays WHERE ctid IN (
                SELECT ctid FROM send_replays
                 WHERE created_at < now() - make_interval(secs => $1::float8)
                 LIMIT $2)",
            WINDOW.as_secs_f64(),
            BATCH,
        )
        .execute(pool)
        .await
        .context("pruning remembered send answers")?
        .rows_affected();
        removed += done;
        if done < BATCH as u64 || started.elapsed() > Duration::from_secs(1) {
            return Ok(removed);
        }
    }
}

/// Deletes the remembered answers of `dispatch_ids` (erasure), inside the
/// caller's transaction.
pub async fn delete_for_dispatches(
    tx: &mut PgConnection,
    dispatch_ids: &[Uuid],
) -> anyhow::Result<u64> {
    Ok(sqlx::query!(
        "DELETE FROM send_replays WHERE dispatch_id = ANY($1)",
        dispatch_ids
    )
    .execute(&mut *tx)
    .await
    .context("removing remembered answers")?
    .rows_affected())
}
