//! No code, token or secret reaches the logs, at any level, during a full
//! send → mail. Its own process (`run_in_own_process`), because it installs
//! the global subscriber and must capture every thread's events, lapin's I/O
//! thread included, and no other test's.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use verimail_intake::accounts::AccountKind;
use verimail_testkit::smtp_sink::SmtpSink;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_send_logs_no_code_token_secret_or_address() {
    if run_in_own_process("logs_no_secrets::a_full_send_logs_no_code_token_secret_or_address") {
        return;
    }
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let sink = SmtpSink::start().await;
    let intake = TestIntake::spawn(intake_settings(amqp_url(), &prefix), &db.url).await;
    let worker = TestWorker::spawn(worker_settings(&prefix, Some(sink.url())), &db.url).await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;

    let email = "very.private.person@example.com";
    let reply = intake.send(&p.token, &valid_body(email)).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let id: uuid::Uuid = reply.request_id.unwrap().parse().unwrap();
    let mails = sink.wait_for(1, Duration::from_secs(15)).await;
    wait_status(&db.pool, id, &["sent"], Duration::from_secs(15)).await;
    let code = find_code(&mails[0].text().unwrap(), 6).unwrap();
    // A wrong token and a garbage body also pass through the logs.
    let _ = intake
        .send("vmt_this-is-a-wrong-token", &valid_body(email))
        .await;
    worker.stop().await.unwrap();

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains(&id.to_string()),
        "the capture works: the dispatch id is logged"
    );
    assert!(logs.contains("mail sent"));
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "all levels were captured"
    );
    for (what, secret) in [
        ("code", code.as_str()),
        ("token", p.token.as_str()),
        ("wrong token", "vmt_this-is-a-wrong-token"),
        ("master secret", TEST_SECRET),
        ("address", email),
        ("local part", "very.private.person"),
    ] {
        assert!(!logs.contains(secret), "the {what} appears in the logs");
    }
    broker.cleanup().await;
}
