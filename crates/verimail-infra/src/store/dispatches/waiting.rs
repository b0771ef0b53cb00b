//! How long the oldest dispatch has waited for its first claim: the gauge an
//! operator alerts on (README, "Alerts": `VerimailDispatchWaiting`).

use anyhow::Context;
use sqlx::PgPool;
use verimail_domain::DispatchStatus;

/// How many of the oldest open dispatches the look reads at most. Retrying
/// and sending rows older than the oldest queued one are stepped over; in a
/// retry storm (an SMTP outage) that could be every open row, so the look
/// stops here and reports only a queued dispatch among these.
pub const WINDOW: i64 = 10_000;

/// Seconds since the oldest `queued` dispatch among the `WINDOW` oldest open
/// ones was accepted; `None` when there is none. Walks the partial index
/// `dispatches_open_by_id` (migrations/0014) in id order, which is creation
/// order: one or a few index entries when the backlog is healthy.
pub async fn oldest_queued_age(pool: &PgPool) -> anyhow::Result<Option<f64>> {
    let age = sqlx::query_scalar!(
        r#"SELECT extract(epoch FROM now() - min(created_at))::float8 AS "age"
             FROM (SELECT created_at, status FROM dispatches
                    WHERE code_sealed IS NOT NULL
                    ORDER BY id
                    LIMIT $1) oldest
            WHERE status = $2"#,
        WINDOW,
        DispatchStatus::Queued.as_str(),
    )
    .fetch_one(pool)
    .await
    .context("reading the oldest queued dispatch")?;
    Ok(age.map(|secs| secs.max(0.0)))
}
