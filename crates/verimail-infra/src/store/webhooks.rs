//! Every statement on `partner_webhooks` (each partner's endpoint and its
//! sealed signing secrets).

use anyhow::Context;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

/// How long the secret a rotation replaced keeps signing beside the new one.
pub const ROTATION_OVERLAP: time::Duration = time::Duration::hours(24);

/// A partner's endpoint as stored.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub partner_id: Uuid,
    pub url: String,
    pub secret_sealed: Vec<u8>,
    /// The secret before the last rotation, while it still signs.
    pub previous_secret_sealed: Option<Vec<u8>>,
    pub previous_until: Option<OffsetDateTime>,
    pub disabled_at: Option<OffsetDateTime>,
    pub disabled_reason: Option<String>,
}

/// Sets (or replaces) a partner's endpoint with a new sealed secret; the
/// secret it replaces keeps signing for [`ROTATION_OVERLAP`]. `None` when
/// there is no such partner.
pub async fn set(
    pool: &PgPool,
    partner_id: Uuid,
    url: &str,
    secret_sealed: &[u8],
) -> anyhow::Result<Option<Endpoint>> {
    let overlap_secs = ROTATION_OVERLAP.whole_seconds() as f64;
    sqlx::query_as!(
        Endpoint,
        r#"INSERT INTO partner_webhooks AS w (partner_id, url, secret_sealed)
           SELECT id, $2, $3 FROM partners WHERE id = $1
           ON CONFLICT (partner_id) DO UPDATE
              SET url = EXCLUDED.url,
                  secret_sealed = EXCLUDED.secret_sealed,
                  previous_secret_sealed = w.secret_sealed,
                  previous_until = now() + make_interval(secs => $4),
                  disabled_at = NULL,
                  disabled_reason = NULL,
                  updated_at = now()
           RETURNING partner_id, url, secret_sealed, previous_secret_sealed,
                     previous_until, disabled_at, disabled_reason"#,
        partner_id,
        url,
        secret_sealed,
        overlap_secs,
    )
    .fetch_optional(pool)
    .await
    .context("setting the webhook endpoint")
}

/// Removes a partner's endpoint; `false` when it had none.
pub async fn remove(pool: &PgPool, partner_id: Uuid) -> anyhow::Result<bool> {
    let removed = sqlx::query!(
        "DELETE FROM partner_webhooks WHERE partner_id = $1",
        partner_id
    )
    .execute(pool)
    .await
    .context("removing the webhook endpoint")?;
    Ok(removed.rows_affected() == 1)
}

pub async fn get(pool: &PgPool, partner_id: Uuid) -> anyhow::Result<Option<Endpoint>> {
    sqlx::query_as!(
        Endpoint,
        "SELECT partner_id, url, secret_sealed, previous_secret_sealed,
                previous_until, disabled_at, disabled_reason
           FROM partner_webhooks WHERE partner_id = $1",
        partner_id
    )
    .fetch_optional(pool)
    .await
    .context("reading the webhook endpoint")
}
