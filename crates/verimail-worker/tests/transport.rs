//! The mail transport against the in-process SMTP sink and the file outbox.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use lettre::Message;
use uuid::Uuid;
use verimail_domain::Lang;
use verimail_testkit::smtp_sink::{Behaviour, MailView, SinkOptions, SmtpSink};
use verimail_worker::mail::{CodeMail, MailSettings, SendError, Transport, render};

const WAIT: Duration = Duration::from_secs(5);

fn settings() -> MailSettings {
    MailSettings::new(
        "Verimail <no-reply@mail.example.com>".parse().unwrap(),
        "Verimail",
    )
}

fn message(to: &str, code: &str) -> Message {
    let mail = CodeMail {
        dispatch_id: Uuid::now_v7(),
        to,
        lang: Lang::EnUs,
        code,
        valid_minutes: 10,
    };
    render(&settings(), &mail).unwrap()
}

fn smtp(url: &str) -> Transport {
    smtp_with(url, 4, Duration::from_secs(5))
}

fn smtp_with(url: &str, max_connections: usize, command_timeout: Duration) -> Transport {
    Transport::from_url(
        Some(url),
        Path::new("unused-outbox"),
        max_connections,
        Duration::from_secs(2),
        command_timeout,
    )
    .unwrap()
}

fn transient(result: Result<(), SendError>) -> String {
    match result {
        Err(SendError::Transient(reason)) => reason,
        other => panic!("expected a transient error, got {other:?}"),
    }
}

fn permanent(result: Result<(), SendError>) -> String {
    match result {
        Err(SendError::Permanent(reason)) => reason,
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test]
async fn rendered_mail_arrives_intact() {
    let sink = SmtpSink::start().await;
    let transport = smtp(&sink.url());
    let msg = message("user@example.org", "731904");

    transport.send(&msg).await.unwrap();

    let mails = sink.wait_for(1, WAIT).await;
    let got = &mails[0];
    assert_eq!(got.mail_from, "no-reply@mail.example.com");
    assert_eq!(got.rcpt_to, ["user@example.org"]);
    assert_eq!(got.subject().unwrap(), "Your Verimail verification code");
    assert!(got.text().unwrap().contains("731904"));
    assert!(got.html().unwrap().contains("731904"));
    let sent = msg.formatted();
    let sent_id = MailView::new(&sent).header("Message-ID");
    assert_eq!(got.header("Message-ID"), sent_id);
}

#[tokio::test]
async fn sequential_mails_reuse_one_session() {
    let sink = SmtpSink::start().await;
    let transport = smtp(&sink.url());
    for i in 0..3 {
        transport
            .send(&message("user@example.org", &format!("00000{i}")))
            .await
            .unwrap();
    }
    let mails = sink.wait_for(3, WAIT).await;
    assert_eq!(sink.connections(), 1);
    assert!(mails.iter().all(|m| m.connection == 0));
}

/// A warm session carries many mails. (Their speed, which TCP_NODELAY
/// decides, is measured by the benchmarks, not asserted here.)
#[tokio::test]
async fn a_warm_session_carries_many_mails() {
    let sink = SmtpSink::start().await;
    let transport = smtp(&sink.url());
    let msg = message("user@example.org", "123456");
    transport.send(&msg).await.unwrap();

    for _ in 0..30 {
        transport.send(&msg).await.unwrap();
    }
    assert_eq!(sink.wait_for(31, WAIT).await.len(), 31);
    assert_eq!(sink.connections(), 1);
}

#[tokio::test]
async fn concurrency_is_bounded_by_max_connections() {
    let sink = SmtpSink::start().await;
    sink.set_default(Behaviour::DelayAccept(Duration::from_millis(100)));
    let transport = smtp_with(&sink.url(), 2, Duration::from_secs(5));
    let msg = message("user@example.org", "123456");

    let sends = (0..6).map(|_| transport.send(&msg));
    for result in futures_util::future::join_all(sends).await {
        result.unwrap();
    }
    sink.wait_for(6, WAIT).await;
    assert_eq!(sink.connections(), 2);
}

#[tokio::test]
async fn reply_451_is_transient_with_the_reply_text() {
    let sink = SmtpSink::start().await;
    sink.push_behaviour(Behaviour::RejectData("451 4.3.0 try later".into()));
    let transport = smtp(&sink.url());

    let reason = transient(transport.send(&message("user@example.org", "1")).await);
    assert_eq!(reason, "451 4.3.0 try later");

    // The failed session was dropped; the next mail gets a fresh one.
    transport
        .send(&message("user@example.org", "2"))
        .await
        .unwrap();
    sink.wait_for(1, WAIT).await;
    assert_eq!(sink.connections(), 2);
}

#[tokio::test]
async fn reply_550_at_rcpt_is_permanent() {
    let sink = SmtpSink::start().await;
    sink.push_behaviour(Behaviour::RejectRcpt("550 5.1.1 no such user".into()));
    let transport = smtp(&sink.url());

    let reason = permanent(transport.send(&message("nobody@example.org", "1")).await);
    assert_eq!(reason, "550 5.1.1 no such user");
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn reply_554_after_data_is_permanent() {
    let sink = SmtpSink::start().await;
    sink.push_behaviour(Behaviour::RejectData("554 5.7.1 rejected as spam".into()));
    let transport = smtp(&sink.url());

    let reason = permanent(transport.send(&message("user@example.org", "1")).await);
    assert_eq!(reason, "554 5.7.1 rejected as spam");
}

#[tokio::test]
async fn stopped_server_is_transient_and_recovery_needs_no_restart() {
    let sink = SmtpSink::start().await;
    let transport = smtp(&sink.url());
    transport
        .send(&message("user@example.org", "1"))
        .await
        .unwrap();

    sink.stop().await;
    let reason = transient(transport.send(&message("user@example.org", "2")).await);
    assert!(reason.starts_with("connect: "), "{reason}");

    sink.restart().await;
    transport
        .send(&message("user@example.org", "3"))
        .await
        .unwrap();
    assert_eq!(sink.wait_for(2, WAIT).await.len(), 2);
}

#[tokio::test]
async fn dead_pooled_session_is_replaced_transparently() {
    let sink = SmtpSink::start().await;
    let transport = smtp(&sink.url());
    transport
        .send(&message("user@example.org", "1"))
        .await
        .unwrap();

    // Kills the idle session the pool holds, as a server idle timeout would.
    sink.restart().await;
    transport
        .send(&message("user@example.org", "2"))
        .await
        .unwrap();
    let mails = sink.wait_for(2, WAIT).await;
    assert_eq!(mails[1].connection, 1);
}

#[tokio::test]
async fn a_session_used_a_moment_ago_is_reused_without_a_noop() {
    let sink = SmtpSink::start().await;
    let transport = smtp(&sink.url());
    for code in ["1", "2", "3"] {
        transport
            .send(&message("user@example.org", code))
            .await
            .unwrap();
    }
    assert_eq!(sink.noops(), 0, "back-to-back mails probed the session");

    // Idle for longer than a moment: probed before reuse.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    transport
        .send(&message("user@example.org", "4"))
        .await
        .unwrap();
    assert_eq!(sink.noops(), 1);
    let mails = sink.wait_for(4, WAIT).await;
    assert!(mails.iter().all(|m| m.connection == 0), "{mails:?}");
}

#[tokio::test]
async fn an_unprobed_session_found_dead_is_replaced_within_the_same_send() {
    let sink = SmtpSink::start().await;
    let transport = smtp(&sink.url());
    transport
        .send(&message("user@example.org", "1"))
        .await
        .unwrap();

    // The server drops the pooled session as the next MAIL arrives: what a
    // NOOP would have found. The mail goes out on a new session, no retry.
    sink.push_behaviour(Behaviour::DropAtMail);
    transport
        .send(&message("user@example.org", "2"))
        .await
        .unwrap();
    let mails = sink.wait_for(2, WAIT).await;
    assert_eq!(mails.len(), 2);
    assert_eq!((mails[0].connection, mails[1].connection), (0, 1));

    // A failure about the message itself is not retried on a new session.
    sink.push_behaviour(Behaviour::RejectData("451 4.3.0 try later".into()));
    transient(transport.send(&message("user@example.org", "3")).await);
    assert_eq!(sink.connections(), 2);
}

#[tokio::test]
async fn dropped_connection_is_transient() {
    let sink = SmtpSink::start().await;
    let transport = smtp(&sink.url());

    sink.push_behaviour(Behaviour::DropAtMail);
    transient(transport.send(&message("user@example.org", "1")).await);

    sink.push_behaviour(Behaviour::DropAfterData);
    transient(transport.send(&message("user@example.org", "2")).await);

    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn slow_reply_hits_the_command_timeout() {
    let sink = SmtpSink::start().await;
    sink.push_behaviour(Behaviour::DelayAccept(Duration::from_secs(3)));
    let transport = smtp_with(&sink.url(), 1, Duration::from_millis(300));

    let started = Instant::now();
    let reason = transient(transport.send(&message("user@example.org", "1")).await);
    assert!(reason.contains("timed out"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn silent_server_hits_the_connect_timeout() {
    // Accepts TCP but never greets.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let transport = Transport::from_url(
        Some(&format!("smtp://{addr}")),
        Path::new("unused-outbox"),
        1,
        Duration::from_millis(300),
        Duration::from_secs(5),
    )
    .unwrap();

    let reason = transient(transport.send(&message("user@example.org", "1")).await);
    assert_eq!(reason, "SMTP connect: timed out after 300ms");
}

#[tokio::test]
async fn credentials_from_the_url_are_decoded_and_used() {
    let sink = SmtpSink::start_with(SinkOptions {
        credentials: Some(("us@er".into(), "p:ss w/rd".into())),
        ..SinkOptions::default()
    })
    .await;
    let url = format!("smtp://us%40er:p%3Ass%20w%2Frd@{}", sink.addr());
    smtp(&url)
        .send(&message("user@example.org", "1"))
        .await
        .unwrap();
    sink.wait_for(1, WAIT).await;

    let wrong = format!("smtp://us%40er:nope@{}", sink.addr());
    let reason = transient(smtp(&wrong).send(&message("user@example.org", "2")).await);
    assert!(reason.starts_with("AUTH: 535 5.7.8"), "{reason}");
    assert!(!reason.contains("nope"), "{reason}");
}

#[tokio::test]
async fn required_starttls_without_server_support_is_transient() {
    let sink = SmtpSink::start().await;
    let url = format!("smtp://{}?tls=required", sink.addr());
    let reason = transient(smtp(&url).send(&message("user@example.org", "1")).await);
    assert!(reason.contains("STARTTLS"), "{reason}");
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn opportunistic_tls_falls_back_to_plain() {
    let sink = SmtpSink::start().await;
    let url = format!("smtp://{}?tls=opportunistic", sink.addr());
    smtp(&url)
        .send(&message("user@example.org", "1"))
        .await
        .unwrap();
    sink.wait_for(1, WAIT).await;
}

#[tokio::test]
async fn implicit_tls_to_a_plain_server_fails_in_the_handshake() {
    let sink = SmtpSink::start().await;
    // Building the transport also proves a rustls crypto provider is linked:
    // without one lettre panics here.
    let transport = smtp(&format!("smtps://{}", sink.addr()));
    let reason = transient(transport.send(&message("user@example.org", "1")).await);
    assert!(reason.starts_with("TLS handshake: "), "{reason}");
}

#[tokio::test]
async fn without_smtp_url_mails_become_eml_files() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let transport = Transport::from_url(
        None,
        &outbox,
        1,
        Duration::from_secs(1),
        Duration::from_secs(1),
    )
    .unwrap();
    let msg = message("user@example.org", "555111");
    transport.send(&msg).await.unwrap();

    let files: Vec<_> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].extension().unwrap(), "eml");
    let raw = std::fs::read(&files[0]).unwrap();
    let sent = msg.formatted();
    assert_eq!(
        MailView::new(&raw).subject(),
        MailView::new(&sent).subject()
    );
    assert!(MailView::new(&raw).text().unwrap().contains("555111"));
    assert_eq!(
        transport.to_string(),
        format!(".eml files in {}", outbox.display())
    );
}

#[tokio::test]
async fn close_says_goodbye_and_sending_still_works() {
    let sink = SmtpSink::start().await;
    let transport = smtp(&sink.url());
    transport
        .send(&message("user@example.org", "1"))
        .await
        .unwrap();
    transport.close().await;
    transport.close().await;
    transport
        .send(&message("user@example.org", "2"))
        .await
        .unwrap();
    assert_eq!(sink.wait_for(2, WAIT).await.len(), 2);
    assert_eq!(sink.connections(), 2);
}

/// The worker shares one `Transport` between spawned tasks.
#[test]
fn transport_and_its_send_future_can_cross_tasks() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let dir = tempfile::tempdir().unwrap();
    let transport = Transport::from_url(
        None,
        dir.path(),
        1,
        Duration::from_secs(1),
        Duration::from_secs(1),
    )
    .unwrap();
    send_sync(&transport);
    let msg = message("user@example.org", "1");
    let future = transport.send(&msg);
    send(&future);
}
