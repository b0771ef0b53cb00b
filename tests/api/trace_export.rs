//! One trace from the send request to the relay (README, "Tracing"): with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, a real intake and a real worker
//! export their spans over OTLP/HTTP to a receiver in this test; the send's
//! `traceparent` (or a new trace) travels in the AMQP message's headers, so
//! the worker's spans join the intake's. No span holds the code, the token
//! or the full address.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use verimail_intake::accounts::AccountKind;
use verimail_testkit::smtp_sink::SmtpSink;

use crate::support::*;

/// One exported span, flattened for the checks.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    /// Every attribute value of the span and of its events, as text.
    values: Vec<String>,
}

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf) keeping every span.
struct Receiver {
    addr: std::net::SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let kept = kept.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body).unwrap();
                    kept.lock().unwrap().extend(flatten(request));
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, spans, task }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (up to 30 s) until `done` holds for the spans received.
    async fn wait_until(&self, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within 30 s; spans received: {:#?}",
                spans
                    .iter()
                    .map(|s| (&s.service, &s.name, &s.trace_id))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn values(attributes: &[KeyValue]) -> impl Iterator<Item = String> + '_ {
    attributes.iter().map(|kv| text(&kv.value))
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                let mut all: Vec<String> = values(&span.attributes).collect();
                for event in &span.events {
                    all.push(event.name.clone());
                    all.extend(values(&event.attributes));
                }
                out.push(Span {
                    service: service.clone(),
                    name: span.name.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    values: all,
                });
            }
        }
    }
    out
}

/// A `verimail` process, killed when the test ends however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(role: &str, env: &[(&str, String)]) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_verimail"))
            .arg(role)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

fn services(spans: &[Span], trace_id: &str) -> BTreeSet<String> {
    spans
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .map(|s| s.service.clone())
        .collect()
}

fn span<'a>(spans: &'a [Span], trace_id: &str, name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.trace_id == trace_id && s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in trace {trace_id}: {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_holds_the_intake_and_the_worker_spans_of_a_dispatch() {
    let receiver = Receiver::start().await;
    let db = TestDb::new().await;
    let partner = partner(&db.pool, AccountKind::Partner, false).await;
    let sink = SmtpSink::start().await;
    let prefix = unique_prefix();
    let port = free_port();
    let env = [
        ("DATABASE_URL", db.url.clone()),
        ("AMQP_URL", amqp_url()),
        ("VERIMAIL_AMQP_PREFIX", prefix.clone()),
        ("VERIMAIL_SECRET", TEST_SECRET.to_owned()),
        ("SMTP_URL", format!("smtp://{}", sink.addr())),
        ("VERIMAIL_LISTEN", format!("127.0.0.1:{port}")),
        ("VERIMAIL_METRICS_LISTEN", "127.0.0.1:0".into()),
        ("VERIMAIL_INTAKE_METRICS_LISTEN", "127.0.0.1:0".into()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", receiver.addr),
        ),
        // Spans leave within 200 ms instead of the SDK's 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ("RUST_LOG", "info".into()),
    ];
    let _intake = spawn("intake", &env);
    let _worker = spawn("worker", &env);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "the intake never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 1. The caller's trace: the intake's request span is a child of the
    //    caller's span, the worker's spans are in the same trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let email = "trace.me@example.com";
    let response = client
        .post(format!("{base}{SEND_PATH}"))
        .header("X-Auth-Token", &partner.token)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&valid_body(email))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let mail = sink.wait_for(1, Duration::from_secs(30)).await;
    let code = find_code(&mail[0].text().unwrap(), 6).unwrap();

    let spans = receiver
        .wait_until("the intake's and the worker's spans of the send", |spans| {
            ["request", "dispatch delivery", "process", "smtp send"]
                .iter()
                .all(|name| {
                    spans
                        .iter()
                        .any(|s| s.trace_id == trace_id && s.name == *name)
                })
        })
        .await;
    assert_eq!(
        services(&spans, trace_id),
        BTreeSet::from(["verimail-intake".to_owned(), "verimail-worker".to_owned()])
    );
    let request = span(&spans, trace_id, "request");
    assert_eq!(request.service, "verimail-intake");
    assert_eq!(
        request.parent_span_id, caller_span,
        "the caller's span is the parent"
    );
    let delivery = span(&spans, trace_id, "dispatch delivery");
    assert_eq!(delivery.service, "verimail-worker");
    assert_eq!(
        delivery.parent_span_id, request.span_id,
        "the worker continues the request's span, from the message's headers"
    );
    let process = span(&spans, trace_id, "process");
    assert_eq!(process.parent_span_id, delivery.span_id);
    assert_eq!(
        span(&spans, trace_id, "smtp send").parent_span_id,
        process.span_id
    );

    // 2. No traceparent: a new trace, still one for both processes.
    let response = client
        .post(format!("{base}{SEND_PATH}"))
        .header("X-Auth-Token", &partner.token)
        .json(&valid_body("second.one@example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let request_id = response
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let spans = receiver
        .wait_until("the spans of a send without a traceparent", |spans| {
            spans.iter().any(|s| {
                s.name == "request"
                    && s.values.contains(&request_id)
                    && services(spans, &s.trace_id).len() == 2
                    && spans
                        .iter()
                        .any(|w| w.trace_id == s.trace_id && w.name == "smtp send")
            })
        })
        .await;
    let second = spans
        .iter()
        .find(|s| s.name == "request" && s.values.contains(&request_id))
        .unwrap();
    assert_ne!(second.trace_id, trace_id);
    assert_eq!(
        second.parent_span_id, "",
        "a new trace starts at the intake"
    );

    // 3. Nothing secret in any attribute of any span or event.
    for span in &spans {
        for value in &span.values {
            for (what, secret) in [
                ("the code", code.as_str()),
                ("the token", partner.token.as_str()),
                ("the address", email),
                ("the address", "second.one@example.com"),
            ] {
                assert!(
                    !value.contains(secret),
                    "{what} in span {:?} of {}: {value:?}",
                    span.name,
                    span.service
                );
            }
        }
    }
    let _ = sink;
    // The test's queues go with it: a broker's file handles are few.
    Broker::connect(&prefix).await.cleanup().await;
}
