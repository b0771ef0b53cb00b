//! Token authentication outcomes: 401 / 403 / CBC.99000035.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::support::*;
use verimail_intake::accounts::{self, AccountKind, AccountStatus};

#[tokio::test]
async fn token_outcomes_follow_the_spec() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let intake = TestIntake::spawn(intake_settings(amqp_url(), &prefix), &db.url).await;
    let body = valid_body("who@example.com");

    let live = partner(&db.pool, AccountKind::Partner, false).await;
    let suspended = partner(&db.pool, AccountKind::Partner, true).await;
    let customer = partner(&db.pool, AccountKind::Customer, false).await;
    let revoked = partner(&db.pool, AccountKind::Partner, false).await;
    assert!(
        accounts::revoke_token(&db.pool, &revoked.token)
            .await
            .unwrap()
    );
    let expired_id =
        accounts::create_partner(&db.pool, "old", AccountKind::Partner, AccountStatus::Active)
            .await
            .unwrap();
    let expired = accounts::issue_token(&db.pool, expired_id, Duration::from_millis(1))
        .await
        .unwrap()
        .token;
    tokio::time::sleep(Duration::from_millis(20)).await;

    let cases: Vec<(&str, Option<&str>, u16, &str)> = vec![
        ("no header", None, 401, "CBC.0154"),
        ("empty header", Some(""), 401, "CBC.0154"),
        ("unknown token", Some("vmt_nope"), 401, "CBC.0154"),
        ("expired token", Some(&expired), 401, "CBC.0154"),
        ("revoked token", Some(&revoked.token), 401, "CBC.0154"),
        ("suspended partner", Some(&suspended.token), 403, "CBC.0151"),
        (
            "customer account",
            Some(&customer.token),
            400,
            "CBC.99000035",
        ),
    ];
    for (name, token, status, code) in cases {
        let mut request = intake.client.post(intake.url(SEND_PATH)).json(&body);
        if let Some(token) = token {
            request = request.header("X-Auth-Token", token);
        }
        let reply = Reply::read(request.send().await.unwrap()).await;
        assert_eq!(
            (reply.status, reply.error_code().as_deref()),
            (status, Some(code)),
            "{name}: {}",
            reply.body
        );
        assert!(reply.request_id.is_some());
    }
    // Authentication comes before parameters: a bad body with no token is a 401.
    let reply = Reply::read(
        intake
            .client
            .post(intake.url(SEND_PATH))
            .body("{")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.error_code().as_deref(), Some("CBC.0154"));
    assert_eq!(
        db.count("SELECT count(*) FROM dispatches").await,
        0,
        "refused callers write nothing"
    );

    assert_eq!(intake.send(&live.token, &body).await.status, 204);
    // Suspending takes effect for the next request.
    accounts::set_status(&db.pool, live.id, AccountStatus::Suspended)
        .await
        .unwrap();
    let reply = intake.send(&live.token, &body).await;
    assert_eq!(reply.error_code().as_deref(), Some("CBC.0151"));
    broker.cleanup().await;
}

#[tokio::test]
async fn tokens_are_stored_only_as_digests() {
    let db = TestDb::new().await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT digest FROM tokens")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], p.token.as_bytes());
    assert!(
        !stored[0]
            .windows(8)
            .any(|w| p.token.as_bytes().windows(8).any(|t| t == w))
    );
}

/// Sends until the answer is `want` or a second has passed; returns how long
/// it took. A cached credential would keep working for the whole minute.
async fn refused_within(intake: &TestIntake, token: &str, want: &str) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let reply = intake.send(token, &valid_body("revoked@example.com")).await;
        if reply.error_code().as_deref() == Some(want) {
            return started.elapsed();
        }
        assert_eq!(reply.status, 204, "{reply:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "still accepted after a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_every_intake_at_once_despite_the_cache() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let mut settings = intake_settings(amqp_url(), &prefix);
    settings.auth_cache_ttl = Duration::from_secs(60);
    settings.rate_limit = verimail_intake::RateLimit {
        per_hour: 1000,
        per_day: 1000,
    };
    let a = TestIntake::spawn(settings.clone(), &db.url).await;
    let b = TestIntake::spawn(settings, &db.url).await;
    let token_holder = partner(&db.pool, AccountKind::Partner, false).await;
    let suspended = partner(&db.pool, AccountKind::Partner, false).await;
    // Let both listeners start, then put both credentials in both caches.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for intake in [&a, &b] {
        for p in [&token_holder, &suspended] {
            let reply = intake
                .send(&p.token, &valid_body("cached@example.com"))
                .await;
            assert_eq!(reply.status, 204);
        }
    }

    assert!(
        accounts::revoke_token(&db.pool, &token_holder.token)
            .await
            .unwrap()
    );
    let took = refused_within(&b, &token_holder.token, "CBC.0154").await;
    println!("a revoked token was refused by another intake after {took:?}");

    accounts::set_status(&db.pool, suspended.id, AccountStatus::Suspended)
        .await
        .unwrap();
    refused_within(&b, &suspended.token, "CBC.0151").await;
    refused_within(&a, &suspended.token, "CBC.0151").await;
    broker.cleanup().await;
}
