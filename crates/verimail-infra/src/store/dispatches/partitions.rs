//! The partitions of `dispatches` (migrations 0006–0008): what the catalog
//! says about them, and the DDL that creates, detaches and drops them. The
//! policy (which to create or drop, and when) is the worker's maintenance;
//! the statements are here, with the rest of the table's. DDL names a table,
//! so it is built at run time (quoted with `ident`); the catalog reads are
//! checked at compile time like every other statement.

use anyhow::Context;
use sqlx::{Connection, PgConnection};
use time::OffsetDateTime;
use uuid::Uuid;

/// Distinguishes maintenance's lock from any other advisory lock
/// ("verimail" in ASCII).
const LOCK_KEY: i64 = 0x7665_7269_6d61_696c;

/// Percent of each heap page that inserts fill (migrations/0010): room for
/// HOT updates.
const FILLFACTOR: u8 = 70;

/// An attached partition as the catalog lists it.
#[derive(Debug, Clone)]
pub struct Attached {
    pub name: String,
    /// `FOR VALUES FROM (…) TO (…)`.
    pub bound: String,
    pub bytes: i64,
    /// Postgres' estimate (`reltuples`); counting would read the partition.
    pub rows_estimate: i64,
}

/// A table named like a partition that is not attached (a run that died
/// between detach and drop left it, or an operator made it).
#[derive(Debug, Clone)]
pub struct Detached {
    pub name: String,
    /// Its `<name>_bound` CHECK, which still states its range.
    pub check: Option<String>,
    pub bytes: i64,
    pub rows_estimate: i64,
}

fn estimate(tuples: f32) -> i64 {
    tuples.max(0.0) as i64
}

/// Bounds a maintenance session: a lock that is not granted quickly is given
/// up (the next run tries again) rather than queueing every send behind it.
pub async fn bound_session(
    conn: &mut PgConnection,
    statement_timeout: &str,
    lock_timeout: &str,
) -> anyhow::Result<()> {
    execute(
        conn,
        format!(
            "SET statement_timeout = '{statement_timeout}'; SET lock_timeout = '{lock_timeout}'"
        ),
    )
    .await
    .context("setting the maintenance session up")
}

/// Takes maintenance's session lock if it is free; it goes with the session.
pub async fn try_lock(conn: &mut PgConnection) -> anyhow::Result<bool> {
    sqlx::query_scalar!(r#"SELECT pg_try_advisory_lock($1) AS "locked!""#, LOCK_KEY)
        .fetch_one(&mut *conn)
        .await
        .context("taking the maintenance lock")
}

/// The database's clock, which partitions are judged by.
pub async fn now(conn: &mut PgConnection) -> anyhow::Result<OffsetDateTime> {
    sqlx::query_scalar!(r#"SELECT now() AS "now!""#)
        .fetch_one(&mut *conn)
        .await
        .context("reading the database clock")
}

pub async fn attached(conn: &mut PgConnection) -> anyhow::Result<Vec<Attached>> {
    let rows = sqlx::query!(
        r#"SELECT c.relname::text AS "name!", pg_get_expr(c.relpartbound, c.oid) AS "bound!",
                  pg_total_relation_size(c.oid) AS "bytes!", c.reltuples
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = 'dispatches'::regclass AND NOT i.inhdetachpending"#
    )
    .fetch_all(&mut *conn)
    .await
    .context("listing the partitions of dispatches")?;
    Ok(rows
        .into_iter()
        .map(|r| Attached {
            name: r.name,
            bound: r.bound,
            bytes: r.bytes,
            rows_estimate: estimate(r.reltuples),
        })
        .collect())
}

/// Partitions whose `DETACH … CONCURRENTLY` stopped half-way (it runs in
/// two transactions).
pub async fn detaching(conn: &mut PgConnection) -> anyhow::Result<Vec<String>> {
    sqlx::query_scalar!(
        r#"SELECT c.relname::text AS "name!" FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = 'dispatches'::regclass AND i.inhdetachpending"#
    )
    .fetch_all(&mut *conn)
    .await
    .context("looking for interrupted detaches")
}

pub async fn finish_detach(conn: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    execute(
        conn,
        format!(
            "ALTER TABLE dispatches DETACH PARTITION {} FINALIZE",
            ident(name)
        ),
    )
    .await
}

/// Tables named like a partition (or the pre-partitioning table) that are
/// not attached.
pub async fn detached(conn: &mut PgConnection) -> anyhow::Result<Vec<Detached>> {
    let rows = sqlx::query!(
        r#"SELECT c.relname::text AS "name!",
                  (SELECT pg_get_constraintdef(k.oid) FROM pg_constraint k
                    WHERE k.conrelid = c.oid
                      AND k.conname IN (c.relname || '_bound', 'dispatches_legacy_bound')) AS "check",
                  pg_total_relation_size(c.oid) AS "bytes!", c.reltuples
             FROM pg_class c
            WHERE c.relkind = 'r' AND NOT c.relispartition
              AND c.relnamespace = current_schema()::regnamespace
              AND (c.relname LIKE 'dispatches\_p%' OR c.relname = 'dispatches_legacy')"#
    )
    .fetch_all(&mut *conn)
    .await
    .context("looking for detached partitions")?;
    Ok(rows
        .into_iter()
        .map(|r| Detached {
            name: r.name,
            check: r.check,
            bytes: r.bytes,
            rows_estimate: estimate(r.reltuples),
        })
        .collect())
}

/// Detaches without blocking sends: CONCURRENTLY takes only SHARE UPDATE
/// EXCLUSIVE on `dispatches`, and must run outside a transaction block.
pub async fn detach_concurrently(conn: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    execute(
        conn,
        format!(
            "ALTER TABLE dispatches DETACH PARTITION {} CONCURRENTLY",
            ident(name)
        ),
    )
    .await
}

/// Drops a table nothing reads any more (a detached partition).
pub async fn drop_table(conn: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    execute(conn, format!("DROP TABLE {}", ident(name))).await
}

/// Creates the table on its own and attaches it, which takes only SHARE
/// UPDATE EXCLUSIVE on `dispatches` (`CREATE TABLE ... PARTITION OF` would
/// take ACCESS EXCLUSIVE). Its CHECK constraint states the range, so the
/// attach has nothing to scan; indexes and the foreign key come with it.
pub async fn create(
    conn: &mut PgConnection,
    name: &str,
    from: Uuid,
    to: Uuid,
) -> anyhow::Result<()> {
    let (table, check) = (ident(name), ident(&format!("{name}_bound")));
    let mut tx = conn
        .begin()
        .await
        .context("starting a partition's creation")?;
    for sql in [
        format!(
            "CREATE TABLE {table} (LIKE dispatches INCLUDING DEFAULTS INCLUDING CONSTRAINTS) \
             WITH (fillfactor = {FILLFACTOR})"
        ),
        format!(
            "ALTER TABLE {table} ADD CONSTRAINT {check} CHECK (id >= '{from}' AND id < '{to}')"
        ),
        format!(
            "ALTER TABLE dispatches ATTACH PARTITION {table} FOR VALUES FROM ('{from}') TO ('{to}')"
        ),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut *tx)
            .await
            .with_context(|| format!("creating partition {name}: {sql}"))?;
    }
    tx.commit()
        .await
        .with_context(|| format!("creating partition {name}"))
}

async fn execute(conn: &mut PgConnection, sql: String) -> anyhow::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
        .execute(&mut *conn)
        .await
        .with_context(|| format!("maintenance step failed: {sql}"))?;
    Ok(())
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
