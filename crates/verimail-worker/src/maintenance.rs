//! The data lifecycle of `dispatches` (migrations 0006–0008; ARCHITECTURE.md,
//! "Data lifecycle"): the table is partitioned by ranges of its UUIDv7 id, one
//! UTC day per partition. Maintenance keeps partitions ready a few days ahead
//! and drops whole partitions once everything in them is older than the
//! retention, so old rows never cost a DELETE, a vacuum or a long lock.
//!
//! Every worker runs it on a timer and operators run `verimail maintain`; a
//! session advisory lock makes one run at a time, and each step is safe to
//! repeat, so a run that died half-way is finished by the next.

use std::time::Duration;

use anyhow::Context;
use sqlx::{Connection, PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;
use verimail_infra::metrics as m;
use verimail_infra::store::dispatches::{self, partitions};
use verimail_infra::store::webhook_events;

/// Days of partitions kept ready after today's.
pub const AHEAD_DAYS: i64 = 3;

/// The shortest retention the configuration accepts: the rate limit looks
/// back one day and a code lives up to 60 minutes, so younger rows still
/// decide answers.
pub const LEAST_RETENTION: Duration = Duration::from_secs(25 * 3600);

/// How far an id's time may be from the row's `created_at` (accept_dispatch
/// refuses more); partitions are judged by id, so drops wait this much longer.
const CLOCK_MARGIN_MS: i64 = dispatches::ID_CLOCK_MARGIN.as_millis() as i64;

const DAY_MS: i64 = 86_400_000;

/// Bounds for a step that waits on other sessions: a lock that is not granted
/// quickly is given up (the next run tries again) rather than queueing every
/// send behind it.
const LOCK_TIMEOUT: &str = "3s";
const STATEMENT_TIMEOUT: &str = "5min";

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Partitions whose every row is older than this are dropped.
    pub retention: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub partition: String,
    pub bytes: i64,
    /// Postgres' estimate (`reltuples`); counting would read the partition.
    pub rows_estimate: i64,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub created: Vec<String>,
    pub dropped: Vec<Dropped>,
    /// Attached partitions after the run.
    pub partitions: usize,
    /// Where the partitions covering "now" without a gap end.
    pub covered_until: OffsetDateTime,
    /// Webhook events past the retention, deleted with the partitions.
    pub webhook_events_deleted: u64,
}

#[derive(Debug)]
pub enum Outcome {
    Done(Report),
    /// Another session holds the maintenance lock.
    Busy,
}

/// One maintenance run. Waits up to `wait` for the lock (zero: try once).
/// `now` replaces the database clock, for tests that move time.
pub async fn maintain(
    pool: &PgPool,
    policy: Policy,
    wait: Duration,
    now: Option<OffsetDateTime>,
) -> anyhow::Result<Outcome> {
    // A connection of its own: it carries session settings and the advisory
    // lock, and is closed afterwards rather than returned to the pool.
    let mut conn = pool
        .acquire()
        .await
        .context("connecting for maintenance")?
        .detach();
    let outcome = run_locked(&mut conn, policy, wait, now).await;
    let _ = conn.close().await;
    let label = match &outcome {
        Ok(Outcome::Done(_)) => "done",
        Ok(Outcome::Busy) => "busy",
        Err(_) => "failed",
    };
    metrics::counter!(m::MAINTENANCE_RUNS, "outcome" => label).increment(1);
    outcome
}

async fn run_locked(
    conn: &mut PgConnection,
    policy: Policy,
    wait: Duration,
    now: Option<OffsetDateTime>,
) -> anyhow::Result<Outcome> {
    partitions::bound_session(conn, STATEMENT_TIMEOUT, LOCK_TIMEOUT).await?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if partitions::try_lock(conn).await? {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Outcome::Busy);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let now_ms = match now {
        Some(now) => unix_ms(now),
        None => unix_ms(partitions::now(conn).await?),
    };
    // The lock goes with the connection, which is closed whatever happens.
    Ok(Outcome::Done(steps(conn, policy, now_ms).await?))
}

async fn steps(conn: &mut PgConnection, policy: Policy, now_ms: i64) -> anyhow::Result<Report> {
    let retention_ms = i64::try_from(policy.retention.as_millis()).unwrap_or(i64::MAX);
    let cutoff = now_ms
        .saturating_sub(retention_ms)
        .saturating_sub(CLOCK_MARGIN_MS);
    let mut dropped = finish_interrupted(conn, cutoff).await?;
    for partition in attached(conn).await? {
        if partition.hi <= cutoff {
            dropped.push(drop_partition(conn, &partition).await?);
        }
    }
    let mut created = Vec::new();
    let today = now_ms - now_ms.rem_euclid(DAY_MS);
    let existing = attached(conn).await?;
    for (lo, hi) in gaps(&existing, today, today + (AHEAD_DAYS + 1) * DAY_MS) {
        let name = partition_name(lo)?;
        create_partition(conn, &name, lo, hi).await?;
        created.push(name);
    }
    let webhook_events_deleted =
        webhook_events::delete_created_before(conn, from_unix_ms(cutoff)?).await?;
    let partitions = attached(conn).await?;
    let covered_until = covered_until(&partitions, now_ms);
    metrics::gauge!(m::PARTITIONS_AHEAD).set((covered_until - now_ms) as f64 / 1000.0);
    metrics::gauge!(m::PARTITIONS_READY_UNTIL).set(covered_until as f64 / 1000.0);
    Ok(Report {
        created,
        dropped,
        partitions: partitions.len(),
        covered_until: from_unix_ms(covered_until)?,
        webhook_events_deleted,
    })
}

/// An attached partition and its id range, as Unix milliseconds
/// (`i64::MIN`/`MAX` for MINVALUE/MAXVALUE).
#[derive(Debug, Clone)]
struct Partition {
    name: String,
    lo: i64,
    hi: i64,
    bytes: i64,
    rows_estimate: i64,
}

async fn attached(conn: &mut PgConnection) -> anyhow::Result<Vec<Partition>> {
    let mut attached = partitions::attached(conn)
        .await?
        .into_iter()
        .map(|p| {
            let (lo, hi) = parse_bound(&p.bound)
                .with_context(|| format!("reading the bounds of {}: {}", p.name, p.bound))?;
            Ok(Partition {
                name: p.name,
                lo,
                hi,
                bytes: p.bytes,
                rows_estimate: p.rows_estimate,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    attached.sort_by_key(|p| p.lo);
    Ok(attached)
}

/// Completes what an interrupted run left: a detach that stopped half-way
/// (`DETACH ... CONCURRENTLY` runs in two transactions), and detached
/// partitions that were not dropped yet. A table of that name that is
/// neither (an operator's copy, say) is left alone.
async fn finish_interrupted(conn: &mut PgConnection, cutoff: i64) -> anyhow::Result<Vec<Dropped>> {
    for name in partitions::detaching(conn).await? {
        tracing::info!(partition = %name, "finishing an interrupted detach");
        partitions::finish_detach(conn, &name).await?;
    }
    // Detached tables still carry the range as their `<name>_bound` CHECK.
    let mut dropped = Vec::new();
    for table in partitions::detached(conn).await? {
        let hi = table.check.as_deref().and_then(last_uuid).map(uuid_ms);
        if hi.is_some_and(|hi| hi <= cutoff) {
            partitions::drop_table(conn, &table.name).await?;
            tracing::info!(partition = %table.name, bytes = table.bytes, "dropped a detached partition past the retention");
            metrics::counter!(m::PARTITIONS_DROPPED).increment(1);
            dropped.push(Dropped {
                partition: table.name,
                bytes: table.bytes,
                rows_estimate: table.rows_estimate,
            });
        } else {
            tracing::warn!(partition = %table.name, "a table named like a partition of dispatches is not attached; leaving it");
        }
    }
    Ok(dropped)
}

/// Detaches without blocking sends, then drops the table.
async fn drop_partition(conn: &mut PgConnection, p: &Partition) -> anyhow::Result<Dropped> {
    partitions::detach_concurrently(conn, &p.name).await?;
    partitions::drop_table(conn, &p.name).await?;
    tracing::info!(
        partition = %p.name,
        bytes = p.bytes,
        rows_estimate = p.rows_estimate,
        "dropped a partition past the retention"
    );
    metrics::counter!(m::PARTITIONS_DROPPED).increment(1);
    Ok(Dropped {
        partition: p.name.clone(),
        bytes: p.bytes,
        rows_estimate: p.rows_estimate,
    })
}

async fn create_partition(
    conn: &mut PgConnection,
    name: &str,
    lo: i64,
    hi: i64,
) -> anyhow::Result<()> {
    let (from, to) = (ms_uuid(lo), ms_uuid(hi));
    partitions::create(conn, name, from, to).await?;
    tracing::info!(partition = %name, from = %from, to = %to, "created a partition");
    metrics::counter!(m::PARTITIONS_CREATED).increment(1);
    Ok(())
}

/// The pieces of `[from, to)` no partition covers, cut at UTC day boundaries.
fn gaps(partitions: &[Partition], from: i64, to: i64) -> Vec<(i64, i64)> {
    let mut pieces = Vec::new();
    let mut at = from;
    while at < to {
        if let Some(p) = partitions.iter().find(|p| p.lo <= at && at < p.hi) {
            at = p.hi;
            continue;
        }
        let day_end = at - at.rem_euclid(DAY_MS) + DAY_MS;
        let next_start = partitions
            .iter()
            .map(|p| p.lo)
            .filter(|lo| *lo > at)
            .min()
            .unwrap_or(i64::MAX);
        let end = day_end.min(next_start).min(to);
        pieces.push((at, end));
        at = end;
    }
    pieces
}

fn covered_until(partitions: &[Partition], now: i64) -> i64 {
    let mut at = now;
    while let Some(p) = partitions.iter().find(|p| p.lo <= at && at < p.hi) {
        if p.hi == i64::MAX {
            return i64::MAX;
        }
        at = p.hi;
    }
    at
}

/// `dispatches_pYYYYMMDD`, with the time of day when the range does not start
/// at midnight (a gap beside a partition made by hand).
fn partition_name(lo: i64) -> anyhow::Result<String> {
    let at = from_unix_ms(lo)?;
    let day = at
        .format(time::macros::format_description!("[year][month][day]"))
        .context("formatting a partition name")?;
    if lo.rem_euclid(DAY_MS) == 0 {
        return Ok(format!("dispatches_p{day}"));
    }
    let clock = at
        .format(time::macros::format_description!(
            "[hour][minute][second][subsecond digits:3]"
        ))
        .context("formatting a partition name")?;
    Ok(format!("dispatches_p{day}_{clock}"))
}

/// `FOR VALUES FROM ('…') TO ('…')`, either side possibly MINVALUE/MAXVALUE.
fn parse_bound(bound: &str) -> Option<(i64, i64)> {
    let (_, rest) = bound.split_once("FROM (")?;
    let (from, rest) = rest.split_once(") TO (")?;
    let to = rest.strip_suffix(')')?;
    let value = |v: &str| -> Option<i64> {
        match v.trim() {
            "MINVALUE" => Some(i64::MIN),
            "MAXVALUE" => Some(i64::MAX),
            quoted => Some(uuid_ms(last_uuid(quoted)?)),
        }
    };
    Some((value(from)?, value(to)?))
}

/// The last quoted UUID in a piece of SQL (a bound, or a CHECK's upper bound).
fn last_uuid(sql: &str) -> Option<Uuid> {
    sql.split('\'')
        .skip(1)
        .step_by(2)
        .filter_map(|s| Uuid::parse_str(s).ok())
        .last()
}

fn uuid_ms(id: Uuid) -> i64 {
    let b = id.as_bytes();
    b[..6]
        .iter()
        .fold(0i64, |acc, byte| (acc << 8) | i64::from(*byte))
}

/// The smallest UUIDv7 of a millisecond (the SQL function `verimail_id_at`).
pub fn ms_uuid(ms: i64) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Uuid::from_bytes(bytes)
}

fn unix_ms(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_unix_ms(ms: i64) -> anyhow::Result<OffsetDateTime> {
    let ms = ms.clamp(0, 253_402_300_799_000);
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .context("a partition bound out of range")
}

/// Runs maintenance now and then every `interval` until `stopped` is raised.
/// A run that finds another in progress just waits for the next turn.
pub async fn run_every(
    pool: PgPool,
    policy: Policy,
    interval: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match maintain(&pool, policy, Duration::ZERO, None).await {
            Ok(Outcome::Done(report)) => tracing::debug!(
                created = report.created.len(),
                dropped = report.dropped.len(),
                partitions = report.partitions,
                "maintenance done"
            ),
            Ok(Outcome::Busy) => tracing::debug!("maintenance is running elsewhere"),
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                "maintenance failed; will try again"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(lo: i64, hi: i64) -> Partition {
        Partition {
            name: String::new(),
            lo,
            hi,
            bytes: 0,
            rows_estimate: 0,
        }
    }

    #[test]
    fn bounds_read_back() {
        let lo = ms_uuid(1_764_633_600_000);
        let hi = ms_uuid(1_764_720_000_000);
        let sql = format!("FOR VALUES FROM ('{lo}') TO ('{hi}')");
        assert_eq!(
            parse_bound(&sql),
            Some((1_764_633_600_000, 1_764_720_000_000))
        );
        let sql = format!("FOR VALUES FROM (MINVALUE) TO ('{hi}')");
        assert_eq!(parse_bound(&sql), Some((i64::MIN, 1_764_720_000_000)));
        assert_eq!(parse_bound("FOR VALUES IN (1)"), None);
    }

    #[test]
    fn a_v7_id_falls_in_the_range_of_its_millisecond() {
        let id = Uuid::now_v7();
        let ms = uuid_ms(id);
        assert!(ms_uuid(ms) <= id && id < ms_uuid(ms + 1));
    }

    #[test]
    fn gaps_are_cut_at_days_and_around_existing_partitions() {
        let d = DAY_MS;
        assert_eq!(gaps(&[], 0, 2 * d), vec![(0, d), (d, 2 * d)]);
        // A hand-made split of day 0 at noon, nothing after.
        let split = [p(0, d / 2), p(d / 2, d)];
        assert_eq!(gaps(&split, 0, 2 * d), vec![(d, 2 * d)]);
        // The old table as the partition of everything below 1.5 days.
        let legacy = [p(i64::MIN, d + d / 2)];
        assert_eq!(
            gaps(&legacy, 0, 3 * d),
            vec![(d + d / 2, 2 * d), (2 * d, 3 * d)]
        );
        assert_eq!(covered_until(&legacy, 0), d + d / 2);
    }

    #[test]
    fn names_say_the_day_and_the_time_when_not_midnight() {
        assert_eq!(
            partition_name(1_764_633_600_000).unwrap(),
            "dispatches_p20251202"
        );
        assert_eq!(
            partition_name(1_764_633_600_000 + 3_600_500).unwrap(),
            "dispatches_p20251202_010000500"
        );
    }
}
