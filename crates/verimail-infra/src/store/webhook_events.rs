//! Every statement on `webhook_events`, the webhook outbox (migrations/0019:
//! a trigger on `dispatches` writes the rows). Workers claim due events,
//! deliver them and record the outcome under the attempt they claimed, so a
//! worker whose claim ran out cannot overwrite the next one's outcome.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

/// An event claimed for one delivery attempt, with its endpoint.
#[derive(Debug, Clone)]
pub struct ClaimedEvent {
    pub id: Uuid,
    pub partner_id: Uuid,
    pub kind: String,
    pub body: String,
    /// This attempt's number (1 for the first); the fence of its outcome.
    pub attempt: i32,
    pub created_at: OffsetDateTime,
    pub url: String,
    pub secret_sealed: Vec<u8>,
    pub previous_secret_sealed: Option<Vec<u8>>,
    pub previous_until: Option<OffsetDateTime>,
}

/// Claims up to `limit` due events, at most `per_endpoint` of any one
/// partner and none of the partners in `busy` (their endpoints already have
/// deliveries in flight here). A claim moves the event's next attempt past
/// `lease`: if this worker dies mid-delivery, the event is due again then.
///
/// The partners with undelivered events are found by a skip scan of
/// `webhook_events_due` (one index probe each), and each one's due events
/// by another: the cost follows the number of partners, never the backlog
/// of one partner's dead endpoint.
pub async fn claim(
    pool: &PgPool,
    limit: i64,
    per_endpoint: i64,
    busy: &[Uuid],
    lease: Duration,
) -> anyhow::Result<Vec<ClaimedEvent>> {
    sqlx::query_as!(
        ClaimedEvent,
        r#"WITH RECURSIVE waiting(partner_id) AS (
               (SELECT partner_id FROM webhook_events
                 WHERE delivered_at IS NULL AND abandoned_at IS NULL
                 ORDER BY partner_id LIMIT 1)
               UNION ALL
               SELECT (SELECT e.partner_id FROM webhook_events e
                        WHERE e.delivered_at IS NULL AND e.abandoned_at IS NULL
                          AND e.partner_id > w.partner_id
                        ORDER BY e.partner_id LIMIT 1)
                 FROM waiting w WHERE w.partner_id IS NOT NULL
           ), due AS (
               SELECT d.id FROM waiting w
               CROSS JOIN LATERAL (
                   SELECT e.id FROM webhook_events e
                    WHERE e.partner_id = w.partner_id
                      AND e.delivered_at IS NULL AND e.abandoned_at IS NULL
                      AND e.next_attempt_at <= now()
                    ORDER BY e.next_attempt_at
                    LIMIT $2
                      FOR UPDATE SKIP LOCKED) d
                WHERE w.partner_id IS NOT NULL AND NOT (w.partner_id = ANY($3))
                LIMIT $1
           )
           UPDATE webhook_events e
              SET attempts = e.attempts + 1,
                  next_attempt_at = now() + make_interval(secs => $4)
             FROM partner_webhooks w
            WHERE e.id IN (SELECT id FROM due) AND w.partner_id = e.partner_id
           RETURNING e.id AS "id!", e.partner_id AS "partner_id!", e.type AS "kind!",
                     e.body AS "body!", e.attempts AS "attempt!", e.created_at AS "created_at!",
                     w.url AS "url!", w.secret_sealed AS "secret_sealed!",
                     w.previous_secret_sealed AS "previous_secret_sealed?",
                     w.previous_until AS "previous_until?""#,
        limit,
        per_endpoint,
        busy,
        lease.as_secs_f64(),
    )
    .fetch_all(pool)
    .await
    .context("claiming webhook events")
}

/// The endpoint answered 2xx.
pub async fn delivered(pool: &PgPool, id: Uuid, attempt: i32) -> anyhow::Result<()> {
    sqlx::query!(
        "UPDATE webhook_events SET delivered_at = now(), last_error = NULL
          WHERE id = $1 AND attempts = $2 AND delivered_at IS NULL",
        id,
        attempt,
    )
    .execute(pool)
    .await
    .context("recording a delivered webhook event")?;
    Ok(())
}

/// The attempt failed; try again after `after`.
pub async fn retry(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    after: Duration,
    error: &str,
) -> anyhow::Result<()> {
    sqlx::query!(
        "UPDATE webhook_events
            SET next_attempt_at = now() + make_interval(secs => $3), last_error = left($4, 500)
          WHERE id = $1 AND attempts = $2 AND delivered_at IS NULL",
        id,
        attempt,
        after.as_secs_f64(),
        error,
    )
    .execute(pool)
    .await
    .context("scheduling a webhook event's next attempt")?;
    Ok(())
}

/// No more attempts: the retry window is over.
pub async fn abandon(pool: &PgPool, id: Uuid, attempt: i32, error: &str) -> anyhow::Result<()> {
    sqlx::query!(
        "UPDATE webhook_events SET abandoned_at = now(), last_error = left($3, 500)
          WHERE id = $1 AND attempts = $2 AND delivered_at IS NULL",
        id,
        attempt,
        error,
    )
    .execute(pool)
    .await
    .context("abandoning a webhook event")?;
    Ok(())
}

/// The endpoint answered 410 Gone: it is disabled (for the operator to see
/// in `verimail webhook show`, and to enable again with `webhook set`), and
/// its undelivered events are abandoned with it, in one transaction.
/// Answers how many events were abandoned.
pub async fn disable_endpoint(
    pool: &PgPool,
    partner_id: Uuid,
    reason: &str,
) -> anyhow::Result<u64> {
    let mut tx = pool
        .begin()
        .await
        .context("starting to disable an endpoint")?;
    sqlx::query!(
        "UPDATE partner_webhooks
            SET disabled_at = now(), disabled_reason = left($2, 500), updated_at = now()
          WHERE partner_id = $1 AND disabled_at IS NULL",
        partner_id,
        reason,
    )
    .execute(&mut *tx)
    .await
    .context("disabling the webhook endpoint")?;
    let abandoned = sqlx::query!(
        "UPDATE webhook_events SET abandoned_at = now(), last_error = left($2, 500)
          WHERE partner_id = $1 AND delivered_at IS NULL AND abandoned_at IS NULL",
        partner_id,
        reason,
    )
    .execute(&mut *tx)
    .await
    .context("abandoning the disabled endpoint's events")?
    .rows_affected();
    tx.commit().await.context("disabling an endpoint")?;
    Ok(abandoned)
}

/// Events neither delivered nor abandoned, for the pending gauge.
pub async fn pending(pool: &PgPool) -> anyhow::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM webhook_events
            WHERE delivered_at IS NULL AND abandoned_at IS NULL"#
    )
    .fetch_one(pool)
    .await
    .context("counting pending webhook events")
}

/// A partner's undelivered events, for `verimail webhook show`.
pub async fn pending_for(pool: &PgPool, partner_id: Uuid) -> anyhow::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM webhook_events
            WHERE partner_id = $1 AND delivered_at IS NULL AND abandoned_at IS NULL"#,
        partner_id
    )
    .fetch_one(pool)
    .await
    .context("counting a partner's pending webhook events")
}

/// Events made before `cutoff` go, as the dispatches' partitions past the
/// retention do (maintenance, on its own connection).
pub async fn delete_created_before(
    conn: &mut sqlx::PgConnection,
    cutoff: OffsetDateTime,
) -> anyhow::Result<u64> {
    let deleted = sqlx::query!("DELETE FROM webhook_events WHERE created_at < $1", cutoff)
        .execute(&mut *conn)
        .await
        .context("deleting webhook events past the retention")?;
    Ok(deleted.rows_affected())
}

/// The events of erased dispatches go with them (`verimail forget`), in the
/// erasure's transaction.
pub async fn delete_for_dispatches(
    tx: &mut sqlx::PgConnection,
    dispatch_ids: &[Uuid],
) -> anyhow::Result<u64> {
    let deleted = sqlx::query!(
        "DELETE FROM webhook_events WHERE dispatch_id = ANY($1)",
        dispatch_ids
    )
    .execute(&mut *tx)
    .await
    .context("removing the erased dispatches' webhook events")?;
    Ok(deleted.rows_affected())
}
