//! `/check`: a code against the newest dispatch of a partner and address,
//! under the row's lock.

use anyhow::Context;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;
use verimail_domain::secrets::Keys;
use verimail_domain::{CheckRequest, CodeTtl, DispatchStatus};

use super::ID_CLOCK_MARGIN_SECS;

/// Wrong tries after which a code is void (README, "Checking a code").
pub const MAX_CHECK_FAILURES: i32 = 3;

/// How far back a code from an earlier mail is recognised (and not counted
/// as a wrong try): the rate limit's day, which also bounds how many there are.
const OLDER_CODES_SECS: f64 = 24.0 * 3600.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The code matched and is now consumed.
    Verified(Uuid),
    Wrong,
    /// Too many wrong tries: nothing verifies this code any more.
    Void,
    /// Expired, used, superseded, never sent, or no code at all.
    NotPending,
}

/// Checks a code against the newest dispatch this partner made for the
/// address, a failed hand-off aside (that code was never going to arrive, so
/// the one before it stays good). The row is locked for the check, so
/// concurrent checks are serialised: one consumption, and never more than
/// the allowed wrong tries.
///
/// Only rows young enough to hold a live code are read (a code lives at most
/// `CodeTtl::MAX_MINUTES`): a newest row older than that is expired, which
/// answers as no row does, and the id bounds (below and above: maintenance
/// keeps the next days' partitions ready) keep the scan to the one or two
/// partitions of the last hour.
///
/// Runs on `conn` in a transaction of its own (a savepoint if `conn` is in
/// one already, which is how a test reads what the check touched).
pub async fn check_code(
    conn: &mut PgConnection,
    keys: &Keys,
    partner_id: Uuid,
    request: &CheckRequest,
) -> anyhow::Result<CheckOutcome> {
    let recipient = request.email.normalised();
    let live_secs = f64::from(CodeTtl::MAX_MINUTES) * 60.0;
    let mut tx = conn.begin().await.context("starting the check")?;
    let newest = sqlx::query!(
        r#"SELECT id, status AS "status: DispatchStatus", check_failures, code_digest,
                  expires_at <= now() AS "expired!"
             FROM dispatches
            WHERE recipient = $1 AND partner_id = $2 AND counts_toward_limit
              AND created_at > now() - make_interval(secs => $3)
              AND id >= verimail_id_at(now() - make_interval(secs => $3::float8 + $4::float8))
              AND id < verimail_id_at(now() + make_interval(secs => $4::float8))
            ORDER BY created_at DESC
            LIMIT 1
              FOR UPDATE"#,
        recipient,
        partner_id,
        live_secs,
        ID_CLOCK_MARGIN_SECS,
    )
    .fetch_optional(&mut *tx)
    .await
    .context("reading the newest dispatch")?;
    let Some(newest) = newest else {
        return Ok(CheckOutcome::NotPending);
    };
    if !newest.status.is_checkable() || newest.expired {
        return Ok(CheckOutcome::NotPending);
    }
    if newest.check_failures >= MAX_CHECK_FAILURES {
        return Ok(CheckOutcome::Void);
    }
    let id = newest.id;
    let outcome = if keys.code_matches(id, &request.code, &newest.code_digest) {
        // Consumed: a queued mail is no longer worth sending, and the sealed
        // copy is no longer needed.
        sqlx::query!(
            "UPDATE dispatches SET status = $2, code_sealed = NULL, updated_at = now() WHERE id = $1",
            id,
            DispatchStatus::Verified.as_str(),
        )
        .execute(&mut *tx)
        .await
        .context("consuming the code")?;
        CheckOutcome::Verified(id)
    } else if matches_an_older_code(&mut tx, keys, id, partner_id, request).await? {
        // A code from an earlier mail: superseded, not mistyped, so it does
        // not count as a wrong try.
        CheckOutcome::NotPending
    } else {
        sqlx::query!(
            "UPDATE dispatches SET check_failures = check_failures + 1, updated_at = now()
              WHERE id = $1",
            id,
        )
        .execute(&mut *tx)
        .await
        .context("counting a wrong try")?;
        CheckOutcome::Wrong
    };
    tx.commit().await.context("committing the check")?;
    Ok(outcome)
}

async fn matches_an_older_code(
    tx: &mut sqlx::PgConnection,
    keys: &Keys,
    newest: Uuid,
    partner_id: Uuid,
    request: &CheckRequest,
) -> anyhow::Result<bool> {
    // The daily rate limit bounds how many there can be.
    let older = sqlx::query!(
        "SELECT id, code_digest FROM dispatches
          WHERE recipient = $1 AND partner_id = $2 AND id <> $3
            AND created_at > now() - make_interval(secs => $4)
            AND id >= verimail_id_at(now() - make_interval(secs => $4::float8 + $5::float8))
            AND id < verimail_id_at(now() + make_interval(secs => $5::float8))
          ORDER BY created_at DESC
          LIMIT 100",
        request.email.normalised(),
        partner_id,
        newest,
        OLDER_CODES_SECS,
        ID_CLOCK_MARGIN_SECS,
    )
    .fetch_all(&mut *tx)
    .await
    .context("reading older dispatches")?;
    Ok(older
        .iter()
        .any(|row| keys.code_matches(row.id, &request.code, &row.code_digest)))
}
