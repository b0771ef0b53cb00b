//! Shared test harness: a fresh database and queue prefix per test, the
//! intake on port 0, a cuttable TCP proxy, and broker helpers.
#![allow(dead_code, clippy::unwrap_used)]

pub mod own_postgres;
pub mod own_process;
pub mod proxy;
pub mod webhook_receiver;

pub use own_process::run_in_own_process;

use std::net::SocketAddr;
use std::time::Duration;

use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use uuid::Uuid;
use verimail_domain::DispatchMessage;
use verimail_domain::secrets::{Keys, MasterSecret, SecretUrl};
use verimail_infra::amqp::Topology;
use verimail_infra::db;
use verimail_intake::accounts::{self, AccountKind, AccountStatus};
use verimail_intake::settings::AmqpSettings;
use verimail_intake::{Application, IntakeSettings, RateLimit};

pub const SEND_PATH: &str = "/v2/bases/verificationcode/send";

pub fn pg_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn test_keys() -> Keys {
    Keys::derive(&MasterSecret::from_base64(TEST_SECRET).unwrap())
}

/// 32 zero-ish bytes, base64: the secret every test process shares.
pub const TEST_SECRET: &str = "dGVzdC1zZWNyZXQtdGVzdC1zZWNyZXQtdGVzdC1zZWNyZXQ=";

/// A database of its own, migrated.
pub struct TestDb {
    pub url: String,
    pub name: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> Self {
        let db = Self::unmigrated().await;
        db::migrate(&db.pool).await.unwrap();
        db
    }

    /// A database of its own with no schema yet (for migration tests).
    pub async fn unmigrated() -> Self {
        let name = format!("vm_test_{}", Uuid::new_v4().simple());
        let admin = pg_admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("connect to Postgres for tests");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.ok();
        let url = replace_db(&admin, &name);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await
            .unwrap();
        Self { url, name, pool }
    }

    /// The same database reached through another address (a proxy).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        url_via(&self.url, addr)
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// The sweeper's index (migrations/0010) takes `code_sealed IS NOT NULL`
    /// for the open set: every row must agree.
    pub async fn assert_open_means_sealed(&self) {
        assert_open_means_sealed(&self.pool).await;
    }
}

impl Drop for TestDb {
    /// Drops the database so runs do not pile them up (FORCE ends the
    /// connections the test's own pools still hold).
    fn drop(&mut self) {
        let (admin, name) = (pg_admin_url(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                }
            });
        });
        let _ = dropped.join();
    }
}

fn replace_db(url: &str, name: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// No dispatch is open without its sealed code, nor final with one: the
/// sweeper's partial index `dispatches_unsent` relies on it (migrations/0010).
pub async fn assert_open_means_sealed(pool: &PgPool) {
    let disagree: Vec<(Uuid, String, bool)> = sqlx::query_as(
        "SELECT id, status, code_sealed IS NOT NULL FROM dispatches
          WHERE (status IN ('queued', 'sending', 'retrying')) <> (code_sealed IS NOT NULL)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        disagree.is_empty(),
        "open ⇔ sealed code broken (id, status, has code): {disagree:?}"
    );
    // The sweeper finds a row only once its bound is overdue (migrations/0012).
    let unbounded: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM dispatches
          WHERE code_sealed IS NOT NULL AND (sweep_at IS NULL OR sweep_at > next_attempt_at)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        unbounded.is_empty(),
        "open rows whose sweep_at is not at or before next_attempt_at: {unbounded:?}"
    );
}

/// Runs an independent verifier script: `request` as JSON on its stdin, its
/// stdout read back as JSON; fails the test, with its stderr, if it fails.
pub fn run_json_script(program: &str, script: &str, request: &Value) -> Value {
    use std::io::Write as _;
    let mut child = std::process::Command::new(program)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

/// A loopback port free at the time of asking, for a process to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn unique_prefix() -> String {
    format!("t{}", Uuid::new_v4().simple())
}

pub fn fast_retries() -> Vec<Duration> {
    vec![Duration::from_millis(200), Duration::from_millis(400)]
}

pub fn intake_settings(amqp_url: String, prefix: &str) -> IntakeSettings {
    IntakeSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        amqp: AmqpSettings {
            url: SecretUrl::new(amqp_url),
            prefix: prefix.to_owned(),
            publish_timeout: Duration::from_millis(1500),
        },
        rate_limit: RateLimit::DEFAULT,
        code_length: 6,
        // Off, so tests see revocations at once; a dedicated test covers the cache.
        auth_cache_ttl: Duration::ZERO,
        handoff_window: Duration::from_millis(1500 + 1000 + 1000),
        max_backlog: None,
        http: verimail_intake::serve::HttpLimits {
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(2),
            max_connections: 2000,
            shutdown_grace: Duration::from_secs(2),
        },
    }
}

pub fn db_settings(url: &str) -> db::DbSettings {
    db::DbSettings {
        url: SecretUrl::new(url),
        max_connections: 8,
        acquire_timeout: Duration::from_secs(1),
        statement_timeout: Some(Duration::from_secs(5)),
    }
}

/// A running intake on a free port.
pub struct TestIntake {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub client: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl TestIntake {
    pub async fn spawn(settings: IntakeSettings, db_url: &str) -> Self {
        let pool = db::pool(&db_settings(db_url)).unwrap();
        let app = Application::build(settings, pool, test_keys())
            .await
            .unwrap();
        let addr = app.local_addr();
        let metrics_addr = app.metrics_addr();
        let task = tokio::spawn(async move {
            app.run_until(std::future::pending()).await.unwrap();
        });
        Self {
            addr,
            metrics_addr,
            client: reqwest::Client::new(),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn send(&self, token: &str, body: &Value) -> Reply {
        let response = self
            .client
            .post(self.url(SEND_PATH))
            .header("X-Auth-Token", token)
            .json(body)
            .send()
            .await
            .unwrap();
        Reply::read(response).await
    }
}

impl Drop for TestIntake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response, read once.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub request_id: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
}

impl Reply {
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let request_id = header("x-request-id");
        let content_type = header("content-type");
        let body = response.text().await.unwrap();
        Self {
            status,
            request_id,
            content_type,
            body,
        }
    }

    pub fn error_code(&self) -> Option<String> {
        let value: Value = serde_json::from_str(&self.body).ok()?;
        value.get("error_code")?.as_str().map(str::to_owned)
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A partner with a live token.
pub struct Partner {
    pub id: Uuid,
    pub token: String,
}

pub async fn partner(pool: &PgPool, kind: AccountKind, suspended: bool) -> Partner {
    let id = accounts::create_partner(pool, "test", kind, AccountStatus::suspended_if(suspended))
        .await
        .unwrap();
    let token = accounts::issue_token(pool, id, Duration::from_secs(3600))
        .await
        .unwrap()
        .token;
    Partner { id, token }
}

pub fn valid_body(email: &str) -> Value {
    serde_json::json!({"receiver_type": 2, "timeout": 5, "email": email, "lang": "en-us"})
}

/// Direct access to the test's queues.
pub struct Broker {
    pub topology: Topology,
    _connection: lapin::Connection,
    pub channel: lapin::Channel,
}

impl Broker {
    pub async fn connect(prefix: &str) -> Self {
        let connection = verimail_infra::amqp::connect(&amqp_url(), Duration::from_secs(5))
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let topology = Topology::new(prefix);
        topology.declare(&channel, &fast_retries()).await.unwrap();
        Self {
            topology,
            _connection: connection,
            channel,
        }
    }

    pub async fn depth(&self, queue: &str) -> u32 {
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .unwrap()
            .message_count()
    }

    /// Takes every message waiting in the dispatch queue.
    pub async fn drain_dispatches(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let queue = self.topology.dispatch_queue();
        while let Some(message) = self
            .channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push(message.delivery.data.clone());
        }
        out
    }

    pub async fn decoded_dispatches(&self) -> Vec<DispatchMessage> {
        self.drain_dispatches()
            .await
            .iter()
            .map(|m| DispatchMessage::decode(m).unwrap())
            .collect()
    }

    /// Deletes the test's queues (best effort).
    pub async fn cleanup(&self) {
        for queue in self.topology.queues(&fast_retries()) {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

pub fn worker_settings(prefix: &str, smtp_url: Option<String>) -> verimail_worker::WorkerSettings {
    verimail_worker::WorkerSettings {
        amqp_url: SecretUrl::new(amqp_url()),
        prefix: prefix.to_owned(),
        publish_timeout: Duration::from_millis(1500),
        retry: verimail_worker::RetryPolicy::new(fast_retries(), 3),
        prefetch: 8,
        lease: Duration::from_secs(30),
        mail: verimail_worker::mail::MailSettings::new(
            "Verimail Test <no-reply@verimail.test>".parse().unwrap(),
            "Acme <Cloud> & Co",
        ),
        smtp_url: smtp_url.map(SecretUrl::new),
        outbox: std::env::temp_dir().join(format!("vm-outbox-{prefix}")),
        outbox_retention: Duration::from_secs(3600),
        smtp_connections: 4,
        smtp_timeout: Duration::from_secs(5),
        smtp_cooldown: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(5),
        sweep_interval: Duration::from_secs(3600),
        sweep_grace: Duration::from_secs(60),
        retention: Duration::from_secs(72 * 3600),
        maintenance_interval: Duration::ZERO,
        metrics_listen: None,
        webhooks: verimail_worker::webhooks::WebhookSettings {
            schedule: verimail_domain::webhook::DeliverySchedule::new(vec![
                Duration::from_millis(300),
                Duration::from_millis(600),
            ])
            .unwrap(),
            timeout: Duration::from_secs(2),
            allow_insecure: true,
        },
    }
}

/// A running worker: `stop` is SIGTERM, `kill` drops it without a goodbye.
pub struct TestWorker {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestWorker {
    pub async fn spawn(settings: verimail_worker::WorkerSettings, db_url: &str) -> Self {
        let pool = db::pool(&db_settings(db_url)).unwrap();
        let worker = verimail_worker::Worker::build(settings, pool, test_keys())
            .await
            .unwrap();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(worker.run_until_stopped(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        Self { stop, task }
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }

    pub fn kill(self) {
        self.task.abort();
    }
}

/// Polls the dispatch row until its status is one of `wanted`.
pub async fn wait_status(
    pool: &PgPool,
    id: Uuid,
    wanted: &[&str],
    timeout: Duration,
) -> (String, i32, Option<String>) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let row: (String, i32, Option<String>) =
            sqlx::query_as("SELECT status, attempts, last_error FROM dispatches WHERE id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap();
        if wanted.contains(&row.0.as_str()) {
            return row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dispatch {id} stuck in {row:?}, wanted {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first run of `len` digits in a text: the code in a mail.
pub fn find_code(text: &str, len: usize) -> Option<String> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(len - 1)).find_map(|i| {
        let run = &bytes[i..i + len];
        let bounded = (i == 0 || !bytes[i - 1].is_ascii_digit())
            && bytes.get(i + len).is_none_or(|b| !b.is_ascii_digit());
        (bounded && run.iter().all(u8::is_ascii_digit))
            .then(|| String::from_utf8_lossy(run).into_owned())
    })
}

pub async fn stored_digest(pool: &PgPool, id: Uuid) -> Vec<u8> {
    sqlx::query_scalar("SELECT code_digest FROM dispatches WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Database, queue prefix, intake and a partner: what most tests start from.
pub struct Stack {
    pub db: TestDb,
    pub broker: Broker,
    pub intake: TestIntake,
    pub partner: Partner,
    pub prefix: String,
}

impl Stack {
    pub async fn start() -> Self {
        let db = TestDb::new().await;
        let prefix = unique_prefix();
        let broker = Broker::connect(&prefix).await;
        let intake = TestIntake::spawn(intake_settings(amqp_url(), &prefix), &db.url).await;
        let partner = partner(&db.pool, AccountKind::Partner, false).await;
        Self {
            db,
            broker,
            intake,
            partner,
            prefix,
        }
    }
}

/// The worker's core on its own: `Processor::process` against the test's
/// database and a real mail transport, with no broker anywhere.
pub fn processor(
    settings: verimail_worker::WorkerSettings,
    pool: &PgPool,
) -> verimail_worker::Processor {
    let transport = verimail_worker::mail::Transport::from_url(
        settings.smtp_url.as_ref().map(SecretUrl::expose),
        &settings.outbox,
        settings.smtp_connections,
        settings.smtp_timeout,
        settings.smtp_timeout,
    )
    .unwrap();
    verimail_worker::Processor::new(
        pool.clone(),
        test_keys(),
        std::sync::Arc::new(transport),
        std::sync::Arc::new(settings),
    )
}

/// Records a dispatch as the intake would (rate limit, supersession, sealed
/// code), without publishing it; returns its id and the plain code.
pub async fn record_dispatch(pool: &PgPool, partner_id: Uuid, email: &str) -> (Uuid, String) {
    let (id, code, admission) = try_record_dispatch(pool, partner_id, email).await.unwrap();
    assert!(matches!(
        admission,
        verimail_infra::store::dispatches::Admission::Accepted { .. }
    ));
    (id, code)
}

/// `record_dispatch` that hands back the answer, whatever it is.
pub async fn try_record_dispatch(
    pool: &PgPool,
    partner_id: Uuid,
    email: &str,
) -> anyhow::Result<(Uuid, String, verimail_infra::store::dispatches::Admission)> {
    let id = Uuid::now_v7();
    let code = verimail_domain::code::Code::generate(6);
    let keys = test_keys();
    let email = verimail_domain::Email::parse(email).unwrap();
    let new = verimail_infra::store::dispatches::NewDispatch {
        id,
        partner_id,
        email,
        lang: verimail_domain::Lang::EnUs,
        ttl: verimail_domain::CodeTtl::from_stored(5).unwrap(),
        code_digest: keys.code_digest(id, code.expose()),
        code_sealed: keys.seal_code(id, code.expose()),
    };
    let admission = verimail_infra::store::dispatches::accept::accept(
        pool,
        &new,
        RateLimit::DEFAULT,
        Duration::from_secs(3),
    )
    .await?;
    Ok((id, code.expose().to_owned(), admission))
}

/// A URL like `url` that reaches its server through `addr` (a proxy).
pub fn url_via(url: &str, addr: SocketAddr) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_host(Some(&addr.ip().to_string())).unwrap();
    url.set_port(Some(addr.port())).unwrap();
    url.to_string()
}

/// The broker URL through `addr`.
pub fn amqp_via(addr: SocketAddr) -> String {
    url_via(&amqp_url(), addr)
}

/// Where `url`'s server listens, for a proxy to forward to.
pub fn target(url: &str) -> SocketAddr {
    let url = url::Url::parse(url).unwrap();
    let host = url.host_str().unwrap();
    let port = url.port_or_known_default().unwrap_or(5672);
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{port}").parse().unwrap()
}
