//! `Processor::process`, the worker's core, called directly: one dispatch id
//! in, one recorded outcome and one instruction for the consumer out. No
//! broker is involved; the database and the SMTP server are real.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{TestDb, partner, processor, record_dispatch, unique_prefix, worker_settings};
use uuid::Uuid;
use verimail_intake::accounts::AccountKind;
use verimail_testkit::smtp_sink::{Behaviour, SmtpSink};
use verimail_worker::Next;

async fn status_of(db: &TestDb, id: Uuid) -> (String, i32, Option<String>) {
    sqlx::query_as("SELECT status, attempts, last_error FROM dispatches WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_queued_dispatch_is_mailed_once_and_a_second_call_sends_nothing() {
    let db = TestDb::new().await;
    let sink = SmtpSink::start().await;
    let core = processor(
        worker_settings(&unique_prefix(), Some(sink.url())),
        &db.pool,
    );
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let (id, code) = record_dispatch(&db.pool, p.id, "core@example.com").await;

    assert_eq!(core.process(id).await.unwrap(), Next::Ack);
    assert_eq!(core.process(id).await.unwrap(), Next::Ack, "a duplicate");

    assert_eq!(status_of(&db, id).await, ("sent".into(), 1, None));
    let mails = sink.messages();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].text().unwrap().contains(&code));
}

#[tokio::test]
async fn a_transient_failure_parks_for_the_schedules_first_wait() {
    let db = TestDb::new().await;
    let sink = SmtpSink::start().await;
    sink.push_behaviour(Behaviour::RejectData("451 4.3.0 try later".into()));
    let settings = worker_settings(&unique_prefix(), Some(sink.url()));
    let first_wait = settings.retry_delays[0];
    let core = processor(settings, &db.pool);
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let (id, _) = record_dispatch(&db.pool, p.id, "retry@example.com").await;

    assert_eq!(core.process(id).await.unwrap(), Next::Park(first_wait));
    let (status, attempts, last_error) = status_of(&db, id).await;
    assert_eq!((status.as_str(), attempts), ("retrying", 1));
    assert!(last_error.unwrap().contains("451"));

    // The redelivered message finds it retrying and sends it.
    assert_eq!(core.process(id).await.unwrap(), Next::Ack);
    assert_eq!(status_of(&db, id).await.0, "sent");
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn a_permanent_failure_ends_failed_without_a_mail() {
    let db = TestDb::new().await;
    let sink = SmtpSink::start().await;
    sink.set_default(Behaviour::RejectRcpt("550 5.1.1 no such user".into()));
    let core = processor(
        worker_settings(&unique_prefix(), Some(sink.url())),
        &db.pool,
    );
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let (id, _) = record_dispatch(&db.pool, p.id, "gone@example.com").await;

    assert_eq!(core.process(id).await.unwrap(), Next::Ack);
    let (status, attempts, last_error) = status_of(&db, id).await;
    assert_eq!((status.as_str(), attempts), ("failed", 1));
    assert!(last_error.unwrap().contains("550"));
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn an_expired_code_is_recorded_expired_and_never_mailed() {
    let db = TestDb::new().await;
    let sink = SmtpSink::start().await;
    let core = processor(
        worker_settings(&unique_prefix(), Some(sink.url())),
        &db.pool,
    );
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let (id, _) = record_dispatch(&db.pool, p.id, "late@example.com").await;
    sqlx::query("UPDATE dispatches SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();

    assert_eq!(core.process(id).await.unwrap(), Next::Ack);
    assert_eq!(status_of(&db, id).await.0, "expired");
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn a_live_lease_of_another_worker_parks_for_what_is_left_of_it() {
    let db = TestDb::new().await;
    let sink = SmtpSink::start().await;
    let core = processor(
        worker_settings(&unique_prefix(), Some(sink.url())),
        &db.pool,
    );
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let (id, _) = record_dispatch(&db.pool, p.id, "held@example.com").await;
    sqlx::query(
        "UPDATE dispatches SET status = 'sending', lease_until = now() + interval '20 seconds' WHERE id = $1",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();

    let Next::Park(wait) = core.process(id).await.unwrap() else {
        panic!("expected to park behind the other worker's lease");
    };
    assert!(
        wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
        "{wait:?}"
    );
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn an_unknown_id_goes_to_the_dead_letter_queue() {
    let db = TestDb::new().await;
    let core = processor(worker_settings(&unique_prefix(), None), &db.pool);
    assert!(matches!(
        core.process(Uuid::now_v7()).await.unwrap(),
        Next::DeadLetter(_)
    ));
}

#[tokio::test]
async fn a_row_that_does_not_decode_is_a_recorded_failure_with_its_reason() {
    let db = TestDb::new().await;
    let sink = SmtpSink::start().await;
    let core = processor(
        worker_settings(&unique_prefix(), Some(sink.url())),
        &db.pool,
    );
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let (id, _) = record_dispatch(&db.pool, p.id, "broken@example.com").await;
    sqlx::query("UPDATE dispatches SET email = 'not an address' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();

    assert_eq!(core.process(id).await.unwrap(), Next::Ack);
    let (status, _, last_error) = status_of(&db, id).await;
    assert_eq!(status, "failed");
    assert!(last_error.unwrap().contains("stored address"));
    assert!(sink.messages().is_empty());
}
