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

/// A partner's own sender, as stored by `verimail partner set` (already
/// checked and normalised there); `None`: the operator's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderColumns {
    pub brand: Option<String>,
    pub mail_from: Option<String>,
    pub reply_to: Option<String>,
    pub support_url: Option<String>,
}

/// What `verimail partner set` changes: `None` leaves a column as it is,
/// `Some(None)` gives it back to the default.
#[derive(Debug, Clone, Default)]
pub struct SenderChanges {
    pub brand: Option<Option<String>>,
    pub mail_from: Option<Option<String>>,
    pub reply_to: Option<Option<String>>,
    pub support_url: Option<Option<String>>,
}

/// The partner's sender columns; `None` when there is no such partner.
pub async fn sender(pool: &PgPool, partner_id: Uuid) -> anyhow::Result<Option<SenderColumns>> {
    sqlx::query_as!(
        SenderColumns,
        "SELECT brand, mail_from, reply_to, support_url FROM partners WHERE id = $1",
        partner_id,
    )
    .fetch_optional(pool)
    .await
    .context("reading the partner's sender")
}

/// Applies `changes` and returns the columns as they now are; `None` when
/// there is no such partner.
pub async fn set_sender(
    pool: &PgPool,
    partner_id: Uuid,
    changes: &SenderChanges,
) -> anyhow::Result<Option<SenderColumns>> {
    let (set_brand, brand) = split(&changes.brand);
    let (set_from, mail_from) = split(&changes.mail_from);
    let (set_reply_to, reply_to) = split(&changes.reply_to);
    let (set_support_url, support_url) = split(&changes.support_url);
    sqlx::query_as!(
        SenderColumns,
        "UPDATE partners
            SET brand = CASE WHEN $2 THEN $3 ELSE brand END,
                mail_from = CASE WHEN $4 THEN $5 ELSE mail_from END,
                reply_to = CASE WHEN $6 THEN $7 ELSE reply_to END,
                support_url = CASE WHEN $8 THEN $9 ELSE support_url END
          WHERE id = $1
      RETURNING brand, mail_from, reply_to, support_url",
        partner_id,
        set_brand,
        brand,
        set_from,
        mail_from,
        set_reply_to,
        reply_to,
        set_support_url,
        support_url,
    )
    .fetch_optional(pool)
    .await
    .context("updating the partner's sender")
}

/// A change as the statement binds it: whether to write, and what.
fn split(change: &Option<Option<String>>) -> (bool, Option<&str>) {
    match change {
        None => (false, None),
        Some(value) => (true, value.as_deref()),
    }
}
