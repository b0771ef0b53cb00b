//! A partner's webhook endpoint for tests: an HTTP server on a free port
//! that records every delivery (before answering) and answers as scripted,
//! and the official Standard Webhooks library's verdict on what it got.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

/// How the endpoint answers one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Status(u16),
    /// Never answers (the worker's timeout ends the attempt).
    Hang,
}

/// One request as it arrived, and how it was answered.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: String,
    pub answer: Answer,
}

impl Delivery {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    /// (body, headers) as `reference_verdicts` takes them.
    pub fn signed(&self) -> (String, Value) {
        (
            self.body.clone(),
            json!({"webhook-id": self.id, "webhook-timestamp": self.timestamp,
                   "webhook-signature": self.signature}),
        )
    }
}

#[derive(Default)]
struct Shared {
    deliveries: Mutex<Vec<Delivery>>,
    script: Mutex<VecDeque<Answer>>,
    default: Mutex<Option<Answer>>,
}

pub struct Receiver {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Answers 204 unless told otherwise.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let router = axum::Router::new()
            .route("/hooks", axum::routing::post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// The next deliveries get these answers, in order.
    pub fn push(&self, answer: Answer, times: usize) {
        let mut script = self.shared.script.lock().unwrap();
        script.extend(std::iter::repeat_n(answer, times));
    }

    /// What every unscripted delivery gets from now on.
    pub fn set_default(&self, answer: Answer) {
        *self.shared.default.lock().unwrap() = Some(answer);
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.deliveries.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the deliveries so far.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let deliveries = self.deliveries();
            if done(&deliveries) {
                return deliveries;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited {timeout:?} for {what}; got {:#?}",
                deliveries
                    .iter()
                    .map(|d| (&d.id, d.answer, &d.body))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let answer = shared
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or(*shared.default.lock().unwrap())
        .unwrap_or(Answer::Status(204));
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    shared.deliveries.lock().unwrap().push(Delivery {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body,
        answer,
    });
    match answer {
        Answer::Status(code) => StatusCode::from_u16(code).unwrap(),
        Answer::Hang => std::future::pending().await,
    }
}

/// The interpreter of a virtualenv with the `standardwebhooks` package;
/// `.ci/run` makes one and sets `VERIMAIL_WEBHOOK_PYTHON`.
pub fn webhook_python() -> Option<String> {
    match std::env::var("VERIMAIL_WEBHOOK_PYTHON") {
        Ok(python) => Some(python),
        Err(_) if std::env::var("CI").is_ok() => {
            panic!("CI must set VERIMAIL_WEBHOOK_PYTHON (see .ci/run)")
        }
        Err(_) => {
            eprintln!(
                "SKIPPED: set VERIMAIL_WEBHOOK_PYTHON to a python with the standardwebhooks package"
            );
            None
        }
    }
}

/// `node` with the `standardwebhooks` npm package installed in
/// `tests/webhooks/npm` (`npm ci` there); `.ci/run` sets `VERIMAIL_WEBHOOK_NODE`.
pub fn webhook_node() -> Option<String> {
    match std::env::var("VERIMAIL_WEBHOOK_NODE") {
        Ok(node) => Some(node),
        Err(_) if std::env::var("CI").is_ok() => {
            panic!("CI must set VERIMAIL_WEBHOOK_NODE (see .ci/run)")
        }
        Err(_) => {
            eprintln!(
                "SKIPPED: set VERIMAIL_WEBHOOK_NODE to node, after `npm ci` in tests/webhooks/npm"
            );
            None
        }
    }
}

/// The official Python library's verdict on each delivery (body, headers).
pub fn reference_verdicts(python: &str, secret: &str, deliveries: &[(String, Value)]) -> Vec<bool> {
    verdicts(
        python,
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhooks/verify.py"),
        secret,
        deliveries,
    )
}

/// The official npm package's verdict on each delivery (body, headers).
pub fn npm_verdicts(node: &str, secret: &str, deliveries: &[(String, Value)]) -> Vec<bool> {
    verdicts(
        node,
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhooks/npm/verify.mjs"),
        secret,
        deliveries,
    )
}

fn verdicts(
    program: &str,
    script: &str,
    secret: &str,
    deliveries: &[(String, Value)],
) -> Vec<bool> {
    let deliveries: Vec<Value> = deliveries
        .iter()
        .map(|(body, headers)| json!({"body": body, "headers": headers}))
        .collect();
    let answer = super::run_json_script(
        program,
        script,
        &json!({"secret": secret, "deliveries": deliveries}),
    );
    serde_json::from_value(answer).unwrap()
}
