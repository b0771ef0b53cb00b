//! A deliberately thin HTTP/1.1 client: one keep-alive connection per load
//! task, requests sent one after another on it. That is exactly a closed
//! loop at concurrency C, costs the shared CPU as little as possible, and
//! makes every request's latency its own (no pool queueing inside the client).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use time::OffsetDateTime;
use tokio::net::TcpStream;
use uuid::Uuid;
use verimail_domain::sdk_signature::{self, SignedRequest};

pub const SEND_PATH: &str = "/v2/bases/verificationcode/send";

/// Where the intake listens, parsed from `http://host:port[/prefix]`.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header as the user wrote it (it is signed under AK/SK).
    pub host: String,
    /// Path of the send endpoint, with any prefix of the base URL.
    pub send_path: String,
}

impl Target {
    pub async fn resolve(url: &str) -> anyhow::Result<Self> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("--url must start with http:// (TLS is not what is measured here)");
        };
        let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            bail!("--url has no host");
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .with_context(|| format!("resolving {with_port}"))?
            .next()
            .with_context(|| format!("{with_port} resolves to no address"))?;
        let prefix = prefix.trim_end_matches('/');
        let send_path = if prefix.is_empty() {
            SEND_PATH.to_owned()
        } else {
            format!("/{prefix}{SEND_PATH}")
        };
        Ok(Self {
            addr,
            host: authority.to_owned(),
            send_path,
        })
    }
}

/// How requests authenticate.
#[derive(Debug, Clone)]
pub enum Auth {
    Token(HeaderValue),
    AkSk {
        access_key: String,
        secret_key: String,
        domain_id: Option<String>,
    },
}

/// What one request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Http {
        status: u16,
        /// `error_code` of a JSON error body.
        error_code: Option<String>,
        /// X-Request-Id of a 204: the dispatch id.
        dispatch_id: Option<Uuid>,
    },
    /// No HTTP answer; the connection is dropped and reopened.
    Transport(&'static str),
}

pub struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Connection {
    pub async fn open(target: &Target) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(target.addr)
            .await
            .with_context(|| format!("connecting to {}", target.addr))?;
        // Requests are small single writes; Nagle would only add delay.
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
        // The connection future drives the socket; it ends when the sender
        // is dropped or the server closes, and its error then shows up on
        // the next `send` anyway.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { sender })
    }

    /// Sends one request and reads the whole response. `Err` means the
    /// connection is unusable and must be replaced.
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<Reply, &'static str> {
        self.sender.ready().await.map_err(|_| "connection closed")?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|_| "request failed")?;
        let status = response.status();
        let dispatch_id = if status == StatusCode::NO_CONTENT {
            response
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| Uuid::parse_str(v).ok())
        } else {
            None
        };
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|_| "reading the body failed")?
            .to_bytes();
        let error_code = if status.is_success() {
            None
        } else {
            Some(error_code_of(&body))
        };
        Ok(Reply::Http {
            status: status.as_u16(),
            error_code,
            dispatch_id,
        })
    }
}

fn error_code_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error_code: String,
    }
    serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error_code)
        .unwrap_or_else(|_| "(no CBC body)".to_owned())
}

/// The JSON body for the `index`-th request of run `run_id`. Recipients are
/// distinct per request so the per-recipient rate limit never triggers and
/// no supersession happens: the fast path is what gets measured.
pub fn send_body(run_id: &str, index: u64, lang: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"receiver_type":2,"email":"bench-{run_id}-{index}@example.com","lang":"{lang}"}}"#
    ))
}

/// Builds the send request, signing it when AK/SK is used (the signature
/// covers the date and body, so every request is signed afresh).
pub fn send_request(
    target: &Target,
    auth: &Auth,
    body: Bytes,
) -> anyhow::Result<Request<Full<Bytes>>> {
    let builder = Request::builder()
        .method(Method::POST)
        .uri(target.send_path.as_str())
        .header(HOST, target.host.as_str())
        .header(CONTENT_TYPE, "application/json");
    let builder = match auth {
        Auth::Token(token) => builder.header("x-auth-token", token.clone()),
        Auth::AkSk {
            access_key,
            secret_key,
            domain_id,
        } => {
            let date = sdk_signature::format_sdk_date(OffsetDateTime::now_utc());
            let mut headers: Vec<(&str, &str)> = vec![
                ("Content-Type", "application/json"),
                ("Host", target.host.as_str()),
                ("X-Sdk-Date", date.as_str()),
            ];
            if let Some(domain_id) = domain_id {
                headers.push(("X-Domain-Id", domain_id.as_str()));
            }
            let signed = SignedRequest {
                method: "POST",
                path: &target.send_path,
                query: None,
                headers: &headers,
                body: &body,
            };
            let authorization = sdk_signature::sign(&signed, access_key, secret_key.as_bytes())
                .context("signing the request")?;
            let builder = builder
                .header("x-sdk-date", date.as_str())
                .header(AUTHORIZATION, authorization);
            match domain_id {
                Some(domain_id) => builder.header("x-domain-id", domain_id.as_str()),
                None => builder,
            }
        }
    };
    builder
        .body(Full::new(body))
        .context("building the request")
}

/// Per-request bound so one stuck request cannot hang a run.
pub async fn send_with_timeout(
    connection: &mut Connection,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Reply, &'static str> {
    match tokio::time::timeout(timeout, connection.send(request)).await {
        Ok(result) => result,
        Err(_) => Err("timeout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_base_urls() {
        let t = Target::resolve("http://127.0.0.1:8080").await.unwrap();
        assert_eq!(t.addr.port(), 8080);
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(t.send_path, SEND_PATH);
        let t = Target::resolve("http://127.0.0.1:9/api/").await.unwrap();
        assert_eq!(t.send_path, format!("/api{SEND_PATH}"));
        assert!(Target::resolve("https://127.0.0.1").await.is_err());
    }

    #[test]
    fn bodies_are_distinct_and_short_enough() {
        let body = send_body("0123abcd", 4_000_000_000, "en-us");
        let text = std::str::from_utf8(&body).unwrap();
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        let email = value["email"].as_str().unwrap();
        assert!(email.len() <= 64, "{email}");
        assert_ne!(send_body("r", 1, "en-us"), send_body("r", 2, "en-us"));
    }

    #[test]
    fn error_codes_are_read_from_cbc_bodies() {
        assert_eq!(
            error_code_of(br#"{"error_code":"CBC.0154","error_msg":"x"}"#),
            "CBC.0154"
        );
        assert_eq!(error_code_of(b"oops"), "(no CBC body)");
    }

    #[test]
    fn aksk_requests_verify() {
        let target = Target {
            addr: "127.0.0.1:8080".parse().unwrap(),
            host: "127.0.0.1:8080".into(),
            send_path: SEND_PATH.into(),
        };
        let auth = Auth::AkSk {
            access_key: "AKBENCH".into(),
            secret_key: "secret".into(),
            domain_id: Some("d1".into()),
        };
        let body = send_body("r", 1, "en-us");
        let request = send_request(&target, &auth, body.clone()).unwrap();
        let headers: Vec<(&str, &str)> = request
            .headers()
            .iter()
            .filter(|(n, _)| *n != AUTHORIZATION)
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        let authorization = request.headers()[AUTHORIZATION].to_str().unwrap();
        let parsed = sdk_signature::parse_authorization(authorization).unwrap();
        let signed = SignedRequest {
            method: "POST",
            path: SEND_PATH,
            query: None,
            headers: &headers,
            body: &body,
        };
        sdk_signature::verify(
            &signed,
            &parsed,
            b"secret",
            OffsetDateTime::now_utc(),
            sdk_signature::DEFAULT_MAX_SKEW,
        )
        .unwrap();
    }
}
