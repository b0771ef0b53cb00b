//! Sends answered once: an `Idempotency-Key`, or the signature of an
//! AK/SK-signed request, names a send; a repeat within the window gets the
//! first answer and mails nothing new (migrations/0005).

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;
use verimail_domain::ErrorCode;
use verimail_infra::store::send_replays;

pub use send_replays::WINDOW;

/// How long a repeat waits for the first request to finish before it is
/// told to try again later.
const WAIT_FOR_FIRST: Duration = Duration::from_secs(10);

pub const HEADER: &str = "idempotency-key";

/// What names a send, if anything does.
pub fn key_of(
    header: Option<&axum::http::HeaderValue>,
    signature: Option<[u8; 32]>,
) -> Result<Option<String>, &'static str> {
    if let Some(value) = header {
        let value = value
            .to_str()
            .map_err(|_| "Idempotency-Key must be visible ASCII")?
            .trim();
        if value.is_empty() || value.len() > 255 || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("Idempotency-Key must be 1 to 255 visible ASCII characters");
        }
        return Ok(Some(format!("idem:{value}")));
    }
    Ok(signature.map(|s| format!("sig:{}", hex::encode(s))))
}

/// A remembered answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub dispatch_id: Uuid,
    pub status: u16,
    pub error_code: Option<ErrorCode>,
}

pub enum Claim {
    /// This request is the first: it runs, then records its answer.
    First,
    /// The first answer, to be given again.
    Repeat(Answer),
    /// The key was used with another body.
    OtherBody,
    /// The first request has not finished.
    InProgress,
}

pub async fn claim(
    pool: &PgPool,
    partner_id: Uuid,
    key: &str,
    body: &[u8],
    dispatch_id: Uuid,
) -> anyhow::Result<Claim> {
    let digest = Sha256::digest(body).to_vec();
    let owner = send_replays::claim(pool, partner_id, key, &digest, dispatch_id).await?;
    if owner == Some(dispatch_id) {
        return Ok(Claim::First);
    }
    let started = tokio::time::Instant::now();
    loop {
        let Some(send_replays::First {
            body_digest: first_digest,
            dispatch_id: first_id,
            status,
            error_code,
        }) = send_replays::first(pool, partner_id, key).await?
        else {
            anyhow::bail!("the idempotency key vanished");
        };
        if first_digest != digest {
            return Ok(Claim::OtherBody);
        }
        if let Some(status) = status {
            return Ok(Claim::Repeat(Answer {
                dispatch_id: first_id,
                status: u16::try_from(status).unwrap_or(500),
                error_code: error_code.as_deref().and_then(|code| {
                    ErrorCode::ALL.into_iter().find(|c| {
                        c.code() == code && i16::try_from(c.http_status()).ok() == Some(status)
                    })
                }),
            }));
        }
        if started.elapsed() > WAIT_FOR_FIRST {
            return Ok(Claim::InProgress);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records the first request's answer: a 204 is remembered; after an error
/// nothing was mailed, so the key is released and a retry runs afresh.
/// Without either (the intake died), a repeat is told to try again later.
pub async fn record(
    pool: &PgPool,
    partner_id: Uuid,
    key: &str,
    dispatch_id: Uuid,
    accepted: bool,
) -> anyhow::Result<()> {
    if accepted {
        send_replays::remember_accepted(pool, partner_id, key, dispatch_id).await
    } else {
        send_replays::release(pool, partner_id, key, dispatch_id).await
    }
}
