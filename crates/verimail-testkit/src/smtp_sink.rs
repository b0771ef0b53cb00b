//! An in-process SMTP server for tests.
//!
//! It speaks just enough ESMTP for lettre (greeting, EHLO/HELO, STARTTLS,
//! AUTH PLAIN, MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT),
//! optionally behind TLS with a throwaway certificate, keeps every accepted
//! mail, and can be scripted per message to reject or misbehave, so retry
//! classification can be tested without a real MTA.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_parser::{MessageParser, PartType};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{ServerConfig, crypto::ring::default_provider};

/// Longest line the sink buffers; SMTP allows 1000 octets, so anything larger
/// is a client bug worth failing loudly on.
const MAX_LINE: usize = 64 * 1024;

/// What the sink does with one incoming message (one MAIL transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// `250` at the end of DATA; the mail is stored.
    Accept,
    /// Answer every RCPT with this full reply line, e.g. `550 5.1.1 no such user`.
    RejectRcpt(String),
    /// Read the whole DATA, then answer with this reply line instead of `250`;
    /// the mail is not stored.
    RejectData(String),
    /// Close the connection without a word as soon as MAIL FROM arrives.
    DropAtMail,
    /// Read the whole DATA, then close the connection without answering
    /// (the ambiguous case: the client cannot know whether it was taken).
    DropAfterData,
    /// Wait this long after DATA, then accept (for timeouts and slow servers).
    DelayAccept(Duration),
}

/// One mail the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// Reverse path from MAIL FROM, without angle brackets.
    pub mail_from: String,
    /// Forward paths from RCPT TO, without angle brackets.
    pub rcpt_to: Vec<String>,
    /// The message exactly as transferred, dot-unstuffed, without the final `.` line.
    pub data: Vec<u8>,
    /// Which accepted connection (0-based, in accept order) carried it, so
    /// tests can tell connection reuse from reconnects.
    pub connection: usize,
    /// Whether the transaction ran over TLS (implicit or after STARTTLS).
    pub tls: bool,
}

impl ReceivedMail {
    /// Parsing helpers over [`ReceivedMail::data`].
    pub fn view(&self) -> MailView<'_> {
        MailView::new(&self.data)
    }

    /// The message as text (lossy), for substring assertions on raw bytes.
    pub fn raw(&self) -> String {
        self.view().raw()
    }

    /// See [`MailView::header`].
    pub fn header(&self, name: &str) -> Option<String> {
        self.view().header(name)
    }

    /// See [`MailView::subject`].
    pub fn subject(&self) -> Option<String> {
        self.view().subject()
    }

    /// See [`MailView::text`].
    pub fn text(&self) -> Option<String> {
        self.view().text()
    }

    /// See [`MailView::html`].
    pub fn html(&self) -> Option<String> {
        self.view().html()
    }
}

/// Read-only helpers over a raw RFC 5322 message (from the sink, a `.eml`
/// file or `lettre::Message::formatted`). Each call parses afresh: simple,
/// and fast enough for test-sized mails.
#[derive(Debug, Clone, Copy)]
pub struct MailView<'a> {
    raw: &'a [u8],
}

impl<'a> MailView<'a> {
    pub fn new(raw: &'a [u8]) -> Self {
        Self { raw }
    }

    /// The message as text (lossy).
    pub fn raw(&self) -> String {
        String::from_utf8_lossy(self.raw).into_owned()
    }

    /// The unfolded, trimmed raw value of the first header with this name
    /// (case-insensitive); encoded words are left as sent.
    pub fn header(&self, name: &str) -> Option<String> {
        let parsed = MessageParser::default().parse(self.raw)?;
        let raw = parsed.header_raw(name)?;
        Some(unfold(raw))
    }

    /// The decoded Subject.
    pub fn subject(&self) -> Option<String> {
        let parsed = MessageParser::default().parse(self.raw)?;
        parsed.subject().map(str::to_owned)
    }

    /// The first text/plain body part, transfer-decoded; `None` if the
    /// message has no real text/plain part (no conversion from HTML).
    pub fn text(&self) -> Option<String> {
        let parsed = MessageParser::default().parse(self.raw)?;
        match &parsed.text_part(0)?.body {
            PartType::Text(text) => Some(text.to_string()),
            _ => None,
        }
    }

    /// The first text/html body part, transfer-decoded; `None` if there is
    /// no real text/html part.
    pub fn html(&self) -> Option<String> {
        let parsed = MessageParser::default().parse(self.raw)?;
        match &parsed.html_part(0)?.body {
            PartType::Html(html) => Some(html.to_string()),
            _ => None,
        }
    }
}

fn unfold(raw: &str) -> String {
    raw.split("\r\n")
        .flat_map(|l| l.split('\n'))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Options for [`SmtpSink::start_with`].
#[derive(Debug, Clone, Default)]
pub struct SinkOptions {
    /// When set, AUTH PLAIN is advertised and MAIL is refused (`530`) until
    /// the client authenticated with exactly this user and password.
    pub credentials: Option<(String, String)>,
    /// TLS with a fresh self-signed certificate for `127.0.0.1` and
    /// `localhost` (see [`SmtpSink::certificate_der`]).
    pub tls: Option<SinkTls>,
    /// How long a refused AUTH waits before its `535`, as relays that
    /// slow down password guessing do (Postfix's error sleep, tarpits).
    pub auth_refusal_delay: Duration,
}

/// How the sink offers TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkTls {
    /// TLS from the first byte (`smtps://`).
    Implicit,
    /// Plain greeting, STARTTLS advertised and honoured.
    StartTls,
}

/// A running sink. Dropping it stops it.
pub struct SmtpSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Mutex<Option<Server>>,
}

struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

struct Shared {
    options: SinkOptions,
    tls: Option<TlsIdentity>,
    script: Mutex<Script>,
    mails: Mutex<Vec<ReceivedMail>>,
    received: watch::Sender<usize>,
    connections: AtomicUsize,
    noops: AtomicUsize,
    auth_attempts: Mutex<Vec<(String, String)>>,
}

struct TlsIdentity {
    acceptor: TlsAcceptor,
    certificate_der: Vec<u8>,
}

impl TlsIdentity {
    fn generate() -> Result<Self, Box<dyn std::error::Error>> {
        let issued = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])?;
        let certificate = issued.cert.der().clone();
        let key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der()));
        // An explicit provider: the process default may be unset, or ambiguous
        // if another crate in the build enables a second one.
        let config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![certificate.clone()], key)?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate_der: certificate.to_vec(),
        })
    }
}

struct Script {
    queue: VecDeque<Behaviour>,
    default: Behaviour,
}

/// A poisoned lock only means another test thread panicked; the data is
/// still consistent (every critical section is a single push/pop).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SmtpSink {
    /// Starts a sink on `127.0.0.1` with an ephemeral port.
    ///
    /// # Panics
    /// If no loopback port can be bound (a broken test machine).
    pub async fn start() -> Self {
        Self::start_with(SinkOptions::default()).await
    }

    /// Like [`SmtpSink::start`], with options.
    ///
    /// # Panics
    /// If no loopback port can be bound.
    pub async fn start_with(options: SinkOptions) -> Self {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .unwrap_or_else(|e| panic!("SMTP sink: cannot bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("SMTP sink: no local address: {e}"));
        let tls = options.tls.map(|_| {
            TlsIdentity::generate()
                .unwrap_or_else(|e| panic!("SMTP sink: cannot make a TLS certificate: {e}"))
        });
        let shared = Arc::new(Shared {
            options,
            tls,
            script: Mutex::new(Script {
                queue: VecDeque::new(),
                default: Behaviour::Accept,
            }),
            mails: Mutex::new(Vec::new()),
            received: watch::Sender::new(0),
            connections: AtomicUsize::new(0),
            noops: AtomicUsize::new(0),
            auth_attempts: Mutex::new(Vec::new()),
        });
        let server = spawn_server(listener, Arc::clone(&shared));
        Self {
            addr,
            shared,
            server: Mutex::new(Some(server)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL a client should use: `smtp://127.0.0.1:PORT`, or with TLS
    /// `smtps://…` (implicit) / `smtp://…?tls=required` (STARTTLS).
    pub fn url(&self) -> String {
        match self.shared.options.tls {
            None => format!("smtp://{}", self.addr),
            Some(SinkTls::Implicit) => format!("smtps://{}", self.addr),
            Some(SinkTls::StartTls) => format!("smtp://{}?tls=required", self.addr),
        }
    }

    /// The sink's self-signed certificate (DER), to add as a trusted root.
    pub fn certificate_der(&self) -> Option<Vec<u8>> {
        self.shared.tls.as_ref().map(|t| t.certificate_der.clone())
    }

    /// Appends to the script: each new message (at MAIL FROM) takes the
    /// first queued behaviour, or the default once the queue is empty.
    pub fn push_behaviour(&self, behaviour: Behaviour) {
        lock(&self.shared.script).queue.push_back(behaviour);
    }

    /// What happens to messages once the queue is empty (initially `Accept`).
    pub fn set_default(&self, behaviour: Behaviour) {
        lock(&self.shared.script).default = behaviour;
    }

    /// Mails accepted so far, in arrival order.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        lock(&self.shared.mails).clone()
    }

    /// TCP connections accepted so far (including ones that sent nothing).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Scripted behaviours not yet taken by a MAIL command: 0 once every
    /// pushed behaviour met its transaction.
    pub fn scripted_left(&self) -> usize {
        lock(&self.shared.script).queue.len()
    }

    /// NOOP commands answered so far, on every connection.
    pub fn noops(&self) -> usize {
        self.shared.noops.load(Ordering::SeqCst)
    }

    /// Every AUTH PLAIN (user, password) pair received, successful or not.
    pub fn auth_attempts(&self) -> Vec<(String, String)> {
        lock(&self.shared.auth_attempts).clone()
    }

    /// Waits until at least `n` mails have been accepted and returns all of them.
    ///
    /// # Panics
    /// If fewer than `n` arrive within `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let mut rx = self.shared.received.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|count| *count >= n)).await;
        if !matches!(waited, Ok(Ok(_))) {
            panic!(
                "SMTP sink: expected {n} mail(s) within {timeout:?}, got {}",
                lock(&self.shared.mails).len()
            );
        }
        self.messages()
    }

    /// Stops listening and closes every open connection; connecting is refused
    /// afterwards. Returns once both are done. Idempotent.
    pub async fn stop(&self) {
        let server = lock(&self.server).take();
        if let Some(server) = server {
            let _ = server.stop.send(());
            let _ = server.task.await;
        }
    }

    /// Listens again on the same port after [`SmtpSink::stop`]; stored mails,
    /// the script and the connection count are kept.
    ///
    /// # Panics
    /// If the port was taken by someone else in the meantime.
    pub async fn restart(&self) {
        self.stop().await;
        let listener = bind(self.addr)
            .unwrap_or_else(|e| panic!("SMTP sink: cannot rebind {}: {e}", self.addr));
        let server = spawn_server(listener, Arc::clone(&self.shared));
        *lock(&self.server) = Some(server);
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        if let Some(server) = lock(&self.server).take() {
            let _ = server.stop.send(());
        }
    }
}

/// SO_REUSEADDR lets `restart` rebind the port while closed connections of
/// the previous incarnation still sit in TIME_WAIT.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

fn spawn_server(listener: TcpListener, shared: Arc<Shared>) -> Server {
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        // Owning the connections here lets `stop` close them all before it
        // returns, so a stopped sink really looks dead to pooled clients.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let id = shared.connections.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(serve(stream, id, Arc::clone(&shared)));
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        connections.shutdown().await;
    });
    Server { stop, task }
}

/// Per-transaction state, cleared by RSET and after each DATA.
#[derive(Default)]
struct Transaction {
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
    behaviour: Option<Behaviour>,
}

async fn serve(stream: TcpStream, connection: usize, shared: Arc<Shared>) {
    // Clients under test set TCP_NODELAY; the sink does too, so neither side's
    // Nagle delay shows up in timing-sensitive tests.
    let _ = stream.set_nodelay(true);
    let acceptor = shared.tls.as_ref().map(|t| t.acceptor.clone());
    // Errors only mean the client went away; there is nobody to tell.
    match (shared.options.tls, acceptor) {
        (Some(SinkTls::Implicit), Some(acceptor)) => {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let _ = Session::new(stream, connection, shared, true)
                .run(true)
                .await;
        }
        (_, acceptor) => {
            let plain = Session::new(stream, connection, Arc::clone(&shared), false);
            let Ok(Some(stream)) = plain.run(true).await else {
                return;
            };
            let Some(acceptor) = acceptor else { return };
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            // RFC 3207: all state is forgotten; the client starts with EHLO.
            let _ = Session::new(stream, connection, shared, true)
                .run(false)
                .await;
        }
    }
}

/// What to do after a command was handled.
enum Flow {
    Continue,
    Close,
    StartTls,
}

/// One client connection (or its TLS half after STARTTLS). `BufReader` over
/// the stream also passes writes through, so one value serves both ways.
struct Session<S> {
    io: BufReader<S>,
    shared: Arc<Shared>,
    connection: usize,
    tls: bool,
    authenticated: bool,
    tx: Transaction,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    fn new(stream: S, connection: usize, shared: Arc<Shared>, tls: bool) -> Self {
        Self {
            io: BufReader::new(stream),
            shared,
            connection,
            tls,
            authenticated: false,
            tx: Transaction::default(),
        }
    }

    /// Serves commands until the client leaves; returns the raw stream when
    /// the client asked for STARTTLS and got the go-ahead.
    async fn run(mut self, greet: bool) -> io::Result<Option<S>> {
        if greet {
            self.reply("220 verimail-testkit ESMTP ready").await?;
        }
        loop {
            let Some(line) = self.read_line().await? else {
                return Ok(None);
            };
            match self.command(&line).await? {
                Flow::Continue => {}
                Flow::Close => {
                    let _ = self.io.shutdown().await;
                    return Ok(None);
                }
                Flow::StartTls => return Ok(Some(self.io.into_inner())),
            }
        }
    }

    fn offers_starttls(&self) -> bool {
        !self.tls && self.shared.options.tls == Some(SinkTls::StartTls)
    }

    async fn reply(&mut self, reply: &str) -> io::Result<()> {
        self.io.write_all(reply.as_bytes()).await?;
        self.io.write_all(b"\r\n").await?;
        self.io.flush().await
    }

    /// One line without its CRLF (a bare LF is tolerated); `None` on EOF.
    async fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        let n = (&mut self.io)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(None);
        }
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "line too long or truncated",
            ));
        }
        line.pop();
        if line.ends_with(b"\r") {
            line.pop();
        }
        Ok(Some(line))
    }

    async fn command(&mut self, line: &[u8]) -> io::Result<Flow> {
        let line = String::from_utf8_lossy(line).into_owned();
        let (verb, arg) = match line.split_once(' ') {
            Some((verb, arg)) => (verb.to_ascii_uppercase(), arg.trim()),
            None => (line.trim().to_ascii_uppercase(), ""),
        };
        match verb.as_str() {
            "EHLO" => {
                self.tx = Transaction::default();
                let mut reply = String::from("250-verimail-testkit\r\n250-8BITMIME\r\n");
                if self.offers_starttls() {
                    reply.push_str("250-STARTTLS\r\n");
                }
                if self.shared.options.credentials.is_some() {
                    reply.push_str("250-AUTH PLAIN\r\n");
                }
                reply.push_str("250 SMTPUTF8");
                self.reply(&reply).await?;
            }
            "HELO" => {
                self.tx = Transaction::default();
                self.reply("250 verimail-testkit").await?;
            }
            "AUTH" => {
                let reply = self.auth(arg);
                if reply.starts_with("535") {
                    tokio::time::sleep(self.shared.options.auth_refusal_delay).await;
                }
                self.reply(&reply).await?;
            }
            "MAIL" => return self.mail(arg).await,
            "RCPT" => {
                let reply = self.rcpt(arg);
                self.reply(&reply).await?;
            }
            "DATA" => return self.data().await,
            "RSET" => {
                self.tx = Transaction::default();
                self.reply("250 2.0.0 OK").await?;
            }
            "NOOP" => {
                self.shared.noops.fetch_add(1, Ordering::SeqCst);
                self.reply("250 2.0.0 OK").await?;
            }
            "STARTTLS" if self.offers_starttls() => {
                self.reply("220 2.0.0 Ready to start TLS").await?;
                return Ok(Flow::StartTls);
            }
            "STARTTLS" => self.reply("502 5.5.1 STARTTLS not available").await?,
            "QUIT" => {
                self.reply("221 2.0.0 Bye").await?;
                return Ok(Flow::Close);
            }
            _ => self.reply("502 5.5.2 Command not recognized").await?,
        }
        Ok(Flow::Continue)
    }

    fn auth(&mut self, arg: &str) -> String {
        let Some(expected) = self.shared.options.credentials.clone() else {
            return "502 5.5.1 AUTH not available".to_owned();
        };
        let mut parts = arg.split_whitespace();
        if !parts
            .next()
            .is_some_and(|m| m.eq_ignore_ascii_case("PLAIN"))
        {
            return "504 5.5.4 Only PLAIN is supported".to_owned();
        }
        // No `334` challenge round: lettre always sends the PLAIN initial
        // response inline, and the sink only needs to serve lettre.
        let Some(encoded) = parts.next() else {
            return "501 5.5.2 Initial response required".to_owned();
        };
        let Some((user, pass)) = decode_plain(encoded) else {
            return "501 5.5.2 Malformed AUTH PLAIN".to_owned();
        };
        lock(&self.shared.auth_attempts).push((user.clone(), pass.clone()));
        if (user, pass) == expected {
            self.authenticated = true;
            "235 2.7.0 Authentication successful".to_owned()
        } else {
            "535 5.7.8 Authentication credentials invalid".to_owned()
        }
    }

    async fn mail(&mut self, arg: &str) -> io::Result<Flow> {
        if self.shared.options.credentials.is_some() && !self.authenticated {
            self.reply("530 5.7.0 Authentication required").await?;
            return Ok(Flow::Continue);
        }
        let Some(path) = path_after(arg, "FROM:") else {
            self.reply("501 5.5.4 Syntax: MAIL FROM:<address>").await?;
            return Ok(Flow::Continue);
        };
        let behaviour = {
            let mut script = lock(&self.shared.script);
            match script.queue.pop_front() {
                Some(b) => b,
                None => script.default.clone(),
            }
        };
        if behaviour == Behaviour::DropAtMail {
            return Ok(Flow::Close);
        }
        self.tx = Transaction {
            mail_from: Some(path),
            rcpt_to: Vec::new(),
            behaviour: Some(behaviour),
        };
        self.reply("250 2.1.0 OK").await?;
        Ok(Flow::Continue)
    }

    fn rcpt(&mut self, arg: &str) -> String {
        if self.tx.mail_from.is_none() {
            return "503 5.5.1 MAIL first".to_owned();
        }
        let Some(path) = path_after(arg, "TO:") else {
            return "501 5.5.4 Syntax: RCPT TO:<address>".to_owned();
        };
        if let Some(Behaviour::RejectRcpt(reply)) = &self.tx.behaviour {
            return reply.clone();
        }
        self.tx.rcpt_to.push(path);
        "250 2.1.5 OK".to_owned()
    }

    async fn data(&mut self) -> io::Result<Flow> {
        if self.tx.rcpt_to.is_empty() {
            self.reply("503 5.5.1 No valid recipients").await?;
            return Ok(Flow::Continue);
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>").await?;
        let mut data = Vec::new();
        loop {
            let Some(line) = self.read_line().await? else {
                return Ok(Flow::Close);
            };
            if line == b"." {
                break;
            }
            // RFC 5321 §4.5.2: a leading dot was doubled by the client.
            let line = line.strip_prefix(b".").unwrap_or(&line);
            data.extend_from_slice(line);
            data.extend_from_slice(b"\r\n");
        }
        let tx = std::mem::take(&mut self.tx);
        let mail = ReceivedMail {
            mail_from: tx.mail_from.unwrap_or_default(),
            rcpt_to: tx.rcpt_to,
            data,
            connection: self.connection,
            tls: self.tls,
        };
        match tx.behaviour.unwrap_or(Behaviour::Accept) {
            Behaviour::RejectData(reply) => self.reply(&reply).await?,
            Behaviour::DropAfterData => return Ok(Flow::Close),
            Behaviour::DelayAccept(delay) => {
                tokio::time::sleep(delay).await;
                self.shared.store(mail);
                self.reply("250 2.0.0 OK queued").await?;
            }
            Behaviour::Accept | Behaviour::RejectRcpt(_) | Behaviour::DropAtMail => {
                self.shared.store(mail);
                self.reply("250 2.0.0 OK queued").await?;
            }
        }
        Ok(Flow::Continue)
    }
}

impl Shared {
    fn store(&self, mail: ReceivedMail) {
        let mut mails = lock(&self.mails);
        mails.push(mail);
        self.received.send_replace(mails.len());
    }
}

/// Extracts the address from `FROM:<a@b> PARAM=…` / `TO:<a@b>`.
fn path_after(arg: &str, keyword: &str) -> Option<String> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(inner[..end].to_owned())
}

fn decode_plain(encoded: &str) -> Option<(String, String)> {
    let bytes = BASE64.decode(encoded).ok()?;
    let mut fields = bytes.split(|b| *b == 0);
    let _authzid = fields.next()?;
    let user = String::from_utf8(fields.next()?.to_vec()).ok()?;
    let pass = String::from_utf8(fields.next()?.to_vec()).ok()?;
    Some((user, pass))
}
