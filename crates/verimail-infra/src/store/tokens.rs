//! Every statement on `tokens` (stored as SHA-256 digests, never in plain).

use anyhow::Context;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::revocations::{CHANNEL, Revoked};

/// A token's row with its partner's account, for authentication.
#[derive(Debug)]
pub struct TokenAccount {
    pub partner_id: Uuid,
    pub kind: String,
    pub status: String,
    pub expires_at: OffsetDateTime,
    pub revoked: bool,
}

/// Stores a token for an existing partner; `false` when there is none.
pub async fn insert(
    pool: &PgPool,
    digest: &[u8],
    partner_id: Uuid,
    expires_at: OffsetDateTime,
) -> anyhow::Result<bool> {
    let inserted = sqlx::query!(
        "INSERT INTO tokens (digest, partner_id, expires_at)
         SELECT $1, id, $3 FROM partners WHERE id = $2",
        digest,
        partner_id,
        expires_at,
    )
    .execute(pool)
    .await
    .context("inserting the token")?;
    Ok(inserted.rows_affected() == 1)
}

/// Revokes a live token and announces it to every intake in the same
/// statement; `false` when no live token has this digest.
pub async fn revoke(pool: &PgPool, digest: &[u8]) -> anyhow::Result<bool> {
    let revoked = sqlx::query_scalar!(
        r#"WITH revoked AS (
              UPDATE tokens SET revoked_at = now() WHERE digest = $1 AND revoked_at IS NULL
              RETURNING 1)
           SELECT count(pg_notify($2, $3)) AS "revoked!" FROM revoked"#,
        digest,
        CHANNEL,
        Revoked::payload_of_token(digest),
    )
    .fetch_one(pool)
    .await
    .context("revoking the token")?;
    Ok(revoked == 1)
}

pub async fn lookup(pool: &PgPool, digest: &[u8]) -> anyhow::Result<Option<TokenAccount>> {
    sqlx::query_as!(
        TokenAccount,
        r#"SELECT t.partner_id, p.kind, p.status, t.expires_at,
                  t.revoked_at IS NOT NULL AS "revoked!"
             FROM tokens t JOIN partners p ON p.id = t.partner_id
            WHERE t.digest = $1"#,
        digest,
    )
    .fetch_optional(pool)
    .await
    .context("looking up a token")
}

/// A live token for ten years, whatever it was (development bootstrap
/// only), inside the caller's transaction.
pub async fn upsert_live(
    tx: &mut PgConnection,
    digest: &[u8],
    partner_id: Uuid,
) -> anyhow::Result<()> {
    sqlx::query!(
        "INSERT INTO tokens (digest, partner_id, expires_at)
         VALUES ($1, $2, now() + interval '10 years')
         ON CONFLICT (digest) DO UPDATE
         SET partner_id = EXCLUDED.partner_id, expires_at = EXCLUDED.expires_at, revoked_at = NULL",
        digest,
        partner_id,
    )
    .execute(&mut *tx)
    .await
    .context("the token")?;
    Ok(())
}
