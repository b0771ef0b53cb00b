//! The sweeper's pick of open dispatches whose message should have been
//! handled long ago.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use uuid::Uuid;
use verimail_domain::DispatchStatus;

/// Open dispatches whose message should have arrived long ago (lost before
/// publishing, or a lease that ran out). Each pick pushes the dispatch's next
/// look `grace × 2^sweeps` ahead (capped at an hour, past any code's life),
/// so a backlog that is merely slow is not re-published every sweep. Rows
/// still in the intake's hands (`handoff_by` ahead) are left alone. `FOR
/// UPDATE SKIP LOCKED` keeps concurrent sweepers from picking one row twice.
///
/// The sweep reads only rows whose `sweep_at` is past the grace: every open
/// row has `sweep_at <= next_attempt_at` (triggers of migrations/0012), so
/// no overdue row is missed, and a sweep with nothing overdue reads only the
/// rows whose bound fell behind since the last sweep (a retry waiting, a
/// renewed lease), whose `sweep_at` it raises to `next_attempt_at` so that
/// later sweeps skip them. Those are raised `limit` at a time, one
/// transaction each, until a pass finds fewer, so that a crowd of them (an
/// SMTP outage: every open row retrying) never keeps an overdue row waiting
/// behind it for another sweep.
pub async fn overdue(pool: &PgPool, grace: Duration, limit: i64) -> anyhow::Result<Vec<Uuid>> {
    let mut found = Vec::new();
    loop {
        let want = limit - found.len() as i64;
        let (picked, moved) = pass(pool, grace, want).await?;
        found.extend(picked);
        if moved < want || found.len() as i64 >= limit {
            return Ok(found);
        }
    }
}

/// One pass over at most `limit` rows whose bound is behind: the overdue
/// ones among them, and how many rows it moved (overdue or raised).
async fn pass(pool: &PgPool, grace: Duration, limit: i64) -> anyhow::Result<(Vec<Uuid>, i64)> {
    // `code_sealed IS NOT NULL` and `sweep_at` are the predicate and key of
    // the partial index `dispatches_unsent` (migrations/0012), which holds
    // the open set and nothing a claim, a renewal or a retry changes; the
    // longest due come first.
    let open: Vec<String> = DispatchStatus::OPEN
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    // The walk must be the index's, in `sweep_at` order, whatever the
    // statistics say: it stops at the bound, and it marks dead the index
    // entries of versions it steps over (the raised bounds leave one behind
    // each), so the next sweep does not read them again. A bitmap scan
    // would read them on every sweep until vacuum; a plan from statistics
    // taken when more rows were behind could even read the whole partition.
    let mut tx = pool.begin().await.context("starting a sweep")?;
    sqlx::query!(
        "SELECT set_config('enable_seqscan', 'off', true) AS seqscan,
                set_config('enable_bitmapscan', 'off', true) AS bitmapscan"
    )
    .fetch_one(&mut *tx)
    .await
    .context("setting up a sweep")?;
    let moved = sqlx::query!(
        r#"WITH behind AS (
            SELECT id,
                   status = ANY($3)
                   AND next_attempt_at < now() - make_interval(secs => $1::float8)
                   AND (handoff_by IS NULL OR handoff_by < now()) AS overdue
              FROM dispatches
             WHERE code_sealed IS NOT NULL
               AND sweep_at < now() - make_interval(secs => $1::float8)
             ORDER BY sweep_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED),
         pushed AS (
            UPDATE dispatches d
               SET next_attempt_at = CASE WHEN behind.overdue
                       THEN now()
                            + make_interval(secs => least($1::float8 * (2 ^ least(d.sweeps, 12)), 3600))
                            - make_interval(secs => $1::float8)
                       ELSE d.next_attempt_at END,
                   sweeps = CASE WHEN behind.overdue THEN d.sweeps + 1 ELSE d.sweeps END,
                   sweep_at = CASE WHEN behind.overdue
                       THEN now()
                            + make_interval(secs => least($1::float8 * (2 ^ least(d.sweeps, 12)), 3600))
                            - make_interval(secs => $1::float8)
                       ELSE d.next_attempt_at END
              FROM behind
             WHERE d.id = behind.id
               AND (behind.overdue OR d.sweep_at < d.next_attempt_at)
            RETURNING d.id, behind.overdue)
         SELECT id AS "id!", overdue AS "overdue!" FROM pushed"#,
        grace.as_secs_f64(),
        limit,
        &open,
    )
    .fetch_all(&mut *tx)
    .await
    .context("finding overdue dispatches")?;
    tx.commit().await.context("committing a sweep")?;
    let count = moved.len() as i64;
    let picked = moved
        .into_iter()
        .filter(|r| r.overdue)
        .map(|r| r.id)
        .collect();
    Ok((picked, count))
}
