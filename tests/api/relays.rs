//! Several SMTP relays (issue 25), through the whole pipeline: a relay that
//! answers 451 or refuses connections costs no retry, the mail goes through
//! the next one within the same attempt with its Message-ID unchanged; a
//! relay skipped for its cool-down is used again after it; a 550 is a
//! failed dispatch, not a retry elsewhere.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use uuid::Uuid;
use verimail_intake::accounts::AccountKind;
use verimail_testkit::smtp_sink::{Behaviour, SmtpSink};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(15);

struct Env {
    db: TestDb,
    broker: Broker,
    intake: TestIntake,
    worker: TestWorker,
    token: String,
}

impl Env {
    async fn start(smtp_url: String, cooldown: Duration) -> Self {
        let db = TestDb::new().await;
        let prefix = unique_prefix();
        let broker = Broker::connect(&prefix).await;
        let intake = TestIntake::spawn(intake_settings(amqp_url(), &prefix), &db.url).await;
        let mut settings = worker_settings(&prefix, Some(smtp_url));
        settings.smtp_cooldown = cooldown;
        let worker = TestWorker::spawn(settings, &db.url).await;
        let token = partner(&db.pool, AccountKind::Partner, false).await.token;
        Self {
            db,
            broker,
            intake,
            worker,
            token,
        }
    }

    async fn send(&self, email: &str) -> Uuid {
        let reply = self.intake.send(&self.token, &valid_body(email)).await;
        assert_eq!(reply.status, 204);
        reply.request_id.unwrap().parse().unwrap()
    }

    async fn stop(self) {
        self.worker.stop().await.unwrap();
        self.broker.cleanup().await;
    }
}

/// A closed port: connections are refused.
async fn refusing_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("smtp://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_through_the_next_relay_in_the_same_attempt_with_its_message_id() {
    let busy = SmtpSink::start().await;
    busy.set_default(Behaviour::RejectRcpt("451 4.3.0 try later".into()));
    let second = SmtpSink::start().await;
    for first in [busy.url(), refusing_url().await] {
        let before = second.messages().len();
        let env = Env::start(format!("{first},{}", second.url()), Duration::from_secs(30)).await;
        let mut ids = Vec::new();
        for i in 0..6 {
            ids.push(env.send(&format!("relay{i}@example.com")).await);
        }
        for id in &ids {
            let (_, attempts, last_error) = wait_status(&env.db.pool, *id, &["sent"], WAIT).await;
            assert_eq!((attempts, last_error), (1, None), "no retry was needed");
        }
        let mails = second.wait_for(before + ids.len(), WAIT).await;
        for id in &ids {
            let expected = format!("<{id}@verimail.test>");
            let arrived = mails
                .iter()
                .filter(|m| m.header("Message-ID").as_deref() == Some(expected.as_str()))
                .count();
            assert_eq!(arrived, 1, "{expected} arrived once, unchanged");
        }
        env.db.assert_open_means_sealed().await;
        env.stop().await;
    }
    assert!(busy.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_skipped_for_its_cool_down_is_used_again_after_it() {
    let first = SmtpSink::start().await;
    let second = SmtpSink::start().await;
    let cooldown = Duration::from_secs(3);
    let env = Env::start(format!("{},{}", first.url(), second.url()), cooldown).await;
    first.stop().await;
    for i in 0..4 {
        let id = env.send(&format!("down{i}@example.com")).await;
        wait_status(&env.db.pool, id, &["sent"], WAIT).await;
    }
    first.restart().await;
    let id = env.send("skipped@example.com").await;
    wait_status(&env.db.pool, id, &["sent"], WAIT).await;
    assert!(first.messages().is_empty(), "skipped during the cool-down");

    tokio::time::sleep(cooldown).await;
    let id = env.send("back@example.com").await;
    wait_status(&env.db.pool, id, &["sent"], WAIT).await;
    let back = first.wait_for(1, WAIT).await;
    assert_eq!(back[0].rcpt_to, ["back@example.com"]);
    assert_eq!(second.messages().len(), 5);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_550_from_the_first_relay_fails_the_dispatch_without_trying_the_next() {
    let first = SmtpSink::start().await;
    first.set_default(Behaviour::RejectRcpt("550 5.1.1 no such user".into()));
    let second = SmtpSink::start().await;
    let env = Env::start(
        format!("{},{}", first.url(), second.url()),
        Duration::from_secs(30),
    )
    .await;
    let id = env.send("nobody@example.com").await;
    let (_, attempts, last_error) = wait_status(&env.db.pool, id, &["failed"], WAIT).await;
    assert_eq!(attempts, 1);
    let last_error = last_error.unwrap();
    assert!(
        last_error.starts_with(&format!("{}: 550 5.1.1", first.addr())),
        "{last_error}"
    );
    // The worker's start-up check opened (and closed) one session there.
    assert!(second.connections() <= 1, "never tried for the mail");
    assert!(second.messages().is_empty());
    env.stop().await;
}
