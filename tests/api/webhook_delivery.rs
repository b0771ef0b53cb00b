//! Webhook delivery (README, "Webhooks"): every event of a dispatch's life
//! reaches the partner's endpoint, signed so the official Standard Webhooks
//! library accepts it; a failing endpoint gets every event once it recovers,
//! the same body under the same id on every retry; a worker killed
//! mid-delivery loses no event; `410 Gone` disables the endpoint and mail
//! still flows. The signatures are checked by the official Standard Webhooks
//! packages of PyPI and npm.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;
use verimail_domain::webhook::WebhookSecret;
use verimail_infra::store::webhooks;
use verimail_intake::accounts::AccountKind;
use verimail_testkit::smtp_sink::{Behaviour, SmtpSink};

use crate::support::webhook_receiver::{
    Answer, Delivery, Receiver, npm_verdicts, reference_verdicts, webhook_node, webhook_python,
};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(20);
const CHECK_PATH: &str = "/v2/bases/verificationcode/check";

/// Gives the stack's partner an endpoint at `receiver`; answers its secret.
async fn set_endpoint(stack: &Stack, receiver: &Receiver) -> WebhookSecret {
    set_endpoint_of(&stack.db.pool, stack.partner.id, receiver).await
}

async fn set_endpoint_of(pool: &sqlx::PgPool, partner: Uuid, receiver: &Receiver) -> WebhookSecret {
    let secret = WebhookSecret::generate();
    let sealed = test_keys().seal_webhook_secret(partner, &secret);
    webhooks::set(pool, partner, &receiver.url(), &sealed)
        .await
        .unwrap()
        .unwrap();
    secret
}

async fn send(stack: &Stack, email: &str) -> Uuid {
    let reply = stack
        .intake
        .send(&stack.partner.token, &valid_body(email))
        .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    reply.request_id.unwrap().parse().unwrap()
}

async fn check(stack: &Stack, email: &str, code: &str) -> Reply {
    let request = stack
        .intake
        .client
        .post(stack.intake.url(CHECK_PATH))
        .header("X-Auth-Token", &stack.partner.token)
        .json(&json!({"email": email, "verification_code": code}));
    Reply::read(request.send().await.unwrap()).await
}

fn code_mailed_to(sink: &SmtpSink, email: &str) -> String {
    let mail = sink
        .messages()
        .into_iter()
        .find(|m| m.header("To").is_some_and(|to| to.contains(email)))
        .unwrap();
    find_code(&mail.text().unwrap(), 6).unwrap()
}

/// The events a 2xx answered, one per webhook-id, by dispatch, in the order
/// they happened.
fn delivered_by_dispatch(deliveries: &[Delivery]) -> BTreeMap<String, Vec<Value>> {
    let mut seen = std::collections::HashSet::new();
    let mut events: Vec<Value> = deliveries
        .iter()
        .filter(|d| matches!(d.answer, Answer::Status(200..=299)))
        .filter(|d| seen.insert(d.id.clone()))
        .map(Delivery::json)
        .collect();
    events.sort_by(|a, b| a["timestamp"].as_str().cmp(&b["timestamp"].as_str()));
    let mut by_dispatch: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for event in events {
        let dispatch = event["data"]["dispatch_id"].as_str().unwrap().to_owned();
        by_dispatch.entry(dispatch).or_default().push(event);
    }
    by_dispatch
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn distinct_delivered(deliveries: &[Delivery]) -> usize {
    delivered_by_dispatch(deliveries)
        .values()
        .map(Vec::len)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_of_a_dispatch_life_arrives_signed_for_the_standard_webhooks_library() {
    let stack = Stack::start().await;
    let sink = SmtpSink::start().await;
    let receiver = Receiver::start().await;
    let secret = set_endpoint(&stack, &receiver).await;
    let settings = || worker_settings(&stack.prefix, Some(sink.url()));
    let worker = TestWorker::spawn(settings(), &stack.db.url).await;
    let pool = &stack.db.pool;

    let sent = send(&stack, "sent@example.com").await;
    wait_status(pool, sent, &["sent"], WAIT).await;
    sink.push_behaviour(Behaviour::RejectRcpt("451 4.7.1 try again later".into()));
    let deferred = send(&stack, "deferred@example.com").await;
    wait_status(pool, deferred, &["sent"], WAIT).await;
    sink.push_behaviour(Behaviour::RejectRcpt("550 5.1.1 no such user".into()));
    let failed = send(&stack, "failed@example.com").await;
    wait_status(pool, failed, &["failed"], WAIT).await;

    // With no worker running: one code expires before it is sent, and one
    // is superseded by a newer send to the same address.
    worker.stop().await.unwrap();
    let expired = send(&stack, "expired@example.com").await;
    sqlx::query("UPDATE dispatches SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(expired)
        .execute(pool)
        .await
        .unwrap();
    let older = send(&stack, "twice@example.com").await;
    let newer = send(&stack, "twice@example.com").await;
    let worker = TestWorker::spawn(settings(), &stack.db.url).await;
    wait_status(pool, expired, &["expired"], WAIT).await;
    wait_status(pool, older, &["superseded"], WAIT).await;
    wait_status(pool, newer, &["sent"], WAIT).await;

    // The right code verifies one; three wrong tries lock another.
    let code = code_mailed_to(&sink, "sent@example.com");
    assert_eq!(check(&stack, "sent@example.com", &code).await.status, 204);
    let right = code_mailed_to(&sink, "deferred@example.com");
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    for _ in 0..3 {
        check(&stack, "deferred@example.com", wrong).await;
    }

    let deliveries = receiver
        .wait_until("the nine events", WAIT, |d| distinct_delivered(d) >= 9)
        .await;
    let by_dispatch = delivered_by_dispatch(&deliveries);
    let expected = [
        (sent, vec!["dispatch.sent", "code.verified"]),
        (
            deferred,
            vec!["dispatch.deferred", "dispatch.sent", "code.locked"],
        ),
        (failed, vec!["dispatch.failed"]),
        (expired, vec!["dispatch.expired"]),
        (older, vec!["dispatch.superseded"]),
        (newer, vec!["dispatch.sent"]),
    ];
    for (id, wanted) in &expected {
        let events = by_dispatch.get(&id.to_string()).unwrap();
        assert_eq!(&types(events), wanted, "{id}: {events:#?}");
    }
    assert_eq!(by_dispatch.len(), expected.len(), "{by_dispatch:#?}");

    let deferral = &by_dispatch[&deferred.to_string()][0]["data"];
    assert_eq!(deferral["status"], "retrying");
    assert_eq!(deferral["attempts"], 1);
    assert!(
        deferral["reason"].as_str().unwrap().contains("451"),
        "{deferral}"
    );
    assert!(deferral["next_attempt_at"].is_string(), "{deferral}");
    let failure = &by_dispatch[&failed.to_string()][0]["data"];
    assert_eq!(failure["status"], "failed");
    assert!(
        failure["reason"].as_str().unwrap().contains("550"),
        "{failure}"
    );
    let verified = &by_dispatch[&sent.to_string()][1]["data"];
    assert_eq!(verified["status"], "verified");
    assert!(verified.get("reason").is_none() && verified.get("next_attempt_at").is_none());
    for delivery in &deliveries {
        let event = delivery.json();
        assert!(
            !delivery.body.contains("example.com") && !delivery.body.contains(&code),
            "no address or code in an event: {}",
            delivery.body
        );
        assert_eq!(event["timestamp"], event["data"]["occurred_at"]);
        assert!(delivery.id.starts_with("msg_"), "{}", delivery.id);
    }

    // Both official libraries accept every delivery, and refuse one under
    // another secret.
    let signed: Vec<_> = deliveries.iter().map(Delivery::signed).collect();
    let stranger = WebhookSecret::generate();
    if let Some(python) = webhook_python() {
        let verdicts = reference_verdicts(&python, &secret.expose(), &signed);
        assert!(verdicts.iter().all(|ok| *ok), "{verdicts:?}");
        let verdicts = reference_verdicts(&python, &stranger.expose(), &signed[..1]);
        assert_eq!(verdicts, [false]);
    }
    if let Some(node) = webhook_node() {
        let verdicts = npm_verdicts(&node, &secret.expose(), &signed);
        assert!(verdicts.iter().all(|ok| *ok), "npm: {verdicts:?}");
        let verdicts = npm_verdicts(&node, &stranger.expose(), &signed[..1]);
        assert_eq!(verdicts, [false], "npm");
    }
    worker.stop().await.unwrap();
    stack.broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_gets_every_event_once_it_recovers_and_410_disables_it() {
    let stack = Stack::start().await;
    let sink = SmtpSink::start().await;
    let receiver = Receiver::start().await;
    set_endpoint(&stack, &receiver).await;
    let worker = TestWorker::spawn(
        worker_settings(&stack.prefix, Some(sink.url())),
        &stack.db.url,
    )
    .await;
    let pool = &stack.db.pool;

    // 500 for a while (the test schedule retries after 0.3 s, then every
    // 0.6 s), then 204.
    receiver.push(Answer::Status(500), 4);
    let first = send(&stack, "one@example.com").await;
    let second = send(&stack, "two@example.com").await;
    let deliveries = receiver
        .wait_until("both events delivered", WAIT, |d| {
            distinct_delivered(d) >= 2
        })
        .await;
    let by_dispatch = delivered_by_dispatch(&deliveries);
    for id in [first, second] {
        assert_eq!(types(&by_dispatch[&id.to_string()]), ["dispatch.sent"]);
    }
    assert!(
        deliveries
            .iter()
            .filter(|d| d.answer == Answer::Status(500))
            .count()
            == 4,
        "every failed attempt was made"
    );
    let mut bodies: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for delivery in &deliveries {
        bodies.entry(&delivery.id).or_default().push(&delivery.body);
    }
    assert_eq!(bodies.len(), 2, "one webhook-id per event: {bodies:#?}");
    assert!(
        bodies.values().any(|b| b.len() > 1),
        "an event was retried under its own id"
    );
    for retries in bodies.values() {
        assert!(retries.windows(2).all(|w| w[0] == w[1]), "{retries:?}");
    }
    // The endpoint answers before the worker records the delivery.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (delivered, pending): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE delivered_at IS NOT NULL),
                    count(*) FILTER (WHERE delivered_at IS NULL AND abandoned_at IS NULL)
               FROM webhook_events",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if (delivered, pending) == (2, 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivered {delivered}, pending {pending}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 410: the endpoint is disabled, recorded, and mail goes on.
    receiver.set_default(Answer::Status(410));
    let gone = send(&stack, "gone@example.com").await;
    wait_status(pool, gone, &["sent"], WAIT).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let reason = loop {
        let endpoint = webhooks::get(pool, stack.partner.id)
            .await
            .unwrap()
            .unwrap();
        if endpoint.disabled_at.is_some() {
            break endpoint.disabled_reason.unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "not disabled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reason.contains("410"), "{reason}");
    let after = send(&stack, "after@example.com").await;
    wait_status(pool, after, &["sent"], WAIT).await;
    let events_after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE dispatch_id = $1")
            .bind(after)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(events_after, 0, "a disabled endpoint gets no events");
    assert_eq!(sink.messages().len(), 4, "every mail went out");
    worker.stop().await.unwrap();

    // Events go with their dispatches: `forget` takes an address's, and
    // maintenance those past the retention.
    let events = |id: Uuid| {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM webhook_events WHERE dispatch_id = $1")
            .bind(id)
            .fetch_one(pool)
    };
    assert_eq!(events(first).await.unwrap(), 1);
    let email = verimail_domain::Email::parse("one@example.com").unwrap();
    let erased = verimail_worker::erasure::forget(pool, &email, None)
        .await
        .unwrap();
    assert_eq!(
        (erased.webhook_events, events(first).await.unwrap()),
        (1, 0)
    );
    let retention = Duration::from_secs(72 * 3600);
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(4);
    let policy = verimail_worker::maintenance::Policy { retention };
    let outcome = verimail_worker::maintenance::maintain(pool, policy, WAIT, Some(later))
        .await
        .unwrap();
    let verimail_worker::maintenance::Outcome::Done(report) = outcome else {
        panic!("maintenance was busy");
    };
    assert_eq!(report.webhook_events_deleted, 2, "second's and gone's");
    assert_eq!(
        stack.db.count("SELECT count(*) FROM webhook_events").await,
        0
    );
    stack.broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_delivery_loses_no_event() {
    let stack = Stack::start().await;
    let sink = SmtpSink::start().await;
    let receiver = Receiver::start().await;
    set_endpoint(&stack, &receiver).await;
    receiver.push(Answer::Hang, 1);
    let metrics_port = free_port().to_string();
    let mut doomed = Command::new(env!("CARGO_BIN_EXE_verimail"))
        .arg("worker")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &stack.db.url)
        .env("AMQP_URL", amqp_url())
        .env("VERIMAIL_AMQP_PREFIX", &stack.prefix)
        .env("VERIMAIL_SECRET", TEST_SECRET)
        .env("SMTP_URL", sink.url())
        .env("VERIMAIL_WEBHOOK_ALLOW_INSECURE", "true")
        .env("RUST_LOG", "warn")
        .env(
            "VERIMAIL_METRICS_LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env("VERIMAIL_RETRY_SCHEDULE", "200ms,400ms")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let id = send(&stack, "kill@example.com").await;
    let held = receiver
        .wait_until("the delivery the endpoint holds", WAIT, |d| !d.is_empty())
        .await;
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let event = held[0].id.clone();

    // Another worker delivers it once the dead one's claim runs out
    // (its attempt timeout, 10 s, plus 10 s).
    let worker = TestWorker::spawn(
        worker_settings(&stack.prefix, Some(sink.url())),
        &stack.db.url,
    )
    .await;
    let deliveries = receiver
        .wait_until("the event again", Duration::from_secs(40), |d| {
            d.iter()
                .any(|d| d.id == event && matches!(d.answer, Answer::Status(200..=299)))
        })
        .await;
    let copies: Vec<_> = deliveries.iter().filter(|d| d.id == event).collect();
    assert!(copies.windows(2).all(|w| w[0].body == w[1].body));
    assert_eq!(
        types(&delivered_by_dispatch(&deliveries)[&id.to_string()]),
        ["dispatch.sent"]
    );
    worker.stop().await.unwrap();
    stack.broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_does_not_delay_another_partners_events() {
    let stack = Stack::start().await;
    let sink = SmtpSink::start().await;
    let dead = Receiver::start().await;
    dead.set_default(Answer::Hang);
    set_endpoint(&stack, &dead).await;
    let other = partner(&stack.db.pool, AccountKind::Partner, false).await;
    let alive = Receiver::start().await;
    set_endpoint_of(&stack.db.pool, other.id, &alive).await;
    let mut settings = worker_settings(&stack.prefix, Some(sink.url()));
    // Long enough that a slot a dead delivery holds is visibly held.
    settings.webhooks.timeout = Duration::from_secs(15);
    let worker = TestWorker::spawn(settings, &stack.db.url).await;

    // More events for the dead endpoint than a worker has slots in all.
    for i in 0..80 {
        send(&stack, &format!("dead{i}@example.com")).await;
    }
    dead.wait_until("the dead endpoint's share in flight", WAIT, |d| {
        d.len() >= 4
    })
    .await;
    let started = tokio::time::Instant::now();
    for i in 0..3 {
        let reply = stack
            .intake
            .send(&other.token, &valid_body(&format!("alive{i}@example.com")))
            .await;
        assert_eq!(reply.status, 204, "{}", reply.body);
    }
    alive
        .wait_until("the other partner's events", Duration::from_secs(8), |d| {
            distinct_delivered(d) >= 3
        })
        .await;
    let took = started.elapsed();
    let held = dead.deliveries().len();
    assert!(
        held <= verimail_worker::webhooks::PER_ENDPOINT,
        "at most {} deliveries in flight to one endpoint, saw {held}",
        verimail_worker::webhooks::PER_ENDPOINT
    );
    eprintln!("the other partner's 3 events arrived {took:?} after their sends");
    worker.kill();
    stack.broker.cleanup().await;
}
