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

/// Open dispatches created at or after `since` (answered from the partial
/// index of open dispatches while the workers are busy).
pub async fn open_since(pool: &PgPool, since: OffsetDateTime) -> anyhow::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM dispatches
            WHERE status = ANY($2) AND created_at >= $1"#,
        since,
        &open_names(),
    )
    .fetch_one(pool)
    .await
    .context("counting open dispatches")
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

pub async fn open(pool: &PgPool) -> anyhow::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM dispatches WHERE status = ANY($1)"#,
        &open_names(),
    )
    .fetch_one(pool)
    .await
    .context("counting open dispatches")
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
