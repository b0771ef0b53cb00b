//! Partners and tokens, as the CLI manages them.

use base64::Engine;
use rand::RngCore;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;
use verimail_domain::secrets::Keys;
use verimail_infra::store::{access_keys, partners, tokens};

pub use verimail_domain::account::{AccountKind, AccountStatus};

pub const TOKEN_PREFIX: &str = "vmt_";

pub async fn create_partner(
    pool: &PgPool,
    name: &str,
    kind: AccountKind,
    status: AccountStatus,
) -> anyhow::Result<Uuid> {
    let id = Uuid::new_v4();
    partners::insert(pool, id, name, kind, status).await?;
    Ok(id)
}

/// Suspends or reactivates a partner (used by operators and tests).
pub async fn set_status(
    pool: &PgPool,
    partner_id: Uuid,
    status: AccountStatus,
) -> anyhow::Result<bool> {
    partners::set_status(pool, partner_id, status).await
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
    let digest = verimail_domain::secrets::token_digest(&token);
    if !tokens::insert(pool, &digest, partner_id, expires_at).await? {
        return Err(AccountError::UnknownPartner(partner_id));
    }
    Ok(IssuedToken { token, expires_at })
}

/// Returns whether a live token was revoked. Every intake hears of it in the
/// same commit (see `auth::revocation`).
pub async fn revoke_token(pool: &PgPool, token: &str) -> anyhow::Result<bool> {
    let digest = verimail_domain::secrets::token_digest(token.trim());
    tokens::revoke(pool, &digest).await
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
    let sealed = keys.seal_access_secret(&access_key, &secret_key);
    if !access_keys::insert(pool, &access_key, partner_id, &sealed).await? {
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
    access_keys::revoke(pool, access_key).await
}
