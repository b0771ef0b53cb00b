//! Postgres: pool, migrations, and creating the database for the quick start.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

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
/// Postgres is down and recovers by itself when it returns.
pub fn pool(settings: &DbSettings) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = settings
        .url
        .expose()
        .parse()
        .context("DATABASE_URL is not a Postgres URL")?;
    // Whatever the database's defaults: accept_dispatch needs READ COMMITTED
    // (a fresh snapshot after its advisory lock) for the rate limit to be
    // exact, and no statement may hang a request or a worker unboundedly.
    let timeout_ms = settings
        .statement_timeout
        .map_or(0, |t| t.as_millis().max(1));
    let options = options
        .options([
            ("default_transaction_isolation", "read committed".to_owned()),
            ("statement_timeout", timeout_ms.to_string()),
        ])
        .log_statements(tracing::log::LevelFilter::Trace);
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(0)
        // A broken connection fails its query (answered with a CBC error) and
        // is dropped; probing every checkout cost a round trip per query.
        .test_before_acquire(false)
        .acquire_timeout(settings.acquire_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy_with(options))
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

/// Creates the database named in `url` when it does not exist yet.
pub async fn create_database_if_missing(
    url: &verimail_domain::secrets::SecretUrl,
) -> anyhow::Result<()> {
    let options: PgConnectOptions = url
        .expose()
        .parse()
        .context("DATABASE_URL is not a Postgres URL")?;
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
