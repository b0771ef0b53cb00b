//! The commands README's "CLI" section lists. Results go to stdout as one JSON object, logs to stderr.

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;
use verimail_domain::secrets::{Keys, MasterSecret};
use verimail_infra::db;
use verimail_infra::store::partners;
use verimail_intake::Application;
use verimail_intake::accounts::{self, AccountKind, AccountStatus};
use verimail_worker::{Worker, WorkerSettings, maintenance};

use crate::config::{self, ConfigError, ProcessEnv, Source};

#[derive(Parser)]
#[command(
    name = "verimail",
    version,
    about = "Email verification codes, queued and delivered once."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply database migrations.
    Migrate,
    /// Serve the HTTP API on VERIMAIL_LISTEN.
    Intake,
    /// Consume dispatches and send the mail.
    Worker,
    /// Migrate, then run intake and worker in one process (the quick start).
    All,
    /// Create upcoming partitions of `dispatches` and drop those past
    /// VERIMAIL_RETENTION (workers do this by themselves, one at a time).
    Maintain,
    /// Erase every trace of one address: its dispatch rows in every
    /// partition, their remembered answers, and outbox files naming it.
    Forget {
        #[arg(long)]
        email: String,
    },
    /// Manage partner accounts.
    #[command(subcommand)]
    Partner(PartnerCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage AK/SK pairs for SDK-signed requests.
    #[command(subcommand)]
    Key(KeyCommand),
    /// DKIM signing keys (in VERIMAIL_DKIM_KEYS).
    #[command(subcommand)]
    Dkim(DkimCommand),
    /// Each partner's webhook endpoint (delivery outcomes, signed).
    #[command(subcommand)]
    Webhook(WebhookCommand),
}

#[derive(Subcommand)]
enum WebhookCommand {
    /// Set a partner's endpoint with a new signing secret; prints
    /// partner_id, url and the secret (shown once). Setting it again
    /// rotates the secret: the previous one keeps signing for 24 h.
    Set {
        #[arg(long)]
        partner: Uuid,
        /// An https URL whose host is not in this side's own network.
        #[arg(long)]
        url: String,
    },
    /// Remove a partner's endpoint: no more deliveries to it (its
    /// undelivered events go with it).
    Remove {
        #[arg(long)]
        partner: Uuid,
    },
    /// Show a partner's endpoint: url, whether it is disabled (it answered
    /// 410 Gone) and why, and its undelivered events. No secret.
    Show {
        #[arg(long)]
        partner: Uuid,
    },
}

#[derive(Subcommand)]
enum DkimCommand {
    /// Make a signing key for a sending domain, write it to
    /// $VERIMAIL_DKIM_KEYS/<domain>.pem (0600), and print the DNS TXT
    /// record to publish as JSON {name, value}.
    Keygen {
        #[arg(long)]
        domain: String,
        /// Ed25519-SHA256 (RFC 8463) instead of RSA-SHA256 (2048 bits).
        #[arg(long)]
        ed25519: bool,
        /// Replace an existing key (its published record stops verifying).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create an AK/SK pair; prints access_key, secret_key (shown once) and domain_id.
    Create {
        #[arg(long)]
        partner: Uuid,
    },
    /// Revoke an access key.
    Revoke { access_key: String },
}

#[derive(Subcommand)]
enum PartnerCommand {
    /// Create an account; prints its partner_id.
    Create {
        #[arg(long)]
        name: String,
        /// A customer account: authenticates, but may not call the API.
        #[arg(long)]
        customer: bool,
        #[arg(long)]
        suspended: bool,
    },
    /// Set a partner's own sender and brand for its mails; prints the
    /// settings as they now are (null: the default). An option given as ""
    /// gives that setting back to the default; options not given stay.
    Set {
        #[arg(long)]
        partner: Uuid,
        /// Shown in the subject and the body (default: VERIMAIL_BRAND).
        #[arg(long)]
        brand: Option<String>,
        /// "Name <addr@domain>", at a domain the operator allows:
        /// VERIMAIL_MAIL_FROM's or one of VERIMAIL_ALLOWED_SENDER_DOMAINS.
        #[arg(long)]
        from: Option<String>,
        /// Where replies go (default: no Reply-To).
        #[arg(long)]
        reply_to: Option<String>,
        /// An http(s) URL shown in the mail (default: none).
        #[arg(long)]
        support_url: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a token for a partner; prints token and expires_at.
    Issue {
        #[arg(long)]
        partner: Uuid,
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Revoke a token.
    Revoke { token: String },
}

/// How long `verimail maintain` waits for a worker's run to finish.
const MAINTAIN_WAIT: Duration = Duration::from_secs(60);

pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = ProcessEnv;
    let json_logs = env
        .get("VERIMAIL_LOG_FORMAT")
        .is_some_and(|f| f.eq_ignore_ascii_case("json"));
    // Only the processes that serve export spans; a CLI command's would be
    // a trace of one.
    let role = match cli.command {
        Command::Intake => Some("verimail-intake"),
        Command::Worker => Some("verimail-worker"),
        Command::All => Some("verimail"),
        _ => None,
    };
    let export = match role
        .map(|role| config::trace_export(&env, role))
        .transpose()
    {
        Ok(export) => export.flatten(),
        Err(config) => {
            eprintln!("verimail: {config}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = match verimail_infra::telemetry::init(json_logs, export) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("verimail: {error:#}");
            return ExitCode::from(2);
        }
    };
    match run(cli.command, &env).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if let Some(config) = error.downcast_ref::<ConfigError>() {
                eprintln!("verimail: {config}");
                return ExitCode::from(2);
            }
            if let Some(refused) = error.downcast_ref::<Refused>() {
                eprintln!("verimail: {refused}");
                return ExitCode::from(2);
            }
            if let Some(refused) = error.downcast_ref::<RefusedEndpoint>() {
                eprintln!("verimail: {refused}");
                return ExitCode::from(2);
            }
            eprintln!("verimail: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn print(value: serde_json::Value) {
    println!("{value}");
}

async fn run(command: Command, env: &dyn Source) -> anyhow::Result<()> {
    let common = config::Common::load(env)?;
    let dev_bootstrap =
        crate::dev_bootstrap::for_command(matches!(command, Command::Migrate), env)?;
    match command {
        Command::Migrate => migrate(&common).await?,
        Command::Intake => intake(env, &common).await?,
        Command::Worker => worker(env, &common).await?,
        Command::All => all(env, &common).await?,
        Command::Maintain => maintain(env, &common).await?,
        Command::Forget { email } => forget(env, &common, &email).await?,
        Command::Partner(command) => partner(env, &common, command).await?,
        Command::Token(command) => token(&common, command).await?,
        Command::Key(command) => key(env, &common, command).await?,
        Command::Dkim(command) => dkim(env, command)?,
        Command::Webhook(command) => webhook(env, &common, command).await?,
    }
    if let Some(bootstrap) = dev_bootstrap {
        bootstrap.run(env, &common).await?;
    }
    Ok(())
}

async fn migrate(common: &config::Common) -> anyhow::Result<()> {
    db::create_database_if_missing(&common.database_url).await?;
    let pool = db::pool(&common.db_for_migrations())?;
    db::migrate(&pool).await?;
    print(json!({"migrated": true}));
    Ok(())
}

async fn intake(env: &dyn Source, common: &config::Common) -> anyhow::Result<()> {
    let intake = config::Intake::load(env)?;
    let keys = Keys::derive(&config::require_secret(env)?);
    let pool = db::pool(&common.db())?;
    let app = Application::build(intake.settings(common), pool, keys).await?;
    let mut parts = Parts::new();
    parts.spawn("intake", app.run_until(parts.stopping()));
    parts.run_until_signal().await
}

async fn worker(env: &dyn Source, common: &config::Common) -> anyhow::Result<()> {
    let worker = config::Worker::load(env)?;
    let keys = Keys::derive(&config::require_secret(env)?);
    let pool = db::pool(&common.db())?;
    let worker = Worker::build(worker.settings(common), pool, keys).await?;
    let mut parts = Parts::new();
    parts.spawn("worker", worker.run_until_stopped(parts.stopping()));
    parts.run_until_signal().await
}

async fn all(env: &dyn Source, common: &config::Common) -> anyhow::Result<()> {
    let intake = config::Intake::load(env)?;
    let worker = config::Worker::load(env)?;
    let secret = match config::secret(env)? {
        Some(secret) => secret,
        None => {
            tracing::warn!(
                "VERIMAIL_SECRET is unset: using an ephemeral secret; codes queued now cannot be sent after a restart"
            );
            MasterSecret::ephemeral()
        }
    };
    let keys = Keys::derive(&secret);
    db::create_database_if_missing(&common.database_url).await?;
    db::migrate(&db::pool(&common.db_for_migrations())?).await?;
    let pool = db::pool(&common.db())?;
    let app = Application::build(intake.settings(common), pool.clone(), keys.clone()).await?;
    // One process, one /metrics: the intake's (README, "HTTP API").
    let worker_settings = WorkerSettings {
        metrics_listen: None,
        ..worker.settings(common)
    };
    let worker = Worker::build(worker_settings, pool, keys).await?;
    let mut parts = Parts::new();
    parts.spawn("intake", app.run_until(parts.stopping()));
    parts.spawn("worker", worker.run_until_stopped(parts.stopping()));
    parts.run_until_signal().await
}

async fn maintain(env: &dyn Source, common: &config::Common) -> anyhow::Result<()> {
    let policy = maintenance::Policy {
        retention: config::retention(env)?,
    };
    let pool = db::pool(&common.db_for_migrations())?;
    let outcome = maintenance::maintain(&pool, policy, MAINTAIN_WAIT, None).await?;
    let maintenance::Outcome::Done(report) = outcome else {
        anyhow::bail!(
            "another maintenance run held the lock for {}s; try again",
            MAINTAIN_WAIT.as_secs()
        );
    };
    let dropped: Vec<_> = report
        .dropped
        .iter()
        .map(|d| json!({"partition": d.partition, "bytes": d.bytes, "rows_estimate": d.rows_estimate}))
        .collect();
    let covered_until = report.covered_until.format(&Rfc3339)?;
    print(json!({"created": report.created, "dropped": dropped,
                 "partitions": report.partitions, "covered_until": covered_until,
                 "webhook_events_deleted": report.webhook_events_deleted}));
    Ok(())
}

async fn forget(env: &dyn Source, common: &config::Common, email: &str) -> anyhow::Result<()> {
    let email = verimail_domain::Email::parse(email)
        .map_err(|rejection| anyhow::anyhow!("--email: {rejection}"))?;
    let outbox = config::Worker::outbox(env)?;
    let pool = db::pool(&common.db())?;
    let erased = verimail_worker::erasure::forget(&pool, &email, Some(&outbox)).await?;
    print(json!({"recipient": email.normalised(),
                 "dispatch_rows": erased.dispatch_rows(),
                 "partitions": erased.dispatches,
                 "replay_records": erased.replays,
                 "webhook_events": erased.webhook_events,
                 "outbox_files": erased.outbox_files}));
    Ok(())
}

async fn partner(
    env: &dyn Source,
    common: &config::Common,
    command: PartnerCommand,
) -> anyhow::Result<()> {
    let (name, customer, suspended) = match command {
        PartnerCommand::Create {
            name,
            customer,
            suspended,
        } => (name, customer, suspended),
        PartnerCommand::Set {
            partner,
            brand,
            from,
            reply_to,
            support_url,
        } => {
            let changes = SenderOptions {
                brand,
                from,
                reply_to,
                support_url,
            }
            .checked(&config::sender_domains(env)?)?;
            return partner_set(common, partner, &changes).await;
        }
    };
    let pool = db::pool(&common.db())?;
    let kind = if customer {
        AccountKind::Customer
    } else {
        AccountKind::Partner
    };
    let status = AccountStatus::suspended_if(suspended);
    let id = accounts::create_partner(&pool, &name, kind, status).await?;
    print(
        json!({"partner_id": id, "name": name, "kind": kind.as_str(), "status": status.as_str()}),
    );
    Ok(())
}

async fn token(common: &config::Common, command: TokenCommand) -> anyhow::Result<()> {
    let pool = db::pool(&common.db())?;
    match command {
        TokenCommand::Issue { partner, ttl } => {
            let issued = accounts::issue_token(&pool, partner, ttl).await?;
            let expires_at = issued.expires_at.format(&Rfc3339)?;
            print(json!({"token": issued.token, "partner_id": partner, "expires_at": expires_at}));
        }
        TokenCommand::Revoke { token } => {
            let revoked = accounts::revoke_token(&pool, &token)
                .await
                .context("revoking")?;
            if !revoked {
                anyhow::bail!("no live token matches");
            }
            print(json!({"revoked": true}));
        }
    }
    Ok(())
}

async fn key(env: &dyn Source, common: &config::Common, command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create { partner } => {
            let keys = Keys::derive(&config::require_secret(env)?);
            let pool = db::pool(&common.db())?;
            let created = accounts::create_access_key(&pool, &keys, partner).await?;
            // The SDKs' domain_id is 32 hex digits; verimail accepts either UUID spelling.
            print(
                json!({"access_key": created.access_key, "secret_key": created.secret_key,
                         "domain_id": partner.simple().to_string()}),
            );
        }
        KeyCommand::Revoke { access_key } => {
            let pool = db::pool(&common.db())?;
            if !accounts::revoke_access_key(&pool, &access_key).await? {
                anyhow::bail!("no live access key matches");
            }
            print(json!({"revoked": true}));
        }
    }
    Ok(())
}

// --- per-partner sender and brand (issue 25) ---

/// An option's value that breaks its rule: one line, exit code 2, nothing
/// written.
#[derive(Debug, thiserror::Error)]
#[error("{option}: {problem}")]
struct Refused {
    option: &'static str,
    problem: verimail_worker::mail::sender::SenderError,
}

/// `partner set`'s options as given.
struct SenderOptions {
    brand: Option<String>,
    from: Option<String>,
    reply_to: Option<String>,
    support_url: Option<String>,
}

impl SenderOptions {
    /// Each given value checked and normalised (`""`: back to the default),
    /// before anything connects to Postgres.
    fn checked(
        self,
        domains: &verimail_worker::mail::SenderDomains,
    ) -> Result<partners::SenderChanges, Refused> {
        use verimail_worker::mail::sender;
        fn change<T: ToString>(
            option: &'static str,
            given: Option<String>,
            parse: impl Fn(&str) -> Result<T, sender::SenderError>,
        ) -> Result<Option<Option<String>>, Refused> {
            let Some(given) = given else { return Ok(None) };
            if given.trim().is_empty() {
                return Ok(Some(None));
            }
            let value = parse(&given).map_err(|problem| Refused { option, problem })?;
            Ok(Some(Some(value.to_string())))
        }
        Ok(partners::SenderChanges {
            brand: change("--brand", self.brand, sender::parse_brand)?,
            mail_from: change("--from", self.from, |raw| sender::parse_from(raw, domains))?,
            reply_to: change("--reply-to", self.reply_to, sender::parse_reply_to)?,
            support_url: change("--support-url", self.support_url, sender::parse_support_url)?,
        })
    }
}

async fn partner_set(
    common: &config::Common,
    partner: Uuid,
    changes: &partners::SenderChanges,
) -> anyhow::Result<()> {
    let pool = db::pool(&common.db())?;
    let Some(now) = partners::set_sender(&pool, partner, changes).await? else {
        anyhow::bail!("no partner with id {partner}");
    };
    print(
        json!({"partner_id": partner, "brand": now.brand, "from": now.mail_from,
                 "reply_to": now.reply_to, "support_url": now.support_url}),
    );
    Ok(())
}

// --- webhooks (issue 24) ---

/// A webhook URL `webhook set` refuses: one line, exit code 2, nothing
/// written.
#[derive(Debug, thiserror::Error)]
#[error("--url: {0}")]
struct RefusedEndpoint(verimail_domain::webhook::EndpointRefusal);

async fn webhook(
    env: &dyn Source,
    common: &config::Common,
    command: WebhookCommand,
) -> anyhow::Result<()> {
    use verimail_domain::webhook::{WebhookSecret, parse_endpoint};
    use verimail_infra::store::webhooks;
    match command {
        WebhookCommand::Set { partner, url } => {
            let allow_insecure = config::webhook_allow_insecure(env)?;
            // Checked before anything connects to Postgres.
            let url = parse_endpoint(&url, allow_insecure).map_err(RefusedEndpoint)?;
            verimail_infra::webhook_endpoint::resolve_allowed(&url, allow_insecure)
                .await
                .map_err(RefusedEndpoint)?;
            let keys = Keys::derive(&config::require_secret(env)?);
            let secret = WebhookSecret::generate();
            let pool = db::pool(&common.db())?;
            let sealed = keys.seal_webhook_secret(partner, &secret);
            let Some(endpoint) = webhooks::set(&pool, partner, url.as_str(), &sealed).await? else {
                anyhow::bail!("no partner with id {partner}");
            };
            let previous_until = endpoint
                .previous_until
                .map(|until| until.format(&Rfc3339))
                .transpose()?;
            print(
                json!({"partner_id": partner, "url": endpoint.url, "secret": secret.expose(),
                         "previous_secret_signs_until": previous_until}),
            );
        }
        WebhookCommand::Remove { partner } => {
            let pool = db::pool(&common.db())?;
            if !webhooks::remove(&pool, partner).await? {
                anyhow::bail!("partner {partner} has no webhook endpoint");
            }
            print(json!({"partner_id": partner, "removed": true}));
        }
        WebhookCommand::Show { partner } => {
            let pool = db::pool(&common.db())?;
            let Some(endpoint) = webhooks::get(&pool, partner).await? else {
                anyhow::bail!("partner {partner} has no webhook endpoint");
            };
            let pending =
                verimail_infra::store::webhook_events::pending_for(&pool, partner).await?;
            let disabled_at = endpoint
                .disabled_at
                .map(|at| at.format(&Rfc3339))
                .transpose()?;
            print(json!({"partner_id": partner, "url": endpoint.url,
                         "disabled_at": disabled_at, "disabled_reason": endpoint.disabled_reason,
                         "pending_events": pending}));
        }
    }
    Ok(())
}

// --- DKIM (issue 25) ---

fn dkim(env: &dyn Source, command: DkimCommand) -> anyhow::Result<()> {
    use verimail_worker::mail::dkim::{self, KeyKind};
    let DkimCommand::Keygen {
        domain,
        ed25519,
        force,
    } = command;
    let dir = config::dkim_dir(env).ok_or(ConfigError {
        var: "VERIMAIL_DKIM_KEYS",
        problem: "required by `dkim keygen`: the directory the key is written to".into(),
    })?;
    let selector = config::dkim_selector(env)?;
    // Key files are named by the spelling From domains are compared in.
    let domain = verimail_worker::mail::sender::domain_name(&domain)
        .ok_or_else(|| anyhow::anyhow!("--domain: not a domain name like mail.example.com"))?;
    let kind = if ed25519 {
        KeyKind::Ed25519
    } else {
        KeyKind::Rsa
    };
    let record = dkim::keygen(&dir, &domain, &selector, kind, force)?;
    print(json!({"name": record.name, "value": record.value}));
    Ok(())
}

/// The long-running parts of one process (intake, worker, or both). One
/// stop flag stops them all: raised by SIGTERM/SIGINT, or by a part that
/// ends on its own.
struct Parts {
    stop: Arc<watch::Sender<bool>>,
    running: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
}

impl Parts {
    fn new() -> Self {
        Self {
            stop: Arc::new(watch::channel(false).0),
            running: Vec::new(),
        }
    }

    /// Resolves once the stop flag is raised (a part's `shutdown`).
    fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.stop.subscribe();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    }

    fn spawn(
        &mut self,
        name: &'static str,
        part: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let stop = self.stop.clone();
        self.running.push((
            name,
            tokio::spawn(async move {
                let ended = part.await;
                stop.send_replace(true);
                ended
            }),
        ));
    }

    /// Waits for a signal (or a part that ended), stops every part, then
    /// waits for each in turn; the first failure is the answer.
    async fn run_until_signal(self) -> anyhow::Result<()> {
        tokio::select! {
            () = shutdown_signal() => {}
            () = self.stopping() => {}
        }
        self.stop.send_replace(true);
        for (name, task) in self.running {
            task.await.with_context(|| format!("{name} task"))??;
        }
        Ok(())
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested");
}
