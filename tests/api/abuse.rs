//! The attacker's inputs, tried over HTTP and SMTP as an attacker would.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use crate::support::*;
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

/// Opens a connection that sends a request's headers a byte at a time.
async fn dribbler(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"POST /v2/bases/verificationcode/send HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_closed_and_do_not_starve_a_real_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start().await;
    let header_timeout = Duration::from_secs(1); // support::intake_settings
    let mut slow = Vec::new();
    for _ in 0..300 {
        slow.push(dribbler(stack.intake.addr).await);
    }
    let started = std::time::Instant::now();
    let reply = stack
        .intake
        .send(&stack.partner.token, &valid_body("patient@example.com"))
        .await;
    assert_eq!(reply.status, 204);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Keep dribbling; the server must hang up on every one within the
    // header timeout (plus scheduling slack).
    let deadline = std::time::Instant::now() + header_timeout + Duration::from_secs(2);
    let mut closed = 0;
    for socket in &mut slow {
        let _ = socket.write_all(b"X").await;
        let mut buf = [0u8; 512];
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // EOF or a reset, before the deadline: the server hung up.
        if tokio::time::timeout(left, socket.read(&mut buf))
            .await
            .is_ok()
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 300, "every slow socket is closed by the server");
    stack.broker.cleanup().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_shed_with_a_cbc_503() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let mut settings = intake_settings(amqp_url(), &prefix);
    settings.http.max_connections = 2;
    settings.http.header_timeout = Duration::from_secs(30);
    let intake = TestIntake::spawn(settings, &db.url).await;
    let _held = [dribbler(intake.addr).await, dribbler(intake.addr).await];
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A raw request, to read exactly what the server answers before closing.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut third = tokio::net::TcpStream::connect(intake.addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), third.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"error_code\":\"CBC.0999\""), "{answer}");
    broker.cleanup().await;
}

#[tokio::test]
async fn a_64_kib_header_is_refused() {
    let stack = Stack::start().await;
    let reply = stack
        .intake
        .client
        .get(stack.intake.url("/healthz"))
        .header("X-Padding", "x".repeat(64 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 431);
    stack.broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_files_are_private_and_removed_after_their_retention() {
    use std::os::unix::fs::PermissionsExt;
    let stack = Stack::start().await;
    let mut settings = worker_settings(&stack.prefix, None);
    settings.outbox_retention = Duration::from_secs(1);
    settings.sweep_interval = Duration::from_millis(300);
    let outbox = settings.outbox.clone();
    let worker = TestWorker::spawn(settings, &stack.db.url).await;
    let reply = stack
        .intake
        .send(&stack.partner.token, &valid_body("private@example.com"))
        .await;
    let id: uuid::Uuid = reply.request_id.unwrap().parse().unwrap();
    wait_status(&stack.db.pool, id, &["sent"], Duration::from_secs(10)).await;

    let dir_mode = std::fs::metadata(&outbox).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o077, 0, "outbox {dir_mode:o}");
    let files: Vec<_> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "no group or other bits: {mode:o}");

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_dir(&outbox).unwrap().next().is_some() {
        assert!(std::time::Instant::now() < deadline, "the .eml file stays");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop().await.unwrap();
    std::fs::remove_dir_all(outbox).ok();
    stack.broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_550_quoting_the_address_leaves_no_full_address_in_last_error() {
    use verimail_testkit::smtp_sink::Behaviour;
    let stack = Stack::start().await;
    let sink = SmtpSink::start().await;
    sink.set_default(Behaviour::RejectRcpt(
        "550 5.1.1 <quoted.victim@example.com>: Recipient address rejected".into(),
    ));
    let worker = TestWorker::spawn(
        worker_settings(&stack.prefix, Some(sink.url())),
        &stack.db.url,
    )
    .await;
    let reply = stack
        .intake
        .send(
            &stack.partner.token,
            &valid_body("quoted.victim@example.com"),
        )
        .await;
    let id: uuid::Uuid = reply.request_id.unwrap().parse().unwrap();
    let (_, _, last_error) =
        wait_status(&stack.db.pool, id, &["failed"], Duration::from_secs(10)).await;
    let last_error = last_error.unwrap();
    assert!(last_error.contains("550"), "{last_error}");
    assert!(!last_error.contains("quoted.victim@"), "{last_error}");
    assert!(last_error.contains("q***@example.com"), "{last_error}");
    worker.stop().await.unwrap();
    stack.broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_unknown_token_costs_no_database_round_trip() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let proxy = crate::support::proxy::Proxy::start(target(&db.url)).await;
    let mut settings = intake_settings(amqp_url(), &prefix);
    settings.auth_cache_ttl = Duration::from_secs(5);
    let intake = TestIntake::spawn(settings, &db.url_via(proxy.addr())).await;
    let first = intake
        .send("vmt_guessed", &valid_body("a@example.com"))
        .await;
    assert_eq!(first.error_code().as_deref(), Some("CBC.0154"));

    // With Postgres out of reach, only a remembered answer can still say 401.
    proxy.cut();
    for _ in 0..200 {
        let reply = intake
            .send("vmt_guessed", &valid_body("a@example.com"))
            .await;
        assert_eq!(reply.error_code().as_deref(), Some("CBC.0154"), "{reply:?}");
    }
    proxy.restore();
    broker.cleanup().await;
}
