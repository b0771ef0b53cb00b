//! Who is calling: `X-Auth-Token` (and, later, AK/SK signatures), mapped to
//! the SPEC §2 outcomes 401 / 403 / CBC.99000035.

use axum::http::HeaderMap;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;
use verimail_core::ErrorCode;
use verimail_core::secrets::Keys;

use crate::error::ApiError;

pub const TOKEN_HEADER: &str = "x-auth-token";

/// An authenticated partner allowed to call the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub partner_id: Uuid,
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    partner_id: Uuid,
    kind: String,
    status: String,
    expires_at: OffsetDateTime,
    revoked_at: Option<OffsetDateTime>,
}

pub async fn authenticate(
    pool: &PgPool,
    _keys: &Keys,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    let Some(token) = headers.get(TOKEN_HEADER) else {
        return Err(unauthenticated("no credentials: send X-Auth-Token"));
    };
    let token = token
        .to_str()
        .map_err(|_| unauthenticated("the token is not valid"))?
        .trim();
    if token.is_empty() {
        return Err(unauthenticated("no credentials: send X-Auth-Token"));
    }
    let row: Option<TokenRow> = sqlx::query_as(
        "SELECT t.partner_id, p.kind, p.status, t.expires_at, t.revoked_at
           FROM tokens t JOIN partners p ON p.id = t.partner_id
          WHERE t.digest = $1",
    )
    .bind(verimail_core::secrets::token_digest(token))
    .fetch_optional(pool)
    .await
    .map_err(|e| ApiError::infra(ErrorCode::Internal, "looking up a token", &e.into()))?;
    let row = row.ok_or_else(|| unauthenticated("the token is not valid"))?;
    if row.revoked_at.is_some() {
        return Err(unauthenticated("the token has been revoked"));
    }
    if row.expires_at <= OffsetDateTime::now_utc() {
        return Err(unauthenticated("the token has expired"));
    }
    admit(row.partner_id, &row.kind, &row.status)
}

/// The account checks shared by every way of authenticating.
pub fn admit(partner_id: Uuid, kind: &str, status: &str) -> Result<Caller, ApiError> {
    if kind != "partner" {
        return Err(ApiError::new(ErrorCode::NotPartner));
    }
    if status != "active" {
        return Err(ApiError::with_message(
            ErrorCode::Forbidden,
            "Access denied: the partner is suspended.",
        ));
    }
    Ok(Caller { partner_id })
}

fn unauthenticated(why: &str) -> ApiError {
    ApiError::with_message(
        ErrorCode::Unauthenticated,
        format!("Authentication failed: {why}."),
    )
}
