//! Partners and tokens, as the CLI manages them.

use anyhow::Context;
use base64::Engine;
use rand::RngCore;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;
use verimail_domain::secrets::Keys;

use crate::auth::revocation::{self, Revoked};

pub const TOKEN_PREFIX: &str = "vmt_";

/// Only partners may call the API; a customer account authenticates and is
/// refused with CBC.99000035.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    Partner,
    Customer,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Partner => "partner",
            Self::Customer => "customer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Partner, Self::Customer]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A suspended partner authenticates and is refused with CBC.0151.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    Active,
    Suspended,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Active, Self::Suspended]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    pub fn suspended_if(suspended: bool) -> Self {
        if suspended {
            Self::Suspended
        } else {
            Self::Active
        }
    }
}

pub async fn create_partner(
    pool: &PgPool,
    name: &str,
    kind: AccountKind,
    status: AccountStatus,
) -> anyhow::Result<Uuid> {
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO partners (id, name, kind, status) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(name)
        .bind(kind.as_str())
        .bind(status.as_str())
        .execute(pool)
        .await
        .context("inserting the partner")?;
    Ok(id)
}

/// Suspends or reactivates a partner (used by operators and tests).
pub async fn set_status(
    pool: &PgPool,
    partner_id: Uuid,
    status: AccountStatus,
) -> anyhow::Result<bool> {
    let changed: i64 = sqlx::query_scalar(
        "WITH changed AS (UPDATE partners SET status = $2 WHERE id = $1 RETURNING id)
         SELECT count(pg_notify($3, $4)) FROM changed",
    )
    .bind(partner_id)
    .bind(status.as_str())
    .bind(revocation::CHANNEL)
    .bind(Revoked::payload_of_partner(partner_id))
    .fetch_one(pool)
    .await
    .context("updating the partner")?;
    Ok(changed == 1)
}

pub struct IssuedToken {
    pub token: String,
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("no partner with id {0}")]
    UnknownPartner(Uuid),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub async fn issue_token(
    pool: &PgPool,
    partner_id: Uuid,
    ttl: std::time::Duration,
) -> Result<IssuedToken, AccountError> {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let ttl = time::Duration::try_from(ttl)
        .map_err(|e| anyhow::anyhow!("token ttl out of range: {e}"))?;
    let expires_at = OffsetDateTime::now_utc() + ttl;
    let inserted = sqlx::query(
        "INSERT INTO tokens (digest, partner_id, expires_at)
         SELECT $1, id, $3 FROM partners WHERE id = $2",
    )
    .bind(verimail_domain::secrets::token_digest(&token))
    .bind(partner_id)
    .bind(expires_at)
    .execute(pool)
    .await
    .context("inserting the token")?;
    if inserted.rows_affected() == 0 {
        return Err(AccountError::UnknownPartner(partner_id));
    }
    Ok(IssuedToken { token, expires_at })
}

/// Returns whether a live token was revoked. Every intake hears of it in the
/// same commit (see `auth::revocation`).
pub async fn revoke_token(pool: &PgPool, token: &str) -> anyhow::Result<bool> {
    let digest = verimail_domain::secrets::token_digest(token.trim());
    let revoked: i64 = sqlx::query_scalar(
        "WITH revoked AS (
            UPDATE tokens SET revoked_at = now() WHERE digest = $1 AND revoked_at IS NULL
            RETURNING 1)
         SELECT count(pg_notify($2, $3)) FROM revoked",
    )
    .bind(&digest)
    .bind(revocation::CHANNEL)
    .bind(Revoked::payload_of_token(&digest))
    .fetch_one(pool)
    .await
    .context("revoking the token")?;
    Ok(revoked == 1)
}

pub struct AccessKey {
    pub access_key: String,
    pub secret_key: String,
}

/// Letters and digits, like Huawei Cloud's own keys, so SDKs and tools that
/// validate their shape accept them.
fn random_alphanumeric(len: usize, upper_only: bool) -> String {
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    const MIXED: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let alphabet = if upper_only { UPPER } else { MIXED };
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(alphabet[rand::Rng::gen_range(&mut rng, 0..alphabet.len())]))
        .collect()
}

/// Creates an AK/SK pair; the SK is sealed at rest and returned only here.
pub async fn create_access_key(
    pool: &PgPool,
    keys: &Keys,
    partner_id: Uuid,
) -> Result<AccessKey, AccountError> {
    let access_key = random_alphanumeric(20, true);
    let secret_key = random_alphanumeric(40, false);
    let inserted = sqlx::query(
        "INSERT INTO access_keys (access_key, partner_id, secret_sealed)
         SELECT $1, id, $3 FROM partners WHERE id = $2",
    )
    .bind(&access_key)
    .bind(partner_id)
    .bind(keys.seal_access_secret(&access_key, &secret_key))
    .execute(pool)
    .await
    .context("inserting the access key")?;
    if inserted.rows_affected() == 0 {
        return Err(AccountError::UnknownPartner(partner_id));
    }
    Ok(AccessKey {
        access_key,
        secret_key,
    })
}

/// Returns whether a live key was revoked.
pub async fn revoke_access_key(pool: &PgPool, access_key: &str) -> anyhow::Result<bool> {
    let access_key = access_key.trim();
    let revoked: i64 = sqlx::query_scalar(
        "WITH revoked AS (
            UPDATE access_keys SET revoked_at = now()
             WHERE access_key = $1 AND revoked_at IS NULL
            RETURNING 1)
         SELECT count(pg_notify($2, $3)) FROM revoked",
    )
    .bind(access_key)
    .bind(revocation::CHANNEL)
    .bind(Revoked::payload_of_access_key(access_key))
    .fetch_one(pool)
    .await
    .context("revoking the access key")?;
    Ok(revoked == 1)
}
