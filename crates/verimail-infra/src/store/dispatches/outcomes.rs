//! How an attempt ended, written under the claim's token. One statement
//! writes one outcome or many, so there is one SET list to keep right.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use uuid::Uuid;
use verimail_domain::DispatchStatus;

use super::claims::ClaimToken;
use crate::batch::batch_else_each;

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Failed(String),
    Expired(String),
    /// Try again after `after`, keeping `reason` as `last_error`.
    Retry {
        reason: String,
        after: Duration,
    },
}

impl Outcome {
    /// The state the outcome moves the dispatch to: the one mapping, used
    /// for the SQL and for the metric label alike.
    pub fn status(&self) -> DispatchStatus {
        match self {
            Self::Sent => DispatchStatus::Sent,
            Self::Failed(_) => DispatchStatus::Failed,
            Self::Expired(_) => DispatchStatus::Expired,
            Self::Retry { .. } => DispatchStatus::Retrying,
        }
    }

    fn reason(&self) -> Option<&str> {
        match self {
            Self::Sent => None,
            Self::Failed(reason) | Self::Expired(reason) | Self::Retry { reason, .. } => {
                Some(reason)
            }
        }
    }

    fn retry_after(&self) -> Option<f64> {
        match self {
            Self::Retry { after, .. } => Some(after.as_secs_f64()),
            _ => None,
        }
    }
}

/// One outcome of one claim.
#[derive(Debug, Clone)]
pub struct Finish {
    pub id: Uuid,
    pub token: ClaimToken,
    pub outcome: Outcome,
}

/// Records an outcome of the claim `token`; returns whether the row changed
/// (`false`: the claim was taken over, or the code was used meanwhile).
pub async fn finish(
    pool: &PgPool,
    id: Uuid,
    token: ClaimToken,
    outcome: &Outcome,
) -> anyhow::Result<bool> {
    let one = Finish {
        id,
        token,
        outcome: outcome.clone(),
    };
    Ok(finish_batch(pool, std::slice::from_ref(&one))
        .await?
        .contains(&id))
}

/// Records several outcomes in one statement (one commit); each row is
/// fenced by its own token exactly as in `finish`. Answers, in order,
/// whether each row changed. If the statement fails, each is written alone.
pub async fn finish_many(pool: &PgPool, items: &[Finish]) -> Vec<anyhow::Result<bool>> {
    batch_else_each(
        items,
        |all| async move {
            let changed = finish_batch(pool, all).await?;
            Ok(all.iter().map(|f| Ok(changed.contains(&f.id))).collect())
        },
        |one| finish(pool, one.id, one.token, &one.outcome),
    )
    .await
}

/// The one outcome statement; answers the ids whose row changed. Rows are
/// written in id order, so two batches that share a row lock in the same order.
async fn finish_batch(pool: &PgPool, items: &[Finish]) -> anyhow::Result<HashSet<Uuid>> {
    let mut sorted: Vec<&Finish> = items.iter().collect();
    sorted.sort_by_key(|f| f.id);
    let ids: Vec<Uuid> = sorted.iter().map(|f| f.id).collect();
    let tokens: Vec<Uuid> = sorted.iter().map(|f| f.token.0).collect();
    let statuses: Vec<String> = sorted
        .iter()
        .map(|f| f.outcome.status().as_str().to_owned())
        .collect();
    let reasons: Vec<Option<String>> = sorted
        .iter()
        .map(|f| f.outcome.reason().map(str::to_owned))
        .collect();
    let retries: Vec<Option<f64>> = sorted.iter().map(|f| f.outcome.retry_after()).collect();
    // The sealed code is wiped as soon as no worker will need it again.
    let terminal: Vec<bool> = sorted
        .iter()
        .map(|f| f.outcome.status().is_terminal())
        .collect();
    // finish_dispatches (migration 0015) holds the UPDATE: a plan that
    // cannot turn into a scan of the day when the partition was small.
    let changed = sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM finish_dispatches($1, $2, $3, $4, $5, $6, $7, $8) AS id"#,
        &ids,
        &tokens,
        &statuses,
        &reasons as &[Option<String>],
        &retries as &[Option<f64>],
        &terminal,
        DispatchStatus::Sent.as_str(),
        DispatchStatus::Sending.as_str(),
    )
    .fetch_all(pool)
    .await
    .context("recording the outcome")?;
    Ok(changed.into_iter().collect())
}
