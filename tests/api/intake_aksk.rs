//! AK/SK-signed requests (README, "Authentication"): signatures as Huawei Cloud's SDKs make
//! them, the same outcomes as tokens, and the official Python SDK itself.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::support::*;
use serde_json::Value;
use time::OffsetDateTime;
use verimail_domain::sdk_signature::{self, SignedRequest};
use verimail_intake::accounts::{self, AccountKind, AccountStatus};

struct Key {
    partner_id: uuid::Uuid,
    ak: String,
    sk: String,
}

async fn key(db: &TestDb, kind: AccountKind, suspended: bool) -> Key {
    let partner_id = accounts::create_partner(
        &db.pool,
        "sdk",
        kind,
        AccountStatus::suspended_if(suspended),
    )
    .await
    .unwrap();
    let created = accounts::create_access_key(&db.pool, &test_keys(), partner_id)
        .await
        .unwrap();
    Key {
        partner_id,
        ak: created.access_key,
        sk: created.secret_key,
    }
}

/// Signs like the SDK: host, content-type, x-sdk-date, x-domain-id.
async fn signed_send(
    intake: &TestIntake,
    key: &Key,
    sk: &str,
    body: &Value,
    at: OffsetDateTime,
    domain: Option<&str>,
) -> Reply {
    let host = intake.addr.to_string();
    let date = sdk_signature::format_sdk_date(at);
    let domain = domain
        .map(str::to_owned)
        .unwrap_or_else(|| key.partner_id.simple().to_string());
    let body = serde_json::to_vec(body).unwrap();
    let headers = [
        ("Content-Type", "application/json"),
        ("Host", host.as_str()),
        ("X-Sdk-Date", date.as_str()),
        ("X-Domain-Id", domain.as_str()),
    ];
    let request = SignedRequest {
        method: "POST",
        path: SEND_PATH,
        query: None,
        headers: &headers,
        body: &body,
    };
    let authorization = sdk_signature::sign(&request, &key.ak, sk.as_bytes()).unwrap();
    let mut builder = intake
        .client
        .post(intake.url(SEND_PATH))
        .header("Authorization", authorization)
        .body(body);
    for (name, value) in headers.iter().filter(|(n, _)| *n != "Host") {
        builder = builder.header(*name, *value);
    }
    Reply::read(builder.send().await.unwrap()).await
}

#[tokio::test]
async fn signed_requests_get_the_same_outcomes_as_tokens() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let intake = TestIntake::spawn(intake_settings(amqp_url(), &prefix), &db.url).await;
    let now = OffsetDateTime::now_utc();
    let body = valid_body("signed@example.com");

    // Same partner states, both credentials: the outcome must not depend on how one authenticates.
    for (state, kind, suspended, status, code) in [
        ("active partner", AccountKind::Partner, false, 204, None),
        (
            "suspended partner",
            AccountKind::Partner,
            true,
            403,
            Some("CBC.0151"),
        ),
        (
            "customer",
            AccountKind::Customer,
            false,
            400,
            Some("CBC.99000035"),
        ),
    ] {
        let key = key(&db, kind, suspended).await;
        let token = accounts::issue_token(&db.pool, key.partner_id, Duration::from_secs(60))
            .await
            .unwrap()
            .token;
        let body = valid_body(&format!("{}@example.com", key.ak.to_lowercase()));
        let signed = signed_send(&intake, &key, &key.sk, &body, now, None).await;
        let tokened = intake.send(&token, &body).await;
        assert_eq!(
            (signed.status, signed.error_code()),
            (status, code.map(str::to_owned)),
            "{state} signed: {}",
            signed.body
        );
        assert_eq!(
            (tokened.status, tokened.error_code()),
            (status, code.map(str::to_owned)),
            "{state} token: {}",
            tokened.body
        );
    }

    let good = key(&db, AccountKind::Partner, false).await;
    let wrong_sk = "x".repeat(40);
    let failures: Vec<(&str, Reply, &str)> = vec![
        (
            "wrong secret key",
            signed_send(&intake, &good, &wrong_sk, &body, now, None).await,
            "signature",
        ),
        (
            "date 16 minutes old",
            signed_send(
                &intake,
                &good,
                &good.sk,
                &body,
                now - time::Duration::minutes(16),
                None,
            )
            .await,
            "X-Sdk-Date",
        ),
        (
            "date 16 minutes ahead",
            signed_send(
                &intake,
                &good,
                &good.sk,
                &body,
                now + time::Duration::minutes(16),
                None,
            )
            .await,
            "X-Sdk-Date",
        ),
        (
            "another account's domain id",
            signed_send(
                &intake,
                &good,
                &good.sk,
                &body,
                now,
                Some("0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
            )
            .await,
            "X-Domain-Id",
        ),
        (
            "unknown access key",
            signed_send(
                &intake,
                &Key {
                    ak: "NOSUCHKEY00000000000".into(),
                    ..Key {
                        ..key(&db, AccountKind::Partner, false).await
                    }
                },
                &good.sk,
                &body,
                now,
                None,
            )
            .await,
            "access key",
        ),
    ];
    for (name, reply, says) in failures {
        assert_eq!(
            (reply.status, reply.error_code().as_deref()),
            (401, Some("CBC.0154")),
            "{name}: {}",
            reply.body
        );
        let msg = reply.json()["error_msg"].as_str().unwrap().to_owned();
        assert!(
            msg.contains(says),
            "{name}: the message says which check failed: {msg}"
        );
        assert!(!msg.contains(&good.sk), "{name}: never the secret");
    }

    // A body changed after signing is refused.
    let host = intake.addr.to_string();
    let date = sdk_signature::format_sdk_date(now);
    let original = serde_json::to_vec(&body).unwrap();
    let headers = [
        ("Content-Type", "application/json"),
        ("Host", host.as_str()),
        ("X-Sdk-Date", date.as_str()),
    ];
    let authorization = sdk_signature::sign(
        &SignedRequest {
            method: "POST",
            path: SEND_PATH,
            query: None,
            headers: &headers,
            body: &original,
        },
        &good.ak,
        good.sk.as_bytes(),
    )
    .unwrap();
    let tampered = serde_json::to_vec(&valid_body("attacker@example.com")).unwrap();
    let reply = Reply::read(
        intake
            .client
            .post(intake.url(SEND_PATH))
            .header("Authorization", authorization)
            .header("Content-Type", "application/json")
            .header("X-Sdk-Date", date.as_str())
            .body(tampered)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.error_code().as_deref(), Some("CBC.0154"));
    let malformed = Reply::read(
        intake
            .client
            .post(intake.url(SEND_PATH))
            .header("Authorization", "SDK-HMAC-SHA256 garbage")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(malformed.error_code().as_deref(), Some("CBC.0154"));

    // Revocation.
    assert_eq!(
        signed_send(
            &intake,
            &good,
            &good.sk,
            &valid_body("rev@example.com"),
            now,
            None
        )
        .await
        .status,
        204
    );
    assert!(
        accounts::revoke_access_key(&db.pool, &good.ak)
            .await
            .unwrap()
    );
    let revoked = signed_send(
        &intake,
        &good,
        &good.sk,
        &valid_body("rev@example.com"),
        now,
        None,
    )
    .await;
    assert_eq!(
        (revoked.status, revoked.error_code().as_deref()),
        (401, Some("CBC.0154"))
    );
    broker.cleanup().await;
}

#[tokio::test]
async fn secret_keys_are_sealed_at_rest() {
    let db = TestDb::new().await;
    let key = key(&db, AccountKind::Partner, false).await;
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT secret_sealed FROM access_keys")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!sealed.windows(key.sk.len()).any(|w| w == key.sk.as_bytes()));
    assert_eq!(
        test_keys().open_access_secret(&key.ak, &sealed).unwrap(),
        key.sk.as_bytes()
    );
}

#[tokio::test]
async fn a_cached_credential_is_refused_within_the_cache_ttl_after_revocation() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let mut settings = intake_settings(amqp_url(), &prefix);
    settings.auth_cache_ttl = Duration::from_millis(500);
    let intake = TestIntake::spawn(settings, &db.url).await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    assert_eq!(
        intake
            .send(&p.token, &valid_body("c1@example.com"))
            .await
            .status,
        204
    );
    accounts::revoke_token(&db.pool, &p.token).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let reply = intake.send(&p.token, &valid_body("c2@example.com")).await;
    assert_eq!(
        reply.error_code().as_deref(),
        Some("CBC.0154"),
        "revocation took effect after the TTL"
    );
    broker.cleanup().await;
}

/// The Python interpreter of a virtualenv with `huaweicloudsdkbssintl`.
/// `.ci/run` creates one and sets `VERIMAIL_SDK_PYTHON`.
fn sdk_python() -> Option<String> {
    match std::env::var("VERIMAIL_SDK_PYTHON") {
        Ok(python) => Some(python),
        Err(_) if std::env::var("CI").is_ok() => {
            panic!("CI must set VERIMAIL_SDK_PYTHON (see .ci/run)")
        }
        Err(_) => {
            eprintln!(
                "SKIPPED: set VERIMAIL_SDK_PYTHON to a python with huaweicloudsdkbssintl to run the SDK test"
            );
            None
        }
    }
}

fn run_sdk(python: &str, endpoint: &str, ak: &str, sk: &str, domain: &str, email: &str) -> Value {
    let output = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/sdk/send_with_sdk.py"
        ))
        .env("VERIMAIL_ENDPOINT", endpoint)
        .env("SDK_AK", ak)
        .env("SDK_SK", sk)
        .env("SDK_DOMAIN_ID", domain)
        .env("SDK_EMAIL", email)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "SDK script failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_gets_a_204_and_readable_errors() {
    let Some(python) = sdk_python() else { return };
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let mut settings = intake_settings(amqp_url(), &prefix);
    settings.rate_limit = verimail_intake::RateLimit {
        per_hour: 1,
        per_day: 10,
    };
    let intake = TestIntake::spawn(settings, &db.url).await;
    let endpoint = format!("http://{}", intake.addr);
    let key = key(&db, AccountKind::Partner, false).await;
    let domain = key.partner_id.simple().to_string();
    let run = |sk: String, email: &'static str| {
        let (python, endpoint, ak, domain) = (
            python.clone(),
            endpoint.clone(),
            key.ak.clone(),
            domain.clone(),
        );
        tokio::task::spawn_blocking(move || run_sdk(&python, &endpoint, &ak, &sk, &domain, email))
    };

    let ok = run(key.sk.clone(), "sdk@example.com").await.unwrap();
    assert_eq!(ok["status_code"], 204, "{ok}");
    // Another spelling of the same mailbox: another body, so another
    // signature (the same bytes again would be a replay, answered as the
    // first), but the same recipient for the rate limit.
    let limited = run(key.sk.clone(), "SDK@Example.com").await.unwrap();
    assert_eq!(
        (
            limited["status_code"].as_i64(),
            limited["error_code"].as_str()
        ),
        (Some(400), Some("CBC.99004015")),
        "{limited}"
    );
    assert!(limited["error_msg"].as_str().unwrap().contains("Too many"));
    assert!(
        limited["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{limited}"
    );
    let wrong = run("y".repeat(40), "other@example.com").await.unwrap();
    assert_eq!(
        (wrong["status_code"].as_i64(), wrong["error_code"].as_str()),
        (Some(401), Some("CBC.0154")),
        "{wrong}"
    );
    accounts::revoke_access_key(&db.pool, &key.ak)
        .await
        .unwrap();
    let revoked = run(key.sk.clone(), "third@example.com").await.unwrap();
    assert_eq!(
        (
            revoked["status_code"].as_i64(),
            revoked["error_code"].as_str()
        ),
        (Some(401), Some("CBC.0154")),
        "{revoked}"
    );
    assert!(
        revoked["error_msg"].as_str().unwrap().contains("revoked"),
        "{revoked}"
    );
    assert_eq!(db.count("SELECT count(*) FROM dispatches").await, 1);
    broker.cleanup().await;
}

#[tokio::test]
async fn a_replayed_signed_send_creates_no_second_dispatch() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let intake = TestIntake::spawn(intake_settings(amqp_url(), &prefix), &db.url).await;
    let key = key(&db, AccountKind::Partner, false).await;
    let body = valid_body("replayed@example.com");
    let at = OffsetDateTime::now_utc();

    let first = signed_send(&intake, &key, &key.sk, &body, at, None).await;
    // The captured request, sent again byte for byte, twice.
    let again = signed_send(&intake, &key, &key.sk, &body, at, None).await;
    let third = signed_send(&intake, &key, &key.sk, &body, at, None).await;
    assert_eq!((first.status, again.status, third.status), (204, 204, 204));
    assert_eq!(
        again.request_id, first.request_id,
        "the first answer, again"
    );
    assert_eq!(third.request_id, first.request_id);
    assert_eq!(db.count("SELECT count(*) FROM dispatches").await, 1);
    assert_eq!(
        broker.drain_dispatches().await.len(),
        1,
        "one message, one mail"
    );

    // A new signature (the SDK signs each request anew) is a new send.
    let later = signed_send(
        &intake,
        &key,
        &key.sk,
        &body,
        at + time::Duration::seconds(1),
        None,
    )
    .await;
    assert_eq!(later.status, 204);
    assert_ne!(later.request_id, first.request_id);
    assert_eq!(db.count("SELECT count(*) FROM dispatches").await, 2);
    broker.cleanup().await;
}
