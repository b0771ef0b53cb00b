//! The commands README's "CLI" section lists. Results go to stdout as one JSON object, logs to stderr.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use uuid::Uuid;
use verimail_domain::secrets::{Keys, MasterSecret};
use verimail_infra::db;
use verimail_intake::accounts::{self, AccountKind, AccountStatus};

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
    verimail_infra::telemetry::init(json_logs);
    match run(cli.command, &env).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if let Some(config) = error.downcast_ref::<ConfigError>() {
                eprintln!("verimail: {config}");
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
        Command::Migrate => {
            db::create_database_if_missing(&common.database_url).await?;
            let pool = db::pool(&common.db_for_migrations())?;
            db::migrate(&pool).await?;
            print(json!({"migrated": true}));
        }
        Command::Intake => {
            let intake = config::Intake::load(env)?;
            let keys = Keys::derive(&config::require_secret(env)?);
            let pool = db::pool(&common.db())?;
            let app =
                verimail_intake::Application::build(intake.settings(&common), pool, keys).await?;
            app.run_until(shutdown_signal()).await?;
        }
        Command::Worker => {
            let worker = config::Worker::load(env)?;
            let keys = Keys::derive(&config::require_secret(env)?);
            let pool = db::pool(&common.db())?;
            let listener = tokio::net::TcpListener::bind(worker.metrics_listen)
                .await
                .with_context(|| {
                    format!("binding VERIMAIL_METRICS_LISTEN {}", worker.metrics_listen)
                })?;
            tracing::info!(addr = %worker.metrics_listen, "worker metrics listening");
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let metrics = tokio::spawn(verimail_infra::metrics_server::serve(
                listener,
                when_stopped(&stopped),
            ));
            let worker_task = tokio::spawn(verimail_worker::run_until(
                worker.settings(&common),
                pool,
                keys,
                stopped,
            ));
            shutdown_signal().await;
            let _ = stop.send(true);
            worker_task.await.context("worker task")??;
            metrics.await.context("metrics task")??;
        }
        Command::All => {
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
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let app = verimail_intake::Application::build(
                intake.settings(&common),
                pool.clone(),
                keys.clone(),
            )
            .await?;
            let intake_task = tokio::spawn(app.run_until(when_stopped(&stopped)));
            let worker_task = tokio::spawn(verimail_worker::run_until(
                worker.settings(&common),
                pool,
                keys,
                stopped,
            ));
            shutdown_signal().await;
            let _ = stop.send(true);
            intake_task.await.context("intake task")??;
            worker_task.await.context("worker task")??;
        }
        Command::Maintain => {
            let policy = verimail_worker::maintenance::Policy {
                retention: config::retention(env)?,
            };
            let pool = db::pool(&common.db_for_migrations())?;
            let outcome =
                verimail_worker::maintenance::maintain(&pool, policy, MAINTAIN_WAIT, None).await?;
            let verimail_worker::maintenance::Outcome::Done(report) = outcome else {
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
            let covered_until = report
                .covered_until
                .format(&time::format_description::well_known::Rfc3339)?;
            print(json!({"created": report.created, "dropped": dropped,
                         "partitions": report.partitions, "covered_until": covered_until}));
        }
        Command::Forget { email } => {
            let email = verimail_domain::Email::parse(&email)
                .map_err(|rejection| anyhow::anyhow!("--email: {rejection}"))?;
            let outbox = config::Worker::outbox(env)?;
            let pool = db::pool(&common.db())?;
            let erased = verimail_worker::erasure::forget(&pool, &email, Some(&outbox)).await?;
            print(json!({"recipient": email.normalised(),
                         "dispatch_rows": erased.dispatch_rows(),
                         "partitions": erased.dispatches,
                         "replay_records": erased.replays,
                         "outbox_files": erased.outbox_files}));
        }
        Command::Partner(PartnerCommand::Create {
            name,
            customer,
            suspended,
        }) => {
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
        }
        Command::Token(TokenCommand::Issue { partner, ttl }) => {
            let pool = db::pool(&common.db())?;
            let issued = accounts::issue_token(&pool, partner, ttl).await?;
            let expires_at = issued
                .expires_at
                .format(&time::format_description::well_known::Rfc3339)?;
            print(json!({"token": issued.token, "partner_id": partner, "expires_at": expires_at}));
        }
        Command::Key(KeyCommand::Create { partner }) => {
            let keys = Keys::derive(&config::require_secret(env)?);
            let pool = db::pool(&common.db())?;
            let created = accounts::create_access_key(&pool, &keys, partner).await?;
            // The SDKs' domain_id is 32 hex digits; verimail accepts either UUID spelling.
            print(
                json!({"access_key": created.access_key, "secret_key": created.secret_key,
                         "domain_id": partner.simple().to_string()}),
            );
        }
        Command::Key(KeyCommand::Revoke { access_key }) => {
            let pool = db::pool(&common.db())?;
            if !accounts::revoke_access_key(&pool, &access_key).await? {
                anyhow::bail!("no live access key matches");
            }
            print(json!({"revoked": true}));
        }
        Command::Token(TokenCommand::Revoke { token }) => {
            let pool = db::pool(&common.db())?;
            let revoked = accounts::revoke_token(&pool, &token)
                .await
                .context("revoking")?;
            if !revoked {
                anyhow::bail!("no live token matches");
            }
            print(json!({"revoked": true}));
        }
    }
    if let Some(bootstrap) = dev_bootstrap {
        bootstrap.run(env, &common).await?;
    }
    Ok(())
}

/// Resolves once the shared stop flag is raised: one signal stops every
/// part of the process.
fn when_stopped(
    stopped: &tokio::sync::watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut stopped = stopped.clone();
    async move {
        let _ = stopped.wait_for(|s| *s).await;
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
