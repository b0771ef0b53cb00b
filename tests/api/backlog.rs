//! Back-pressure (README, "Back-pressure"): when more dispatch messages wait
//! for a worker than VERIMAIL_MAX_BACKLOG, the intake sheds sends with a
//! 503 CBC.0999 and a Retry-After, writes nothing for them, and accepts
//! again once the backlog is worked off.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use crate::support::*;
use verimail_intake::accounts::AccountKind;

#[tokio::test]
async fn a_backlog_over_the_bound_is_shed_with_a_retry_hint_and_nothing_written() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let mut settings = intake_settings(amqp_url(), &prefix);
    settings.max_backlog = Some(3);
    let intake = TestIntake::spawn(settings, &db.url).await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;

    // No worker runs: the queue only grows. Send until the intake sees it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut accepted = 0;
    let shed = loop {
        let reply = intake
            .send(&p.token, &valid_body(&format!("b{accepted}@example.com")))
            .await;
        if reply.status == 204 {
            accepted += 1;
        } else {
            break reply;
        }
        assert!(Instant::now() < deadline, "never shed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        accepted > 3,
        "shed only above the bound ({accepted} accepted)"
    );
    assert_eq!(shed.status, 503, "{}", shed.body);
    assert_eq!(shed.error_code().as_deref(), Some("CBC.0999"));
    assert!(shed.body.contains("busy"), "{}", shed.body);
    let rows = db.count("SELECT count(*) FROM dispatches").await;
    assert_eq!(rows, accepted, "a shed send writes nothing");
    assert_eq!(
        i64::from(broker.depth(&format!("{prefix}.dispatch")).await),
        accepted
    );

    let retry_after = intake
        .client
        .post(intake.url("/v2/bases/verificationcode/send"))
        .header("X-Auth-Token", &p.token)
        .json(&valid_body("again@example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(retry_after.status(), 503);
    assert_eq!(retry_after.headers()["retry-after"], "5");

    // Bad input still gets its own answer while shedding.
    let bad = intake.send(&p.token, &valid_body("not an address")).await;
    assert_eq!(bad.error_code().as_deref(), Some("CBC.99004004"));

    // The workers catch up (here: the queue is emptied): sends are accepted again.
    broker.drain_dispatches().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = intake
            .send(&p.token, &valid_body("later@example.com"))
            .await;
        if reply.status == 204 {
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert!(
            Instant::now() < deadline,
            "still shedding after the backlog went"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker.cleanup().await;
}
