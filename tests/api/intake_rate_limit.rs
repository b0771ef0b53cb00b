//! The per-recipient limit is atomic across intake processes (README, "HTTP API").

#![allow(clippy::unwrap_used)]

use crate::support::*;
use futures_util::future::join_all;
use verimail_intake::accounts::AccountKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_over_two_intakes_accept_exactly_fifteen() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let a = TestIntake::spawn(intake_settings(amqp_url(), &prefix), &db.url).await;
    let b = TestIntake::spawn(intake_settings(amqp_url(), &prefix), &db.url).await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    // Case and spaces differ: the limit counts the normalised recipient.
    let requests = (0..50).map(|i| {
        let intake = if i % 2 == 0 { &a } else { &b };
        let email = if i % 3 == 0 {
            "Busy@Example.com"
        } else {
            "busy@example.com"
        };
        let body = valid_body(email);
        let token = p.token.clone();
        async move { intake.send(&token, &body).await }
    });
    let replies = join_all(requests).await;
    let accepted = replies.iter().filter(|r| r.status == 204).count();
    let limited = replies
        .iter()
        .filter(|r| r.error_code().as_deref() == Some("CBC.99004015"))
        .count();
    assert_eq!(
        (accepted, limited),
        (15, 35),
        "{:?}",
        replies.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    assert_eq!(
        db.count("SELECT count(*) FROM dispatches").await,
        15,
        "limited requests create no dispatch"
    );
    assert_eq!(broker.drain_dispatches().await.len(), 15);
    // Only the newest code stays pending: the rest were superseded.
    assert_eq!(
        db.count("SELECT count(*) FROM dispatches WHERE status = 'queued'")
            .await,
        1
    );

    // Another recipient is unaffected.
    assert_eq!(
        a.send(&p.token, &valid_body("other@example.com"))
            .await
            .status,
        204
    );
    broker.cleanup().await;
}

#[tokio::test]
async fn the_daily_limit_counts_the_rolling_day() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let mut settings = intake_settings(amqp_url(), &prefix);
    settings.rate_limit = verimail_intake::RateLimit {
        per_hour: 3,
        per_day: 4,
    };
    let intake = TestIntake::spawn(settings, &db.url).await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    for _ in 0..3 {
        assert_eq!(
            intake
                .send(&p.token, &valid_body("day@example.com"))
                .await
                .status,
            204
        );
    }
    assert_eq!(
        intake
            .send(&p.token, &valid_body("day@example.com"))
            .await
            .error_code()
            .as_deref(),
        Some("CBC.99004015")
    );
    // Age the three sends past the hour but within the day: one more fits the day.
    sqlx::query("UPDATE dispatches SET created_at = created_at - interval '2 hours'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        intake
            .send(&p.token, &valid_body("day@example.com"))
            .await
            .status,
        204
    );
    assert_eq!(
        intake
            .send(&p.token, &valid_body("day@example.com"))
            .await
            .error_code()
            .as_deref(),
        Some("CBC.99004015")
    );
    // A day later everything is forgotten.
    sqlx::query("UPDATE dispatches SET created_at = created_at - interval '25 hours'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        intake
            .send(&p.token, &valid_body("day@example.com"))
            .await
            .status,
        204
    );
    broker.cleanup().await;
}
