//! `/metrics` counts requests by outcome and dispatches by final state.
//! Its own process (`run_in_own_process`): the recorder is process-wide.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::support::*;
use verimail_intake::accounts::AccountKind;
use verimail_testkit::smtp_sink::SmtpSink;

/// The value of one sample line, e.g. `name{a="b"} 3`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let matches =
                series[name.len()..].starts_with(['{', ' ']) || series.len() == name.len();
            let all = labels
                .iter()
                .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")));
            (matches && all).then(|| value.parse().ok()).flatten()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_final_states_are_counted() {
    if run_in_own_process("metrics::requests_and_final_states_are_counted") {
        return;
    }
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let sink = SmtpSink::start().await;
    let mut intake_config = intake_settings(amqp_url(), &prefix);
    intake_config.max_backlog = Some(50_000);
    let intake = TestIntake::spawn(intake_config, &db.url).await;
    // Housekeeping (the oldest-queued gauge) on a short beat, and maintenance
    // at start (the partitions' end), for the gauges the alert rules read.
    let mut worker_config = worker_settings(&prefix, Some(sink.url()));
    worker_config.sweep_interval = Duration::from_millis(200);
    worker_config.maintenance_interval = Duration::from_secs(3600);
    let worker = TestWorker::spawn(worker_config, &db.url).await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;

    let reply = intake
        .send(&p.token, &valid_body("metrics@example.com"))
        .await;
    assert_eq!(reply.status, 204);
    let bad = intake
        .send(&p.token, &serde_json::json!({"receiver_type": 3}))
        .await;
    assert_eq!(bad.error_code().as_deref(), Some("CBC.0100"));
    let id: uuid::Uuid = reply.request_id.unwrap().parse().unwrap();
    wait_status(&db.pool, id, &["sent"], Duration::from_secs(15)).await;

    // Not on the public API port; on the intake's metrics listener.
    let public = Reply::read(
        intake
            .client
            .get(intake.url("/metrics"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(public.status, 404);
    let metrics_addr = intake.metrics_addr.unwrap();
    let scrape = Reply::read(
        intake
            .client
            .get(format!("http://{metrics_addr}/metrics"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(scrape.status, 200);
    let text = scrape.body;
    let send = "/v2/bases/verificationcode/send";
    assert_eq!(
        sample(
            &text,
            "verimail_http_requests_total",
            &[("endpoint", send), ("outcome", "204")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "verimail_http_requests_total",
            &[("endpoint", send), ("outcome", "CBC.0100")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "verimail_dispatches_finished_total",
            &[("status", "sent")]
        ),
        Some(1.0)
    );
    assert!(
        sample(&text, "verimail_publish_duration_seconds_count", &[]).is_some_and(|n| n >= 1.0)
    );
    // Each relay is a label (`host:port`, never credentials).
    let relay = sink.addr().to_string();
    assert_eq!(
        sample(
            &text,
            "verimail_smtp_relay_sends_total",
            &[("relay", relay.as_str()), ("result", "ok")]
        ),
        Some(1.0),
        "{text}"
    );
    // The test sender's domain has no DKIM key: its mail is counted unsigned.
    assert_eq!(
        sample(&text, "verimail_mails_unsigned_total", &[]),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "verimail_smtp_send_duration_seconds_count",
            &[("result", "ok")]
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert!(
        text.contains("verimail_http_request_duration_seconds_bucket"),
        "latencies are histograms"
    );
    // What deploy/prometheus/verimail-rules.yml compares the depth with.
    assert_eq!(sample(&text, "verimail_backlog_limit", &[]), Some(50_000.0));

    // The worker's own metrics port serves the same registry.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(verimail_infra::metrics_server::serve(
        listener,
        std::future::pending(),
    ));
    let worker_scrape = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(
            &worker_scrape,
            "verimail_dispatches_finished_total",
            &[("status", "sent")]
        ),
        Some(1.0)
    );

    // The gauges the alert rules read from the workers: nothing waits once
    // the mail is sent; the partitions end days ahead (maintenance at start).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let worker_scrape = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(
            &worker_scrape,
            "verimail_oldest_queued_dispatch_age_seconds",
            &[]
        ),
        Some(0.0),
        "{worker_scrape}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let ready_until = sample(
        &worker_scrape,
        "verimail_partitions_ready_until_timestamp_seconds",
        &[],
    )
    .unwrap();
    assert!(ready_until > now + 3.0 * 86_400.0, "{ready_until} vs {now}");
    // Counters the rules read with increase() exist at 0 before any event:
    // a series born with its first event would show Prometheus no increase.
    assert_eq!(
        sample(&worker_scrape, "verimail_claims_taken_over_total", &[]),
        Some(0.0),
        "no claim was taken over"
    );
    assert_eq!(
        sample(
            &worker_scrape,
            "verimail_shed_total",
            &[("reason", "backlog")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &worker_scrape,
            "verimail_maintenance_runs_total",
            &[("outcome", "failed")]
        ),
        Some(0.0)
    );

    worker.stop().await.unwrap();
    broker.cleanup().await;
}
