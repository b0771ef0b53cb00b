//! `Processor::process`, the worker's core, called directly: one dispatch id
//! in, one recorded outcome and one instruction for the consumer out. No
//! broker is involved; the database and the SMTP server are real.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::support::{TestDb, partner, processor, record_dispatch, unique_prefix, worker_settings};
use uuid::Uuid;
use verimail_intake::accounts::AccountKind;
use verimail_testkit::smtp_sink::{Behaviour, SmtpSink};
use verimail_worker::Next;

/// A database, an SMTP sink, the worker core and a partner.
struct Core {
    db: TestDb,
    sink: SmtpSink,
    core: verimail_worker::Processor,
    partner: crate::support::Partner,
}

impl Core {
    async fn start() -> Self {
        let db = TestDb::new().await;
        let sink = SmtpSink::start().await;
        let core = processor(
            worker_settings(&unique_prefix(), Some(sink.url())),
            &db.pool,
        );
        let partner = partner(&db.pool, AccountKind::Partner, false).await;
        Self {
            db,
            sink,
            core,
            partner,
        }
    }

    async fn record(&self, email: &str) -> (Uuid, String) {
        record_dispatch(&self.db.pool, self.partner.id, email).await
    }

    /// Changes the row behind the worker's back, as another process would.
    async fn tamper(&self, sql: &'static str, id: Uuid) {
        sqlx::query(sql)
            .bind(id)
            .execute(&self.db.pool)
            .await
            .unwrap();
    }

    async fn status_of(&self, id: Uuid) -> (String, i32, Option<String>) {
        sqlx::query_as("SELECT status, attempts, last_error FROM dispatches WHERE id = $1")
            .bind(id)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_queued_dispatch_is_mailed_once_and_a_second_call_sends_nothing() {
    let t = Core::start().await;
    let (id, code) = t.record("core@example.com").await;

    assert_eq!(t.core.process(id).await.unwrap(), Next::Ack);
    assert_eq!(t.core.process(id).await.unwrap(), Next::Ack, "a duplicate");

    assert_eq!(t.status_of(id).await, ("sent".into(), 1, None));
    let mails = t.sink.messages();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].text().unwrap().contains(&code));
}

#[tokio::test]
async fn a_transient_failure_parks_for_the_schedules_first_wait() {
    let t = Core::start().await;
    t.sink
        .push_behaviour(Behaviour::RejectData("451 4.3.0 try later".into()));
    let first_wait = crate::support::fast_retries()[0];
    let (id, _) = t.record("retry@example.com").await;

    assert_eq!(t.core.process(id).await.unwrap(), Next::Park(first_wait));
    let (status, attempts, last_error) = t.status_of(id).await;
    assert_eq!((status.as_str(), attempts), ("retrying", 1));
    assert!(last_error.unwrap().contains("451"));

    // The redelivered message finds it retrying and sends it.
    assert_eq!(t.core.process(id).await.unwrap(), Next::Ack);
    assert_eq!(t.status_of(id).await.0, "sent");
    assert_eq!(t.sink.messages().len(), 1);
}

#[tokio::test]
async fn a_permanent_failure_ends_failed_without_a_mail() {
    let t = Core::start().await;
    t.sink
        .set_default(Behaviour::RejectRcpt("550 5.1.1 no such user".into()));
    let (id, _) = t.record("gone@example.com").await;

    assert_eq!(t.core.process(id).await.unwrap(), Next::Ack);
    let (status, attempts, last_error) = t.status_of(id).await;
    assert_eq!((status.as_str(), attempts), ("failed", 1));
    assert!(last_error.unwrap().contains("550"));
    assert!(t.sink.messages().is_empty());
}

#[tokio::test]
async fn an_expired_code_is_recorded_expired_and_never_mailed() {
    let t = Core::start().await;
    let (id, _) = t.record("late@example.com").await;
    t.tamper(
        "UPDATE dispatches SET expires_at = now() - interval '1 second' WHERE id = $1",
        id,
    )
    .await;

    assert_eq!(t.core.process(id).await.unwrap(), Next::Ack);
    assert_eq!(t.status_of(id).await.0, "expired");
    assert!(t.sink.messages().is_empty());
}

#[tokio::test]
async fn a_live_lease_of_another_worker_is_rechecked_when_it_ends() {
    let t = Core::start().await;
    let (id, _) = t.record("held@example.com").await;
    t.tamper(
        "UPDATE dispatches SET status = 'sending', lease_until = now() + interval '20 seconds' WHERE id = $1",
        id,
    )
    .await;

    // A re-check at the lease's end (plus the takeover grace), not at the
    // next retry bucket.
    let Next::Recheck(wait) = t.core.process(id).await.unwrap() else {
        panic!("expected a re-check behind the other worker's lease");
    };
    let end = Duration::from_secs(20) + verimail_infra::store::dispatches::TAKEOVER_GRACE;
    assert!(
        wait > end - Duration::from_secs(5) && wait <= end,
        "{wait:?}"
    );
    assert!(t.sink.messages().is_empty());
}

#[tokio::test]
async fn an_unknown_id_goes_to_the_dead_letter_queue() {
    let t = Core::start().await;
    assert!(matches!(
        t.core.process(Uuid::now_v7()).await.unwrap(),
        Next::DeadLetter(_)
    ));
}

#[tokio::test]
async fn a_row_that_does_not_decode_is_a_recorded_failure_with_its_reason() {
    let t = Core::start().await;
    let (id, _) = t.record("broken@example.com").await;
    t.tamper(
        "UPDATE dispatches SET email = 'not an address' WHERE id = $1",
        id,
    )
    .await;

    assert_eq!(t.core.process(id).await.unwrap(), Next::Ack);
    let (status, _, last_error) = t.status_of(id).await;
    assert_eq!(status, "failed");
    assert!(last_error.unwrap().contains("stored address"));
    assert!(t.sink.messages().is_empty());
}
