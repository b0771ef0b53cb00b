//! The intake's reads and writes of dispatches.

use anyhow::Context;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;
use verimail_core::{CodeTtl, Email, Lang};

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
    Accepted,
    RateLimited,
}

/// Rate-limit check, supersession and insert in one round trip (see the
/// `accept_dispatch` function in the migrations for why it is atomic).
pub async fn accept(
    pool: &PgPool,
    new: NewDispatch<'_>,
    limit: RateLimit,
) -> anyhow::Result<Admission> {
    let outcome: String =
        sqlx::query_scalar("SELECT accept_dispatch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .bind(new.id)
            .bind(new.partner_id)
            .bind(new.email.normalised())
            .bind(new.email.as_str())
            .bind(new.lang.as_str())
            .bind(new.ttl.minutes() as i32)
            .bind(new.code_digest)
            .bind(new.code_sealed)
            .bind(limit.per_hour as i32)
            .bind(limit.per_day as i32)
            .fetch_one(pool)
            .await
            .context("recording the dispatch")?;
    match outcome.as_str() {
        "accepted" => Ok(Admission::Accepted),
        "rate_limited" => Ok(Admission::RateLimited),
        other => anyhow::bail!("accept_dispatch answered {other:?}"),
    }
}

/// The broker did not take the message: the code is void and the attempt
/// stops counting toward the rate limit.
pub async fn mark_handoff_failed(pool: &PgPool, id: Uuid, reason: &str) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE dispatches
            SET status = 'failed', counts_toward_limit = false, code_sealed = NULL,
                last_error = $2, updated_at = now()
          WHERE id = $1 AND status = 'queued'",
    )
    .bind(id)
    .bind(reason)
    .execute(pool)
    .await
    .context("recording the failed hand-off")?;
    Ok(())
}

#[derive(Debug, sqlx::FromRow, serde::Serialize)]
pub struct DispatchView {
    pub id: Uuid,
    pub status: String,
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
