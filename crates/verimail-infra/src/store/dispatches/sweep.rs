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
pub async fn overdue(pool: &PgPool, grace: Duration, limit: i64) -> anyhow::Result<Vec<Uuid>> {
    // `code_sealed IS NOT NULL` is the predicate of the partial index
    // `dispatches_unsent` (migrations/0010), which holds the open set and
    // nothing a claim or a retry changes; the oldest come first.
    let open: Vec<String> = DispatchStatus::OPEN
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    sqlx::query_scalar!(
        "WITH stuck AS (
            SELECT id FROM dispatches
             WHERE code_sealed IS NOT NULL
               AND status = ANY($3)
               AND next_attempt_at < now() - make_interval(secs => $1::float8)
               AND (handoff_by IS NULL OR handoff_by < now())
             ORDER BY id
             LIMIT $2
             FOR UPDATE SKIP LOCKED)
         UPDATE dispatches d
            SET next_attempt_at = now()
                    + make_interval(secs => least($1::float8 * (2 ^ least(d.sweeps, 12)), 3600))
                    - make_interval(secs => $1::float8),
                sweeps = d.sweeps + 1
           FROM stuck WHERE d.id = stuck.id
         RETURNING d.id",
        grace.as_secs_f64(),
        limit,
        &open,
    )
    .fetch_all(pool)
    .await
    .context("finding overdue dispatches")
}
