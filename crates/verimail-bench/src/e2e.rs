//! End-to-end figures from the dispatch records: the load is sent over HTTP
//! as in `intake`, then Postgres tells when each accepted dispatch was
//! created and when the SMTP server accepted its mail (`sent_at`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;
use verimail_domain::DispatchStatus;
use verimail_infra::store::dispatches::report::{self as ends, Timing};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::load::{self, LoadArgs};
use crate::report::{self, LoadReport, Percentiles, round2};
use crate::{OutputArgs, parse_duration};

#[derive(Args, Clone, Debug)]
pub struct E2eArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Args, Clone, Debug)]
pub struct DbArgs {
    /// The database the intake and workers use (read only).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Give up waiting for dispatches to end after this long.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// How often to look. Each look walks the index of open dispatches to
    /// the first one, so it barely loads the Postgres being measured.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    pub poll: Duration,
}

#[derive(Args, Clone, Debug)]
pub struct DrainArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Count mails sent from this instant (RFC 3339) on; default: now.
    #[arg(long)]
    pub since: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The mail side of an e2e run.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    /// 204s, i.e. dispatches that must end.
    pub dispatches: u64,
    /// Of those, rows found in Postgres.
    pub found: u64,
    pub all_terminal: bool,
    pub by_status: BTreeMap<String, u64>,
    pub sent: u64,
    /// Sent mails ÷ (last SMTP acceptance − first request).
    pub mails_per_s: f64,
    pub window_s: f64,
    /// How long after the last response the last mail was accepted: the
    /// backlog the workers still had when the load stopped.
    pub tail_after_load_s: f64,
    /// `sent_at − created_at` of each sent dispatch (database clock only).
    pub request_to_sent_ms: Percentiles,
    /// `sent_at −` the moment the client sent the request: also counts the
    /// HTTP and authentication time before the row was written.
    pub client_to_sent_ms: Percentiles,
}

#[derive(Serialize)]
struct E2eJson<'a> {
    #[serde(flatten)]
    load: &'a LoadReport,
    pipeline: &'a PipelineReport,
}

pub async fn main(args: E2eArgs) -> anyhow::Result<ExitCode> {
    // Connect first: a wrong --database-url should fail before the load.
    let pool = connect(&args.db.database_url).await?;
    let run = load::run(&args.load).await?;
    let load_report = LoadReport::from_run("e2e", &args.load, &run);
    let accepted = run.accepted();
    if accepted.is_empty() {
        report::emit(&args.load.output, &load_report.human(), &load_report)?;
        anyhow::bail!("no request was accepted, so there is nothing to follow to the mail server");
    }
    eprintln!(
        "e2e: {} dispatches accepted; waiting for them to end",
        accepted.len()
    );
    let ids: Vec<Uuid> = accepted.iter().map(|(id, _)| *id).collect();
    let since = run.started_wall - Duration::from_secs(1);
    let all_terminal = wait_until_terminal(&pool, &ids, since, &args.db).await?;
    let rows = ends::timings(&pool, &ids).await?;
    pool.close().await;

    let due: std::collections::HashMap<Uuid, OffsetDateTime> = accepted.into_iter().collect();
    let load_end = run.started_wall + run.elapsed;
    let pipeline = pipeline_report(&rows, &due, run.started_wall, load_end, all_terminal);
    let human = format!("{}{}", load_report.human(), pipeline.human());
    report::emit(
        &args.load.output,
        &human,
        &E2eJson {
            load: &load_report,
            pipeline: &pipeline,
        },
    )?;
    if !all_terminal {
        anyhow::bail!(
            "not every accepted dispatch ended within {:?} (see by_status)",
            args.db.drain_timeout
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn connect(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .context("connecting to --database-url")
}

/// Waits until every id is in a final state. The cheap question ("is any
/// dispatch created since the start still open?", answered from the partial
/// index of open dispatches) is asked while the workers are busy; the exact
/// one over every id only once that says none is.
async fn wait_until_terminal(
    pool: &PgPool,
    ids: &[Uuid],
    since: OffsetDateTime,
    db: &DbArgs,
) -> anyhow::Result<bool> {
    let give_up = tokio::time::Instant::now() + db.drain_timeout;
    loop {
        if !ends::any_open_since(pool, since).await? {
            let done = ends::finished_among(pool, ids).await?;
            if usize::try_from(done).is_ok_and(|d| d >= ids.len()) {
                return Ok(true);
            }
        }
        if tokio::time::Instant::now() >= give_up {
            return Ok(false);
        }
        tokio::time::sleep(db.poll).await;
    }
}

fn pipeline_report(
    rows: &[Timing],
    due: &std::collections::HashMap<Uuid, OffsetDateTime>,
    started: OffsetDateTime,
    load_end: OffsetDateTime,
    all_terminal: bool,
) -> PipelineReport {
    let mut by_status = BTreeMap::new();
    let mut row_latency = Vec::new();
    let mut client_latency = Vec::new();
    let mut last_sent: Option<OffsetDateTime> = None;
    for Timing {
        id,
        status,
        created_at,
        sent_at,
    } in rows
    {
        *by_status.entry(status.as_str().to_owned()).or_insert(0) += 1;
        let Some(sent_at) = *sent_at else { continue };
        if *status != DispatchStatus::Sent {
            continue;
        }
        row_latency.push(non_negative(sent_at - *created_at));
        if let Some(due) = due.get(id) {
            client_latency.push(non_negative(sent_at - *due));
        }
        last_sent = Some(last_sent.map_or(sent_at, |l| l.max(sent_at)));
    }
    let sent = row_latency.len() as u64;
    let window = last_sent.map_or(Duration::ZERO, |l| non_negative(l - started));
    let tail = last_sent.map_or(Duration::ZERO, |l| non_negative(l - load_end));
    PipelineReport {
        dispatches: due.len() as u64,
        found: rows.len() as u64,
        all_terminal,
        by_status,
        sent,
        mails_per_s: rate(sent, window),
        window_s: round2(window.as_secs_f64()),
        tail_after_load_s: round2(tail.as_secs_f64()),
        request_to_sent_ms: Percentiles::of(row_latency),
        client_to_sent_ms: Percentiles::of(client_latency),
    }
}

fn non_negative(d: time::Duration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

fn rate(count: u64, window: Duration) -> f64 {
    if window.is_zero() {
        0.0
    } else {
        round2(count as f64 / window.as_secs_f64())
    }
}

impl PipelineReport {
    pub fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "pipeline: {} dispatches, {} found, {}",
            self.dispatches,
            self.found,
            if self.all_terminal {
                "all terminal"
            } else {
                "NOT ALL TERMINAL"
            }
        );
        let _ = writeln!(out, "  by status     {}", report::counts(&self.by_status));
        let _ = writeln!(
            out,
            "  mails/s       {:.1} ({} sent from first request to last SMTP acceptance in {:.2} s; last mail {:.2} s after the load)",
            self.mails_per_s, self.sent, self.window_s, self.tail_after_load_s
        );
        let _ = writeln!(
            out,
            "  created→sent  ms  {}",
            self.request_to_sent_ms.line()
        );
        let _ = writeln!(out, "  request→sent  ms  {}", self.client_to_sent_ms.line());
        out
    }
}

/// Worker capacity without intake load: how fast a standing backlog drained.
#[derive(Debug, Serialize)]
struct DrainReport {
    mode: &'static str,
    /// Mails with `sent_at` at or after `since`.
    sent: u64,
    /// From the first to the last of those SMTP acceptances.
    window_s: f64,
    mails_per_s: f64,
    /// Every dispatch in the database, by status.
    by_status: BTreeMap<String, u64>,
    all_terminal: bool,
}

pub async fn drain_main(args: DrainArgs) -> anyhow::Result<ExitCode> {
    let since = match &args.since {
        Some(s) => OffsetDateTime::parse(s, &Rfc3339).context("--since is not RFC 3339")?,
        None => OffsetDateTime::now_utc(),
    };
    let pool = connect(&args.db.database_url).await?;
    let give_up = tokio::time::Instant::now() + args.db.drain_timeout;
    let all_terminal = loop {
        if !ends::any_open(&pool).await? {
            break true;
        }
        if tokio::time::Instant::now() >= give_up {
            break false;
        }
        tokio::time::sleep(args.db.poll).await;
    };
    let (sent, first, last) = ends::sent_since(&pool, since).await?;
    let statuses = ends::by_status(&pool).await?;
    pool.close().await;

    let window = match (first, last) {
        (Some(first), Some(last)) => non_negative(last - first),
        _ => Duration::ZERO,
    };
    let sent = u64::try_from(sent).unwrap_or(0);
    let report = DrainReport {
        mode: "drain",
        sent,
        window_s: round2(window.as_secs_f64()),
        mails_per_s: rate(sent, window),
        by_status: statuses
            .into_iter()
            .map(|(s, n)| (s, u64::try_from(n).unwrap_or(0)))
            .collect(),
        all_terminal,
    };
    let human = format!(
        "drain: {} mails in {:.2} s = {:.1} mails/s; {}\n  by status     {}\n",
        report.sent,
        report.window_s,
        report.mails_per_s,
        if all_terminal {
            "nothing open"
        } else {
            "STILL OPEN at the timeout"
        },
        report::counts(&report.by_status)
    );
    report::emit(&args.output, &human, &report)?;
    if !all_terminal {
        anyhow::bail!(
            "dispatches were still open after {:?}",
            args.db.drain_timeout
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use time::macros::datetime;

    use super::*;

    #[test]
    fn mails_per_second_runs_from_first_request_to_last_acceptance() {
        let start = datetime!(2026-01-01 0:00:00 UTC);
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let c = Uuid::from_u128(3);
        let timing = |id, status, created_at, sent_at| Timing {
            id,
            status,
            created_at,
            sent_at,
        };
        let rows = vec![
            timing(
                a,
                DispatchStatus::Sent,
                start + Duration::from_millis(10),
                Some(start + Duration::from_millis(110)),
            ),
            timing(
                b,
                DispatchStatus::Sent,
                start + Duration::from_millis(500),
                Some(start + Duration::from_millis(2000)),
            ),
            timing(c, DispatchStatus::Failed, start, None),
        ];
        let due: HashMap<_, _> = [(a, start), (b, start), (c, start)].into();
        let r = pipeline_report(&rows, &due, start, start + Duration::from_secs(1), true);
        assert_eq!(r.sent, 2);
        assert_eq!(r.dispatches, 3);
        assert_eq!(r.by_status["failed"], 1);
        assert!((r.mails_per_s - 1.0).abs() < 1e-9, "{r:?}");
        assert!((r.tail_after_load_s - 1.0).abs() < 1e-9, "{r:?}");
        assert!((r.request_to_sent_ms.max - 1500.0).abs() < 2.0, "{r:?}");
        assert!((r.client_to_sent_ms.max - 2000.0).abs() < 2.0, "{r:?}");
    }
}
