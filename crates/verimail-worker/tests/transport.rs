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
        Err(SendError::Transient(reason)) => without_relay(reason),
        other => panic!("expected a transient error, got {other:?}"),
    }
}

fn permanent(result: Result<(), SendError>) -> String {
    match result {
        Err(SendError::Permanent(reason)) => without_relay(reason),
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

/// An SMTP failure's reason begins with the relay's `host:port`; the rest.
fn without_relay(reason: String) -> String {
    match reason.split_once(": ") {
        Some((relay, rest)) if relay.parse::<std::net::SocketAddr>().is_ok() => rest.to_owned(),
        _ => reason,
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
    // Reachable but mute: named by the step, unlike an unreachable host.
    assert_eq!(reason, "greeting/EHLO: no reply within 300ms");
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
    assert!(reason.starts_with("AUTH refused: 535 5.7.8"), "{reason}");
    assert!(!reason.contains("nope"), "{reason}");
}

/// Issue 25: a relay that refuses our login, even one that pauses before
/// saying so, is reported as a refused login as soon as it answers, by the
/// send and by the start-up check, never as a connect timeout.
#[tokio::test]
async fn a_refused_login_is_reported_as_such_at_once() {
    let sink = SmtpSink::start_with(SinkOptions {
        credentials: Some(("user".into(), "right".into())),
        auth_refusal_delay: Duration::from_millis(500),
        ..SinkOptions::default()
    })
    .await;
    let transport = Transport::from_url(
        Some(&format!("smtp://user:wrong@{}", sink.addr())),
        Path::new("unused-outbox"),
        2,
        Duration::from_secs(10),
        Duration::from_secs(10),
    )
    .unwrap();

    let logs = CapturedLogs::default();
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish(),
    );

    let started = Instant::now();
    let checked = transport.check().await;
    assert_eq!(checked.len(), 1);
    let (relay, checked) = checked.into_iter().next().unwrap();
    assert_eq!(relay, sink.addr().to_string());
    let checked = checked.unwrap_err();
    let reason = transient(transport.send(&message("user@example.org", "1")).await);
    let both = started.elapsed();

    let checked = without_relay(checked.reason().to_owned());
    for said in [checked.as_str(), reason.as_str()] {
        assert_eq!(
            said,
            "AUTH refused: 535 5.7.8 Authentication credentials invalid \
             (check the user and password in SMTP_URL)"
        );
    }
    // Two refusals at the relay's own pace, nowhere near the 10 s timeout.
    assert!(both < Duration::from_secs(3), "{both:?}");
    assert!(sink.messages().is_empty());

    // One loud line for the change, not one per mail; it names the relay
    // and its reply, never the credentials.
    let logs = logs.text();
    let refusals: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("the SMTP relay refused our login"))
        .collect();
    assert_eq!(refusals.len(), 1, "{logs}");
    assert!(refusals[0].contains("ERROR"), "{logs}");
    assert!(refusals[0].contains(&sink.addr().to_string()), "{logs}");
    assert!(refusals[0].contains("535 5.7.8"), "{logs}");
    assert!(!logs.contains("wrong"), "{logs}");
}

/// Log output of one test, for assertions on what was written.
#[derive(Clone, Default)]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A relay that says nothing after AUTH is named by that step when the
/// setup times out, so it cannot be mistaken for an unreachable host.
#[tokio::test]
async fn a_setup_that_times_out_names_the_step_it_was_in() {
    let sink = SmtpSink::start_with(SinkOptions {
        credentials: Some(("user".into(), "right".into())),
        auth_refusal_delay: Duration::from_secs(5),
        ..SinkOptions::default()
    })
    .await;
    let transport = Transport::from_url(
        Some(&format!("smtp://user:wrong@{}", sink.addr())),
        Path::new("unused-outbox"),
        1,
        Duration::from_millis(300),
        Duration::from_secs(5),
    )
    .unwrap();
    let reason = transient(transport.send(&message("user@example.org", "1")).await);
    assert_eq!(reason, "AUTH: no reply within 300ms");
}

#[tokio::test]
async fn the_start_up_check_passes_for_a_working_relay_and_the_outbox() {
    let sink = SmtpSink::start_with(SinkOptions {
        credentials: Some(("user".into(), "right".into())),
        ..SinkOptions::default()
    })
    .await;
    let checked = smtp(&format!("smtp://user:right@{}", sink.addr()))
        .check()
        .await;
    assert_eq!(checked, [(sink.addr().to_string(), Ok(()))]);
    assert_eq!(sink.connections(), 1);
    let outbox = tempfile::tempdir().unwrap();
    let files = Transport::from_url(None, outbox.path(), 1, WAIT, WAIT).unwrap();
    assert!(files.check().await.is_empty());
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

// --- several relays (issue 25) ---------------------------------------------

fn relays(urls: &[String], cooldown: Duration) -> Transport {
    Transport::from_url(
        Some(&urls.join(",")),
        Path::new("unused-outbox"),
        2,
        Duration::from_secs(2),
        Duration::from_secs(5),
    )
    .unwrap()
    .with_relay_cooldown(cooldown)
}

/// A closed port: connections are refused.
async fn refusing() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("smtp://{addr}")
}

#[tokio::test]
async fn a_transient_failure_sends_the_same_message_through_the_next_relay_at_once() {
    let first = SmtpSink::start().await;
    let second = SmtpSink::start().await;
    first.set_default(Behaviour::RejectRcpt("451 4.3.0 try later".into()));
    let refused = refusing().await;
    for urls in [
        vec![first.url(), second.url()],
        vec![refused.clone(), second.url()],
    ] {
        let transport = relays(&urls, Duration::from_secs(30));
        let msg = message("user@example.org", "424242");
        let started = Instant::now();
        transport.send(&msg).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        let sent_id = MailView::new(&msg.formatted())
            .header("Message-ID")
            .unwrap();
        let got = second
            .messages()
            .last()
            .unwrap()
            .header("Message-ID")
            .unwrap();
        assert_eq!(got, sent_id, "the same message, Message-ID unchanged");
    }
    assert_eq!(second.messages().len(), 2);
    assert!(first.messages().is_empty());
}

#[tokio::test]
async fn a_permanent_reply_is_not_retried_on_another_relay() {
    let first = SmtpSink::start().await;
    let second = SmtpSink::start().await;
    first.set_default(Behaviour::RejectRcpt("550 5.1.1 no such user".into()));
    let transport = relays(&[first.url(), second.url()], Duration::from_secs(30));
    let result = transport.send(&message("user@example.org", "1")).await;
    let Err(SendError::Permanent(reason)) = result else {
        panic!("expected a permanent error, got {result:?}");
    };
    assert_eq!(reason, format!("{}: 550 5.1.1 no such user", first.addr()));
    assert!(second.messages().is_empty());
    assert_eq!(second.connections(), 0);
}

#[tokio::test]
async fn when_every_relay_fails_last_error_names_the_last_one_tried() {
    let first = SmtpSink::start().await;
    let second = SmtpSink::start().await;
    first.set_default(Behaviour::RejectRcpt("451 4.3.0 first busy".into()));
    second.set_default(Behaviour::RejectRcpt("452 4.3.1 second full".into()));
    let transport = relays(&[first.url(), second.url()], Duration::from_secs(30));
    let result = transport.send(&message("user@example.org", "1")).await;
    let Err(SendError::Transient(reason)) = result else {
        panic!("expected a transient error, got {result:?}");
    };
    assert_eq!(reason, format!("{}: 452 4.3.1 second full", second.addr()));
}

#[tokio::test]
async fn a_failing_relay_is_skipped_for_the_cool_down_then_used_again() {
    let first = SmtpSink::start().await;
    let second = SmtpSink::start().await;
    let cooldown = Duration::from_millis(600);
    let transport = relays(&[first.url(), second.url()], cooldown);
    first.stop().await;

    // Three refused connections in a row open the breaker...
    for _ in 0..3 {
        transport
            .send(&message("user@example.org", "1"))
            .await
            .unwrap();
    }
    first.restart().await;
    let before = first.connections();
    // ...so the next sends go straight to the second relay, untried.
    for _ in 0..3 {
        transport
            .send(&message("user@example.org", "2"))
            .await
            .unwrap();
    }
    assert_eq!(first.connections(), before, "skipped during the cool-down");
    assert_eq!(second.messages().len(), 6);

    tokio::time::sleep(cooldown + Duration::from_millis(100)).await;
    transport
        .send(&message("user@example.org", "3"))
        .await
        .unwrap();
    transport
        .send(&message("user@example.org", "4"))
        .await
        .unwrap();
    assert_eq!(first.messages().len(), 2, "probed, then used again");
    assert_eq!(second.messages().len(), 6);
}
