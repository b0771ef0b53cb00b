//! Every statement on `access_keys` (AK/SK pairs; the secret key sealed).

use anyhow::Context;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::revocations::{CHANNEL, Revoked};

/// An access key's row with its partner's account, for authentication.
#[derive(Debug)]
pub struct KeyAccount {
    pub partner_id: Uuid,
    pub kind: String,
    pub status: String,
    pub secret_sealed: Vec<u8>,
    pub revoked: bool,
}

/// Stores a key for an existing partner; `false` when there is none.
pub async fn insert(
    pool: &PgPool,
    access_key: &str,
    partner_id: Uuid,
    secret_sealed: &[u8],
) -> anyhow::Result<bool> {
    let inserted = sqlx::query!(
        "INSERT INTO access_keys (access_key, partner_id, secret_sealed)
         SELECT $1, id, $3 FROM partners WHERE id = $2",
        access_key,
        partner_id,
        secret_sealed,
    )
    .execute(pool)
    .await
    .context("inserting the access key")?;
    Ok(inserted.rows_affected() == 1)
}

/// Revokes a live key and announces it to every intake in the same
/// statement; `false` when no live key has this name.
pub async fn revoke(pool: &PgPool, access_key: &str) -> anyhow::Result<bool> {
    let revoked = sqlx::query_scalar!(
        r#"WITH revoked AS (
              UPDATE access_keys SET revoked_at = now()
               WHERE access_key = $1 AND revoked_at IS NULL
              RETURNING 1)
           SELECT count(pg_notify($2, $3)) AS "revoked!" FROM revoked"#,
        access_key,
        CHANNEL,
        Revoked::payload_of_access_key(access_key),
    )
    .fetch_one(pool)
    .await
    .context("revoking the access key")?;
    Ok(revoked == 1)
}

pub async fn lookup(pool: &PgPool, access_key: &str) -> anyhow::Result<Option<KeyAccount>> {
    sqlx::query_as!(
        KeyAccount,
        r#"SELECT k.partner_id, p.kind, p.status, k.secret_sealed,
                  k.revoked_at IS NOT NULL AS "revoked!"
             FROM access_keys k JOIN partners p ON p.id = k.partner_id
            WHERE k.access_key = $1"#,
        access_key,
    )
    .fetch_optional(pool)
    .await
    .context("looking up an access key")
}

/// A live key with this secret, whatever it was (development bootstrap
/// only), inside the caller's transaction.
pub async fn upsert_live(
    tx: &mut PgConnection,
    access_key: &str,
    partner_id: Uuid,
    secret_sealed: &[u8],
) -> anyhow::Result<()> {
    sqlx::query!(
        "INSERT INTO access_keys (access_key, partner_id, secret_sealed) VALUES ($1, $2, $3)
         ON CONFLICT (access_key) DO UPDATE
         SET partner_id = EXCLUDED.partner_id, secret_sealed = EXCLUDED.secret_sealed, revoked_at = NULL",
        access_key,
        partner_id,
        secret_sealed,
    )
    .execute(&mut *tx)
    .await
    .context("the access key")?;
    Ok(())
}
