//! Turning samples into figures: percentiles (HdrHistogram, 3 significant
//! digits), counts by status and error code, the human table and the JSON line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::OutputArgs;
use crate::client::Reply;
use crate::load::{LoadArgs, LoadRun};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// From durations; negative or absurd values are clamped by the
    /// histogram's range (1 µs .. 1 h) rather than dropped, so counts match.
    pub fn of(values: impl IntoIterator<Item = Duration>) -> Self {
        let mut histogram = match Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3) {
            Ok(h) => h,
            // The bounds are constants that hdrhistogram accepts.
            Err(_) => return Self::default(),
        };
        for value in values {
            let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX).max(1);
            histogram.saturating_record(micros);
        }
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |micros: u64| round2(micros as f64 / 1000.0);
        Self {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: round2(histogram.mean() / 1000.0),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}",
            self.p50, self.p90, self.p99, self.p999, self.max, self.mean
        )
    }
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The HTTP side of a run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub mode: &'static str,
    #[serde(rename = "loop")]
    pub loop_kind: &'static str,
    pub concurrency: usize,
    pub offered_rate: Option<f64>,
    pub requests: u64,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    /// 204s.
    pub accepted: u64,
    pub accepted_per_s: f64,
    /// Everything that is not a 204.
    pub errors: u64,
    pub latency_ms: Percentiles,
    /// By HTTP status, or `transport:<what>` when there was no answer.
    pub status: BTreeMap<String, u64>,
    pub error_codes: BTreeMap<String, u64>,
}

impl LoadReport {
    pub fn from_run(mode: &'static str, args: &LoadArgs, run: &LoadRun) -> Self {
        let mut status = BTreeMap::new();
        let mut error_codes = BTreeMap::new();
        let mut accepted = 0;
        for sample in &run.samples {
            match &sample.reply {
                Reply::Http {
                    status: code,
                    error_code,
                    ..
                } => {
                    *status.entry(code.to_string()).or_insert(0) += 1;
                    if *code == 204 {
                        accepted += 1;
                    }
                    if let Some(error_code) = error_code {
                        *error_codes.entry(error_code.clone()).or_insert(0) += 1;
                    }
                }
                Reply::Transport(kind) => {
                    *status.entry(format!("transport:{kind}")).or_insert(0) += 1;
                }
            }
        }
        let requests = run.samples.len() as u64;
        let secs = run.elapsed.as_secs_f64().max(1e-9);
        Self {
            mode,
            loop_kind: if args.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            concurrency: args.concurrency,
            offered_rate: args.rate,
            requests,
            elapsed_s: round2(secs),
            requests_per_s: round2(requests as f64 / secs),
            accepted,
            accepted_per_s: round2(accepted as f64 / secs),
            errors: requests - accepted,
            latency_ms: Percentiles::of(run.samples.iter().map(|s| s.latency)),
            status,
            error_codes,
        }
    }

    pub fn human(&self) -> String {
        let mut out = String::new();
        let loop_text = match self.offered_rate {
            Some(rate) => format!(
                "open loop at {rate} req/s on up to {} connections",
                self.concurrency
            ),
            None => format!("closed loop on {} connections", self.concurrency),
        };
        let _ = writeln!(out, "{}: {loop_text}, {:.2} s", self.mode, self.elapsed_s);
        let _ = writeln!(
            out,
            "  requests      {} ({} accepted, {} errors)",
            self.requests, self.accepted, self.errors
        );
        let _ = writeln!(
            out,
            "  throughput    {:.1} req/s ({:.1} accepted/s)",
            self.requests_per_s, self.accepted_per_s
        );
        let _ = writeln!(out, "  latency ms    {}", self.latency_ms.line());
        let _ = writeln!(out, "  by status     {}", counts(&self.status));
        let _ = writeln!(out, "  error codes   {}", counts(&self.error_codes));
        out
    }
}

pub fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "(none)".to_owned();
    }
    map.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints the human report and, as the last line on stdout, the JSON.
pub fn emit(output: &OutputArgs, human: &str, json: &impl Serialize) -> anyhow::Result<()> {
    let line = serde_json::to_string(json)?;
    if output.json {
        eprint!("{human}");
    } else {
        print!("{human}");
    }
    println!("{line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let p = Percentiles::of((1..=1000).map(Duration::from_millis));
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 1.0, "{p:?}");
    }

    #[test]
    fn no_values_no_figures() {
        assert_eq!(Percentiles::of([]), Percentiles::default());
    }
}
