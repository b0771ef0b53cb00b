//! Opening one SMTP session on a socket we own.
//!
//! The point of owning the socket is `TCP_NODELAY`: lettre 0.11.23 writes the
//! body and the final `.` of DATA separately, and without NODELAY the second
//! write waits for the server's delayed ACK (~40 ms per mail).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use lettre::transport::smtp::authentication::DEFAULT_MECHANISMS;
#[allow(deprecated)] // see `ImplicitTls`
use lettre::transport::smtp::client::AsyncNetworkStream;
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt as _};

use super::config::{Security, SmtpConfig};

/// Failure while setting a session up, with the step it happened in.
/// Carries lettre's error so the caller can still read the SMTP reply.
#[derive(Debug)]
pub(super) struct ConnectError {
    pub step: &'static str,
    pub source: ConnectCause,
}

#[derive(Debug)]
pub(super) enum ConnectCause {
    Io(io::Error),
    Smtp(lettre::transport::smtp::Error),
}

fn at<E: Into<ConnectCause>>(step: &'static str) -> impl FnOnce(E) -> ConnectError {
    move |e| ConnectError {
        step,
        source: e.into(),
    }
}

impl From<io::Error> for ConnectCause {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<lettre::transport::smtp::Error> for ConnectCause {
    fn from(e: lettre::transport::smtp::Error) -> Self {
        Self::Smtp(e)
    }
}

/// A TCP connection with Nagle's algorithm off: lettre 0.11.23 never sets
/// TCP_NODELAY, and each mail then waits ~40 ms for the server's delayed ACK.
pub(super) async fn dial(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// The steps of a session's setup, in order, as `last_error` names them.
const STEPS: [&str; 5] = [
    "connect",
    "TLS handshake",
    "greeting/EHLO",
    "STARTTLS",
    "AUTH",
];

/// How far a session's setup got, readable after its future was dropped by
/// a timeout: a relay that answers a refused login only after a long pause
/// (a tarpit) must not read as a dead network.
#[derive(Debug, Default)]
pub(super) struct Progress(AtomicU8);

impl Progress {
    fn enter(&self, step: &'static str) -> &'static str {
        let index = STEPS.iter().position(|s| *s == step).unwrap_or(0);
        self.0.store(index as u8, Ordering::Relaxed);
        step
    }

    /// The step the setup was in (or failed in).
    pub(super) fn step(&self) -> &'static str {
        STEPS[usize::from(self.0.load(Ordering::Relaxed)).min(STEPS.len() - 1)]
    }
}

/// Connects, greets, secures and authenticates as the config asks, noting
/// each step in `progress`. Not time-bounded here: the pool wraps the whole
/// setup in one timeout.
pub(super) async fn open(
    config: &SmtpConfig,
    progress: &Progress,
) -> Result<AsyncSmtpConnection, ConnectError> {
    let step = progress.enter("connect");
    let tcp = dial(&config.host, config.port).await.map_err(at(step))?;

    let stream: Box<dyn AsyncTokioStream> = match &config.security {
        Security::Implicit(tls) => {
            let step = progress.enter("TLS handshake");
            let stream = ImplicitTls::handshake(tcp, tls.clone())
                .await
                .map_err(at(step))?;
            Box::new(stream)
        }
        _ => Box::new(tcp),
    };
    let step = progress.enter("greeting/EHLO");
    let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &config.hello)
        .await
        .map_err(at(step))?;

    let starttls = match &config.security {
        Security::Required(tls) => Some(tls),
        Security::Opportunistic(tls) if conn.can_starttls() => Some(tls),
        _ => None,
    };
    if let Some(tls) = starttls {
        let step = progress.enter("STARTTLS");
        conn.starttls(tls.clone(), &config.hello)
            .await
            .map_err(at(step))?;
    }

    if let Some(credentials) = &config.credentials {
        let step = progress.enter("AUTH");
        conn.auth(DEFAULT_MECHANISMS, credentials)
            .await
            .map_err(at(step))?;
    }
    Ok(conn)
}

/// An implicit-TLS stream over our own NODELAY socket.
///
/// lettre's `connect_with_transport` reads the greeting straight away, so for
/// `smtps://` the TLS handshake must already be done on the stream we hand
/// it, and lettre offers no public way to wrap a stream in TLS other than its
/// (deprecated, still public) `AsyncNetworkStream::upgrade_tls`. That stream
/// speaks futures-io, so `Compat` turns it back into tokio I/O. The cost is
/// one extra, pass-through layer; the gain is reusing lettre's TLS setup
/// (root store, crypto provider) instead of duplicating it.
#[allow(deprecated)]
#[derive(Debug)]
struct ImplicitTls(Compat<AsyncNetworkStream>);

#[allow(deprecated)]
impl ImplicitTls {
    async fn handshake(
        tcp: TcpStream,
        tls: TlsParameters,
    ) -> Result<Self, lettre::transport::smtp::Error> {
        let mut stream = AsyncNetworkStream::use_existing_tokio1(Box::new(tcp));
        stream.upgrade_tls(tls).await?;
        Ok(Self(stream.compat()))
    }
}

impl AsyncRead for ImplicitTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ImplicitTls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for ImplicitTls {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        #[allow(deprecated)]
        self.0.get_ref().peer_addr()
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn smtp_sockets_are_opened_without_nagle() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let tcp = super::dial("127.0.0.1", port).await.expect("dial");
        assert!(tcp.nodelay().expect("read TCP_NODELAY"));
    }
}
