//! The intake's reads and writes of dispatches.

use anyhow::Context;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;
use verimail_domain::{CodeTtl, DispatchStatus, Email, Lang};

use crate::RateLimit;

pub struct NewDispatch<'a> {
    pub id: Uuid,
    pub partner_id: Uuid,
    pub email: &'a Email,
    pub lang: Lang,
    pub ttl: CodeTtl,
    pub code_digest: Vec<u8>,
    pub code_sealed: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Accepted {
        /// Older codes of this recipient and partner wait for a worker: they
        /// are to be superseded once this one's hand-off is confirmed.
        older_waiting: bool,
    },
    RateLimited,
}

/// Rate-limit check and insert in one round trip (see the `accept_dispatch`
/// function in the migrations for why it is atomic).
pub async fn accept(
    pool: &PgPool,
    new: NewDispatch<'_>,
    limit: RateLimit,
    handoff_window: std::time::Duration,
) -> anyhow::Result<Admission> {
    accept_one(pool, &Record::from(new), limit, handoff_window).await
}

/// One record for `accept_many`, owned (it travels to the batch writer).
#[derive(Debug, Clone)]
pub struct Record {
    pub id: Uuid,
    pub partner_id: Uuid,
    pub recipient: String,
    pub email: String,
    pub lang: &'static str,
    pub ttl_minutes: i32,
    pub code_digest: Vec<u8>,
    pub code_sealed: Vec<u8>,
}

impl From<NewDispatch<'_>> for Record {
    fn from(new: NewDispatch<'_>) -> Self {
        Self {
            id: new.id,
            partner_id: new.partner_id,
            recipient: new.email.normalised(),
            email: new.email.as_str().to_owned(),
            lang: new.lang.as_str(),
            ttl_minutes: new.ttl.minutes() as i32,
            code_digest: new.code_digest,
            code_sealed: new.code_sealed,
        }
    }
}

fn admission(outcome: &str) -> anyhow::Result<Admission> {
    match outcome {
        "accepted" => Ok(Admission::Accepted {
            older_waiting: false,
        }),
        "accepted_older_waiting" => Ok(Admission::Accepted {
            older_waiting: true,
        }),
        "rate_limited" => Ok(Admission::RateLimited),
        other => anyhow::bail!("accept_dispatch answered {other:?}"),
    }
}

/// Several records in one statement, and so one commit: `accept_dispatch`
/// runs for each in turn inside one transaction, so two sends to one address
/// in the same batch count each other exactly as they would alone. They run
/// in the order of the per-recipient lock keys, so two intakes' batches take
/// those locks in the same order and cannot deadlock. If the statement
/// fails, each is recorded alone, so one bad record fails only itself.
pub async fn accept_many(
    pool: &PgPool,
    records: &[Record],
    limit: RateLimit,
    handoff_window: std::time::Duration,
) -> Vec<Result<Admission, String>> {
    if records.len() > 1
        && let Ok(answers) = accept_batch(pool, records, limit, handoff_window).await
    {
        return answers;
    }
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        out.push(
            accept_one(pool, record, limit, handoff_window)
                .await
                .map_err(|e| format!("{e:#}")),
        );
    }
    out
}

async fn accept_batch(
    pool: &PgPool,
    records: &[Record],
    limit: RateLimit,
    handoff_window: std::time::Duration,
) -> anyhow::Result<Vec<Result<Admission, String>>> {
    let column = |f: &dyn Fn(&Record) -> String| -> Vec<String> { records.iter().map(f).collect() };
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT s.n, accept_dispatch(s.id, s.partner, s.recipient, s.email, s.lang, s.ttl,
                                     s.digest, s.sealed, $9, $10, $11)
           FROM (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                                      $6::int[], $7::bytea[], $8::bytea[])
                        WITH ORDINALITY AS v(id, partner, recipient, email, lang, ttl, digest, sealed, n)
                  ORDER BY hashtextextended(v.recipient, 0), v.n) s",
    )
    .bind(records.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.partner_id).collect::<Vec<_>>())
    .bind(column(&|r| r.recipient.clone()))
    .bind(column(&|r| r.email.clone()))
    .bind(column(&|r| r.lang.to_owned()))
    .bind(records.iter().map(|r| r.ttl_minutes).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.code_digest.clone()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.code_sealed.clone()).collect::<Vec<_>>())
    .bind(limit.per_hour as i32)
    .bind(limit.per_day as i32)
    .bind(handoff_window.as_secs_f64())
    .fetch_all(pool)
    .await
    .context("recording the dispatches")?;
    anyhow::ensure!(rows.len() == records.len(), "a batch lost records");
    let mut out: Vec<Result<Admission, String>> = (0..records.len())
        .map(|_| Err("no answer".to_owned()))
        .collect();
    for (n, outcome) in rows {
        let slot = usize::try_from(n - 1).context("a record's position")?;
        *out.get_mut(slot).context("a record's position")? =
            admission(&outcome).map_err(|e| format!("{e:#}"));
    }
    Ok(out)
}

async fn accept_one(
    pool: &PgPool,
    r: &Record,
    limit: RateLimit,
    handoff_window: std::time::Duration,
) -> anyhow::Result<Admission> {
    let outcome: String =
        sqlx::query_scalar("SELECT accept_dispatch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
            .bind(r.id)
            .bind(r.partner_id)
            .bind(&r.recipient)
            .bind(&r.email)
            .bind(r.lang)
            .bind(r.ttl_minutes)
            .bind(&r.code_digest)
            .bind(&r.code_sealed)
            .bind(limit.per_hour as i32)
            .bind(limit.per_day as i32)
            .bind(handoff_window.as_secs_f64())
            .fetch_one(pool)
            .await
            .context("recording the dispatch")?;
    admission(&outcome)
}

/// The intake's records, group-committed across concurrent sends.
pub struct Records {
    batcher: verimail_infra::batch::Batcher<Record, Result<Admission, String>>,
}

/// Records per statement at most.
const BATCH_MAX: usize = 64;

impl Records {
    pub fn new(pool: &PgPool, limit: RateLimit, handoff_window: std::time::Duration) -> Self {
        let pool = pool.clone();
        Self {
            batcher: verimail_infra::batch::Batcher::spawn(
                BATCH_MAX,
                move |records: Vec<Record>| {
                    let pool = pool.clone();
                    async move { Ok(accept_many(&pool, &records, limit, handoff_window).await) }
                },
            ),
        }
    }

    pub async fn accept(&self, new: NewDispatch<'_>) -> anyhow::Result<Admission> {
        self.batcher
            .call(Record::from(new))
            .await?
            .map_err(anyhow::Error::msg)
    }
}

/// The record of `id` failed with an error, so the client is told
/// CBC.99004002 — but the insert may have committed all the same (the answer
/// was lost with the connection). Voids such a row, if there is one, so the
/// sweeper never mails a code whose request was answered with an error.
pub async fn void_unconfirmed(pool: &PgPool, id: Uuid) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE dispatches
            SET status = $2, counts_toward_limit = false, code_sealed = NULL,
                last_error = 'the intake could not confirm the record', updated_at = now()
          WHERE id = $1 AND status = $3",
    )
    .bind(id)
    .bind(DispatchStatus::Failed)
    .bind(DispatchStatus::Queued)
    .execute(pool)
    .await
    .context("voiding an unconfirmed record")?;
    Ok(())
}

/// The hand-off of `id` is confirmed: older codes of the same recipient and
/// partner that wait for a worker are void now.
pub async fn supersede_older(pool: &PgPool, id: Uuid) -> anyhow::Result<i32> {
    sqlx::query_scalar("SELECT supersede_older($1)")
        .bind(id)
        .fetch_one(pool)
        .await
        .context("superseding older codes")
}

/// The broker did not confirm the message: void the code, so no worker will
/// mail it, and stop counting the attempt toward the rate limit. Returns
/// `false` when the dispatch is already on its way (a worker claimed it: the
/// message got through after all) or its hand-off window has passed (the
/// sweeper will publish it): then it will be mailed, and the answer is 204.
pub async fn mark_handoff_failed(pool: &PgPool, id: Uuid, reason: &str) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE dispatches
            SET status = $3, counts_toward_limit = false, code_sealed = NULL,
                last_error = $2, updated_at = now()
          WHERE id = $1 AND status = $4 AND handoff_by > now()",
    )
    .bind(id)
    .bind(reason)
    .bind(DispatchStatus::Failed)
    .bind(DispatchStatus::Queued)
    .execute(pool)
    .await
    .context("recording the failed hand-off")?;
    Ok(done.rows_affected() == 1)
}

#[derive(Debug, sqlx::FromRow, serde::Serialize)]
pub struct DispatchView {
    pub id: Uuid,
    pub status: DispatchStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub sent_at: Option<OffsetDateTime>,
}

/// A partner sees only its own dispatches.
pub async fn find(
    pool: &PgPool,
    id: Uuid,
    partner_id: Uuid,
) -> anyhow::Result<Option<DispatchView>> {
    sqlx::query_as(
        "SELECT id, status, attempts, last_error, created_at, expires_at, sent_at
           FROM dispatches WHERE id = $1 AND partner_id = $2",
    )
    .bind(id)
    .bind(partner_id)
    .fetch_optional(pool)
    .await
    .context("reading the dispatch")
}

/// Wrong tries after which a code is void (README, "Checking a code").
pub const MAX_CHECK_FAILURES: i32 = 3;

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
pub async fn check_code(
    pool: &PgPool,
    keys: &verimail_domain::secrets::Keys,
    partner_id: Uuid,
    request: &verimail_domain::CheckRequest,
) -> anyhow::Result<CheckOutcome> {
    let mut tx = pool.begin().await.context("starting the check")?;
    let newest: Option<(Uuid, DispatchStatus, i32, Vec<u8>, bool)> = sqlx::query_as(
        "SELECT id, status, check_failures, code_digest, expires_at <= now()
           FROM dispatches
          WHERE recipient = $1 AND partner_id = $2 AND counts_toward_limit
          ORDER BY created_at DESC
          LIMIT 1
            FOR UPDATE",
    )
    .bind(request.email.normalised())
    .bind(partner_id)
    .fetch_optional(&mut *tx)
    .await
    .context("reading the newest dispatch")?;
    let Some((id, status, failures, digest, expired)) = newest else {
        return Ok(CheckOutcome::NotPending);
    };
    if !status.is_checkable() || expired {
        return Ok(CheckOutcome::NotPending);
    }
    if failures >= MAX_CHECK_FAILURES {
        return Ok(CheckOutcome::Void);
    }
    let outcome = if keys.code_matches(id, &request.code, &digest) {
        // Consumed: a queued mail is no longer worth sending, and the sealed
        // copy is no longer needed.
        sqlx::query(
            "UPDATE dispatches SET status = $2, code_sealed = NULL, updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(DispatchStatus::Verified)
        .execute(&mut *tx)
        .await
        .context("consuming the code")?;
        CheckOutcome::Verified(id)
    } else if matches_an_older_code(&mut tx, keys, id, partner_id, request).await? {
        // A code from an earlier mail: superseded, not mistyped, so it does
        // not count as a wrong try.
        CheckOutcome::NotPending
    } else {
        sqlx::query("UPDATE dispatches SET check_failures = check_failures + 1, updated_at = now() WHERE id = $1")
            .bind(id)
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
    keys: &verimail_domain::secrets::Keys,
    newest: Uuid,
    partner_id: Uuid,
    request: &verimail_domain::CheckRequest,
) -> anyhow::Result<bool> {
    // The daily rate limit bounds how many there can be.
    let older: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT id, code_digest FROM dispatches
          WHERE recipient = $1 AND partner_id = $2 AND id <> $3
            AND created_at > now() - interval '1 day'
          ORDER BY created_at DESC
          LIMIT 100",
    )
    .bind(request.email.normalised())
    .bind(partner_id)
    .bind(newest)
    .fetch_all(&mut *tx)
    .await
    .context("reading older dispatches")?;
    Ok(older
        .iter()
        .any(|(id, digest)| keys.code_matches(*id, &request.code, digest)))
}
