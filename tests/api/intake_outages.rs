//! Outages of RabbitMQ and Postgres under a running intake, staged with a
//! cuttable proxy so the shared servers keep running.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use crate::support::proxy::Proxy;
use crate::support::*;
use verimail_intake::accounts::AccountKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_answers_handoff_failed_quickly_then_recovers() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let proxy = Proxy::start(target(&amqp_url())).await;
    let mut settings = intake_settings(amqp_via(proxy.addr()), &prefix);
    settings.amqp.publish_timeout = Duration::from_millis(800);
    let intake = TestIntake::spawn(settings, &db.url).await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;

    assert_eq!(
        intake
            .send(&p.token, &valid_body("up@example.com"))
            .await
            .status,
        204
    );

    proxy.cut();
    let mut failed_ids = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        let reply = intake.send(&p.token, &valid_body("down@example.com")).await;
        assert_eq!(
            reply.error_code().as_deref(),
            Some("CBC.99004003"),
            "attempt {i}: {}",
            reply.body
        );
        assert!(
            started.elapsed() < Duration::from_millis(800) + Duration::from_millis(700),
            "bounded by the publish timeout"
        );
        failed_ids.push(reply.request_id.unwrap());
    }
    // Twenty failures did not use up the limit of 15, and each row says why.
    let rows: Vec<(String, bool, Option<String>, bool)> = sqlx::query_as(
        "SELECT status, counts_toward_limit, last_error, code_sealed IS NULL FROM dispatches WHERE recipient = 'down@example.com'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 20);
    for (status, counts, last_error, wiped) in rows {
        assert_eq!((status.as_str(), counts, wiped), ("failed", false, true));
        assert!(last_error.is_some_and(|e| !e.is_empty()));
    }

    proxy.restore();
    let mut recovered = false;
    for _ in 0..40 {
        let reply = intake.send(&p.token, &valid_body("down@example.com")).await;
        if reply.status == 204 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        recovered,
        "the same intake answers 204 once the broker is back"
    );
    // The failed attempts left no messages; the two accepted ones are queued.
    assert_eq!(broker.drain_dispatches().await.len(), 2);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_fails_fast_with_a_cbc_error_then_recovers() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let proxy = Proxy::start(target(&db.url)).await;
    let intake = TestIntake::spawn(
        intake_settings(amqp_url(), &prefix),
        &db.url_via(proxy.addr()),
    )
    .await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    assert_eq!(
        intake
            .send(&p.token, &valid_body("pg@example.com"))
            .await
            .status,
        204
    );

    proxy.cut();
    for i in 0..3 {
        let started = Instant::now();
        let reply = intake.send(&p.token, &valid_body("pg@example.com")).await;
        assert!(reply.status >= 400, "attempt {i}");
        let code = reply.error_code().unwrap_or_default();
        assert!(code.starts_with("CBC."), "attempt {i}: {}", reply.body);
        assert!(
            !reply.body.contains("sqlx") && !reply.body.contains("connection"),
            "no internals leak: {}",
            reply.body
        );
        // Acquire timeout is 1 s in tests; allow scheduling slack.
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "attempt {i} took {:?}",
            started.elapsed()
        );
    }
    let ready = Reply::read(
        intake
            .client
            .get(intake.url("/readyz"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(ready.status, 503);

    proxy.restore();
    let mut recovered = false;
    for _ in 0..40 {
        if intake
            .send(&p.token, &valid_body("pg@example.com"))
            .await
            .status
            == 204
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        recovered,
        "the same intake answers 204 once Postgres is back"
    );
    broker.cleanup().await;
}

/// A log writer that keeps what it is given, for one test's scoped subscriber.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A record that fails in Postgres goes through the group commit to the
/// answer: the client gets CBC.99004002 and nothing else, and the log line
/// carries the whole cause chain, from what the intake was doing down to
/// the database's own message.
#[tokio::test(flavor = "current_thread")]
async fn a_failed_record_logs_its_cause_chain_and_tells_the_client_only_the_code() {
    let captured = Captured::default();
    let writer = captured.clone();
    // This thread runs every task of the test (a current-thread runtime), so
    // a subscriber scoped to it sees the intake's logs and no other test's.
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _scoped = tracing::subscriber::set_default(subscriber);

    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let intake = TestIntake::spawn(intake_settings(amqp_url(), &prefix), &db.url).await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(
        "ALTER FUNCTION accept_dispatch(uuid, uuid, text, text, text, integer, bytea, bytea,
                                        integer, integer, double precision)
           RENAME TO accept_dispatch_gone",
    ))
    .execute(&db.pool)
    .await
    .unwrap();

    let reply = intake
        .send(&p.token, &valid_body("chain@example.com"))
        .await;
    assert_eq!(
        reply.error_code().as_deref(),
        Some("CBC.99004002"),
        "{}",
        reply.body
    );
    assert!(
        !reply.body.contains("accept_dispatch"),
        "the cause leaks to the client: {}",
        reply.body
    );
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = logs
        .lines()
        .find(|line| line.contains("recording the dispatch"))
        .unwrap_or_else(|| panic!("no log line names the failed record:\n{logs}"));
    assert!(
        line.contains(
            "recording the dispatch: error returned from database: function accept_dispatch("
        ) && line.contains("does not exist"),
        "the cause chain is cut: {line}"
    );
    broker.cleanup().await;
}
