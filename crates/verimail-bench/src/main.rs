//! `verimail-bench`: measures verimail the way a user would, over real
//! HTTP, AMQP and SMTP, beside the limits of the parts it is built on
//! (see `scripts/bench.sh` and BENCHMARKS.md).
//!
//! - `intake`: closed- or open-loop load on `POST /v2/bases/verificationcode/send`.
//! - `e2e`: the same, then waits for every accepted dispatch to end and
//!   reports mail throughput and request→SMTP-accepted latency from Postgres.
//! - `drain`: waits until no dispatch is open and reports how fast the
//!   workers emptied a backlog (worker capacity without intake load).
//! - `sink`: an SMTP server that accepts and discards mail, fast enough not
//!   to be the bottleneck.
//! - `summary`: the closing table of `scripts/bench.sh`.
//! - `compare`: an analysed run and one without statistics side by side
//!   (`scripts/bench.sh --compare-stats`).
//!
//! Human-readable figures go to stdout (stderr with `--json`); the last line
//! on stdout is always one JSON object with the same figures.

mod client;
mod compare;
mod e2e;
mod load;
mod report;
mod sink;
mod summary;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "verimail-bench",
    version,
    about = "Load generator and SMTP sink for measuring verimail."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the send endpoint and report requests/s, latency and outcomes.
    Intake(load::LoadArgs),
    /// Load the send endpoint, then wait until every accepted dispatch is
    /// terminal and report mails/s and request→SMTP-accepted latency.
    E2e(e2e::E2eArgs),
    /// Wait until no dispatch in the database is open; report the rate at
    /// which the workers sent the backlog.
    Drain(e2e::DrainArgs),
    /// Run an SMTP sink that accepts every mail and counts it.
    Sink(sink::SinkArgs),
    /// Print the table and ratios of a `scripts/bench.sh` run directory.
    Summary(summary::SummaryArgs),
    /// Print an analysed run and a run without statistics side by side.
    Compare(compare::CompareArgs),
}

/// Options every mode that prints a report shares.
#[derive(Args, Clone, Debug)]
pub struct OutputArgs {
    /// Print only the JSON line on stdout (the human report goes to stderr).
    #[arg(long)]
    pub json: bool,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 30s, 2m, 500ms)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Two worker threads at most: the machine the issue targets has two
    // cores shared with Postgres, RabbitMQ, intake and workers, and the
    // generator must not crowd them out more than a real client would.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("verimail-bench: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Intake(args) => load::main(args).await,
            Command::E2e(args) => e2e::main(args).await,
            Command::Drain(args) => e2e::drain_main(args).await,
            Command::Sink(args) => sink::main(args).await,
            Command::Summary(args) => summary::main(args),
            Command::Compare(args) => compare::main(args),
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("verimail-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
