//! Webhook endpoints (README, "Webhooks"): `verimail webhook set` refuses
//! what could reach this side's own network, shows a new secret once and
//! stores it sealed, rotates with both secrets signing, and `remove` takes
//! the endpoint away; signatures verify with the official Standard Webhooks
//! Python library.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;
use verimail_domain::webhook::{self, WebhookSecret};
use verimail_infra::store::webhooks;
use verimail_intake::accounts::AccountKind;

use crate::support::webhook_receiver::{reference_verdicts, webhook_python};
use crate::support::*;

fn verimail(db: &TestDb, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_verimail"));
    command
        .args(args)
        .env_remove("VERIMAIL_WEBHOOK_ALLOW_INSECURE")
        .env("DATABASE_URL", &db.url)
        .env("AMQP_URL", "amqp://127.0.0.1:1/%2f")
        .env("VERIMAIL_SECRET", TEST_SECRET);
    for (name, value) in vars {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn set(db: &TestDb, partner: Uuid, url: &str, vars: &[(&str, &str)]) -> Output {
    let partner = partner.to_string();
    verimail(
        db,
        &["webhook", "set", "--partner", &partner, "--url", url],
        vars,
    )
}

fn stdout_json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn webhook_set_refuses_endpoints_in_this_sides_own_network() {
    let db = TestDb::new().await;
    let partner = partner(&db.pool, AccountKind::Partner, false).await;
    for (url, says) in [
        ("http://127.0.0.1:8080/hooks", "must be an https:// URL"),
        (
            "http://hooks.example.com/verimail",
            "must be an https:// URL",
        ),
        ("https://10.0.0.1/hooks", "is a private address (10.0.0.1)"),
        (
            "https://169.254.169.254/latest/meta-data",
            "is a cloud metadata address (169.254.169.254)",
        ),
        ("https://[::1]/hooks", "is a loopback address (::1)"),
        // A name is refused for what it resolves to.
        ("https://localhost/hooks", "localhost is a loopback address"),
        (
            "https://user:pw@hooks.example.com/",
            "must not carry a user name",
        ),
        ("hooks.example.com", "not a URL"),
    ] {
        let output = set(&db, partner.id, url, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{url}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{url}: one line: {stderr}");
        assert!(
            stderr.starts_with("verimail: --url: ") && stderr.contains(says),
            "{url}: {stderr}"
        );
        assert!(output.stdout.is_empty(), "{url}: nothing printed");
    }
    assert_eq!(
        db.count("SELECT count(*) FROM partner_webhooks").await,
        0,
        "nothing written"
    );

    // The flag lets tests and compose stacks use a local receiver.
    let output = set(
        &db,
        partner.id,
        "http://127.0.0.1:9/hooks",
        &[("VERIMAIL_WEBHOOK_ALLOW_INSECURE", "true")],
    );
    assert_eq!(stdout_json(&output)["url"], "http://127.0.0.1:9/hooks");
}

#[tokio::test]
async fn webhook_set_shows_the_secret_once_stores_it_sealed_and_rotates() {
    let db = TestDb::new().await;
    let partner = partner(&db.pool, AccountKind::Partner, false).await;
    let url = "https://93.184.216.34/verimail/events";

    let first = stdout_json(&set(&db, partner.id, url, &[]));
    assert_eq!(first["partner_id"], partner.id.to_string());
    assert_eq!(first["url"], url);
    assert!(first["previous_secret_signs_until"].is_null());
    let first_secret = first["secret"].as_str().unwrap().to_owned();
    assert!(first_secret.starts_with("whsec_"), "{first_secret}");

    let stored = webhooks::get(&db.pool, partner.id).await.unwrap().unwrap();
    let raw = String::from_utf8_lossy(&stored.secret_sealed).into_owned();
    assert!(
        !raw.contains(&first_secret["whsec_".len()..]),
        "the secret is stored sealed"
    );
    let keys = test_keys();
    let opened = keys
        .open_webhook_secret(partner.id, &stored.secret_sealed)
        .unwrap();
    assert_eq!(opened.expose(), first_secret);
    let other = Uuid::now_v7();
    assert!(
        keys.open_webhook_secret(other, &stored.secret_sealed)
            .is_err(),
        "a sealed secret moved to another partner does not open"
    );

    // Setting again rotates: a new secret, the previous one signs for 24 h.
    let second = stdout_json(&set(&db, partner.id, url, &[]));
    let second_secret = second["secret"].as_str().unwrap().to_owned();
    assert_ne!(second_secret, first_secret);
    let until = OffsetDateTime::parse(
        second["previous_secret_signs_until"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let overlap = until - OffsetDateTime::now_utc();
    assert!(
        overlap > time::Duration::hours(23) && overlap <= time::Duration::hours(24),
        "{overlap}"
    );
    let stored = webhooks::get(&db.pool, partner.id).await.unwrap().unwrap();
    let previous = keys
        .open_webhook_secret(partner.id, stored.previous_secret_sealed.as_ref().unwrap())
        .unwrap();
    assert_eq!(previous.expose(), first_secret);
    assert_eq!(
        keys.open_webhook_secret(partner.id, &stored.secret_sealed)
            .unwrap()
            .expose(),
        second_secret
    );

    // An unknown partner: nothing written, a clear error.
    let output = set(&db, Uuid::now_v7(), url, &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no partner with id"));

    let partner_id = partner.id.to_string();
    let removed = verimail(&db, &["webhook", "remove", "--partner", &partner_id], &[]);
    assert_eq!(stdout_json(&removed)["removed"], true);
    assert!(webhooks::get(&db.pool, partner.id).await.unwrap().is_none());
    let again = verimail(&db, &["webhook", "remove", "--partner", &partner_id], &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("has no webhook endpoint"));
}

#[test]
fn signatures_verify_with_the_official_standard_webhooks_library() {
    let Some(python) = webhook_python() else {
        return;
    };
    let current = WebhookSecret::generate();
    let previous = WebhookSecret::generate();
    let stranger = WebhookSecret::generate();
    let id = format!("evt_{}", Uuid::now_v7().simple());
    let timestamp = OffsetDateTime::now_utc().unix_timestamp();
    let body = json!({"type": "dispatch.sent", "timestamp": "2026-12-05T21:00:00Z",
                      "data": {"dispatch_id": Uuid::now_v7(), "status": "sent", "attempts": 1}})
    .to_string();
    let delivery = |secrets: &[&WebhookSecret], body: &str, timestamp: i64| {
        (
            body.to_owned(),
            json!({"webhook-id": id, "webhook-timestamp": timestamp.to_string(),
                   "webhook-signature": webhook::signature(secrets, &id, timestamp, body)}),
        )
    };
    let deliveries = [
        delivery(&[&current], &body, timestamp),
        // During a rotation both secrets sign: either verifies.
        delivery(&[&current, &previous], &body, timestamp),
        // Altered after signing.
        {
            let (_, headers) = delivery(&[&current], &body, timestamp);
            (body.replace("sent", "failed"), headers)
        },
        // Signed by another secret only.
        delivery(&[&stranger], &body, timestamp),
        // Replayed an hour later (outside the library's 5-minute tolerance).
        delivery(&[&current], &body, timestamp - 3600),
    ];
    assert_eq!(
        reference_verdicts(&python, &current.expose(), &deliveries),
        [true, true, false, false, false]
    );
    assert_eq!(
        reference_verdicts(&python, &previous.expose(), &deliveries[1..2]),
        [true],
        "a receiver still holding the previous secret verifies during the rotation"
    );
}
