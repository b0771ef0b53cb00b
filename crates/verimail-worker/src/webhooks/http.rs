//! One delivery attempt over HTTP: the signed request (Standard Webhooks
//! headers) and what the endpoint's answer means. The endpoint's host is
//! resolved at each attempt and the connection goes only to addresses that
//! pass the rules (`webhook_endpoint`): a name re-pointed at this side's own
//! network after `webhook set` (DNS rebinding) reaches nothing. No redirect
//! is followed, no proxy used, and the whole attempt, connection included,
//! has one timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, RootCertStore, pki_types::ServerName};
use verimail_domain::secrets::Keys;
use verimail_domain::webhook::{EndpointRefusal, WebhookSecret, signature};
use verimail_infra::store::webhook_events::ClaimedEvent;
use verimail_infra::webhook_endpoint;

/// What one attempt came to.
#[derive(Debug)]
pub enum Attempt {
    /// A 2xx answer.
    Delivered,
    /// `410 Gone`: the partner wants no more events here.
    Gone,
    /// Anything else; `reason` is the metric label, `detail` the log line
    /// and the event's `last_error` (no header, so never a secret).
    Failed {
        reason: &'static str,
        detail: String,
    },
}

/// What every delivery of a worker shares: TLS settings, timeout, rules.
pub struct Client {
    tls: TlsConnector,
    timeout: Duration,
    allow_insecure: bool,
}

impl Client {
    /// TLS with the system's CA roots, on ring (no process-wide provider).
    pub fn new(timeout: Duration, allow_insecure: bool) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            tracing::warn!("no system CA certificates found: https webhook endpoints will fail");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS settings for webhooks")?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
            timeout,
            allow_insecure,
        })
    }

    /// Sends `event` once, signed with the endpoint's secret (and the
    /// previous one while a rotation's overlap lasts).
    pub async fn attempt(&self, keys: &Keys, event: &ClaimedEvent) -> Attempt {
        let secrets = match secrets(keys, event) {
            Ok(secrets) => secrets,
            Err(detail) => return failed("secret", detail),
        };
        let id = format!("msg_{}", event.id.simple());
        let timestamp = OffsetDateTime::now_utc().unix_timestamp();
        let signed = signature(
            &secrets.iter().collect::<Vec<_>>(),
            &id,
            timestamp,
            &event.body,
        );
        let request = Signed {
            id,
            timestamp,
            signature: signed,
            body: event.body.clone(),
        };
        match tokio::time::timeout(self.timeout, self.post(&event.url, request)).await {
            Err(_) => failed(
                "timeout",
                format!("no answer within {}s", self.timeout.as_secs_f64()),
            ),
            Ok(Err(attempt)) => attempt,
            Ok(Ok(status)) if status.is_success() => Attempt::Delivered,
            Ok(Ok(hyper::StatusCode::GONE)) => Attempt::Gone,
            Ok(Ok(status)) => {
                let reason = if status.is_server_error() {
                    "http_5xx"
                } else {
                    "http_status"
                };
                failed(reason, format!("the endpoint answered {status}"))
            }
        }
    }

    async fn post(&self, raw_url: &str, request: Signed) -> Result<hyper::StatusCode, Attempt> {
        let url = url::Url::parse(raw_url)
            .map_err(|e| failed("bad_url", format!("the stored URL does not parse: {e}")))?;
        let addresses = webhook_endpoint::resolve_allowed(&url, self.allow_insecure)
            .await
            .map_err(|refusal| {
                let reason = match refusal {
                    EndpointRefusal::Unresolved(_) => "unresolved",
                    _ => "refused_address",
                };
                failed(reason, refusal.to_string())
            })?;
        let tcp = connect(&addresses).await?;
        let host = url.host_str().unwrap_or_default().to_owned();
        if url.scheme() == "https" {
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                .map_err(|e| failed("tls", format!("{host} is no TLS server name: {e}")))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| failed("tls", format!("TLS with {host}: {e}")))?;
            exchange(tls, &url, request).await
        } else {
            exchange(tcp, &url, request).await
        }
    }
}

/// The signed delivery, headers and body.
struct Signed {
    id: String,
    timestamp: i64,
    signature: String,
    body: String,
}

async fn connect(addresses: &[SocketAddr]) -> Result<TcpStream, Attempt> {
    let mut last = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = Some(format!("connecting to {address}: {e}")),
        }
    }
    Err(failed("connect", last.unwrap_or_default()))
}

async fn exchange<S>(io: S, url: &url::Url, request: Signed) -> Result<hyper::StatusCode, Attempt>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| failed("http", format!("HTTP: {e}"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(http)?;
    // Drives the connection; ends when the exchange (or the attempt) does.
    let driver = tokio::spawn(connection);
    let authority = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let built = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("verimail-webhooks/", env!("CARGO_PKG_VERSION")),
        )
        .header("webhook-id", request.id)
        .header("webhook-timestamp", request.timestamp.to_string())
        .header("webhook-signature", request.signature)
        .body(Full::new(Bytes::from(request.body)))
        .map_err(|e| failed("http", format!("building the request: {e}")))?;
    let answered = sender.send_request(built).await;
    driver.abort();
    Ok(answered.map_err(http)?.status())
}

fn secrets(keys: &Keys, event: &ClaimedEvent) -> Result<Vec<WebhookSecret>, String> {
    let open = |sealed: &[u8]| {
        keys.open_webhook_secret(event.partner_id, sealed)
            .map_err(|_| "the endpoint's secret does not open with VERIMAIL_SECRET".to_owned())
    };
    let mut secrets = vec![open(&event.secret_sealed)?];
    if let (Some(previous), Some(until)) = (&event.previous_secret_sealed, event.previous_until)
        && until > OffsetDateTime::now_utc()
    {
        secrets.push(open(previous)?);
    }
    Ok(secrets)
}

fn failed(reason: &'static str, detail: String) -> Attempt {
    Attempt::Failed { reason, detail }
}
