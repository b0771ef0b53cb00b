//! The worker's conditional state changes. A claim is one call of
//! `claim_dispatch` (migrations/0004), which draws a fresh `ClaimToken`;
//! every later write of that claim presents the token, so a duplicate
//! message, a second worker or a worker whose lease was taken over cannot
//! move a dispatch twice. State names come from `DispatchStatus`.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;
use verimail_domain::{CodeTtl, DispatchStatus, Email, Lang};

/// A claimed dispatch as the row stores it; decoded once into `Claimed`.
#[derive(Debug, sqlx::FromRow)]
struct ClaimedRow {
    email: String,
    lang: String,
    ttl_minutes: i32,
    code_sealed: Option<Vec<u8>>,
    attempts: i32,
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
}

/// A dispatch this worker owns, in domain types.
#[derive(Debug)]
pub struct Claimed {
    pub email: Email,
    pub lang: Lang,
    pub ttl: CodeTtl,
    pub code_sealed: Vec<u8>,
    /// Attempts started, this one included.
    pub attempts: u32,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

impl TryFrom<ClaimedRow> for Claimed {
    /// Why the row cannot be mailed: recorded as the dispatch's `last_error`.
    type Error = String;

    fn try_from(row: ClaimedRow) -> Result<Self, Self::Error> {
        let email = Email::parse_stored(&row.email)
            .ok_or("the stored address does not parse as a canonical address")?;
        let lang = Lang::from_tag(&row.lang)
            .ok_or_else(|| format!("the stored language {:?} is unknown", row.lang))?;
        let ttl = CodeTtl::from_stored(i64::from(row.ttl_minutes))
            .ok_or_else(|| format!("the stored lifetime {} is out of range", row.ttl_minutes))?;
        let code_sealed = row.code_sealed.ok_or("the sealed code is gone")?;
        let attempts = u32::try_from(row.attempts)
            .map_err(|_| format!("the stored attempt count {} is negative", row.attempts))?;
        Ok(Self {
            email,
            lang,
            ttl,
            code_sealed,
            attempts,
            created_at: row.created_at,
            expires_at: row.expires_at,
        })
    }
}

/// A worker's proof of ownership: drawn fresh for every claim and required
/// by every write the claim allows, so a worker whose lease ran out and was
/// taken over changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimToken(Uuid);

impl ClaimToken {
    fn fresh() -> Self {
        Self(Uuid::new_v4())
    }
}

#[derive(Debug)]
pub enum Claim {
    /// This worker owns the dispatch until its lease ends.
    Mine(Claimed, ClaimToken),
    /// This worker owns the dispatch, but its row cannot be mailed (why).
    Undecodable(String, ClaimToken),
    /// Another worker holds a live lease; look again after this long.
    Leased(Duration),
    /// A newer code's hand-off is undecided; look again after this long.
    Held(Duration),
    /// A newer code was handed off; this one is now recorded as superseded.
    Superseded,
    /// Already in a final state: nothing to do.
    Finished(DispatchStatus),
    /// It expired before it could be sent; now recorded as `expired`.
    Expired,
    /// No such dispatch (a stray message).
    Missing,
}

#[derive(Debug, sqlx::FromRow)]
struct ClaimReply {
    outcome: String,
    status: Option<DispatchStatus>,
    wait_secs: Option<f64>,
    #[sqlx(flatten)]
    row: ClaimedRowParts,
}

#[derive(Debug, sqlx::FromRow)]
struct ClaimedRowParts {
    email: Option<String>,
    lang: Option<String>,
    ttl_minutes: Option<i32>,
    code_sealed: Option<Vec<u8>>,
    attempts: Option<i32>,
    created_at: Option<OffsetDateTime>,
    expires_at: Option<OffsetDateTime>,
}

impl ClaimedRowParts {
    fn into_row(self) -> Option<ClaimedRow> {
        Some(ClaimedRow {
            email: self.email?,
            lang: self.lang?,
            ttl_minutes: self.ttl_minutes?,
            code_sealed: self.code_sealed,
            attempts: self.attempts?,
            created_at: self.created_at?,
            expires_at: self.expires_at?,
        })
    }
}

/// How long an expired lease is left to its holder before another worker
/// takes the dispatch over: time for a holder that lost Postgres for a
/// moment to renew, or to record the mail it already sent.
pub const TAKEOVER_GRACE: Duration = Duration::from_secs(1);

/// Claims the dispatch (see `claim_dispatch` in the migrations): one round
/// trip that also voids this recipient's older waiting codes, or says why not.
pub async fn claim(pool: &PgPool, id: Uuid, lease: Duration) -> anyhow::Result<Claim> {
    let token = ClaimToken::fresh();
    let reply: ClaimReply = sqlx::query_as("SELECT * FROM claim_dispatch($1, $2, $3, $4)")
        .bind(id)
        .bind(lease.as_secs_f64())
        .bind(token.0)
        .bind(TAKEOVER_GRACE.as_secs_f64())
        .fetch_one(pool)
        .await
        .context("claiming the dispatch")?;
    reply.decode(token)
}

/// Claims several dispatches in one statement, and so one commit: the calls
/// of `claim_dispatch` run one after another in one transaction, as they
/// would in turn, in id order (so two batches that share a row lock in the
/// same order). If the statement fails, each is claimed alone, so one bad
/// row fails only itself.
pub async fn claim_many(
    pool: &PgPool,
    ids: &[Uuid],
    lease: Duration,
) -> Vec<Result<Claim, String>> {
    if ids.len() == 1 {
        return vec![
            claim(pool, ids[0], lease)
                .await
                .map_err(|e| format!("{e:#}")),
        ];
    }
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i]);
    let tokens: Vec<ClaimToken> = ids.iter().map(|_| ClaimToken::fresh()).collect();
    let sorted_ids: Vec<Uuid> = order.iter().map(|&i| ids[i]).collect();
    let sorted_tokens: Vec<Uuid> = order.iter().map(|&i| tokens[i].0).collect();
    let replies: Result<Vec<(i64, ClaimReply)>, _> = sqlx::query_as::<_, NumberedClaimReply>(
        "SELECT v.n, c.* FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS v(id, token, n)
           CROSS JOIN LATERAL claim_dispatch(v.id, $3, v.token, $4) c
          ORDER BY v.n",
    )
    .bind(&sorted_ids)
    .bind(&sorted_tokens)
    .bind(lease.as_secs_f64())
    .bind(TAKEOVER_GRACE.as_secs_f64())
    .fetch_all(pool)
    .await
    .map(|rows| rows.into_iter().map(|r| (r.n, r.reply)).collect());
    match replies {
        Ok(replies) if replies.len() == ids.len() => {
            let mut out: Vec<Option<Result<Claim, String>>> =
                (0..ids.len()).map(|_| None).collect();
            for (position, (_, reply)) in order.iter().zip(replies) {
                out[*position] = Some(
                    reply
                        .decode(tokens[*position])
                        .map_err(|e| format!("{e:#}")),
                );
            }
            out.into_iter()
                .map(|r| r.unwrap_or_else(|| Err("no answer for this claim".into())))
                .collect()
        }
        Ok(_) | Err(_) => {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(claim(pool, *id, lease).await.map_err(|e| format!("{e:#}")));
            }
            out
        }
    }
}

#[derive(sqlx::FromRow)]
struct NumberedClaimReply {
    n: i64,
    #[sqlx(flatten)]
    reply: ClaimReply,
}

impl ClaimReply {
    fn decode(self, token: ClaimToken) -> anyhow::Result<Claim> {
        let wait = self
            .wait_secs
            .filter(|s| *s > 0.0)
            .map_or(Duration::from_millis(100), Duration::from_secs_f64);
        Ok(match self.outcome.as_str() {
            "claimed" => {
                let row = self
                    .row
                    .into_row()
                    .context("claim_dispatch answered a claim without the row")?;
                match Claimed::try_from(row) {
                    Ok(claimed) => Claim::Mine(claimed, token),
                    Err(reason) => Claim::Undecodable(reason, token),
                }
            }
            "leased" => Claim::Leased(wait),
            "held" => Claim::Held(wait),
            "superseded" => Claim::Superseded,
            "expired" => Claim::Expired,
            "missing" => Claim::Missing,
            "finished" => Claim::Finished(
                self.status
                    .context("claim_dispatch answered finished without a status")?,
            ),
            other => anyhow::bail!("claim_dispatch answered {other:?}"),
        })
    }
}

/// Extends the lease of a claim this worker still holds; `false` once the
/// dispatch is no longer this claim's (taken over, or already final).
pub async fn renew(
    pool: &PgPool,
    id: Uuid,
    token: ClaimToken,
    lease: Duration,
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE dispatches
            SET lease_until = now() + make_interval(secs => $3::float8),
                next_attempt_at = now() + make_interval(secs => $3::float8)
          WHERE id = $1 AND claim_token = $2 AND status = $4",
    )
    .bind(id)
    .bind(token.0)
    .bind(lease.as_secs_f64())
    .bind(DispatchStatus::Sending)
    .execute(pool)
    .await
    .context("renewing the lease")?;
    Ok(done.rows_affected() == 1)
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Failed(String),
    Expired(String),
    /// Try again after `after`, keeping `reason` as `last_error`.
    Retry {
        reason: String,
        after: Duration,
    },
}

impl Outcome {
    /// The state the outcome moves the dispatch to: the one mapping, used
    /// for the SQL and for the metric label alike.
    pub fn status(&self) -> DispatchStatus {
        match self {
            Self::Sent => DispatchStatus::Sent,
            Self::Failed(_) => DispatchStatus::Failed,
            Self::Expired(_) => DispatchStatus::Expired,
            Self::Retry { .. } => DispatchStatus::Retrying,
        }
    }

    fn reason(&self) -> Option<&str> {
        match self {
            Self::Sent => None,
            Self::Failed(reason) | Self::Expired(reason) | Self::Retry { reason, .. } => {
                Some(reason)
            }
        }
    }
}

/// Records an outcome of the claim `token`; returns whether the row changed
/// (`false`: the claim was taken over, or the code was used meanwhile).
pub async fn finish(
    pool: &PgPool,
    id: Uuid,
    token: ClaimToken,
    outcome: &Outcome,
) -> anyhow::Result<bool> {
    let retry_after = match outcome {
        Outcome::Retry { after, .. } => Some(after.as_secs_f64()),
        _ => None,
    };
    let status = outcome.status();
    // The sealed code is wiped as soon as no worker will need it again.
    let done = sqlx::query(
        "UPDATE dispatches
            SET status = $2,
                last_error = $3,
                lease_until = NULL,
                claim_token = NULL,
                sent_at = CASE WHEN $5 THEN now() ELSE sent_at END,
                code_sealed = CASE WHEN $6 THEN NULL ELSE code_sealed END,
                next_attempt_at = COALESCE(now() + make_interval(secs => $4::float8),
                                           next_attempt_at),
                updated_at = now()
          WHERE id = $1 AND claim_token = $7 AND status = $8",
    )
    .bind(id)
    .bind(status)
    .bind(outcome.reason())
    .bind(retry_after)
    .bind(status == DispatchStatus::Sent)
    .bind(status.is_terminal())
    .bind(token.0)
    .bind(DispatchStatus::Sending)
    .execute(pool)
    .await
    .context("recording the outcome")?;
    Ok(done.rows_affected() == 1)
}

/// One outcome for `finish_many`.
#[derive(Debug, Clone)]
pub struct Finish {
    pub id: Uuid,
    pub token: ClaimToken,
    pub outcome: Outcome,
}

/// Records several outcomes in one statement (one commit); each row is
/// fenced by its own token exactly as in `finish`. Answers, in order,
/// whether each row changed. If the statement fails, each is written alone.
pub async fn finish_many(pool: &PgPool, items: &[Finish]) -> Vec<Result<bool, String>> {
    if items.len() == 1 {
        let one = &items[0];
        return vec![
            finish(pool, one.id, one.token, &one.outcome)
                .await
                .map_err(|e| format!("{e:#}")),
        ];
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| items[i].id);
    let column = |f: &dyn Fn(&Finish) -> Option<String>| -> Vec<Option<String>> {
        order.iter().map(|&i| f(&items[i])).collect()
    };
    let ids: Vec<Uuid> = order.iter().map(|&i| items[i].id).collect();
    let tokens: Vec<Uuid> = order.iter().map(|&i| items[i].token.0).collect();
    let statuses = column(&|f| Some(f.outcome.status().as_str().to_owned()));
    let reasons = column(&|f| f.outcome.reason().map(str::to_owned));
    let retries: Vec<Option<f64>> = order
        .iter()
        .map(|&i| match &items[i].outcome {
            Outcome::Retry { after, .. } => Some(after.as_secs_f64()),
            _ => None,
        })
        .collect();
    let terminal: Vec<bool> = order
        .iter()
        .map(|&i| items[i].outcome.status().is_terminal())
        .collect();
    let changed: Result<Vec<Uuid>, _> = sqlx::query_scalar(
        "UPDATE dispatches d
            SET status = v.status,
                last_error = v.reason,
                lease_until = NULL,
                claim_token = NULL,
                sent_at = CASE WHEN v.status = $7 THEN now() ELSE d.sent_at END,
                code_sealed = CASE WHEN v.terminal THEN NULL ELSE d.code_sealed END,
                next_attempt_at = COALESCE(now() + make_interval(secs => v.retry_secs),
                                           d.next_attempt_at),
                updated_at = now()
           FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::float8[], $6::bool[])
                AS v(id, token, status, reason, retry_secs, terminal)
          WHERE d.id = v.id AND d.claim_token = v.token AND d.status = $8
         RETURNING d.id",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(&statuses)
    .bind(&reasons)
    .bind(&retries)
    .bind(&terminal)
    .bind(DispatchStatus::Sent.as_str())
    .bind(DispatchStatus::Sending.as_str())
    .fetch_all(pool)
    .await;
    match changed {
        Ok(changed) => {
            let changed: std::collections::HashSet<Uuid> = changed.into_iter().collect();
            items.iter().map(|f| Ok(changed.contains(&f.id))).collect()
        }
        Err(_) => {
            let mut out = Vec::with_capacity(items.len());
            for one in items {
                out.push(
                    finish(pool, one.id, one.token, &one.outcome)
                        .await
                        .map_err(|e| format!("{e:#}")),
                );
            }
            out
        }
    }
}

/// The worker's claims and outcome writes, group-committed (see `batch`).
pub struct Writes {
    claims: verimail_infra::batch::Batcher<Uuid, Result<Claim, String>>,
    outcomes: verimail_infra::batch::Batcher<Finish, Result<bool, String>>,
}

/// Requests per statement at most.
const BATCH_MAX: usize = 64;

impl Writes {
    pub fn new(pool: &PgPool, lease: Duration) -> Self {
        let (claim_pool, finish_pool) = (pool.clone(), pool.clone());
        Self {
            claims: verimail_infra::batch::Batcher::spawn(BATCH_MAX, move |ids: Vec<Uuid>| {
                let pool = claim_pool.clone();
                async move { Ok(claim_many(&pool, &ids, lease).await) }
            }),
            outcomes: verimail_infra::batch::Batcher::spawn(
                BATCH_MAX,
                move |items: Vec<Finish>| {
                    let pool = finish_pool.clone();
                    async move { Ok(finish_many(&pool, &items).await) }
                },
            ),
        }
    }

    pub async fn claim(&self, id: Uuid) -> anyhow::Result<Claim> {
        self.claims.call(id).await?.map_err(anyhow::Error::msg)
    }

    pub async fn finish(
        &self,
        id: Uuid,
        token: ClaimToken,
        outcome: &Outcome,
    ) -> anyhow::Result<bool> {
        let item = Finish {
            id,
            token,
            outcome: outcome.clone(),
        };
        self.outcomes.call(item).await?.map_err(anyhow::Error::msg)
    }
}

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
    sqlx::query_scalar(
        "WITH stuck AS (
            SELECT id FROM dispatches
             WHERE code_sealed IS NOT NULL
               AND status IN ('queued', 'sending', 'retrying')
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
    )
    .bind(grace.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await
    .context("finding overdue dispatches")
}

/// Forgets remembered send answers past their 24-hour window
/// (migrations/0005), in batches until none is left or about a second has
/// gone: one batch per sweep could not keep up with 1,000 keyed sends/s.
pub async fn prune_replays(pool: &PgPool) -> anyhow::Result<u64> {
    const BATCH: u64 = 5000;
    let started = std::time::Instant::now();
    let mut removed = 0;
    loop {
        let done = sqlx::query(
            "DELETE FROM send_replays WHERE ctid IN (
                SELECT ctid FROM send_replays
                 WHERE created_at < now() - interval '24 hours'
                 LIMIT 5000)",
        )
        .execute(pool)
        .await
        .context("pruning remembered send answers")?
        .rows_affected();
        removed += done;
        if done < BATCH || started.elapsed() > Duration::from_secs(1) {
            return Ok(removed);
        }
    }
}
