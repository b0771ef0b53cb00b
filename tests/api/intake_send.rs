//! The send endpoint against the real Postgres and RabbitMQ: every rule of
//! the send rules table over HTTP, and what a 204 or a rejection leaves behind.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::Stack as Env;

async fn env() -> Env {
    Env::start().await
}

fn with(overrides: Value) -> Value {
    let mut body =
        json!({"receiver_type": 2, "timeout": 5, "email": "user@example.com", "lang": "en-us"});
    for (k, v) in overrides.as_object().unwrap() {
        if v == "<absent>" {
            body.as_object_mut().unwrap().remove(k);
        } else {
            body[k] = v.clone();
        }
    }
    body
}

#[tokio::test]
async fn every_rule_of_the_spec_table_is_answered_over_http() {
    let env = env().await;
    let email64 = format!("{}@example.com", "a".repeat(52));
    let email65 = format!("{}@example.com", "a".repeat(53));
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "receiver_type absent",
            json!({"receiver_type": "<absent>"}),
            "CBC.0100",
        ),
        (
            "receiver_type null",
            json!({"receiver_type": null}),
            "CBC.0100",
        ),
        ("receiver_type 1", json!({"receiver_type": 1}), "CBC.0100"),
        (
            "receiver_type string",
            json!({"receiver_type": "2"}),
            "CBC.0100",
        ),
        ("timeout 0", json!({"timeout": 0}), "CBC.0100"),
        ("timeout -5", json!({"timeout": -5}), "CBC.0100"),
        ("timeout 3001", json!({"timeout": 3001}), "CBC.0100"),
        ("timeout 2.5", json!({"timeout": 2.5}), "CBC.0100"),
        ("timeout string", json!({"timeout": "10"}), "CBC.0100"),
        ("email absent", json!({"email": "<absent>"}), "CBC.99004004"),
        ("email null", json!({"email": null}), "CBC.99004004"),
        ("email empty", json!({"email": ""}), "CBC.99004004"),
        ("email blank", json!({"email": "  "}), "CBC.99004004"),
        (
            "email bad syntax",
            json!({"email": "not-an-email"}),
            "CBC.99004004",
        ),
        (
            "email without dotted domain",
            json!({"email": "a@localhost"}),
            "CBC.99004004",
        ),
        ("email 65 chars", json!({"email": email65}), "CBC.0100"),
        ("email not a string", json!({"email": 7}), "CBC.0100"),
        (
            "lang 17 chars",
            json!({"lang": "abcdefghijklmnopq"}),
            "CBC.0100",
        ),
        (
            "lang 16 chars, unknown",
            json!({"lang": "abcdefghijklmnop"}),
            "CBC.0100",
        ),
        ("lang unknown", json!({"lang": "de-de"}), "CBC.0100"),
        ("lang not a string", json!({"lang": true}), "CBC.0100"),
    ];
    for (name, overrides, code) in cases {
        let reply = env.intake.send(&env.partner.token, &with(overrides)).await;
        assert_eq!(
            (reply.status, reply.error_code().as_deref()),
            (400, Some(code)),
            "{name}: {}",
            reply.body
        );
        assert_eq!(
            reply.content_type.as_deref(),
            Some("application/json;charset=UTF-8"),
            "{name}"
        );
        assert!(
            reply.request_id.is_some(),
            "{name}: X-Request-Id on errors too"
        );
        let msg = reply.json()["error_msg"].as_str().unwrap().to_owned();
        assert!(!msg.is_empty(), "{name}");
    }
    // Rejections write nothing and publish nothing.
    assert_eq!(env.db.count("SELECT count(*) FROM dispatches").await, 0);
    assert_eq!(
        env.broker
            .depth(&env.broker.topology.dispatch_queue())
            .await,
        0
    );

    let accepted: Vec<(&str, Value, i32, &str)> = vec![
        (
            "timeout 1",
            json!({"timeout": 1, "email": "t1@example.com"}),
            1,
            "en-us",
        ),
        (
            "timeout 60",
            json!({"timeout": 60, "email": "t60@example.com"}),
            60,
            "en-us",
        ),
        (
            "timeout 61 capped",
            json!({"timeout": 61, "email": "t61@example.com"}),
            5,
            "en-us",
        ),
        (
            "timeout 3000 capped",
            json!({"timeout": 3000, "email": "t3000@example.com"}),
            5,
            "en-us",
        ),
        (
            "timeout null",
            json!({"timeout": null, "email": "tnull@example.com"}),
            10,
            "en-us",
        ),
        (
            "timeout absent",
            json!({"timeout": "<absent>", "email": "tabs@example.com"}),
            10,
            "en-us",
        ),
        ("email 64 chars", json!({"email": email64}), 5, "en-us"),
        (
            "lang EN-US",
            json!({"lang": "EN-US", "email": "upper@example.com"}),
            5,
            "en-us",
        ),
        (
            "lang absent",
            json!({"lang": "<absent>", "email": "noLang@example.com"}),
            5,
            "zh-cn",
        ),
        (
            "lang null",
            json!({"lang": null, "email": "nulllang@example.com"}),
            5,
            "zh-cn",
        ),
        (
            "lang empty",
            json!({"lang": "", "email": "emptylang@example.com"}),
            5,
            "zh-cn",
        ),
        (
            "extra fields",
            json!({"email": "extra@example.com", "customer_name": "x"}),
            5,
            "en-us",
        ),
    ];
    for (name, overrides, minutes, lang) in accepted {
        let reply = env.intake.send(&env.partner.token, &with(overrides)).await;
        assert_eq!(reply.status, 204, "{name}: {}", reply.body);
        assert!(reply.body.is_empty(), "{name}: 204 has no body");
        let id: uuid::Uuid = reply.request_id.as_deref().unwrap().parse().unwrap();
        let (ttl, row_lang): (i32, String) =
            sqlx::query_as("SELECT ttl_minutes, lang FROM dispatches WHERE id = $1")
                .bind(id)
                .fetch_one(&env.db.pool)
                .await
                .unwrap();
        assert_eq!((ttl, row_lang.as_str()), (minutes, lang), "{name}");
    }
    env.broker.cleanup().await;
}

#[tokio::test]
async fn a_204_leaves_one_row_with_its_expiry_and_one_message_without_the_code() {
    let env = env().await;
    let reply = env
        .intake
        .send(
            &env.partner.token,
            &with(json!({"timeout": 7, "email": " Someone@Example.com "})),
        )
        .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let id: uuid::Uuid = reply.request_id.unwrap().parse().unwrap();

    let row: (String, String, String, bool, bool) = sqlx::query_as(
        "SELECT status, recipient, email, expires_at = created_at + interval '7 minutes',
                code_sealed IS NOT NULL FROM dispatches WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "queued".into(),
            "someone@example.com".into(),
            "Someone@example.com".into(), // canonical: the domain lower-cased
            true,
            true
        )
    );
    assert_eq!(env.db.count("SELECT count(*) FROM dispatches").await, 1);

    let messages = env.broker.drain_dispatches().await;
    assert_eq!(messages.len(), 1);
    let decoded = verimail_domain::DispatchMessage::decode(&messages[0]).unwrap();
    assert_eq!(decoded.dispatch_id, id);
    let (sealed,): (Vec<u8>,) = sqlx::query_as("SELECT code_sealed FROM dispatches WHERE id = $1")
        .bind(id)
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    let code = test_keys()
        .open_code(id, &sealed)
        .unwrap()
        .expose()
        .to_owned();
    assert_eq!(code.len(), 6);
    assert!(
        !String::from_utf8_lossy(&messages[0]).contains(&code),
        "the message carries no code"
    );
    env.broker.cleanup().await;
}

#[tokio::test]
async fn malformed_bodies_and_content_types_get_json_errors() {
    let env = env().await;
    let post = |body: Vec<u8>, content_type: Option<&str>| {
        let mut request = env
            .intake
            .client
            .post(env.intake.url(SEND_PATH))
            .header("X-Auth-Token", &env.partner.token);
        if let Some(ct) = content_type {
            request = request.header("Content-Type", ct);
        }
        request.body(body).send()
    };
    let valid = serde_json::to_vec(&with(json!({}))).unwrap();
    let big = format!(
        r#"{{"receiver_type":2,"email":"a@example.com","pad":"{}"}}"#,
        "x".repeat(17 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        (
            "broken JSON",
            b"{\"receiver_type\": 2,".to_vec(),
            Some("application/json"),
        ),
        ("JSON array", b"[1,2]".to_vec(), Some("application/json")),
        ("empty body", Vec::new(), Some("application/json")),
        ("text/plain", valid.clone(), Some("text/plain")),
        ("no content type", valid.clone(), None),
        (
            "form",
            b"receiver_type=2".to_vec(),
            Some("application/x-www-form-urlencoded"),
        ),
        ("over 16 KiB", big.into_bytes(), Some("application/json")),
        (
            "not UTF-8",
            vec![0xff, 0xfe, 0x00],
            Some("application/json"),
        ),
    ];
    for (name, body, ct) in cases {
        let reply = Reply::read(post(body, ct).await.unwrap()).await;
        assert_eq!(
            (reply.status, reply.error_code().as_deref()),
            (400, Some("CBC.0100")),
            "{name}: {}",
            reply.body
        );
        assert_eq!(
            reply.content_type.as_deref(),
            Some("application/json;charset=UTF-8"),
            "{name}"
        );
    }
    let charset = Reply::read(
        post(valid, Some("application/json; charset=utf-8"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        charset.status, 204,
        "a charset parameter is fine: {}",
        charset.body
    );

    let unknown = Reply::read(
        env.intake
            .client
            .get(env.intake.url("/nope"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (unknown.status, unknown.error_code().as_deref()),
        (404, Some("CBC.0100"))
    );
    let wrong_method = Reply::read(
        env.intake
            .client
            .get(env.intake.url(SEND_PATH))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.error_code().as_deref(), Some("CBC.0100"));
    assert_eq!(env.db.count("SELECT count(*) FROM dispatches").await, 1);
    env.broker.cleanup().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let env = env().await;
    let health = Reply::read(
        env.intake
            .client
            .get(env.intake.url("/healthz"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(health.status, 200);
    let ready = Reply::read(
        env.intake
            .client
            .get(env.intake.url("/readyz"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (ready.status, ready.json()),
        (200, json!({"postgres": "ok", "rabbitmq": "ok"}))
    );
    env.broker.cleanup().await;
}

/// A client that hangs up while its send is being recorded strands nothing:
/// the record commits and the dispatch is handed to the broker all the same
/// (a dispatch recorded but never published would wait for the sweeper, and
/// one half-answered would leave its replay key undecided).
#[tokio::test]
async fn a_client_that_hangs_up_mid_send_strands_no_dispatch() {
    use sqlx::Connection;
    use tokio::io::AsyncWriteExt;
    let env = env().await;
    let email = "hangup@example.com";
    // Hold the recipient's lock, the one accept_dispatch takes, so the send
    // is inside its record when the client goes.
    let mut blocker = sqlx::PgConnection::connect(&env.db.url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
        .bind(email)
        .execute(&mut blocker)
        .await
        .unwrap();
    let body = serde_json::to_vec(&valid_body(email)).unwrap();
    let mut socket = tokio::net::TcpStream::connect(env.intake.addr)
        .await
        .unwrap();
    let head = format!(
        "POST {SEND_PATH} HTTP/1.1\r\nHost: {}\r\nX-Auth-Token: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        env.intake.addr,
        env.partner.token,
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&body).await.unwrap();
    let waiting = async {
        loop {
            let waiters: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
            if waiters > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the send reaches its record");
    // The client hangs up, and the server has time to notice.
    drop(socket);
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
        .bind(email)
        .execute(&mut blocker)
        .await
        .unwrap();

    let mut published = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while published.is_empty() && std::time::Instant::now() < deadline {
        published = env.broker.decoded_dispatches().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, status FROM dispatches WHERE recipient = $1")
            .bind(email)
            .fetch_all(&env.db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1, "the send was recorded once: {rows:?}");
    assert_eq!(rows[0].1, "queued", "and is waiting for a worker: {rows:?}");
    assert_eq!(
        published.iter().map(|m| m.dispatch_id).collect::<Vec<_>>(),
        vec![rows[0].0],
        "and was handed to the broker at once, not left to the sweeper"
    );
    env.broker.cleanup().await;
}
