//! The attacker's inputs, tried over HTTP and SMTP as an attacker would.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::*;
use verimail_testkit::smtp_sink::SmtpSink;

/// Twenty spellings an attacker might use for one victim's mailbox.
fn spellings() -> Vec<String> {
    let mut all: Vec<String> = [
        "victim@evil.example",
        "VICTIM@evil.example",
        "Victim@Evil.Example",
        "victim@EVIL.EXAMPLE",
        "vIctim@evil.example",
        "viCtim@evil.example",
        "vicTim@evil.example",
        "victIm@evil.example",
        "victiM@evil.example",
        "VIctim@evil.example",
        "\"victim\"@evil.example",
        "\"v\\ictim\"@evil.example",
        "\"\\v\\i\\c\\t\\i\\m\"@evil.example",
        "victim@evil.example.",
        "victim@evil.example\u{200B}",
        "vic\u{00AD}tim@evil.example",
        "\u{FEFF}victim@evil.example",
        "victim@evil.exa\u{202E}mple",
    ]
    .map(str::to_owned)
    .to_vec();
    all.push("VICTIM@EVIL.example".into());
    all.push("victim@Evil.example".into());
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_spellings_of_one_mailbox_share_one_limit_and_one_rcpt() {
    let stack = Stack::start().await;
    let sink = SmtpSink::start().await;
    let worker = TestWorker::spawn(
        worker_settings(&stack.prefix, Some(sink.url())),
        &stack.db.url,
    )
    .await;

    let mut accepted = 0;
    for spelling in spellings() {
        let reply = stack
            .intake
            .send(&stack.partner.token, &valid_body(&spelling))
            .await;
        match reply.status {
            204 => accepted += 1,
            400 => assert!(
                matches!(
                    reply.error_code().as_deref(),
                    Some("CBC.99004004" | "CBC.99004015")
                ),
                "{spelling:?}: {reply:?}"
            ),
            other => panic!("{spelling:?} answered {other}"),
        }
    }
    assert!(
        accepted <= 15,
        "{accepted} accepted: the limit is per mailbox"
    );

    // Newer codes supersede older ones, so fewer mails than 204s arrive:
    // wait until every dispatch is final.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while stack
        .db
        .count("SELECT count(*) FROM dispatches WHERE status IN ('queued', 'sending', 'retrying')")
        .await
        > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dispatches still open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mails = sink.messages();
    assert!(!mails.is_empty());
    let rcpts: HashSet<String> = mails
        .iter()
        .flat_map(|m| m.rcpt_to.iter().map(|r| r.to_ascii_lowercase()))
        .collect();
    assert_eq!(
        rcpts,
        HashSet::from(["victim@evil.example".to_owned()]),
        "one canonical RCPT TO"
    );
    worker.stop().await.unwrap();
    stack.broker.cleanup().await;
}

#[tokio::test]
async fn invisible_and_control_characters_get_a_4xx_and_write_nothing() {
    let stack = Stack::start().await;
    for c in [
        '\u{202E}', '\u{200B}', '\u{00AD}', '\u{FEFF}', '\0', '\r', '\n',
    ] {
        for address in [
            format!("us{c}er@example.com"),
            format!("user@exa{c}mple.com"),
        ] {
            let reply = stack
                .intake
                .send(&stack.partner.token, &valid_body(&address))
                .await;
            assert_eq!(reply.status, 400, "U+{:04X} in {address:?}", c as u32);
            assert_eq!(reply.error_code().as_deref(), Some("CBC.99004004"));
        }
    }
    assert_eq!(stack.db.count("SELECT count(*) FROM dispatches").await, 0);
    stack.broker.cleanup().await;
}

#[tokio::test]
async fn an_oversized_body_from_a_stranger_is_a_401_and_from_a_partner_a_400() {
    let stack = Stack::start().await;
    let big =
        serde_json::json!({"receiver_type": 2, "email": "a@b.example", "pad": "x".repeat(20_000)});
    let post = |token: Option<&str>| {
        let mut request = stack
            .intake
            .client
            .post(stack.intake.url(SEND_PATH))
            .json(&big);
        if let Some(token) = token {
            request = request.header("X-Auth-Token", token);
        }
        request.send()
    };
    let stranger = Reply::read(post(None).await.unwrap()).await;
    assert_eq!(
        (stranger.status, stranger.error_code().as_deref()),
        (401, Some("CBC.0154"))
    );
    let unknown = Reply::read(post(Some("vmt_nope")).await.unwrap()).await;
    assert_eq!(
        (unknown.status, unknown.error_code().as_deref()),
        (401, Some("CBC.0154"))
    );
    let partner = Reply::read(post(Some(&stack.partner.token)).await.unwrap()).await;
    assert_eq!(
        (partner.status, partner.error_code().as_deref()),
        (400, Some("CBC.0100"))
    );
    assert_eq!(stack.db.count("SELECT count(*) FROM dispatches").await, 0);
    stack.broker.cleanup().await;
}

#[tokio::test]
async fn a_path_that_is_not_utf8_gets_a_cbc_body() {
    let stack = Stack::start().await;
    for path in [
        "/v2/bases/verificationcode/dispatches/%FF",
        "/v2/bases/verificationcode/dispatches/%C3%28",
    ] {
        let reply = Reply::read(
            stack
                .intake
                .client
                .get(stack.intake.url(path))
                .header("X-Auth-Token", &stack.partner.token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, 404, "{path}");
        assert_eq!(reply.error_code().as_deref(), Some("CBC.0100"), "{path}");
        assert!(reply.content_type.unwrap().starts_with("application/json"));
        let stranger = Reply::read(
            stack
                .intake
                .client
                .get(stack.intake.url(path))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(stranger.status, 401, "authentication first");
    }
    stack.broker.cleanup().await;
}
