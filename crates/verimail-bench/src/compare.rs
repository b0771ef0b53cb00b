//! Two whole bench runs side by side. `scripts/bench.sh --compare-stats`:
//! the analysed run and the run on partitions Postgres never analysed, with
//! issue 27's targets. `--compare-with BIN` (another build against this
//! one) and `--compare-dkim` (unsigned against signed mail): two runs of
//! the same harness under labels of their own, with the ratios.
//! Informational only, like the summary: nothing fails on a timing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

use crate::report::round2;

#[derive(Args, Clone, Debug)]
pub struct CompareArgs {
    /// The run directory of the run with `ANALYZE` after the warm-ups.
    #[arg(long, requires = "no_stats", conflicts_with = "base")]
    pub analysed: Option<PathBuf>,
    /// The run directory of the run without (`BENCH_ANALYZE=0`).
    #[arg(long, requires = "analysed")]
    pub no_stats: Option<PathBuf>,
    /// The run directory of the run the other is measured against.
    #[arg(long, requires = "other", required_unless_present = "analysed")]
    pub base: Option<PathBuf>,
    /// The run directory of the run measured against the base.
    #[arg(long, requires = "base")]
    pub other: Option<PathBuf>,
    /// What to call the base run in the table.
    #[arg(long, default_value = "before")]
    pub base_label: String,
    /// What to call the other run in the table.
    #[arg(long, default_value = "after")]
    pub other_label: String,
}

/// Targets of issue 27.
const NO_STATS_OVER_ANALYSED: f64 = 0.9;
const E2E_OVER_PGBENCH: f64 = 0.5;
const OPEN_P99_MS: f64 = 250.0;

/// The figures compared, as (label, pointer into the summary's JSON line).
const ROWS: &[(&str, &str)] = &[
    ("pgbench rate-limit tx/s", "/pgbench_tps"),
    ("intake alone req/s", "/intake_req_per_s"),
    ("intake alone p99 ms", "/intake_p99_ms"),
    ("workers draining mails/s", "/drain_mails_per_s"),
    ("e2e closed loop mails/s", "/e2e_mails_per_s"),
    ("e2e / pgbench", "/e2e_over_pgbench"),
    ("e2e CPU ms/mail, all", "/e2e_cpu_ms_per_mail/all"),
    ("e2e CPU ms/mail, postgres", "/e2e_cpu_ms_per_mail/postgres"),
    (
        "open loop p99 request→sent ms",
        "/open_p99_request_to_sent_ms",
    ),
];

fn num(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Value::as_f64)
}

fn f(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

/// The table of [`ROWS`]: each figure of both runs and other ÷ base.
fn side_by_side(base_label: &str, base: &Value, other_label: &str, other: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "== {base_label} vs {other_label}");
    let _ = writeln!(
        out,
        "  {:<32} {:>14} {:>14} {:>8}",
        "", base_label, other_label, "ratio"
    );
    for (label, pointer) in ROWS {
        let (a, n) = (num(base, pointer), num(other, pointer));
        let ratio = match (a, n) {
            (Some(a), Some(n)) if a > 0.0 => Some(n / a),
            _ => None,
        };
        let _ = writeln!(
            out,
            "  {label:<32} {:>14} {:>14} {:>8}",
            f(a),
            f(n),
            f(ratio)
        );
    }
    out
}

pub fn main(args: CompareArgs) -> anyhow::Result<ExitCode> {
    match (&args.analysed, &args.no_stats, &args.base, &args.other) {
        (Some(analysed), Some(no_stats), _, _) => compare_stats(analysed, no_stats),
        (_, _, Some(base), Some(other)) => {
            let base = summary_of(base)?;
            let other = summary_of(other)?;
            print!(
                "{}",
                side_by_side(&args.base_label, &base, &args.other_label, &other)
            );
            let e2e = |v: &Value| num(v, "/e2e_mails_per_s");
            let ratio = match (e2e(&other), e2e(&base)) {
                (Some(o), Some(b)) if b > 0.0 => Some(round2(o / b)),
                _ => None,
            };
            println!(
                "{}",
                json!({
                    "mode": "compare",
                    "base_label": args.base_label,
                    "base": base,
                    "other_label": args.other_label,
                    "other": other,
                    "e2e_other_over_base": ratio,
                })
            );
            Ok(ExitCode::SUCCESS)
        }
        _ => anyhow::bail!("give --analysed and --no-stats, or --base and --other"),
    }
}

fn compare_stats(analysed: &Path, no_stats: &Path) -> anyhow::Result<ExitCode> {
    let analysed = summary_of(analysed)?;
    let no_stats = summary_of(no_stats)?;
    let mut out = side_by_side("analysed", &analysed, "no statistics", &no_stats);

    let e2e = |v: &Value| num(v, "/e2e_mails_per_s");
    let over_analysed = match (e2e(&no_stats), e2e(&analysed)) {
        (Some(n), Some(a)) if a > 0.0 => Some(round2(n / a)),
        _ => None,
    };
    let both = |pointer: &str, ok: &dyn Fn(f64) -> bool| -> Option<bool> {
        Some(ok(num(&analysed, pointer)?) && ok(num(&no_stats, pointer)?))
    };
    let throughput_ok = over_analysed.map(|r| r >= NO_STATS_OVER_ANALYSED);
    let pgbench_ok = both("/e2e_over_pgbench", &|r| r >= E2E_OVER_PGBENCH);
    let latency_ok = both("/open_p99_request_to_sent_ms", &|p| p <= OPEN_P99_MS);
    let met = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "NOT MET",
        None => "not measured",
    };
    let _ = writeln!(
        out,
        "  targets: e2e without statistics >= {NO_STATS_OVER_ANALYSED} x analysed ({}): {}; e2e >= {E2E_OVER_PGBENCH} x pgbench in both: {}; open-loop p99 request→sent <= {OPEN_P99_MS} ms in both: {}",
        f(over_analysed),
        met(throughput_ok),
        met(pgbench_ok),
        met(latency_ok)
    );
    print!("{out}");
    println!(
        "{}",
        json!({
            "mode": "compare-stats",
            "analysed": analysed,
            "no_stats": no_stats,
            "e2e_no_stats_over_analysed": over_analysed,
            "targets": {
                "no_stats_throughput": throughput_ok,
                "e2e_over_pgbench": pgbench_ok,
                "open_latency": latency_ok,
            },
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// The JSON line `summary` wrote last into the run's `summary.txt`.
fn summary_of(dir: &Path) -> anyhow::Result<Value> {
    let path = dir.join("summary.txt");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("no JSON line in {}", path.display()))?;
    serde_json::from_str(line)
        .with_context(|| format!("parsing the JSON line of {}", path.display()))
}
