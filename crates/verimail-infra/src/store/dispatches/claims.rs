//! The worker's claims. A claim is one call of `claim_dispatch_with_partner`
//! (`claim_dispatch` of migrations/0004, 0011, 0013, with the partner in its
//! answer since 0017), which draws a fresh `ClaimToken`; every later
//! write of that claim presents the token, so a duplicate message, a second
//! worker or a worker whose lease was taken over cannot move a dispatch twice.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;
use verimail_domain::{CodeTtl, DispatchStatus, Email, Lang};

use crate::batch::batch_else_each;

/// A dispatch this worker owns, in domain types.
#[derive(Debug)]
pub struct Claimed {
    /// Whose send it is: the mail goes out with that partner's sender.
    pub partner_id: Uuid,
    pub email: Email,
    pub lang: Lang,
    pub ttl: CodeTtl,
    pub code_sealed: Vec<u8>,
    /// Attempts started, this one included.
    pub attempts: u32,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// This claim took the dispatch over from a claim whose lease had run
    /// out (its worker died or stalled).
    pub taken_over: bool,
}

/// A claimed row as `claim_dispatch_with_partner` returns it (every column of a
/// set-returning function is nullable); decoded once into `Claimed`.
struct ClaimReply {
    outcome: Option<String>,
    status: Option<String>,
    wait_secs: Option<f64>,
    email: Option<String>,
    lang: Option<String>,
    ttl_minutes: Option<i32>,
    code_sealed: Option<Vec<u8>>,
    attempts: Option<i32>,
    created_at: Option<OffsetDateTime>,
    expires_at: Option<OffsetDateTime>,
    partner_id: Option<Uuid>,
}

/// A worker's proof of ownership: drawn fresh for every claim and required
/// by every write the claim allows, so a worker whose lease ran out and was
/// taken over changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimToken(pub(super) Uuid);

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

/// How long an expired lease is left to its holder before another worker
/// takes the dispatch over: time for a holder that lost Postgres for a
/// moment to renew, or to record the mail it already sent.
pub const TAKEOVER_GRACE: Duration = Duration::from_secs(1);

/// Claims the dispatch (see `claim_dispatch_with_partner` in the migrations): one round
/// trip that also voids this recipient's older waiting codes, or says why not.
pub async fn claim(pool: &PgPool, id: Uuid, lease: Duration) -> anyhow::Result<Claim> {
    claim_batch(pool, &[id], lease)
        .await?
        .into_iter()
        .next()
        .context("claim_dispatch gave no answer")?
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
) -> Vec<anyhow::Result<Claim>> {
    batch_else_each(
        ids,
        |all| claim_batch(pool, all, lease),
        |&id| claim(pool, id, lease),
    )
    .await
}

/// The one claiming statement: a batch of one is a single claim.
async fn claim_batch(
    pool: &PgPool,
    ids: &[Uuid],
    lease: Duration,
) -> anyhow::Result<Vec<anyhow::Result<Claim>>> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i]);
    let tokens: Vec<ClaimToken> = ids.iter().map(|_| ClaimToken::fresh()).collect();
    let sorted_ids: Vec<Uuid> = order.iter().map(|&i| ids[i]).collect();
    let sorted_tokens: Vec<Uuid> = order.iter().map(|&i| tokens[i].0).collect();
    let replies = sqlx::query_as!(
        ClaimReply,
        "SELECT c.* FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS v(id, token, n)
           CROSS JOIN LATERAL claim_dispatch_with_partner(v.id, $3, v.token, $4) c
          ORDER BY v.n",
        &sorted_ids,
        &sorted_tokens,
        lease.as_secs_f64(),
        TAKEOVER_GRACE.as_secs_f64(),
    )
    .fetch_all(pool)
    .await
    .context("claiming the dispatch")?;
    anyhow::ensure!(replies.len() == ids.len(), "a batch of claims lost rows");
    let mut out: Vec<Option<anyhow::Result<Claim>>> = ids.iter().map(|_| None).collect();
    for (position, reply) in order.iter().zip(replies) {
        out[*position] = Some(reply.decode(tokens[*position]));
    }
    Ok(out
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("no answer for this claim"))))
        .collect())
}

impl ClaimReply {
    fn decode(self, token: ClaimToken) -> anyhow::Result<Claim> {
        let wait = self
            .wait_secs
            .filter(|s| *s > 0.0)
            .map_or(Duration::from_millis(100), Duration::from_secs_f64);
        Ok(match self.outcome.as_deref().unwrap_or_default() {
            "claimed" => {
                let (
                    Some(partner_id),
                    Some(email),
                    Some(lang),
                    Some(ttl_minutes),
                    Some(attempts),
                    Some(created_at),
                    Some(expires_at),
                ) = (
                    self.partner_id,
                    self.email,
                    self.lang,
                    self.ttl_minutes,
                    self.attempts,
                    self.created_at,
                    self.expires_at,
                )
                else {
                    anyhow::bail!("claim_dispatch answered a claim without the row");
                };
                let row = StoredRow {
                    // A claim's `wait_secs`: how long ago the lease it took
                    // over ran out (migrations/0013); NULL for a fresh claim.
                    taken_over: self.wait_secs.is_some(),
                    partner_id,
                    email,
                    lang,
                    ttl_minutes,
                    code_sealed: self.code_sealed,
                    attempts,
                    created_at,
                    expires_at,
                };
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
            "finished" => {
                let status = self
                    .status
                    .context("claim_dispatch answered finished without a status")?;
                Claim::Finished(
                    DispatchStatus::parse(&status)
                        .with_context(|| format!("unknown dispatch status {status:?}"))?,
                )
            }
            other => anyhow::bail!("claim_dispatch answered {other:?}"),
        })
    }
}

/// A claimed row as the table stores it.
struct StoredRow {
    partner_id: Uuid,
    email: String,
    lang: String,
    ttl_minutes: i32,
    code_sealed: Option<Vec<u8>>,
    attempts: i32,
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    taken_over: bool,
}

impl TryFrom<StoredRow> for Claimed {
    /// Why the row cannot be mailed: recorded as the dispatch's `last_error`.
    type Error = String;

    fn try_from(row: StoredRow) -> Result<Self, Self::Error> {
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
            partner_id: row.partner_id,
            email,
            lang,
            ttl,
            code_sealed,
            attempts,
            created_at: row.created_at,
            expires_at: row.expires_at,
            taken_over: row.taken_over,
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
    let done = sqlx::query!(
        "UPDATE dispatches
            SET lease_until = now() + make_interval(secs => $3::float8),
                next_attempt_at = now() + make_interval(secs => $3::float8)
          WHERE id = $1 AND claim_token = $2 AND status = $4",
        id,
        token.0,
        lease.as_secs_f64(),
        DispatchStatus::Sending.as_str(),
    )
    .execute(pool)
    .await
    .context("renewing the lease")?;
    Ok(done.rows_affected() == 1)
}
