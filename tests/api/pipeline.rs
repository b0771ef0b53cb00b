//! The whole pipeline against real Postgres, RabbitMQ and an SMTP server:
//! intake → queue → worker → SMTP, and every way a dispatch can end.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::support::*;
use serde_json::json;
use uuid::Uuid;
use verimail_intake::accounts::AccountKind;
use verimail_testkit::smtp_sink::{Behaviour, SmtpSink};

const WAIT: Duration = Duration::from_secs(15);

/// This file's `Stack` with its own helpers: in one test crate an inherent
/// `impl Stack` here would clash with another module's.
struct Env(Stack);

impl std::ops::Deref for Env {
    type Target = Stack;

    fn deref(&self) -> &Stack {
        &self.0
    }
}

async fn env() -> Env {
    Env(Stack::start().await)
}

impl Env {
    async fn send(&self, email: &str, lang: &str) -> Uuid {
        let reply = self
            .intake
            .send(
                &self.partner.token,
                &json!({"receiver_type": 2, "email": email, "lang": lang, "timeout": 5}),
            )
            .await;
        assert_eq!(reply.status, 204, "{}", reply.body);
        reply.request_id.unwrap().parse().unwrap()
    }

    async fn status(&self, id: Uuid, token: &str) -> Reply {
        let url = self
            .intake
            .url(&format!("/v2/bases/verificationcode/dispatches/{id}"));
        Reply::read(
            self.intake
                .client
                .get(url)
                .header("X-Auth-Token", token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_becomes_one_mail_in_the_asked_language() {
    let env = env().await;
    let sink = SmtpSink::start().await;
    let worker =
        TestWorker::spawn(worker_settings(&env.prefix, Some(sink.url())), &env.db.url).await;

    let en = env.send("alice@example.com", "en-us").await;
    let zh = env.send("bob@example.com", "zh-cn").await;
    let mails = sink.wait_for(2, WAIT).await;
    wait_status(&env.db.pool, en, &["sent"], WAIT).await;
    wait_status(&env.db.pool, zh, &["sent"], WAIT).await;

    for (id, to, subject_word, lang) in [
        (en, "alice@example.com", "verification code", "en-US"),
        (zh, "bob@example.com", "验证码", "zh-CN"),
    ] {
        let mail = mails
            .iter()
            .find(|m| m.rcpt_to == [to])
            .expect("mail for recipient");
        assert!(
            mail.subject().unwrap().contains(subject_word),
            "{:?}",
            mail.subject()
        );
        assert_eq!(
            mail.header("Message-ID").unwrap().trim(),
            format!("<{id}@verimail.test>")
        );
        assert_eq!(mail.header("Content-Language").unwrap().trim(), lang);
        assert_eq!(
            mail.header("Auto-Submitted").unwrap().trim(),
            "auto-generated"
        );
        let text = mail.text().expect("plain part");
        let html = mail.html().expect("html part");
        let code = find_code(&text, 6).expect("code in the text part");
        assert!(html.contains(&code), "the code is in the HTML part too");
        assert!(
            text.contains('5') && html.contains('5'),
            "validity in minutes"
        );
        assert!(
            html.contains("Acme &#60;Cloud&#62; &#38; Co") && !html.contains("<Cloud>"),
            "brand escaped in HTML"
        );
        assert!(
            test_keys().code_matches(id, &code, &stored_digest(&env.db.pool, id).await),
            "the stored digest accepts the mailed code"
        );

        let status = env.status(id, &env.partner.token).await;
        assert_eq!(status.status, 200, "{}", status.body);
        let body = status.json();
        assert_eq!(
            (
                body["id"].as_str().unwrap(),
                body["status"].as_str().unwrap(),
                body["attempts"].as_i64().unwrap()
            ),
            (id.to_string().as_str(), "sent", 1)
        );
        assert!(
            body["sent_at"].is_string()
                && body["expires_at"].is_string()
                && body["created_at"].is_string()
        );
    }
    // The sealed code is wiped once the dispatch is final.
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM dispatches WHERE code_sealed IS NOT NULL")
            .await,
        0
    );

    // Another partner cannot see it, and gets the same answer as for an unknown id.
    let other = partner(&env.db.pool, AccountKind::Partner, false).await;
    let hidden = env.status(en, &other.token).await;
    let unknown = env.status(Uuid::now_v7(), &env.partner.token).await;
    assert_eq!(
        (hidden.status, hidden.error_code().as_deref()),
        (404, Some("CBC.0100"))
    );
    assert_eq!(
        (unknown.status, unknown.body.clone()),
        (404, hidden.body.clone())
    );
    let no_auth = Reply::read(
        env.intake
            .client
            .get(
                env.intake
                    .url(&format!("/v2/bases/verificationcode/dispatches/{en}")),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(no_auth.status, 401);
    env.db.assert_open_means_sealed().await;

    worker.stop().await.unwrap();
    env.broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_451_is_retried_and_a_550_fails_at_once() {
    let env = env().await;
    let sink = SmtpSink::start().await;
    let worker =
        TestWorker::spawn(worker_settings(&env.prefix, Some(sink.url())), &env.db.url).await;

    sink.push_behaviour(Behaviour::RejectData("451 4.3.0 try again later".into()));
    let retried = env.send("retry@example.com", "en-us").await;
    let (_, attempts, last_error) = wait_status(&env.db.pool, retried, &["sent"], WAIT).await;
    assert_eq!(attempts, 2);
    assert_eq!(last_error, None, "a success clears the last error");
    assert_eq!(
        sink.messages()
            .iter()
            .filter(|m| m.rcpt_to == ["retry@example.com"])
            .count(),
        1
    );

    sink.push_behaviour(Behaviour::RejectRcpt("550 5.1.1 no such user".into()));
    let rejected = env.send("nobody@example.com", "en-us").await;
    let (_, attempts, last_error) = wait_status(&env.db.pool, rejected, &["failed"], WAIT).await;
    assert_eq!(attempts, 1, "no retry after a 5xx");
    assert!(
        last_error.unwrap().contains("550"),
        "last_error keeps the SMTP reply"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (status, attempts, _) = wait_status(&env.db.pool, rejected, &["failed"], WAIT).await;
    assert_eq!((status.as_str(), attempts), ("failed", 1));

    worker.stop().await.unwrap();
    env.broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtp_outage_longer_than_the_schedule_ends_failed() {
    let env = env().await;
    let sink = SmtpSink::start().await;
    sink.stop().await;
    let worker =
        TestWorker::spawn(worker_settings(&env.prefix, Some(sink.url())), &env.db.url).await;
    let id = env.send("outage@example.com", "en-us").await;
    let (status, attempts, last_error) =
        wait_status(&env.db.pool, id, &["failed", "expired"], WAIT).await;
    assert_eq!(
        (status.as_str(), attempts),
        ("failed", 3),
        "max attempts is 3 in these tests"
    );
    assert!(last_error.unwrap().contains("3 attempts"));
    worker.stop().await.unwrap();
    env.broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_two_workers_still_send_one_mail_per_dispatch() {
    let env = env().await;
    let sink = SmtpSink::start().await;
    // Queue everything first, with duplicates, then let two workers race.
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(env.send(&format!("user{i}@example.com"), "en-us").await);
    }
    let publisher = Broker::connect(&env.prefix).await;
    for id in &ids[..10] {
        publish_raw(
            &publisher,
            &verimail_domain::DispatchMessage::new(*id).encode(),
        )
        .await;
    }
    let a = TestWorker::spawn(worker_settings(&env.prefix, Some(sink.url())), &env.db.url).await;
    let b = TestWorker::spawn(worker_settings(&env.prefix, Some(sink.url())), &env.db.url).await;
    for id in &ids {
        wait_status(&env.db.pool, *id, &["sent"], WAIT).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = sink.messages();
    assert_eq!(mails.len(), 20, "one mail per dispatch");
    let mut message_ids: Vec<_> = mails
        .iter()
        .map(|m| m.header("Message-ID").unwrap())
        .collect();
    message_ids.sort();
    message_ids.dedup();
    assert_eq!(message_ids.len(), 20);
    env.db.assert_open_means_sealed().await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    env.broker.cleanup().await;
}

async fn publish_raw(broker: &Broker, payload: &[u8]) {
    use lapin::BasicProperties;
    use lapin::options::BasicPublishOptions;
    broker
        .channel
        .basic_publish(
            broker.topology.dispatch_exchange().into(),
            verimail_infra::amqp::DISPATCH_ROUTING_KEY.into(),
            BasicPublishOptions::default(),
            payload,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_send_loses_nothing() {
    let env = env().await;
    let sink = SmtpSink::start().await;
    sink.push_behaviour(Behaviour::DelayAccept(Duration::from_secs(30)));
    let mut settings = worker_settings(&env.prefix, Some(sink.url()));
    settings.lease = Duration::from_secs(1);
    let doomed = TestWorker::spawn(settings.clone(), &env.db.url).await;
    let id = env.send("kill@example.com", "en-us").await;
    wait_status(&env.db.pool, id, &["sending"], WAIT).await;
    // Mid-send means inside the SMTP transaction: the doomed worker's MAIL
    // has taken the slow reply. (Killed between claim and MAIL, the slow
    // reply would meet the survivor's transaction instead.)
    let deadline = tokio::time::Instant::now() + WAIT;
    while sink.scripted_left() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the doomed worker never sent MAIL"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    doomed.kill();

    let survivor = TestWorker::spawn(settings, &env.db.url).await;
    let (_, attempts, last_error) = wait_status(&env.db.pool, id, &["sent"], WAIT).await;
    assert_eq!(
        attempts, 2,
        "claimed again once the lease ran out (last error: {last_error:?})"
    );
    assert!(
        sink.messages()
            .iter()
            .any(|m| m.header("Message-ID").unwrap().contains(&id.to_string()))
    );
    survivor.stop().await.unwrap();
    env.broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_superseded_codes_are_not_sent() {
    let env = env().await;
    let sink = SmtpSink::start().await;
    let expired = env.send("late@example.com", "en-us").await;
    sqlx::query("UPDATE dispatches SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(expired)
        .execute(&env.db.pool)
        .await
        .unwrap();
    let older = env.send("twice@example.com", "en-us").await;
    let newer = env.send("twice@example.com", "en-us").await;

    let worker =
        TestWorker::spawn(worker_settings(&env.prefix, Some(sink.url())), &env.db.url).await;
    wait_status(&env.db.pool, expired, &["expired"], WAIT).await;
    wait_status(&env.db.pool, older, &["superseded"], WAIT).await;
    wait_status(&env.db.pool, newer, &["sent"], WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mails = sink.messages();
    assert_eq!(mails.len(), 1, "only the newest code is mailed");
    assert!(
        mails[0]
            .header("Message-ID")
            .unwrap()
            .contains(&newer.to_string())
    );
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM dispatches WHERE code_sealed IS NOT NULL")
            .await,
        0
    );
    env.db.assert_open_means_sealed().await;
    worker.stop().await.unwrap();
    env.broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_goes_to_the_dead_letter_queue_and_the_worker_keeps_going() {
    let env = env().await;
    let sink = SmtpSink::start().await;
    let worker =
        TestWorker::spawn(worker_settings(&env.prefix, Some(sink.url())), &env.db.url).await;
    let broker = Broker::connect(&env.prefix).await;
    publish_raw(&broker, b"not json at all").await;
    publish_raw(
        &broker,
        br#"{"v":2,"dispatch_id":"0190f5a2-7c4e-7d2a-9b1e-3f4a5b6c7d8e"}"#,
    )
    .await;
    publish_raw(
        &broker,
        &verimail_domain::DispatchMessage::new(Uuid::now_v7()).encode(),
    )
    .await;
    let id = env.send("after-garbage@example.com", "en-us").await;
    wait_status(&env.db.pool, id, &["sent"], WAIT).await;
    let dead = broker.topology.dead_queue();
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker.depth(&dead).await < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "3 messages dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        broker.depth(&broker.topology.dispatch_queue()).await,
        0,
        "nothing loops"
    );
    worker.stop().await.unwrap();
    env.broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_smtp_url_the_mail_is_an_eml_file_in_the_outbox() {
    let env = env().await;
    let settings = worker_settings(&env.prefix, None);
    let outbox = settings.outbox.clone();
    let worker = TestWorker::spawn(settings, &env.db.url).await;
    let id = env.send("files@example.com", "zh-cn").await;
    wait_status(&env.db.pool, id, &["sent"], WAIT).await;
    let files: Vec<_> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].extension().unwrap(), "eml");
    let raw = std::fs::read(&files[0]).unwrap();
    let view = verimail_testkit::smtp_sink::MailView::new(&raw);
    assert_eq!(
        view.header("Message-ID").unwrap().trim(),
        format!("<{id}@verimail.test>")
    );
    assert!(view.subject().unwrap().contains("验证码"));
    let code = find_code(&view.text().unwrap(), 6).unwrap();
    assert!(test_keys().code_matches(id, &code, &stored_digest(&env.db.pool, id).await));
    worker.stop().await.unwrap();
    std::fs::remove_dir_all(outbox).ok();
    env.broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_republishes_a_dispatch_whose_message_was_lost() {
    let env = env().await;
    let sink = SmtpSink::start().await;
    let id = env.send("lost@example.com", "en-us").await;
    assert_eq!(
        env.broker.drain_dispatches().await.len(),
        1,
        "the message is gone"
    );
    let mut settings = worker_settings(&env.prefix, Some(sink.url()));
    settings.sweep_interval = Duration::from_millis(200);
    settings.sweep_grace = Duration::from_millis(100);
    let worker = TestWorker::spawn(settings, &env.db.url).await;
    wait_status(&env.db.pool, id, &["sent"], WAIT).await;
    assert_eq!(sink.messages().len(), 1);
    worker.stop().await.unwrap();
    env.broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_in_flight_send_finish() {
    let env = env().await;
    let sink = SmtpSink::start().await;
    sink.push_behaviour(Behaviour::DelayAccept(Duration::from_millis(1500)));
    let worker =
        TestWorker::spawn(worker_settings(&env.prefix, Some(sink.url())), &env.db.url).await;
    let id = env.send("slow@example.com", "en-us").await;
    wait_status(&env.db.pool, id, &["sending"], WAIT).await;
    worker.stop().await.unwrap();
    let (status, _, _) = wait_status(&env.db.pool, id, &["sent"], Duration::from_secs(1)).await;
    assert_eq!(status, "sent", "finished before the worker exited");
    assert_eq!(
        env.broker
            .depth(&env.broker.topology.dispatch_queue())
            .await,
        0,
        "and acked"
    );
    env.broker.cleanup().await;
}
