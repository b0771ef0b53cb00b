//! Read-only counts and times for the load generator's reports
//! (`verimail-bench`): how a run's dispatches ended, and when.

use anyhow::Context;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;
use verimail_domain::DispatchStatus;

/// One dispatch's end, as the bench reports it.
#[derive(Debug)]
pub struct Timing {
    pub id: Uuid,
    pub status: DispatchStatus,
    pub created_at: OffsetDateTime,
    pub sent_at: Option<OffsetDateTime>,
}

fn open_names() -> Vec<String> {
    DispatchStatus::OPEN
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect()
}

pub async fn timings(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<Vec<Timing>> {
    sqlx::query_as!(
        Timing,
        r#"SELECT id, status AS "status: DispatchStatus", created_at, sent_at
             FROM dispatches WHERE id = ANY($1)"#,
        ids,
    )
    .fetch_all(pool)
    .await
    .context("reading the dispatches")
}

/// Whether a dispatch created at or after `since` is still open.
pub async fn any_open_since(pool: &PgPool, since: OffsetDateTime) -> anyhow::Result<bool> {
    any_open_where(pool, Some(since)).await
}

/// How many of `ids` are in a final state.
pub async fn finished_among(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM dispatches
            WHERE id = ANY($1) AND NOT status = ANY($2)"#,
        ids,
        &open_names(),
    )
    .fetch_one(pool)
    .await
    .context("counting finished dispatches")
}

/// Whether any dispatch is still open.
pub async fn any_open(pool: &PgPool) -> anyhow::Result<bool> {
    any_open_where(pool, None).await
}

/// The bench polls this several times a second while it measures, so it
/// must cost next to nothing: it walks the partial index of open
/// dispatches (`dispatches_unsent`, migrations/0012: open means sealed) to
/// the first match, with the scans that would read the whole partition
/// ruled out, whatever the statistics.
async fn any_open_where(pool: &PgPool, since: Option<OffsetDateTime>) -> anyhow::Result<bool> {
    let mut tx = pool
        .begin()
        .await
        .context("starting a look at open dispatches")?;
    sqlx::query!(
        "SELECT set_config('enable_seqscan', 'off', true) AS seqscan,
                set_config('enable_bitmapscan', 'off', true) AS bitmapscan"
    )
    .fetch_one(&mut *tx)
    .await
    .context("setting up a look at open dispatches")?;
    let open = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM dispatches
                           WHERE code_sealed IS NOT NULL AND status = ANY($1)
                             AND ($2::timestamptz IS NULL OR created_at >= $2)) AS "open!""#,
        &open_names(),
        since,
    )
    .fetch_one(&mut *tx)
    .await
    .context("looking for open dispatches")?;
    tx.commit()
        .await
        .context("ending a look at open dispatches")?;
    Ok(open)
}

/// Mails sent at or after `since`: how many, the first and the last.
pub async fn sent_since(
    pool: &PgPool,
    since: OffsetDateTime,
) -> anyhow::Result<(i64, Option<OffsetDateTime>, Option<OffsetDateTime>)> {
    let row = sqlx::query!(
        r#"SELECT count(*) AS "sent!", min(sent_at) AS first, max(sent_at) AS last
             FROM dispatches WHERE status = $2 AND sent_at >= $1"#,
        since,
        DispatchStatus::Sent.as_str(),
    )
    .fetch_one(pool)
    .await
    .context("reading send times")?;
    Ok((row.sent, row.first, row.last))
}

pub async fn by_status(pool: &PgPool) -> anyhow::Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"SELECT status, count(*) AS "count!" FROM dispatches GROUP BY status ORDER BY status"#
    )
    .fetch_all(pool)
    .await
    .context("counting by status")?;
    Ok(rows.into_iter().map(|r| (r.status, r.count)).collect())
}
