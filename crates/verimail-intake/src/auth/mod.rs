//! Who is calling: `X-Auth-Token`, or a request signed with AK/SK exactly as
//! Huawei Cloud's SDKs sign it. Both end in the same account checks, so the
//! outcomes (401 / 403 / CBC.99000035) are the same for the same partner.
//!
//! Verified credentials are cached for `cache_ttl` (default 5 s): the hot
//! path then costs no database round trip, and a revocation, suspension or
//! expiry takes effect within that bound.

mod cache;
pub mod revocation;
mod signature;

use std::time::Duration;

use anyhow::Context;
use axum::http::{HeaderMap, Method, Uri};
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;
use verimail_domain::ErrorCode;
use verimail_domain::secrets::{self, Keys};

use self::cache::Cache;
use crate::accounts::{AccountKind, AccountStatus};
use crate::error::ApiError;

pub const TOKEN_HEADER: &str = "x-auth-token";

/// While Postgres cannot be asked, a credential verified this recently is
/// still honoured (a revocation made meanwhile cannot be read either), so a
/// database blip answers what the request itself meets, not a 500 at the door.
const STALE_IF_ERROR: Duration = Duration::from_secs(60);

/// How long a credential that was not found is remembered as unknown. Tokens
/// and keys are random, so none is issued after being tried; short anyway.
const UNKNOWN_TTL: Duration = Duration::from_secs(30);

/// Credential lookups in flight at once, per intake.
const LOOKUPS_AT_ONCE: usize = 4;

/// An authenticated partner allowed to call the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub partner_id: Uuid,
    /// The request's SDK-HMAC-SHA256 signature, when it was signed: the
    /// same bytes replayed carry the same signature.
    pub signature: Option<[u8; 32]>,
}

/// The account behind a credential, as last read from Postgres.
#[derive(Debug, Clone)]
struct Account {
    partner_id: Uuid,
    kind: AccountKind,
    status: AccountStatus,
    expires_at: Option<OffsetDateTime>,
    revoked: bool,
}

/// What a request presents, borrowed from it.
pub struct Presented<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

pub struct Authenticator {
    pool: PgPool,
    keys: Keys,
    tokens: Cache<Vec<u8>, Account>,
    access_keys: Cache<String, (Account, Vec<u8>)>,
    /// Credentials just looked up and not found (token digests, access keys
    /// as bytes): a repeated unknown one costs no round trip.
    unknown: Cache<Vec<u8>, ()>,
    /// Lookups in flight at once: a flood of unknown credentials cannot take
    /// more of the pool than this.
    lookups: tokio::sync::Semaphore,
    max_skew: Duration,
}

impl Authenticator {
    pub fn new(pool: PgPool, keys: Keys, cache_ttl: Duration) -> Self {
        Self {
            pool,
            keys,
            tokens: Cache::new(cache_ttl),
            access_keys: Cache::new(cache_ttl),
            unknown: Cache::new(if cache_ttl.is_zero() {
                Duration::ZERO
            } else {
                UNKNOWN_TTL
            }),
            lookups: tokio::sync::Semaphore::new(LOOKUPS_AT_ONCE),
            max_skew: verimail_domain::sdk_signature::DEFAULT_MAX_SKEW,
        }
    }

    /// Runs a credential lookup within the in-flight bound.
    async fn bounded<T>(
        &self,
        lookup: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let _permit = self
            .lookups
            .acquire()
            .await
            .map_err(|_| anyhow::anyhow!("the lookup limiter is closed"))?;
        lookup.await
    }

    /// Drops a revoked credential from the cache.
    fn forget(&self, revoked: &revocation::Revoked) {
        match revoked {
            revocation::Revoked::Token(digest) => self.tokens.remove(digest),
            revocation::Revoked::AccessKey(key) => self.access_keys.remove(key),
            revocation::Revoked::Partner => self.forget_all(),
        }
    }

    fn forget_all(&self) {
        self.tokens.clear();
        self.access_keys.clear();
    }

    /// Revocations may have been missed: ask Postgres again before trusting
    /// a cached credential, but keep it as the fallback while Postgres is away.
    fn expire_all(&self) {
        self.tokens.expire_all();
        self.access_keys.expire_all();
    }

    /// What can be checked without the body: a token in full; for a signed
    /// request, the `Authorization` header's form and that its access key
    /// is live (the signature covers the body, so it cannot be verified).
    pub async fn authenticate_unsigned(&self, request: &Presented<'_>) -> Result<Caller, ApiError> {
        if let Some(value) = sdk_authorization(request.headers)? {
            let parsed = verimail_domain::sdk_signature::parse_authorization(value)
                .map_err(|e| unauthenticated(&e.to_string()))?;
            let (account, _) = self.access_key(&parsed.access_key).await?;
            if account.revoked {
                return Err(unauthenticated("the access key has been revoked"));
            }
            return admit(&account);
        }
        self.authenticate(request).await
    }

    pub async fn authenticate(&self, request: &Presented<'_>) -> Result<Caller, ApiError> {
        if let Some(value) = sdk_authorization(request.headers)? {
            let (account, signature) = self.signed(request, value).await?;
            let caller = admit(&account)?;
            return Ok(Caller {
                signature: Some(signature),
                ..caller
            });
        }
        match request
            .headers
            .get(TOKEN_HEADER)
            .map(|v| v.to_str().map(str::trim))
        {
            Some(Ok(token)) if !token.is_empty() => {
                let account = self.token(token).await?;
                admit(&account)
            }
            Some(_) => Err(unauthenticated("the token is not valid")),
            None => Err(unauthenticated(
                "no credentials: send X-Auth-Token or an AK/SK-signed request",
            )),
        }
    }

    async fn token(&self, token: &str) -> Result<Account, ApiError> {
        let digest = secrets::token_digest(token);
        let account = match self.tokens.get(&digest) {
            Some(account) => account,
            None if self.unknown.get(&digest).is_some() => {
                return Err(unauthenticated("the token is not valid"));
            }
            None => match self.bounded(lookup_token(&self.pool, &digest)).await {
                Ok(Some(account)) => {
                    self.tokens.put(digest, account.clone());
                    account
                }
                Ok(None) => {
                    self.unknown.put(digest, ());
                    return Err(unauthenticated("the token is not valid"));
                }
                Err(error) => self
                    .tokens
                    .get_stale(&digest, STALE_IF_ERROR)
                    .ok_or(error)?,
            },
        };
        if account.revoked {
            return Err(unauthenticated("the token has been revoked"));
        }
        if account
            .expires_at
            .is_some_and(|at| at <= OffsetDateTime::now_utc())
        {
            return Err(unauthenticated("the token has expired"));
        }
        Ok(account)
    }

    /// The account and opened secret of an access key, cached.
    async fn access_key(&self, access_key: &str) -> Result<(Account, Vec<u8>), ApiError> {
        let key = access_key.to_owned();
        if let Some(found) = self.access_keys.get(&key) {
            return Ok(found);
        }
        let unknown_key = key.as_bytes().to_vec();
        if self.unknown.get(&unknown_key).is_some() {
            return Err(unauthenticated("the access key is not valid"));
        }
        match self
            .bounded(signature::lookup_key(&self.pool, &self.keys, access_key))
            .await
        {
            Ok(Some(found)) => {
                self.access_keys.put(key, found.clone());
                Ok(found)
            }
            Ok(None) => {
                self.unknown.put(unknown_key, ());
                Err(unauthenticated("the access key is not valid"))
            }
            Err(error) => Ok(self
                .access_keys
                .get_stale(&key, STALE_IF_ERROR)
                .ok_or(error)?),
        }
    }

    async fn signed(
        &self,
        request: &Presented<'_>,
        authorization: &str,
    ) -> Result<(Account, [u8; 32]), ApiError> {
        let parsed = verimail_domain::sdk_signature::parse_authorization(authorization)
            .map_err(|e| unauthenticated(&e.to_string()))?;
        let (account, secret) = self.access_key(&parsed.access_key).await?;
        if account.revoked {
            return Err(unauthenticated("the access key has been revoked"));
        }
        signature::verify(request, &parsed, &secret, self.max_skew)
            .map_err(|e| unauthenticated(&e))?;
        signature::check_domain(request.headers, account.partner_id)
            .map_err(|e| unauthenticated(&e))?;
        let mut signature = [0u8; 32];
        hex::decode_to_slice(&parsed.signature, &mut signature)
            .map_err(|_| unauthenticated("the signature is malformed"))?;
        Ok((account, signature))
    }
}

async fn lookup_token(pool: &PgPool, digest: &[u8]) -> anyhow::Result<Option<Account>> {
    verimail_infra::store::tokens::lookup(pool, digest)
        .await?
        .map(|t| {
            Account::decode(
                t.partner_id,
                &t.kind,
                &t.status,
                Some(t.expires_at),
                t.revoked,
            )
        })
        .transpose()
}

impl Account {
    /// From the row's text columns (which CHECK constraints keep to the
    /// known spellings).
    fn decode(
        partner_id: Uuid,
        kind: &str,
        status: &str,
        expires_at: Option<OffsetDateTime>,
        revoked: bool,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            partner_id,
            kind: AccountKind::parse(kind)
                .with_context(|| format!("unknown account kind {kind:?}"))?,
            status: AccountStatus::parse(status)
                .with_context(|| format!("unknown account status {status:?}"))?,
            expires_at,
            revoked,
        })
    }
}

/// The account checks shared by every way of authenticating.
fn admit(account: &Account) -> Result<Caller, ApiError> {
    if account.kind != AccountKind::Partner {
        return Err(ApiError::new(ErrorCode::NotPartner));
    }
    if account.status != AccountStatus::Active {
        return Err(ApiError::with_message(
            ErrorCode::Forbidden,
            "Access denied: the partner is suspended.",
        ));
    }
    Ok(Caller {
        partner_id: account.partner_id,
        signature: None,
    })
}

/// The `Authorization` header when it is an SDK signature; other schemes
/// fall through to the token.
fn sdk_authorization(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| unauthenticated("the Authorization header is malformed"))?;
    Ok(value.trim_start().starts_with("SDK-").then_some(value))
}

fn unauthenticated(why: &str) -> ApiError {
    ApiError::with_message(
        ErrorCode::Unauthenticated,
        format!("Authentication failed: {why}."),
    )
}
