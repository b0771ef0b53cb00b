//! `Prefer: wait=N` on send (RFC 7240; README "Waiting for the relay's
//! answer"): the answer waits for the first SMTP attempt's outcome, at most
//! N seconds, and says where the dispatch stands. Real intake, worker,
//! RabbitMQ, Postgres and SMTP servers that accept, refuse for good, refuse
//! connections, or never greet.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use verimail_domain::RateLimit;
use verimail_intake::accounts::AccountKind;
use verimail_testkit::smtp_sink::{Behaviour, SmtpSink};

use crate::support::*;

struct Waited {
    status: u16,
    error_code: Option<String>,
    applied: Option<String>,
    dispatch_status: Option<String>,
    took: Duration,
}

async fn send(intake: &TestIntake, token: &str, email: &str, prefer: Option<&str>) -> Waited {
    let mut request = intake
        .client
        .post(intake.url(SEND_PATH))
        .header("X-Auth-Token", token)
        .json(&valid_body(email));
    if let Some(prefer) = prefer {
        request = request.header("Prefer", prefer);
    }
    let started = Instant::now();
    let response = request.send().await.unwrap();
    let took = started.elapsed();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let applied = header("preference-applied");
    let dispatch_status = header("x-dispatch-status");
    let reply = Reply::read(response).await;
    Waited {
        status: reply.status,
        error_code: reply.error_code(),
        applied,
        dispatch_status,
        took,
    }
}

/// An intake (the limit: `per_hour` sends per address) and a worker
/// sending to `smtp_url` with a 15 s SMTP timeout.
async fn stack(
    smtp_url: String,
    per_hour: u32,
) -> (TestDb, Partner, TestIntake, TestWorker, String) {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let mut settings = intake_settings(amqp_url(), &prefix);
    settings.rate_limit = RateLimit {
        per_hour,
        per_day: 60,
    };
    let intake = TestIntake::spawn(settings, &db.url).await;
    let mut worker = worker_settings(&prefix, Some(smtp_url));
    worker.smtp_timeout = Duration::from_secs(15);
    let worker = TestWorker::spawn(worker, &db.url).await;
    let partner = partner(&db.pool, AccountKind::Partner, false).await;
    (db, partner, intake, worker, prefix)
}

#[tokio::test]
async fn a_waited_send_answers_once_the_relay_accepted_the_mail() {
    let sink = SmtpSink::start().await;
    let (_db, partner, intake, worker, prefix) = stack(sink.url(), 15).await;

    let waited = send(
        &intake,
        &partner.token,
        "wait.ok@example.com",
        Some("wait=5"),
    )
    .await;
    assert_eq!(waited.status, 204);
    assert_eq!(waited.applied.as_deref(), Some("wait=5"));
    assert_eq!(waited.dispatch_status.as_deref(), Some("sent"));
    assert_eq!(
        sink.messages().len(),
        1,
        "the mail is at the relay when the answer arrives"
    );

    // A longer wait is capped, and says so.
    let capped = send(
        &intake,
        &partner.token,
        "wait.cap@example.com",
        Some("wait=600"),
    )
    .await;
    assert_eq!(capped.status, 204);
    assert_eq!(capped.applied.as_deref(), Some("wait=30"));
    assert_eq!(capped.dispatch_status.as_deref(), Some("sent"));

    // Without the header nothing changes.
    let plain = send(&intake, &partner.token, "no.wait@example.com", None).await;
    assert_eq!(plain.status, 204);
    assert_eq!(plain.applied, None);
    assert_eq!(plain.dispatch_status, None);
    worker.stop().await.unwrap();
    // The test's queues go with it: a broker's file handles are few.
    Broker::connect(&prefix).await.cleanup().await;
}

#[tokio::test]
async fn a_relay_refusing_for_good_makes_the_waited_send_cbc_99004003_and_uncounted() {
    let sink = SmtpSink::start().await;
    sink.set_default(Behaviour::RejectRcpt("550 5.1.1 no such user".into()));
    // One send per address and hour: a refused send must not use it up.
    let (db, partner, intake, worker, prefix) = stack(sink.url(), 1).await;
    let email = "refused@example.com";

    let waited = send(&intake, &partner.token, email, Some("wait=5")).await;
    assert_eq!(waited.status, 400);
    assert_eq!(waited.error_code.as_deref(), Some("CBC.99004003"));
    assert_eq!(waited.applied.as_deref(), Some("wait=5"));
    assert_eq!(waited.dispatch_status.as_deref(), Some("failed"));
    assert!(sink.messages().is_empty(), "no mail");
    assert_eq!(
        db.count(
            "SELECT count(*) FROM dispatches WHERE status = 'failed' AND NOT counts_toward_limit
                AND code_sealed IS NULL"
        )
        .await,
        1,
        "failed, its code void, not counted"
    );

    // The limit of one is still there to use.
    sink.set_default(Behaviour::Accept);
    let next = send(&intake, &partner.token, email, Some("wait=5")).await;
    assert_eq!(
        next.status, 204,
        "the refused send did not count toward the limit"
    );
    assert_eq!(next.dispatch_status.as_deref(), Some("sent"));
    let limited = send(&intake, &partner.token, email, None).await;
    assert_eq!(
        limited.error_code.as_deref(),
        Some("CBC.99004015"),
        "the sent one did count"
    );
    worker.stop().await.unwrap();
    // The test's queues go with it: a broker's file handles are few.
    Broker::connect(&prefix).await.cleanup().await;
}

#[tokio::test]
async fn a_relay_refusing_connections_answers_at_once_with_the_retry_pending() {
    // A port nothing listens on: the connection is refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("smtp://{}", closed.local_addr().unwrap());
    drop(closed);
    let (_db, partner, intake, worker, prefix) = stack(url, 15).await;

    let waited = send(&intake, &partner.token, "later@example.com", Some("wait=5")).await;
    assert_eq!(waited.status, 204);
    assert_eq!(waited.applied.as_deref(), Some("wait=5"));
    assert_eq!(waited.dispatch_status.as_deref(), Some("retrying"));
    assert!(
        waited.took < Duration::from_secs(3),
        "answered when the attempt failed, not when the wait ran out: {:?}",
        waited.took
    );
    worker.stop().await.unwrap();
    // The test's queues go with it: a broker's file handles are few.
    Broker::connect(&prefix).await.cleanup().await;
}

#[tokio::test]
async fn a_relay_that_never_greets_is_waited_for_n_seconds() {
    // Accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("smtp://{}", silent.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let (_db, partner, intake, worker, prefix) = stack(url, 15).await;

    let waited = send(&intake, &partner.token, "slow@example.com", Some("wait=3")).await;
    assert_eq!(waited.status, 204);
    assert_eq!(waited.applied.as_deref(), Some("wait=3"));
    assert_eq!(waited.dispatch_status.as_deref(), Some("sending"));
    assert!(
        waited.took >= Duration::from_secs(3) && waited.took < Duration::from_secs(6),
        "about the 3 s asked for: {:?}",
        waited.took
    );
    worker.kill();
    holder.abort();
    Broker::connect(&prefix).await.cleanup().await;
}
