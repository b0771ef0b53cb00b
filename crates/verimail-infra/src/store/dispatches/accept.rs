//! The intake's record of a dispatch (rate limit and insert in one call of
//! `accept_dispatch`, see the migrations for why it is atomic) and what
//! follows its hand-off to the broker.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use uuid::Uuid;
use verimail_domain::{CodeTtl, DispatchStatus, Email, Lang, RateLimit};

use super::BATCH_MAX;
use crate::batch::{Batcher, batch_else_each};

/// A dispatch to record: the one shape it has from the handler to the
/// statement.
#[derive(Debug, Clone)]
pub struct NewDispatch {
    pub id: Uuid,
    pub partner_id: Uuid,
    pub email: Email,
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

fn admission(outcome: Option<&str>) -> anyhow::Result<Admission> {
    match outcome {
        Some("accepted") => Ok(Admission::Accepted {
            older_waiting: false,
        }),
        Some("accepted_older_waiting") => Ok(Admission::Accepted {
            older_waiting: true,
        }),
        Some("rate_limited") => Ok(Admission::RateLimited),
        other => anyhow::bail!("accept_dispatch answered {other:?}"),
    }
}

/// Records one dispatch, alone.
pub async fn accept(
    pool: &PgPool,
    new: &NewDispatch,
    limit: RateLimit,
    handoff_window: Duration,
) -> anyhow::Result<Admission> {
    let mut answers = accept_batch(pool, std::slice::from_ref(new), limit, handoff_window)
        .await?
        .into_iter();
    answers.next().context("accept_dispatch gave no answer")?
}

/// Several records in one statement, and so one commit: `accept_dispatch`
/// runs for each in turn inside one transaction, so two sends to one address
/// in the same batch count each other exactly as they would alone. They run
/// in the order of the per-recipient lock keys, so two intakes' batches take
/// those locks in the same order and cannot deadlock. If the statement
/// fails, each is recorded alone, so one bad record fails only itself.
pub async fn accept_many(
    pool: &PgPool,
    records: &[NewDispatch],
    limit: RateLimit,
    handoff_window: Duration,
) -> Vec<anyhow::Result<Admission>> {
    batch_else_each(
        records,
        |all| accept_batch(pool, all, limit, handoff_window),
        |one| accept(pool, one, limit, handoff_window),
    )
    .await
}

/// The one statement that records: a batch of one is a single record.
async fn accept_batch(
    pool: &PgPool,
    records: &[NewDispatch],
    limit: RateLimit,
    handoff_window: Duration,
) -> anyhow::Result<Vec<anyhow::Result<Admission>>> {
    let ids: Vec<Uuid> = records.iter().map(|r| r.id).collect();
    let partners: Vec<Uuid> = records.iter().map(|r| r.partner_id).collect();
    let recipients: Vec<String> = records.iter().map(|r| r.email.normalised()).collect();
    let emails: Vec<String> = records
        .iter()
        .map(|r| r.email.as_str().to_owned())
        .collect();
    let langs: Vec<String> = records.iter().map(|r| r.lang.as_str().to_owned()).collect();
    let ttls: Vec<i32> = records
        .iter()
        .map(|r| i32::try_from(r.ttl.minutes()).unwrap_or(i32::MAX))
        .collect();
    let digests: Vec<Vec<u8>> = records.iter().map(|r| r.code_digest.clone()).collect();
    let sealed: Vec<Vec<u8>> = records.iter().map(|r| r.code_sealed.clone()).collect();
    let rows = sqlx::query!(
        r#"SELECT s.n AS "n!", accept_dispatch(s.id, s.partner, s.recipient, s.email, s.lang, s.ttl,
                                     s.digest, s.sealed, $9, $10, $11) AS outcome
           FROM (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                                      $6::int[], $7::bytea[], $8::bytea[])
                        WITH ORDINALITY AS v(id, partner, recipient, email, lang, ttl, digest, sealed, n)
                  ORDER BY hashtextextended(v.recipient, 0), v.n) s"#,
        &ids,
        &partners,
        &recipients,
        &emails,
        &langs,
        &ttls,
        &digests,
        &sealed,
        limit.per_hour as i32,
        limit.per_day as i32,
        handoff_window.as_secs_f64(),
    )
    .fetch_all(pool)
    .await
    .context("recording the dispatch")?;
    anyhow::ensure!(rows.len() == records.len(), "a batch lost records");
    let mut out: Vec<Option<anyhow::Result<Admission>>> = records.iter().map(|_| None).collect();
    for row in rows {
        let slot = usize::try_from(row.n - 1).context("a record's position")?;
        *out.get_mut(slot).context("a record's position")? =
            Some(admission(row.outcome.as_deref()));
    }
    Ok(out
        .into_iter()
        .map(|answer| answer.unwrap_or_else(|| Err(anyhow::anyhow!("no answer for this record"))))
        .collect())
}

/// The intake's records, group-committed across concurrent sends.
pub struct Records {
    batcher: Batcher<NewDispatch, Admission>,
}

impl Records {
    pub fn new(pool: &PgPool, limit: RateLimit, handoff_window: Duration) -> Self {
        let pool = pool.clone();
        Self {
            batcher: Batcher::spawn(BATCH_MAX, move |records: Vec<NewDispatch>| {
                let pool = pool.clone();
                async move { accept_many(&pool, &records, limit, handoff_window).await }
            }),
        }
    }

    pub async fn accept(&self, new: NewDispatch) -> anyhow::Result<Admission> {
        self.batcher.call(new).await
    }
}

/// The record of `id` failed with an error, so the client is told
/// CBC.99004002 — but the insert may have committed all the same (the answer
/// was lost with the connection). Voids such a row, if there is one, so the
/// sweeper never mails a code whose request was answered with an error.
pub async fn void_unconfirmed(pool: &PgPool, id: Uuid) -> anyhow::Result<()> {
    sqlx::query!(
        "UPDATE dispatches
            SET status = $2, counts_toward_limit = false, code_sealed = NULL,
                last_error = 'the intake could not confirm the record', updated_at = now()
          WHERE id = $1 AND status = $3",
        id,
        DispatchStatus::Failed.as_str(),
        DispatchStatus::Queued.as_str(),
    )
    .execute(pool)
    .await
    .context("voiding an unconfirmed record")?;
    Ok(())
}

/// The hand-off of `id` is confirmed: older codes of the same recipient and
/// partner that wait for a worker are void now.
pub async fn supersede_older(pool: &PgPool, id: Uuid) -> anyhow::Result<i32> {
    sqlx::query_scalar!(r#"SELECT supersede_older($1) AS "superseded!""#, id)
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
    let done = sqlx::query!(
        "UPDATE dispatches
            SET status = $3, counts_toward_limit = false, code_sealed = NULL,
                last_error = $2, updated_at = now()
          WHERE id = $1 AND status = $4 AND handoff_by > now()",
        id,
        reason,
        DispatchStatus::Failed.as_str(),
        DispatchStatus::Queued.as_str(),
    )
    .execute(pool)
    .await
    .context("recording the failed hand-off")?;
    Ok(done.rows_affected() == 1)
}
