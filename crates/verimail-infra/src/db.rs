//! Postgres: pool, migrations, and creating the database for the quick start.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use sqlx::{ConnectOptions, Connection, PgPool};

use failover::Failover;
pub use targets::{SessionAttrs, Targets};

mod failover;
mod targets;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[derive(Debug, Clone)]
pub struct DbSettings {
    pub url: verimail_domain::secrets::SecretUrl,
    pub max_connections: u32,
    /// Bound on waiting for a connection, so an outage fails requests fast.
    pub acquire_timeout: Duration,
    /// Bound on any one statement (`None` for migrations, which may be long).
    pub statement_timeout: Option<Duration>,
}

/// Builds a pool without connecting: the process starts even while
/// Postgres is down and recovers by itself when it returns. With several
/// hosts in the URL it follows the writable one (see `failover`).
pub fn pool(settings: &DbSettings) -> anyhow::Result<PgPool> {
    let targets = Targets::parse(settings.url.expose())
        .map_err(anyhow::Error::msg)
        .context("DATABASE_URL")?;
    // Whatever the database's defaults: accept_dispatch needs READ COMMITTED
    // (a fresh snapshot after its advisory lock) for the rate limit to be
    // exact, and no statement may hang a request or a worker unboundedly.
    let timeout_ms = settings
        .statement_timeout
        .map_or(0, |t| t.as_millis().max(1));
    let targets = targets.map(|options| {
        options
            .options([
                ("default_transaction_isolation", "read committed".to_owned()),
                ("statement_timeout", timeout_ms.to_string()),
            ])
            .log_statements(tracing::log::LevelFilter::Trace)
    });
    let failover = Failover::new(targets, settings.acquire_timeout);
    let options = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(0)
        // A broken connection fails its query (answered with a CBC error) and
        // is dropped; probing every checkout cost a round trip per query.
        .test_before_acquire(false)
        .acquire_timeout(settings.acquire_timeout)
        .idle_timeout(Some(Duration::from_secs(300)));
    let pool = failover.guard(options).connect_lazy_with(failover.first());
    failover.watch(&pool);
    Ok(pool)
}

/// Whether Postgres answers (a round trip, for readiness).
pub async fn ping(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query!("SELECT 1 AS one")
        .fetch_one(pool)
        .await
        .context("asking Postgres")?;
    Ok(())
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")
}

/// Creates the database named in `url` when it does not exist yet (on the
/// first host that suits, when the URL has several).
pub async fn create_database_if_missing(
    url: &verimail_domain::secrets::SecretUrl,
) -> anyhow::Result<()> {
    let targets = Targets::parse(url.expose())
        .map_err(anyhow::Error::msg)
        .context("DATABASE_URL")?;
    let options = match targets.hosts() {
        [one] => one.clone(),
        hosts => {
            // Asked through the maintenance database, which exists even
            // when ours does not yet.
            let mut chosen = None;
            for host in hosts {
                let admin = host.clone().database("postgres");
                if let Some(conn) =
                    failover::connect_suiting(&admin, targets.attrs(), Duration::from_secs(10))
                        .await
                {
                    conn.close().await.ok();
                    chosen = Some(host.clone());
                    break;
                }
            }
            chosen
                .context("no host of DATABASE_URL answered as its target_session_attrs requires")?
        }
    };
    let name = options.get_database().unwrap_or("postgres").to_owned();
    if options.connect().await.is_ok() {
        return Ok(());
    }
    let mut admin = options
        .clone()
        .database("postgres")
        .connect()
        .await
        .context("connecting to the postgres maintenance database")?;
    let exists = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS "exists!""#,
        name
    )
    .fetch_one(&mut admin)
    .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating database {name}"))?;
    }
    admin.close().await.ok();
    Ok(())
}
