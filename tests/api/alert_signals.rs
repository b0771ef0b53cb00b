//! What the alert rules (deploy/prometheus/verimail-rules.yml) read that the
//! code must compute right: a claim says when it took a dispatch over from a
//! lease that ran out (verimail_claims_taken_over_total), and the age of the
//! oldest dispatch still waiting for its first claim counts queued rows only
//! (verimail_oldest_queued_dispatch_age_seconds).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::support::*;
use verimail_infra::store::dispatches::{self as store, Claim, waiting};
use verimail_intake::accounts::AccountKind;

async fn backdate(pool: &sqlx::PgPool, id: uuid::Uuid, secs: i32) {
    sqlx::query(
        "UPDATE dispatches SET created_at = now() - make_interval(secs => $2) WHERE id = $1",
    )
    .bind(id)
    .bind(f64::from(secs))
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn only_a_claim_after_the_lease_ran_out_is_a_takeover() {
    let db = TestDb::new().await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let (id, _) = record_dispatch(&db.pool, p.id, "takeover@example.com").await;
    let lease = Duration::from_secs(30);

    let Claim::Mine(first, _) = store::claim(&db.pool, id, lease).await.unwrap() else {
        panic!("first claim");
    };
    assert!(
        !first.taken_over,
        "a queued dispatch is claimed, not taken over"
    );
    assert!(
        matches!(
            store::claim(&db.pool, id, lease).await.unwrap(),
            Claim::Leased(_)
        ),
        "a live lease is waited for"
    );
    sqlx::query("UPDATE dispatches SET lease_until = now() - interval '1 minute' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    let Claim::Mine(second, _) = store::claim(&db.pool, id, lease).await.unwrap() else {
        panic!("takeover after the lease ran out");
    };
    assert!(second.taken_over);

    // A retry's claim (the previous attempt recorded its outcome) is not one.
    let (retried, _) = record_dispatch(&db.pool, p.id, "retried@example.com").await;
    let Claim::Mine(_, token) = store::claim(&db.pool, retried, lease).await.unwrap() else {
        panic!("claim");
    };
    let retry = store::Outcome::Retry {
        reason: "451 try later".into(),
        after: Duration::ZERO,
    };
    assert!(
        store::finish(&db.pool, retried, token, &retry)
            .await
            .unwrap()
    );
    let Claim::Mine(again, _) = store::claim(&db.pool, retried, lease).await.unwrap() else {
        panic!("the retry's claim");
    };
    assert!(!again.taken_over);
}

#[tokio::test]
async fn the_oldest_waiting_dispatch_is_the_oldest_queued_one() {
    let db = TestDb::new().await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    assert_eq!(waiting::oldest_queued_age(&db.pool).await.unwrap(), None);

    // Oldest of all, but claimed (a send in progress): not waiting.
    let (claimed, _) = record_dispatch(&db.pool, p.id, "sending@example.com").await;
    let Claim::Mine(..) = store::claim(&db.pool, claimed, Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("claim");
    };
    backdate(&db.pool, claimed, 600).await;
    let (old, _) = record_dispatch(&db.pool, p.id, "old@example.com").await;
    backdate(&db.pool, old, 90).await;
    let (_young, _) = record_dispatch(&db.pool, p.id, "young@example.com").await;

    let age = waiting::oldest_queued_age(&db.pool).await.unwrap().unwrap();
    assert!((90.0..120.0).contains(&age), "{age}");

    // Once it is taken, the next one waiting counts.
    let Claim::Mine(..) = store::claim(&db.pool, old, Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("claim");
    };
    let age = waiting::oldest_queued_age(&db.pool).await.unwrap().unwrap();
    assert!(age < 30.0, "{age}");
}
