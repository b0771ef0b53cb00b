//! AK/SK: looking up the key, verifying the SDK-HMAC-SHA256 signature over
//! the request as received, and checking `X-Domain-Id`.

use std::time::Duration;

use axum::http::HeaderMap;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;
use verimail_domain::sdk_signature::{self, AuthorizationHeader, SignedRequest};
use verimail_domain::secrets::Keys;

use super::{Account, Presented};

pub const DOMAIN_HEADER: &str = "x-domain-id";

/// The key's account and its opened secret.
pub(super) async fn lookup_key(
    pool: &PgPool,
    keys: &Keys,
    access_key: &str,
) -> anyhow::Result<Option<(Account, Vec<u8>)>> {
    let Some(row) = verimail_infra::store::access_keys::lookup(pool, access_key).await? else {
        return Ok(None);
    };
    let secret = keys.open_access_secret(access_key, &row.secret_sealed).map_err(|_| {
        anyhow::anyhow!(
            "opening a sealed secret key failed: was VERIMAIL_SECRET changed since the key was created?"
        )
    })?;
    let account = Account::decode(row.partner_id, &row.kind, &row.status, None, row.revoked)?;
    Ok(Some((account, secret)))
}

pub(super) fn verify(
    request: &Presented<'_>,
    auth: &AuthorizationHeader,
    secret: &[u8],
    max_skew: Duration,
) -> Result<(), String> {
    // Header values are compared as the bytes the SDK signed (UTF-8), not
    // through `to_str`, which refuses non-ASCII.
    let mut headers = Vec::with_capacity(request.headers.len());
    for (name, value) in request.headers {
        let value = std::str::from_utf8(value.as_bytes())
            .map_err(|_| format!("header {name} is not UTF-8"))?;
        headers.push((name.as_str(), value));
    }
    let signed = SignedRequest {
        method: request.method.as_str(),
        path: request.uri.path(),
        query: request.uri.query(),
        headers: &headers,
        body: request.body,
    };
    sdk_signature::verify(&signed, auth, secret, OffsetDateTime::now_utc(), max_skew)
        .map_err(|e| e.to_string())
}

/// When the SDK names the account (`X-Domain-Id`), it must be the key's.
pub(super) fn check_domain(headers: &HeaderMap, partner_id: Uuid) -> Result<(), String> {
    let Some(value) = headers.get(DOMAIN_HEADER) else {
        return Ok(());
    };
    let matches = value
        .to_str()
        .ok()
        .and_then(|v| Uuid::parse_str(v.trim()).ok())
        == Some(partner_id);
    if matches {
        Ok(())
    } else {
        Err("X-Domain-Id does not name the access key's account".into())
    }
}
