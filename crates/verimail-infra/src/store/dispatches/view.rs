//! `GET …/dispatches/{id}`: a partner's view of one of its dispatches.

use anyhow::Context;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;
use verimail_domain::DispatchStatus;

#[derive(Debug, serde::Serialize)]
pub struct DispatchView {
    pub id: Uuid,
    pub status: DispatchStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub sent_at: Option<OffsetDateTime>,
}

/// A partner sees only its own dispatches.
pub async fn find(
    pool: &PgPool,
    id: Uuid,
    partner_id: Uuid,
) -> anyhow::Result<Option<DispatchView>> {
    sqlx::query_as!(
        DispatchView,
        r#"SELECT id, status AS "status: DispatchStatus", attempts, last_error, created_at,
                  expires_at, sent_at
             FROM dispatches WHERE id = $1 AND partner_id = $2"#,
        id,
        partner_id,
    )
    .fetch_optional(pool)
    .await
    .context("reading the dispatch")
}
