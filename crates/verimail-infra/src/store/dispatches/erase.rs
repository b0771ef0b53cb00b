//! Erasure of one recipient's rows (`verimail forget`), inside the caller's
//! transaction.

use std::collections::BTreeMap;

use anyhow::Context;
use sqlx::PgConnection;
use uuid::Uuid;

/// Takes the recipient's advisory lock (the one `accept_dispatch` takes), so
/// a concurrent send lands either before the erasure or after it.
pub async fn lock_recipient(tx: &mut PgConnection, recipient: &str) -> anyhow::Result<()> {
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0)) AS locked",
        recipient
    )
    .fetch_one(&mut *tx)
    .await
    .context("locking the recipient")?;
    Ok(())
}

/// Deletes every row of `recipient` in every partition; answers their ids
/// and how many each partition held.
pub async fn delete_recipient(
    tx: &mut PgConnection,
    recipient: &str,
) -> anyhow::Result<(Vec<Uuid>, BTreeMap<String, u64>)> {
    let rows = sqlx::query!(
        r#"DELETE FROM dispatches WHERE recipient = $1
           RETURNING id, tableoid::regclass::text AS "partition!""#,
        recipient
    )
    .fetch_all(&mut *tx)
    .await
    .context("removing the dispatch rows")?;
    let mut partitions = BTreeMap::new();
    let ids = rows
        .into_iter()
        .map(|row| {
            *partitions.entry(row.partition).or_default() += 1;
            row.id
        })
        .collect();
    Ok((ids, partitions))
}
