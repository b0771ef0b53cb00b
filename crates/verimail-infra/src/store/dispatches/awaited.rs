//! A send that waits for its first SMTP attempt (`Prefer: wait`, README
//! "Waiting for the relay's answer"): the worker announces the attempt's
//! recorded outcome on a channel every intake listens on. Only dispatches
//! whose message was marked awaited are announced, once, after the outcome
//! is committed; the waiting intake then reads the dispatch itself, so a
//! lost notice costs the wait, never a wrong answer.

use anyhow::Context;
use sqlx::PgPool;
use uuid::Uuid;
use verimail_domain::DispatchStatus;

/// The channel of first-attempt outcomes; the payload is the dispatch id.
pub const CHANNEL: &str = "verimail_first_attempts";

pub async fn announce(pool: &PgPool, id: Uuid) -> anyhow::Result<()> {
    sqlx::query!("SELECT pg_notify($1, $2)", CHANNEL, id.to_string())
        .execute(pool)
        .await
        .context("announcing the first attempt's outcome")?;
    Ok(())
}

/// A waited send whose first attempt the relay refused for good is
/// answered CBC.99004003 ("generated but failed to be sent"), which, as for
/// a failed hand-off, does not count toward the rate limit. `false` when
/// the dispatch is not failed (nothing changed).
pub async fn uncount_failed(pool: &PgPool, id: Uuid) -> anyhow::Result<bool> {
    let done = sqlx::query!(
        "UPDATE dispatches SET counts_toward_limit = false
          WHERE id = $1 AND status = $2 AND counts_toward_limit",
        id,
        DispatchStatus::Failed.as_str(),
    )
    .execute(pool)
    .await
    .context("taking the refused send out of the rate limit")?;
    Ok(done.rows_affected() == 1)
}
