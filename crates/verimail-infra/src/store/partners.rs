//! Every statement on `partners`.

use anyhow::Context;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;
use verimail_domain::account::{AccountKind, AccountStatus};

use super::revocations::{CHANNEL, Revoked};

pub async fn insert(
    pool: &PgPool,
    id: Uuid,
    name: &str,
    kind: AccountKind,
    status: AccountStatus,
) -> anyhow::Result<()> {
    sqlx::query!(
        "INSERT INTO partners (id, name, kind, status) VALUES ($1, $2, $3, $4)",
        id,
        name,
        kind.as_str(),
        status.as_str(),
    )
    .execute(pool)
    .await
    .context("inserting the partner")?;
    Ok(())
}

/// Suspends or reactivates a partner, announcing it to every intake in the
/// same statement; `false` when there is no such partner.
pub async fn set_status(
    pool: &PgPool,
    partner_id: Uuid,
    status: AccountStatus,
) -> anyhow::Result<bool> {
    let changed = sqlx::query_scalar!(
        r#"WITH changed AS (UPDATE partners SET status = $2 WHERE id = $1 RETURNING id)
           SELECT count(pg_notify($3, $4)) AS "changed!" FROM changed"#,
        partner_id,
        status.as_str(),
        CHANNEL,
        Revoked::payload_of_partner(partner_id),
    )
    .fetch_one(pool)
    .await
    .context("updating the partner")?;
    Ok(changed == 1)
}

/// An active partner of this id and name, whatever it was (development
/// bootstrap only), inside the caller's transaction.
pub async fn upsert_active(tx: &mut PgConnection, id: Uuid, name: &str) -> anyhow::Result<()> {
    sqlx::query!(
        "INSERT INTO partners (id, name, kind, status) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, status = EXCLUDED.status",
        id,
        name,
        AccountKind::Partner.as_str(),
        AccountStatus::Active.as_str(),
    )
    .execute(&mut *tx)
    .await
    .context("the partner")?;
    Ok(())
}
