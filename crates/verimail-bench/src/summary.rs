//! The closing table of `scripts/bench.sh`: the figures of every phase side
//! by side, their ratios to what Postgres alone does, and the issue's
//! targets. Informational only: nothing here fails on a timing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

use crate::report::round2;

#[derive(Args, Clone, Debug)]
pub struct SummaryArgs {
    /// The run directory bench.sh wrote: pgbench.tps, intake.json,
    /// drain.json, e2e.json, e2e-open.json, sink.json, rss.txt (any may be
    /// missing).
    pub dir: PathBuf,
}

/// Targets of issue 7.
const INTAKE_RATIO: f64 = 1.0;
const INTAKE_P99_MS: f64 = 25.0;
const E2E_MAILS_PER_S: f64 = 2000.0;
const E2E_P99_MS: f64 = 250.0;
const RSS_MIB: f64 = 64.0;

pub fn main(args: SummaryArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.dir;
    let pgbench = read_text(&dir.join("pgbench.tps"))?.and_then(|t| t.trim().parse::<f64>().ok());
    let intake = last_json(&dir.join("intake.json"))?;
    let drain = last_json(&dir.join("drain.json"))?;
    let e2e = last_json(&dir.join("e2e.json"))?;
    let open = last_json(&dir.join("e2e-open.json"))?;
    let sink = last_json(&dir.join("sink.json"))?;
    let rss = read_text(&dir.join("rss.txt"))?
        .map(|t| parse_rss(&t))
        .unwrap_or_default();

    let num =
        |v: &Option<Value>, pointer: &str| v.as_ref().and_then(|v| v.pointer(pointer)?.as_f64());
    let intake_rps = num(&intake, "/accepted_per_s");
    let intake_p99 = num(&intake, "/latency_ms/p99");
    let intake_errors = num(&intake, "/errors");
    let drain_rate = num(&drain, "/mails_per_s");
    let e2e_rate = num(&e2e, "/pipeline/mails_per_s");
    let e2e_rps = num(&e2e, "/accepted_per_s");
    let e2e_p99 = num(&e2e, "/pipeline/client_to_sent_ms/p99");
    let open_p99 = num(&open, "/pipeline/client_to_sent_ms/p99");
    let open_p99_rows = num(&open, "/pipeline/request_to_sent_ms/p99");
    let open_http_p99 = num(&open, "/latency_ms/p99");
    let open_offered = num(&open, "/offered_rate");
    let open_rps = num(&open, "/accepted_per_s");
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(round2(a / b)),
        _ => None,
    };
    let intake_ratio = ratio(intake_rps, pgbench);

    let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    let met = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "NOT MET",
        None => "not measured",
    };
    let mut out = String::new();
    let _ = writeln!(out, "== summary ({})", dir.display());
    let _ = writeln!(
        out,
        "  pgbench rate-limit transaction   {:>9} tx/s",
        f(pgbench)
    );
    let _ = writeln!(
        out,
        "  intake                            {:>9} req/s  p99 {} ms  errors {}  = {} x pgbench",
        f(intake_rps),
        f(intake_p99),
        intake_errors.map_or_else(|| "-".to_owned(), |e| format!("{e:.0}")),
        f(intake_ratio)
    );
    let _ = writeln!(
        out,
        "  workers draining a backlog        {:>9} mails/s = {} x pgbench",
        f(drain_rate),
        f(ratio(drain_rate, pgbench))
    );
    let _ = writeln!(
        out,
        "  e2e closed loop                   {:>9} mails/s (intake {} req/s) p99 request→sent {} ms = {} x pgbench",
        f(e2e_rate),
        f(e2e_rps),
        f(e2e_p99),
        f(ratio(e2e_rate, pgbench))
    );
    let _ = writeln!(
        out,
        "  e2e open loop at {} req/s       {:>9} req/s  p99 HTTP {} ms  p99 request→sent {} ms (created→sent {} ms)",
        f(open_offered),
        f(open_rps),
        f(open_http_p99),
        f(open_p99),
        f(open_p99_rows)
    );
    for (name, kib) in &rss {
        let _ = writeln!(
            out,
            "  peak RSS {name:<24} {:>9.1} MiB",
            *kib as f64 / 1024.0
        );
    }
    let e2e_mails = num(&e2e, "/pipeline/sent");
    let cpu = read_text(&dir.join("cpu-e2e.txt"))?
        .map(|t| parse_cpu(&t))
        .unwrap_or_default();
    let cpu_per_mail = cpu_ms_per_mail(&cpu, e2e_mails);
    if !cpu_per_mail.is_empty() {
        let line: Vec<String> = cpu_per_mail
            .iter()
            .map(|(name, ms)| format!("{name} {ms:.3}"))
            .collect();
        let _ = writeln!(
            out,
            "  e2e CPU ms per mail               {}",
            line.join(", ")
        );
    }
    if let Some(mails) = num(&sink, "/mails") {
        let _ = writeln!(out, "  mails the SMTP sink accepted      {mails:>9}");
    }
    let intake_ok = match (intake_ratio, intake_p99, intake_errors) {
        (Some(r), Some(p), Some(e)) => Some(r >= INTAKE_RATIO && p <= INTAKE_P99_MS && e == 0.0),
        _ => None,
    };
    let e2e_ok = e2e_rate.map(|r| r >= E2E_MAILS_PER_S);
    let open_ok = open_p99.map(|p| p <= E2E_P99_MS);
    let rss_ok =
        (!rss.is_empty()).then(|| rss.values().all(|kib| (*kib as f64 / 1024.0) <= RSS_MIB));
    let _ = writeln!(
        out,
        "  targets: intake >= {INTAKE_RATIO} x pgbench, p99 <= {INTAKE_P99_MS} ms, no errors: {}; e2e >= {E2E_MAILS_PER_S} mails/s: {}; p99 request→sent <= {E2E_P99_MS} ms at the open rate: {}; RSS <= {RSS_MIB} MiB: {}",
        met(intake_ok),
        met(e2e_ok),
        met(open_ok),
        met(rss_ok)
    );
    print!("{out}");
    let rss_mib: BTreeMap<&String, f64> = rss
        .iter()
        .map(|(k, v)| (k, round2(*v as f64 / 1024.0)))
        .collect();
    println!(
        "{}",
        json!({
            "mode": "summary",
            "pgbench_tps": pgbench,
            "intake_req_per_s": intake_rps,
            "intake_p99_ms": intake_p99,
            "intake_errors": intake_errors,
            "intake_over_pgbench": intake_ratio,
            "drain_mails_per_s": drain_rate,
            "drain_over_pgbench": ratio(drain_rate, pgbench),
            "e2e_mails_per_s": e2e_rate,
            "e2e_over_pgbench": ratio(e2e_rate, pgbench),
            "e2e_p99_request_to_sent_ms": e2e_p99,
            "open_rate": open_offered,
            "open_p99_request_to_sent_ms": open_p99,
            "peak_rss_mib": rss_mib,
            "e2e_cpu_ms_per_mail": cpu_per_mail,
            "targets": {
                "intake": intake_ok,
                "e2e_throughput": e2e_ok,
                "e2e_latency": open_ok,
                "rss": rss_ok,
            },
        })
    );
    Ok(ExitCode::SUCCESS)
}

fn read_text(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The JSON line a mode printed last.
fn last_json(path: &Path) -> anyhow::Result<Option<Value>> {
    let Some(text) = read_text(path)? else {
        return Ok(None);
    };
    let Some(line) = text.lines().rev().find(|l| l.trim_start().starts_with('{')) else {
        return Ok(None);
    };
    serde_json::from_str(line)
        .map(Some)
        .with_context(|| format!("{} does not end in a JSON line", path.display()))
}

/// `name kib` per line, the highest value per name.
fn parse_rss(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some(name), Some(Ok(kib))) = (words.next(), words.next().map(str::parse::<u64>)) {
            let entry = out.entry(name.to_owned()).or_insert(0);
            *entry = (*entry).max(kib);
        }
    }
    out
}

/// CPU seconds by process from bench.sh's `cpu-<phase>.txt`
/// (`  name   12.34 s   56.7%`); other lines are skipped.
fn parse_cpu(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("  ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [name, secs, "s", _share] = words[..] {
            if let Ok(secs) = secs.parse::<f64>() {
                out.insert(name.to_owned(), secs);
            }
        }
    }
    out
}

const GROUPS: [&str; 6] = [
    "postgres", "rabbitmq", "intake", "workers", "sink", "client",
];

/// Which of `GROUPS` a process of the CPU accounting belongs to.
fn group_of(name: &str) -> Option<&'static str> {
    match name {
        "postgres" => Some("postgres"),
        "beam.smp" => Some("rabbitmq"),
        "intake" => Some("intake"),
        "sink" => Some("sink"),
        "bench.sh+client" => Some("client"),
        n if n.starts_with("worker-") => Some("workers"),
        _ => None,
    }
}

/// The phase's CPU per mail: Postgres, RabbitMQ (beam.smp), the intake,
/// both workers together, the SMTP sink, the load generator, and their sum
/// (the rest of the machine is left out).
fn cpu_ms_per_mail(cpu: &BTreeMap<String, f64>, mails: Option<f64>) -> BTreeMap<String, f64> {
    let Some(mails) = mails.filter(|m| *m > 0.0) else {
        return BTreeMap::new();
    };
    let mut secs: BTreeMap<String, f64> = GROUPS.iter().map(|g| ((*g).to_owned(), 0.0)).collect();
    for (name, s) in cpu {
        if let Some(group) = group_of(name) {
            *secs.entry(group.to_owned()).or_default() += s;
        }
    }
    let mut out = BTreeMap::new();
    let mut all = 0.0;
    for (group, s) in secs {
        let ms = 1000.0 * s / mails;
        all += ms;
        out.insert(group, (ms * 1000.0).round() / 1000.0);
    }
    out.insert("all".to_owned(), (all * 1000.0).round() / 1000.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_lines_keep_the_peak() {
        let rss = parse_rss("intake 1000\nworker-1 50\nintake 3000\nbogus\n");
        assert_eq!(rss["intake"], 3000);
        assert_eq!(rss["worker-1"], 50);
        assert_eq!(rss.len(), 2);
    }

    #[test]
    fn cpu_per_mail_groups_the_processes() {
        let cpu = parse_cpu(
            "e2e: machine 90% busy; CPU seconds by process (% of one core):\n  \
             postgres   40.00 s   70.0%\n  worker-1   10.00 s   20.0%\n  \
             worker-2   10.00 s   20.0%\n  beam.smp   20.00 s   30.0%\n  \
             kdamond.0   1.00 s   1.0%\n  postgres: commits +1, rows_inserted +2\n",
        );
        assert_eq!(cpu.len(), 5);
        let per_mail = cpu_ms_per_mail(&cpu, Some(100_000.0));
        assert_eq!(per_mail["postgres"], 0.4);
        assert_eq!(per_mail["workers"], 0.2);
        assert_eq!(per_mail["rabbitmq"], 0.2);
        assert_eq!(per_mail["intake"], 0.0);
        assert_eq!(per_mail["all"], 0.8);
        assert!(cpu_ms_per_mail(&cpu, None).is_empty());
    }
}
