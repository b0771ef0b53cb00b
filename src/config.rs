//! Configuration from the environment (README, "Configuration"), read once at start.
//! A bad value stops the process with one line naming the variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use verimail_domain::code::Code;
use verimail_domain::secrets::{MasterSecret, SecretUrl};
use verimail_intake::RateLimit;
use verimail_worker::mail::SenderDomains;
use verimail_worker::mail::dkim::DkimKeys;

/// Every variable the binary reads: name, default, meaning. The README table
/// and `.env.example` are checked against this list by a test.
pub const VARIABLES: &[(&str, &str, &str)] = &[
    (
        "DATABASE_URL",
        "postgres://localhost/verimail",
        "Postgres connection URL; several hosts as postgres://user@h1:5432,h2:5432/db?target_session_attrs=read-write",
    ),
    (
        "AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        "RabbitMQ connection URL, or a comma-separated list of the URLs of one cluster's nodes (tried in a shuffled order)",
    ),
    (
        "VERIMAIL_AMQP_PREFIX",
        "verimail",
        "prefix of every exchange and queue name",
    ),
    (
        "VERIMAIL_SECRET",
        "",
        "master secret, base64 of at least 32 bytes; intake and worker must share it",
    ),
    (
        "VERIMAIL_LISTEN",
        "127.0.0.1:8080",
        "address the intake listens on",
    ),
    (
        "VERIMAIL_INTAKE_METRICS_LISTEN",
        "127.0.0.1:9090",
        "address of the intake's Prometheus /metrics (kept off the public API port)",
    ),
    (
        "VERIMAIL_HTTP_HEADER_TIMEOUT",
        "5s",
        "longest a client may take to send a request's headers, or to start the next request on a kept-alive connection",
    ),
    (
        "VERIMAIL_HTTP_BODY_TIMEOUT",
        "10s",
        "longest a client may take to send a request's body",
    ),
    (
        "VERIMAIL_HTTP_MAX_CONNECTIONS",
        "1024",
        "open HTTP connections per intake; more are answered 503 and closed",
    ),
    (
        "VERIMAIL_MAX_BACKLOG",
        "50000",
        "dispatch messages waiting for a worker above which the intake sheds sends (503 CBC.0999, Retry-After: 5) instead of queueing codes that would expire in the queue; 0 never sheds",
    ),
    (
        "VERIMAIL_PUBLISH_TIMEOUT",
        "2s",
        "longest wait for a publisher confirm (the intake's hand-off, and the worker's retries and re-publishes)",
    ),
    (
        "VERIMAIL_RATE_LIMIT",
        "15/60",
        "sends per recipient per rolling hour / day",
    ),
    ("VERIMAIL_CODE_LENGTH", "6", "digits in a code (4..=10)"),
    (
        "VERIMAIL_AUTH_CACHE_TTL",
        "5s",
        "how long a verified token or access key is trusted without asking Postgres (0s disables); revocations reach every intake at once through Postgres NOTIFY",
    ),
    (
        "VERIMAIL_DB_POOL_SIZE",
        "16",
        "Postgres connections per process",
    ),
    (
        "VERIMAIL_DB_ACQUIRE_TIMEOUT",
        "2s",
        "longest wait for a Postgres connection",
    ),
    (
        "VERIMAIL_DB_STATEMENT_TIMEOUT",
        "5s",
        "longest a Postgres statement may run (migrations excepted)",
    ),
    (
        "SMTP_URL",
        "",
        "smtp://host:port, smtps://user:pass@host, smtp://host?tls=required, or several separated by commas (relays tried in order); unset writes .eml files",
    ),
    (
        "VERIMAIL_OUTBOX",
        "./outbox",
        "where .eml files go when SMTP_URL is unset",
    ),
    (
        "VERIMAIL_OUTBOX_RETENTION",
        "1h",
        "how long .eml files (which hold plain codes) stay in the outbox",
    ),
    (
        "VERIMAIL_MAIL_FROM",
        "verimail <no-reply@verimail.localhost>",
        "sender mailbox",
    ),
    ("VERIMAIL_BRAND", "verimail", "brand name shown in the mail"),
    // --- per-partner sender and brand (issue 25) ---
    (
        "VERIMAIL_ALLOWED_SENDER_DOMAINS",
        "",
        "domains, separated by commas, a partner's own From may be at (`verimail partner set --from`); VERIMAIL_MAIL_FROM's domain is always allowed",
    ),
    // --- DKIM (issue 25) ---
    (
        "VERIMAIL_DKIM_KEYS",
        "",
        "directory of DKIM private keys, one <domain>.pem per sending domain (verimail dkim keygen writes them); a mail whose From domain has none goes out unsigned; unset: no signing",
    ),
    (
        "VERIMAIL_DKIM_SELECTOR",
        "verimail",
        "DKIM selector: the keys are published at <selector>._domainkey.<domain>",
    ),
    (
        "VERIMAIL_PREFETCH",
        "64",
        "messages a worker holds (and sends) at once",
    ),
    (
        "VERIMAIL_RETRY_SCHEDULE",
        "5s,30s,2m,5m",
        "waits between SMTP attempts",
    ),
    ("VERIMAIL_MAX_ATTEMPTS", "5", "SMTP attempts in all"),
    (
        "VERIMAIL_LEASE",
        "15s",
        "how long a worker's claim on a dispatch lasts unrenewed (renewed every third of it while sending; at least VERIMAIL_SMTP_TIMEOUT + 5s)",
    ),
    (
        "VERIMAIL_SMTP_CONNECTIONS",
        "8",
        "SMTP connections a worker keeps",
    ),
    (
        "VERIMAIL_SMTP_TIMEOUT",
        "10s",
        "connect and per-command SMTP timeout",
    ),
    // --- several relays (issue 25) ---
    (
        "VERIMAIL_SMTP_COOLDOWN",
        "30s",
        "how long a relay of SMTP_URL that failed several sends in a row is skipped before one send probes it again",
    ),
    (
        "VERIMAIL_METRICS_LISTEN",
        "127.0.0.1:9091",
        "address of the worker's Prometheus /metrics",
    ),
    (
        "VERIMAIL_SHUTDOWN_GRACE",
        "10s",
        "how long in-flight sends and requests may finish on SIGTERM",
    ),
    (
        "VERIMAIL_SWEEP_INTERVAL",
        "15s",
        "how often a worker looks for open dispatches whose message is overdue",
    ),
    (
        "VERIMAIL_SWEEP_GRACE",
        "60s",
        "how overdue an open dispatch must be before it is re-published (doubling per re-publish)",
    ),
    (
        "VERIMAIL_RETENTION",
        "72h",
        "how long dispatch rows are kept; whole daily partitions older than this are dropped (at least 25h: the rate limit's day plus a code's hour)",
    ),
    (
        "VERIMAIL_MAINTENANCE_INTERVAL",
        "1h",
        "how often a worker creates upcoming partitions and drops expired ones, one worker at a time (0s: only `verimail maintain` does)",
    ),
    ("RUST_LOG", "info", "log filter"),
    ("VERIMAIL_LOG_FORMAT", "text", "text or json"),
    (
        "VERIMAIL_WEBHOOK_ALLOW_INSECURE",
        "false",
        "true lets `webhook set` take, and workers deliver to, http:// URLs and hosts in this side's own network (loopback, private, link-local, metadata): for tests and compose only",
    ),
    (
        "VERIMAIL_WEBHOOK_RETRY_SCHEDULE",
        "5s,30s,2m,10m,1h,6h",
        "waits between a webhook event's delivery attempts, the last one repeating, for up to 3 days from the event",
    ),
    // Tracing (OpenTelemetry's own variable names; the exporter also reads
    // OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT and their _TRACES_ forms).
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "",
        "OTLP/HTTP collector base URL (http://host:4318): spans of intake and worker are exported there; unset: no spans are exported",
    ),
    (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "",
        "full OTLP/HTTP URL for spans (http://host:4318/v1/traces), instead of OTEL_EXPORTER_OTLP_ENDPOINT",
    ),
    (
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "http/protobuf",
        "OTLP protocol; only http/protobuf is built in",
    ),
    (
        "OTEL_SERVICE_NAME",
        "",
        "service.name of exported spans; unset: verimail-intake, verimail-worker or verimail (all)",
    ),
    (
        "OTEL_SDK_DISABLED",
        "false",
        "true: export no spans even with an endpoint set",
    ),
    // DEVELOPMENT ONLY (src/dev_bootstrap.rs): applied by `migrate`.
    (
        "VERIMAIL_DEV_BOOTSTRAP",
        "",
        "DEVELOPMENT ONLY: true lets migrate make the VERIMAIL_DEV_* partner and credentials live; without it every command refuses them",
    ),
    (
        "VERIMAIL_DEV_PARTNER_ID",
        "00000000-0000-4000-8000-000000000001",
        "DEVELOPMENT ONLY: id of the bootstrap partner (32 hex digits without dashes: the SDK's domain_id)",
    ),
    (
        "VERIMAIL_DEV_TOKEN",
        "",
        "DEVELOPMENT ONLY: an X-Auth-Token accepted for the bootstrap partner",
    ),
    (
        "VERIMAIL_DEV_ACCESS_KEY",
        "",
        "DEVELOPMENT ONLY: an access key (AK) of the bootstrap partner",
    ),
    (
        "VERIMAIL_DEV_SECRET_KEY",
        "",
        "DEVELOPMENT ONLY: the secret key (SK) of VERIMAIL_DEV_ACCESS_KEY",
    ),
];

#[derive(Debug, thiserror::Error)]
#[error("invalid {var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

/// Where values come from: the process environment, or a map in tests.
pub trait Source {
    fn get(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

impl Source for std::collections::HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::HashMap::get(self, name)
            .cloned()
            .filter(|v| !v.trim().is_empty())
    }
}

pub fn default_of(name: &str) -> &'static str {
    VARIABLES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, d, _)| *d)
        .unwrap_or("")
}

fn read<T>(
    src: &dyn Source,
    var: &'static str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    let raw = src.get(var).unwrap_or_else(|| default_of(var).to_owned());
    parse(raw.trim()).map_err(|problem| ConfigError { var, problem })
}

fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e} (expected a duration like 2s, 5m)"))?;
    if d.is_zero() {
        Err("must be more than zero".into())
    } else {
        Ok(d)
    }
}

fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
    min: T,
    max: T,
) -> impl Fn(&str) -> Result<T, String> {
    move |s| match s.parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(format!("expected a number from {min} to {max}")),
    }
}

fn text(s: &str) -> Result<String, String> {
    Ok(s.to_owned())
}

#[derive(Debug, Clone)]
pub struct Common {
    pub database_url: SecretUrl,
    pub db_pool_size: u32,
    pub db_acquire_timeout: Duration,
    pub db_statement_timeout: Duration,
    pub amqp_url: SecretUrl,
    pub amqp_prefix: String,
    pub publish_timeout: Duration,
    pub retry_schedule: Vec<Duration>,
    pub shutdown_grace: Duration,
}

impl Common {
    pub fn load(src: &dyn Source) -> Result<Self, ConfigError> {
        Ok(Self {
            database_url: read(src, "DATABASE_URL", |s| {
                verimail_infra::db::Targets::parse(s)?;
                Ok(SecretUrl::new(s))
            })?,
            db_pool_size: read(src, "VERIMAIL_DB_POOL_SIZE", number(1, 1000))?,
            db_acquire_timeout: read(src, "VERIMAIL_DB_ACQUIRE_TIMEOUT", duration)?,
            db_statement_timeout: read(src, "VERIMAIL_DB_STATEMENT_TIMEOUT", duration)?,
            amqp_url: read(src, "AMQP_URL", |s| {
                verimail_infra::amqp::node_urls(s)?;
                Ok(SecretUrl::new(s))
            })?,
            amqp_prefix: read(src, "VERIMAIL_AMQP_PREFIX", |s| {
                if s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    Ok(s.to_owned())
                } else {
                    Err("use letters, digits, '-', '_' and '.' only".into())
                }
            })?,
            publish_timeout: read(src, "VERIMAIL_PUBLISH_TIMEOUT", duration)?,
            shutdown_grace: read(src, "VERIMAIL_SHUTDOWN_GRACE", duration)?,
            retry_schedule: read(src, "VERIMAIL_RETRY_SCHEDULE", |s| {
                s.split(',').map(|d| duration(d.trim())).collect()
            })?,
        })
    }

    pub fn db(&self) -> verimail_infra::db::DbSettings {
        verimail_infra::db::DbSettings {
            url: self.database_url.clone(),
            max_connections: self.db_pool_size,
            acquire_timeout: self.db_acquire_timeout,
            statement_timeout: Some(self.db_statement_timeout),
        }
    }

    /// For migrations: no statement timeout, a migration may rewrite a table.
    pub fn db_for_migrations(&self) -> verimail_infra::db::DbSettings {
        verimail_infra::db::DbSettings {
            statement_timeout: None,
            ..self.db()
        }
    }
}

/// `VERIMAIL_SECRET`, required by the processes that handle codes.
pub fn secret(src: &dyn Source) -> Result<Option<MasterSecret>, ConfigError> {
    match src.get("VERIMAIL_SECRET") {
        None => Ok(None),
        Some(raw) => MasterSecret::from_base64(&raw)
            .map(Some)
            .map_err(|e| ConfigError {
                var: "VERIMAIL_SECRET",
                problem: e.to_string(),
            }),
    }
}

pub fn require_secret(src: &dyn Source) -> Result<MasterSecret, ConfigError> {
    secret(src)?.ok_or(ConfigError {
        var: "VERIMAIL_SECRET",
        problem: "is required (generate one with: openssl rand -base64 32)".into(),
    })
}

#[derive(Debug, Clone)]
pub struct Intake {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub rate_limit: RateLimit,
    pub code_length: usize,
    pub auth_cache_ttl: Duration,
    pub max_backlog: u64,
}

impl Intake {
    pub fn load(src: &dyn Source) -> Result<Self, ConfigError> {
        Ok(Self {
            listen: read(src, "VERIMAIL_LISTEN", |s| {
                s.parse()
                    .map_err(|_| "expected HOST:PORT, like 127.0.0.1:8080".into())
            })?,
            metrics_listen: read(src, "VERIMAIL_INTAKE_METRICS_LISTEN", |s| {
                s.parse()
                    .map_err(|_| "expected HOST:PORT, like 127.0.0.1:9090".into())
            })?,
            header_timeout: read(src, "VERIMAIL_HTTP_HEADER_TIMEOUT", duration)?,
            body_timeout: read(src, "VERIMAIL_HTTP_BODY_TIMEOUT", duration)?,
            max_connections: read(src, "VERIMAIL_HTTP_MAX_CONNECTIONS", number(1, 1_000_000))?,
            rate_limit: read(src, "VERIMAIL_RATE_LIMIT", RateLimit::parse)?,
            code_length: read(
                src,
                "VERIMAIL_CODE_LENGTH",
                number(*Code::LEN_RANGE.start(), *Code::LEN_RANGE.end()),
            )?,
            auth_cache_ttl: read(src, "VERIMAIL_AUTH_CACHE_TTL", |s| {
                humantime::parse_duration(s)
                    .map_err(|e| format!("{e} (expected a duration like 5s, or 0s)"))
            })?,
            max_backlog: read(src, "VERIMAIL_MAX_BACKLOG", number(0, u64::from(u32::MAX)))?,
        })
    }

    pub fn settings(&self, common: &Common) -> verimail_intake::IntakeSettings {
        verimail_intake::IntakeSettings {
            listen: self.listen,
            metrics_listen: Some(self.metrics_listen),
            amqp: verimail_intake::settings::AmqpSettings {
                url: common.amqp_url.clone(),
                prefix: common.amqp_prefix.clone(),
                publish_timeout: common.publish_timeout,
            },
            rate_limit: self.rate_limit,
            code_length: self.code_length,
            auth_cache_ttl: self.auth_cache_ttl,
            // The failure record after a publish timeout waits at most for a
            // connection and one statement's worth of round trip.
            http: verimail_intake::serve::HttpLimits {
                header_timeout: self.header_timeout,
                body_timeout: self.body_timeout,
                max_connections: self.max_connections,
                shutdown_grace: common.shutdown_grace,
            },
            handoff_window: common.publish_timeout
                + common.db_acquire_timeout
                + Duration::from_secs(1),
            max_backlog: (self.max_backlog > 0).then_some(self.max_backlog),
        }
    }
}

/// VERIMAIL_RETENTION, refused below what the rate limit and a code's life
/// still read.
pub fn retention(src: &dyn Source) -> Result<Duration, ConfigError> {
    let least = verimail_worker::maintenance::LEAST_RETENTION;
    read(src, "VERIMAIL_RETENTION", |s| {
        let d = duration(s)?;
        if d < least {
            return Err(format!(
                "must be at least {}: the rate limit looks back a day and a code lives up to an hour",
                humantime::format_duration(least)
            ));
        }
        Ok(d)
    })
}

const LEASE_MARGIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Worker {
    pub smtp_url: Option<SecretUrl>,
    pub outbox: PathBuf,
    pub outbox_retention: Duration,
    pub mail_from: Mailbox,
    pub brand: String,
    /// Beside `mail_from`'s, the domains a partner's From may be at.
    pub allowed_sender_domains: Vec<String>,
    /// Loaded (and checked) at start: a bad key file stops the process.
    pub dkim: Arc<DkimKeys>,
    pub prefetch: u16,
    pub max_attempts: u32,
    pub lease: Duration,
    pub smtp_connections: usize,
    pub smtp_timeout: Duration,
    pub smtp_cooldown: Duration,
    pub metrics_listen: SocketAddr,
    pub sweep_interval: Duration,
    pub sweep_grace: Duration,
    pub retention: Duration,
    pub maintenance_interval: Duration,
    pub webhook_schedule: verimail_domain::webhook::DeliverySchedule,
    pub webhook_allow_insecure: bool,
}

impl Worker {
    /// VERIMAIL_OUTBOX alone (`verimail forget` needs no other setting).
    pub fn outbox(src: &dyn Source) -> Result<PathBuf, ConfigError> {
        read(src, "VERIMAIL_OUTBOX", |s| Ok(PathBuf::from(s)))
    }

    pub fn load(src: &dyn Source) -> Result<Self, ConfigError> {
        Ok(Self {
            smtp_url: src.get("SMTP_URL").map(SecretUrl::new),
            outbox: read(src, "VERIMAIL_OUTBOX", |s| Ok(PathBuf::from(s)))?,
            outbox_retention: read(src, "VERIMAIL_OUTBOX_RETENTION", duration)?,
            mail_from: mail_from(src)?,
            brand: read(src, "VERIMAIL_BRAND", text)?,
            allowed_sender_domains: allowed_sender_domains(src)?,
            dkim: Arc::new(dkim_keys(src)?),
            prefetch: read(src, "VERIMAIL_PREFETCH", number(1, 10_000))?,
            max_attempts: read(src, "VERIMAIL_MAX_ATTEMPTS", number(1, 100))?,
            lease: read(src, "VERIMAIL_LEASE", duration)?,
            smtp_connections: read(src, "VERIMAIL_SMTP_CONNECTIONS", number(1, 1000))?,
            smtp_timeout: read(src, "VERIMAIL_SMTP_TIMEOUT", duration)?,
            smtp_cooldown: read(src, "VERIMAIL_SMTP_COOLDOWN", duration)?,
            metrics_listen: read(src, "VERIMAIL_METRICS_LISTEN", |s| {
                s.parse()
                    .map_err(|_| "expected HOST:PORT, like 127.0.0.1:9091".into())
            })?,
            sweep_interval: read(src, "VERIMAIL_SWEEP_INTERVAL", duration)?,
            sweep_grace: read(src, "VERIMAIL_SWEEP_GRACE", duration)?,
            retention: retention(src)?,
            maintenance_interval: read(src, "VERIMAIL_MAINTENANCE_INTERVAL", duration)?,
            webhook_schedule: read(src, "VERIMAIL_WEBHOOK_RETRY_SCHEDULE", |s| {
                let waits = s
                    .split(',')
                    .map(|d| duration(d.trim()))
                    .collect::<Result<Vec<_>, _>>()?;
                verimail_domain::webhook::DeliverySchedule::new(waits)
                    .ok_or_else(|| "expected one wait at least, like 5s,30s,2m".to_owned())
            })?,
            webhook_allow_insecure: webhook_allow_insecure(src)?,
        })
        .and_then(Self::checked)
    }

    /// A lease must outlast one SMTP command with a margin: the renewal runs
    /// beside the send, but a lease shorter than a stalled command would be
    /// taken over while the holder is merely waiting.
    fn checked(self) -> Result<Self, ConfigError> {
        let least = self.smtp_timeout + LEASE_MARGIN;
        if self.lease < least {
            return Err(ConfigError {
                var: "VERIMAIL_LEASE",
                problem: format!(
                    "must be at least VERIMAIL_SMTP_TIMEOUT + {}s ({})",
                    LEASE_MARGIN.as_secs(),
                    humantime::format_duration(least)
                ),
            });
        }
        Ok(self)
    }
}

// --- per-partner sender and brand (issue 25) ---

fn mail_from(src: &dyn Source) -> Result<Mailbox, ConfigError> {
    read(src, "VERIMAIL_MAIL_FROM", |s| {
        s.parse::<Mailbox>()
            .map_err(|e| format!("not a mailbox: {e}"))
    })
}

fn allowed_sender_domains(src: &dyn Source) -> Result<Vec<String>, ConfigError> {
    read(
        src,
        "VERIMAIL_ALLOWED_SENDER_DOMAINS",
        SenderDomains::parse_list,
    )
}

/// The domains `verimail partner set --from` accepts: VERIMAIL_MAIL_FROM's
/// and VERIMAIL_ALLOWED_SENDER_DOMAINS.
pub fn sender_domains(src: &dyn Source) -> Result<SenderDomains, ConfigError> {
    Ok(SenderDomains::new(
        &mail_from(src)?,
        allowed_sender_domains(src)?,
    ))
}

// --- DKIM (issue 25) ---

/// VERIMAIL_DKIM_SELECTOR: a DNS name below `_domainkey` (RFC 6376 §3.1).
pub fn dkim_selector(src: &dyn Source) -> Result<String, ConfigError> {
    read(src, "VERIMAIL_DKIM_SELECTOR", |s| {
        if s.split('.').all(verimail_worker::mail::sender::dns_label) {
            Ok(s.to_ascii_lowercase())
        } else {
            Err("expected DNS labels (letters, digits, hyphens), like verimail or mail2025".into())
        }
    })
}

/// VERIMAIL_DKIM_KEYS as a directory, if set.
pub fn dkim_dir(src: &dyn Source) -> Option<PathBuf> {
    src.get("VERIMAIL_DKIM_KEYS").map(PathBuf::from)
}

/// Every key in VERIMAIL_DKIM_KEYS, read and checked now; a file that is not
/// a usable key is a configuration error naming the file (exit code 2).
fn dkim_keys(src: &dyn Source) -> Result<DkimKeys, ConfigError> {
    let selector = dkim_selector(src)?;
    let Some(dir) = dkim_dir(src) else {
        return Ok(DkimKeys::none());
    };
    DkimKeys::load(&dir, &selector).map_err(|e| ConfigError {
        var: "VERIMAIL_DKIM_KEYS",
        problem: e.to_string(),
    })
}

impl Worker {
    pub fn settings(&self, common: &Common) -> verimail_worker::WorkerSettings {
        verimail_worker::WorkerSettings {
            amqp_url: common.amqp_url.clone(),
            prefix: common.amqp_prefix.clone(),
            publish_timeout: common.publish_timeout,
            retry: verimail_worker::RetryPolicy::new(
                common.retry_schedule.clone(),
                self.max_attempts,
            ),
            prefetch: self.prefetch,
            lease: self.lease,
            mail: verimail_worker::mail::MailSettings::new(
                self.mail_from.clone(),
                self.brand.clone(),
            )
            .with_sender_domains(self.allowed_sender_domains.clone())
            .with_dkim(self.dkim.clone()),
            smtp_url: self.smtp_url.clone(),
            outbox: self.outbox.clone(),
            outbox_retention: self.outbox_retention,
            smtp_connections: self.smtp_connections,
            smtp_timeout: self.smtp_timeout,
            smtp_cooldown: self.smtp_cooldown,
            shutdown_grace: common.shutdown_grace,
            sweep_interval: self.sweep_interval,
            sweep_grace: self.sweep_grace,
            retention: self.retention,
            maintenance_interval: self.maintenance_interval,
            metrics_listen: Some(self.metrics_listen),
            webhooks: verimail_worker::webhooks::WebhookSettings {
                schedule: self.webhook_schedule.clone(),
                allow_insecure: self.webhook_allow_insecure,
                ..Default::default()
            },
        }
    }
}

/// Whether and as what the spans of a long-running process (`role`) are
/// exported: only with an OTLP endpoint set, over plain HTTP with protobuf
/// (TLS and gRPC would each add a stack to every build; a collector agent
/// beside the process takes plain HTTP and forwards however it must).
pub fn trace_export(
    src: &dyn Source,
    role: &str,
) -> Result<Option<verimail_infra::telemetry::TraceExport>, ConfigError> {
    let disabled = read(src, "OTEL_SDK_DISABLED", flag)?;
    let endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find_map(|var| src.get(var).map(|value| (var, value)));
    let Some((var, endpoint)) = endpoint.filter(|_| !disabled) else {
        return Ok(None);
    };
    if !endpoint.trim().starts_with("http://") {
        return Err(ConfigError {
            var,
            problem: "expected an http:// URL of an OTLP/HTTP receiver (https is not built in: \
                      send to a collector agent over plain HTTP)"
                .into(),
        });
    }
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = src.get(var)
            && protocol.trim() != "http/protobuf"
        {
            return Err(ConfigError {
                var,
                problem: format!("{protocol:?} is not built in; only http/protobuf is"),
            });
        }
    }
    let service_name = src
        .get("OTEL_SERVICE_NAME")
        .map_or_else(|| role.to_owned(), |name| name.trim().to_owned());
    Ok(Some(verimail_infra::telemetry::TraceExport {
        service_name,
    }))
}

/// Whether webhook endpoints may be plain http or inside this side's own
/// network (`VERIMAIL_WEBHOOK_ALLOW_INSECURE`).
pub fn webhook_allow_insecure(src: &dyn Source) -> Result<bool, ConfigError> {
    read(src, "VERIMAIL_WEBHOOK_ALLOW_INSECURE", flag)
}

fn flag(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_match_the_spec() {
        let empty = env(&[]);
        let common = Common::load(&empty).expect("defaults load");
        assert_eq!(
            common.database_url.expose(),
            "postgres://localhost/verimail"
        );
        assert_eq!(common.amqp_prefix, "verimail");
        assert_eq!(
            common.retry_schedule,
            [5, 30, 120, 300].map(Duration::from_secs)
        );
        assert_eq!(common.publish_timeout, Duration::from_secs(2));
        let intake = Intake::load(&empty).expect("defaults load");
        assert_eq!(intake.rate_limit, RateLimit::DEFAULT);
        assert_eq!(intake.listen.to_string(), "127.0.0.1:8080");
        let worker = Worker::load(&empty).expect("defaults load");
        assert_eq!((worker.prefetch, worker.max_attempts), (64, 5));
    }

    #[test]
    fn cluster_lists_are_accepted() {
        let common = Common::load(&env(&[
            (
                "DATABASE_URL",
                "postgres://u@h1:5432,h2:5432/db?target_session_attrs=read-write",
            ),
            ("AMQP_URL", "amqp://g:g@a:5672/%2f,amqp://g:g@b:5672/%2f"),
        ]))
        .expect("lists load");
        assert!(common.amqp_url.expose().contains(','));
    }

    #[test]
    fn a_bad_value_names_its_variable_in_one_line() {
        let cases = [
            ("VERIMAIL_RATE_LIMIT", "lots"),
            ("VERIMAIL_LISTEN", "8080"),
            ("VERIMAIL_CODE_LENGTH", "3"),
        ];
        for (var, value) in cases {
            let error = Intake::load(&env(&[(var, value)])).expect_err(var);
            let line = error.to_string();
            assert!(
                line.starts_with(&format!("invalid {var}: ")) && !line.contains('\n'),
                "{line}"
            );
        }
        let error = Common::load(&env(&[("VERIMAIL_PUBLISH_TIMEOUT", "soon")])).expect_err("soon");
        let line = error.to_string();
        assert!(
            line.starts_with("invalid VERIMAIL_PUBLISH_TIMEOUT: ") && !line.contains('\n'),
            "{line}"
        );
        let error = Common::load(&env(&[("AMQP_URL", "http://x")])).expect_err("bad url");
        assert_eq!(error.var, "AMQP_URL");
        let error = Common::load(&env(&[("AMQP_URL", "amqp://a:5672,http://b")]))
            .expect_err("a bad node in the list");
        assert_eq!(error.var, "AMQP_URL");
        let error = Common::load(&env(&[(
            "DATABASE_URL",
            "postgres://u:pw@h1,h2/db?target_session_attrs=standby",
        )]))
        .expect_err("a session attribute verimail cannot work with");
        let line = error.to_string();
        assert!(
            line.starts_with("invalid DATABASE_URL: ") && !line.contains("pw"),
            "{line}"
        );
        let error = Common::load(&env(&[("DATABASE_URL", "postgres://h1:5432,,h2/db")]))
            .expect_err("an empty host");
        assert_eq!(error.var, "DATABASE_URL");
        let error = Worker::load(&env(&[(
            "VERIMAIL_ALLOWED_SENDER_DOMAINS",
            "mail.acme.example, not a domain",
        )]))
        .expect_err("a list with something that is not a domain");
        assert_eq!(error.var, "VERIMAIL_ALLOWED_SENDER_DOMAINS");
        assert!(error.to_string().contains("\"not a domain\""), "{error}");
        let error = Worker::load(&env(&[("VERIMAIL_PREFETCH", "0")])).expect_err("zero prefetch");
        assert_eq!(error.var, "VERIMAIL_PREFETCH");
        let short = env(&[("VERIMAIL_LEASE", "12s"), ("VERIMAIL_SMTP_TIMEOUT", "10s")]);
        let error = Worker::load(&short).expect_err("a lease shorter than the SMTP timeout + 5s");
        assert_eq!(error.var, "VERIMAIL_LEASE");
        assert!(error.to_string().contains("15s"), "{error}");
        assert_eq!(
            require_secret(&env(&[])).expect_err("missing").var,
            "VERIMAIL_SECRET"
        );
        assert_eq!(
            require_secret(&env(&[("VERIMAIL_SECRET", "c2hvcnQ=")]))
                .expect_err("short")
                .var,
            "VERIMAIL_SECRET"
        );
    }

    #[test]
    fn spans_are_exported_only_to_a_plain_http_otlp_receiver() {
        let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let export = |pairs: &[(&str, &str)]| trace_export(&env(pairs), "verimail-worker");
        assert!(export(&[]).unwrap().is_none(), "no endpoint, no export");
        let on = export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]).unwrap();
        assert_eq!(on.unwrap().service_name, "verimail-worker");
        let named = export(&[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces",
            ),
            ("OTEL_SERVICE_NAME", "mail-eu"),
        ])
        .unwrap();
        assert_eq!(named.unwrap().service_name, "mail-eu");
        let off = export(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ]);
        assert!(off.unwrap().is_none());
        for (pairs, var) in [
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318")][..],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ][..],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                    ("OTEL_SDK_DISABLED", "yes"),
                ][..],
                "OTEL_SDK_DISABLED",
            ),
        ] {
            assert_eq!(export(pairs).unwrap_err().var, var);
        }
    }
}
