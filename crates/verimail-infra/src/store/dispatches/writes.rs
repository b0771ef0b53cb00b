//! The worker's claims and outcome writes, group-committed (see `batch`).

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::BATCH_MAX;
use super::claims::{self, Claim, ClaimToken};
use super::outcomes::{self, Finish, Outcome};
use crate::batch::Batcher;

pub struct Writes {
    claims: Batcher<Uuid, Claim>,
    outcomes: Batcher<Finish, bool>,
}

impl Writes {
    pub fn new(pool: &PgPool, lease: Duration) -> Self {
        let (claim_pool, finish_pool) = (pool.clone(), pool.clone());
        Self {
            claims: Batcher::spawn(BATCH_MAX, move |ids: Vec<Uuid>| {
                let pool = claim_pool.clone();
                async move { claims::claim_many(&pool, &ids, lease).await }
            }),
            outcomes: Batcher::spawn(BATCH_MAX, move |items: Vec<Finish>| {
                let pool = finish_pool.clone();
                async move { outcomes::finish_many(&pool, &items).await }
            }),
        }
    }

    pub async fn claim(&self, id: Uuid) -> anyhow::Result<Claim> {
        self.claims.call(id).await
    }

    pub async fn finish(
        &self,
        id: Uuid,
        token: ClaimToken,
        outcome: &Outcome,
    ) -> anyhow::Result<bool> {
        let item = Finish {
            id,
            token,
            outcome: outcome.clone(),
        };
        self.outcomes.call(item).await
    }
}
