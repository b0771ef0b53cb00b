//! Sends answered once: an `Idempotency-Key`, or the signature of an
//! AK/SK-signed request, names a send; a repeat within the window gets the
//! first answer and mails nothing new (migrations/0005).

use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;
use verimail_domain::ErrorCode;

/// How long an answer is remembered.
pub const WINDOW: Duration = Duration::from_secs(24 * 3600);

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

/// body_digest, dispatch_id, status, error_code of the first request.
type FirstRow = (Vec<u8>, Uuid, Option<i16>, Option<String>);

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
    let owner: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO send_replays (partner_id, key, body_digest, dispatch_id)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (partner_id, key) DO UPDATE
            SET body_digest = EXCLUDED.body_digest, dispatch_id = EXCLUDED.dispatch_id,
                status = NULL, error_code = NULL, created_at = now()
          WHERE send_replays.created_at < now() - make_interval(secs => $5::float8)
         RETURNING dispatch_id",
    )
    .bind(partner_id)
    .bind(key)
    .bind(&digest)
    .bind(dispatch_id)
    .bind(WINDOW.as_secs_f64())
    .fetch_optional(pool)
    .await
    .context("claiming the idempotency key")?;
    if owner == Some(dispatch_id) {
        return Ok(Claim::First);
    }
    let started = tokio::time::Instant::now();
    loop {
        let row: Option<FirstRow> = sqlx::query_as(
            "SELECT body_digest, dispatch_id, status, error_code FROM send_replays
              WHERE partner_id = $1 AND key = $2",
        )
        .bind(partner_id)
        .bind(key)
        .fetch_optional(pool)
        .await
        .context("reading the first answer")?;
        let Some((first_digest, first_id, status, error_code)) = row else {
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
    let sql = if accepted {
        "UPDATE send_replays SET status = 204
          WHERE partner_id = $1 AND key = $2 AND dispatch_id = $3"
    } else {
        "DELETE FROM send_replays WHERE partner_id = $1 AND key = $2 AND dispatch_id = $3"
    };
    sqlx::query(sql)
        .bind(partner_id)
        .bind(key)
        .bind(dispatch_id)
        .execute(pool)
        .await
        .context("recording the answer for its idempotency key")?;
    Ok(())
}
