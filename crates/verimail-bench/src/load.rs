//! The load itself: closed loop (C connections, each sending its next
//! request as soon as the previous answer arrived) or open loop (requests
//! offered at a fixed rate whatever the server does, on up to C connections).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use hyper::header::HeaderValue;
use time::OffsetDateTime;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use uuid::Uuid;

use crate::client::{self, Auth, Connection, Reply, Target};
use crate::report::{self, LoadReport};
use crate::{OutputArgs, parse_duration};

#[derive(Args, Clone, Debug)]
pub struct LoadArgs {
    /// Base URL of the intake.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Connections, i.e. requests in flight at most.
    #[arg(short = 'c', long, default_value_t = 64)]
    pub concurrency: usize,
    /// Stop after this many requests.
    #[arg(short = 'n', long)]
    pub requests: Option<u64>,
    /// Stop offering requests after this long (default 10s when -n is not given).
    #[arg(short = 'd', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Open loop: offer this many requests per second, however slow the
    /// answers; latency then counts from when each request was due.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Authenticate with X-Auth-Token.
    #[arg(long, conflicts_with_all = ["ak", "sk"])]
    pub token: Option<String>,
    /// Access key for SDK-HMAC-SHA256 signing (with --sk).
    #[arg(long, requires = "sk")]
    pub ak: Option<String>,
    /// Secret key for SDK-HMAC-SHA256 signing (with --ak).
    #[arg(long, requires = "ak")]
    pub sk: Option<String>,
    /// X-Domain-Id sent (and signed) with AK/SK, as the SDK's GlobalCredentials do.
    #[arg(long, requires = "ak")]
    pub domain_id: Option<String>,
    /// Tag in the recipients (`bench-<run-id>-<i>@example.com`); random by default.
    #[arg(long)]
    pub run_id: Option<String>,
    /// `lang` of every request.
    #[arg(long, default_value = "en-us")]
    pub lang: String,
    /// Longest wait for one response before it counts as a timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// One request's fate.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the request was due, from the start of the run.
    pub due: Duration,
    pub latency: Duration,
    pub reply: Reply,
}

/// Everything a run produced.
pub struct LoadRun {
    /// Wall-clock time of the start, to line up with Postgres timestamps.
    pub started_wall: OffsetDateTime,
    pub elapsed: Duration,
    pub samples: Vec<Sample>,
}

impl LoadRun {
    /// Accepted dispatches with the wall-clock time their request was due.
    pub fn accepted(&self) -> Vec<(Uuid, OffsetDateTime)> {
        self.samples
            .iter()
            .filter_map(|s| match s.reply {
                Reply::Http {
                    dispatch_id: Some(id),
                    ..
                } => Some((id, self.started_wall + s.due)),
                _ => None,
            })
            .collect()
    }
}

pub async fn main(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let run = run(&args).await?;
    let report = LoadReport::from_run("intake", &args, &run);
    report::emit(&args.output, &report.human(), &report)?;
    Ok(ExitCode::SUCCESS)
}

/// Where the next request comes from.
enum Source {
    /// Closed loop: take the next index at once, until the limits.
    Closed {
        next: AtomicU64,
        limit: Option<u64>,
        deadline: Option<Instant>,
    },
    /// Open loop: indexes arrive when they are due.
    Open(Mutex<mpsc::UnboundedReceiver<(u64, Instant)>>),
}

impl Source {
    async fn next(&self) -> Option<(u64, Instant)> {
        match self {
            Source::Closed {
                next,
                limit,
                deadline,
            } => {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    return None;
                }
                let index = next.fetch_add(1, Ordering::Relaxed);
                if limit.is_some_and(|l| index >= l) {
                    return None;
                }
                Some((index, now))
            }
            Source::Open(receiver) => receiver.lock().await.recv().await,
        }
    }
}

pub async fn run(args: &LoadArgs) -> anyhow::Result<LoadRun> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let auth = auth(args)?;
    let target = Target::resolve(&args.url).await?;
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| Uuid::new_v4().simple().to_string()[..8].to_owned());
    let duration = match (args.requests, args.duration) {
        (None, None) => Some(Duration::from_secs(10)),
        (_, d) => d,
    };

    // Open every connection before the clock starts, so connection set-up
    // is not counted as request latency and a dead intake fails at once.
    let mut connections = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        connections.push(Connection::open(&target).await?);
    }

    let started = Instant::now();
    let started_wall = OffsetDateTime::now_utc();
    let deadline = duration.map(|d| started + d);
    let mut scheduler = None;
    let source = match args.rate {
        None => Source::Closed {
            next: AtomicU64::new(0),
            limit: args.requests,
            deadline,
        },
        Some(rate) => {
            if !(rate.is_finite() && rate > 0.0) {
                bail!("--rate must be a positive number of requests per second");
            }
            let (tx, rx) = mpsc::unbounded_channel();
            scheduler = Some(tokio::spawn(offer(
                tx,
                started,
                rate,
                args.requests,
                deadline,
            )));
            Source::Open(Mutex::new(rx))
        }
    };
    let shared = Arc::new(Shared {
        source,
        target,
        auth,
        run_id,
        lang: args.lang.clone(),
        timeout: args.timeout,
        started,
    });

    let mut tasks = Vec::with_capacity(connections.len());
    for connection in connections {
        tasks.push(tokio::spawn(drive(shared.clone(), connection)));
    }
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.context("a load task failed")??);
    }
    if let Some(scheduler) = scheduler {
        scheduler.await.context("the scheduler failed")?;
    }
    let elapsed = started.elapsed();
    samples.sort_by_key(|s| s.due);
    Ok(LoadRun {
        started_wall,
        elapsed,
        samples,
    })
}

fn auth(args: &LoadArgs) -> anyhow::Result<Auth> {
    match (&args.token, &args.ak, &args.sk) {
        (Some(token), None, None) => Ok(Auth::Token(
            HeaderValue::from_str(token).context("--token is not a valid header value")?,
        )),
        (None, Some(ak), Some(sk)) => Ok(Auth::AkSk {
            access_key: ak.clone(),
            secret_key: sk.clone(),
            domain_id: args.domain_id.clone(),
        }),
        _ => bail!("authenticate with --token, or with --ak and --sk (and usually --domain-id)"),
    }
}

struct Shared {
    source: Source,
    target: Target,
    auth: Auth,
    run_id: String,
    lang: String,
    timeout: Duration,
    started: Instant,
}

/// Emits request indexes at `rate` per second. Several may be due at one
/// wake-up (timers are millisecond-grained), so it catches up in bursts
/// instead of drifting below the offered rate.
async fn offer(
    tx: mpsc::UnboundedSender<(u64, Instant)>,
    started: Instant,
    rate: f64,
    limit: Option<u64>,
    deadline: Option<Instant>,
) {
    let mut index: u64 = 0;
    loop {
        // Float maths so long runs do not accumulate rounding error.
        let due = started + Duration::from_secs_f64(index as f64 / rate);
        if limit.is_some_and(|l| index >= l) || deadline.is_some_and(|d| due >= d) {
            return;
        }
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
            continue;
        }
        if tx.send((index, due)).is_err() {
            return;
        }
        index += 1;
    }
}

async fn drive(shared: Arc<Shared>, connection: Connection) -> anyhow::Result<Vec<Sample>> {
    let mut connection = Some(connection);
    let mut samples = Vec::new();
    while let Some((index, due)) = shared.source.next().await {
        let body = client::send_body(&shared.run_id, index, &shared.lang);
        let request = client::send_request(&shared.target, &shared.auth, body)?;
        let reply = match connection.as_mut() {
            Some(open) => client::send_with_timeout(open, request, shared.timeout).await,
            None => match Connection::open(&shared.target).await {
                Ok(mut fresh) => {
                    let reply =
                        client::send_with_timeout(&mut fresh, request, shared.timeout).await;
                    connection = Some(fresh);
                    reply
                }
                Err(_) => Err("connect failed"),
            },
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(kind) => {
                // The connection's state is unknown: start afresh next time.
                connection = None;
                Reply::Transport(kind)
            }
        };
        samples.push(Sample {
            due: due.duration_since(shared.started),
            latency: due.elapsed(),
            reply,
        });
    }
    Ok(samples)
}
