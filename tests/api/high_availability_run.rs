//! The run of `scripts/ha-failover.sh`: real `verimail` processes (2
//! intakes, 3 workers) given a 3-node RabbitMQ cluster's node list and a
//! primary + synchronous standby as one multi-host URL, under ~100 sends/s,
//! while the node leading the dispatch queue is SIGKILLed (and restarted
//! 20 s later), then the primary is stopped at once and the standby
//! promoted. The script starts the servers and is called back (`HA_CTL
//! ctl ...`) to break them; ignored unless run by it.
//!
//! Every queue is declared through the first node before the processes
//! start, so that node leads them all and the kill takes every leader at
//! once. While it is down, the relay answers 451 for a few seconds (every
//! send of that moment goes through a delay queue whose leader died), the
//! worker topology is declared again from the survivors, and one worker is
//! stopped and started again: a worker that reconnects must be consuming
//! before the dead node comes back.
//!
//! It prints the figures and fails unless: every 204 ended final, no error
//! answer was mailed, no dispatch was mailed twice, no 5xx but shedding,
//! every process still runs, and the topology could be declared and the
//! restarted worker consumed while the node was down. The seconds from each fault until sends are
//! answered 204 steadily again are printed (goals: 10 s for the node kill,
//! 15 s for the failover), not asserted: figures, not timed assertions.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;
use verimail_infra::amqp::{self, Topology};
use verimail_infra::db;
use verimail_intake::accounts::AccountKind;
use verimail_testkit::smtp_sink::{Behaviour, SmtpSink};

use crate::support::*;

const RATE: u32 = 100;
const CLIENTS: u32 = 10;
const NODE_KILL_AT: u64 = 10;
const NODE_BACK_AFTER: Duration = Duration::from_secs(20);
const FAILOVER_AFTER: Duration = Duration::from_secs(35);
const LOAD_AFTER_FAILOVER: Duration = Duration::from_secs(25);
/// The workers' `VERIMAIL_RETRY_SCHEDULE` below, as the delay queues it declares.
const RETRY_DELAYS: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(2)];
/// After the node kill: how long the relay answers 451, from 1 s on.
const RELAY_451_FOR: Duration = Duration::from_secs(4);

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by scripts/ha-failover.sh"))
}

fn ctl(args: &[&str]) -> String {
    let output = Command::new(env("HA_CTL"))
        .arg("ctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "ctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn log_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("vm-ha-{name}.log"))
    }

    fn start(role: &str, name: String, env: &[(String, String)]) -> Self {
        let log = std::fs::File::create(Self::log_path(&name)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_verimail"))
            .arg(role)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self { name, child }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, as an orchestrator stops a process, and its exit awaited.
    async fn stop(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {}", self.name);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.running() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!self.running(), "{} did not stop on SIGTERM", self.name);
    }

    /// Whether the process has logged `needle` (it logs to its own file).
    fn logged(&self, needle: &str) -> bool {
        std::fs::read_to_string(Self::log_path(&self.name)).is_ok_and(|log| log.contains(needle))
    }
}

/// Declares everything a worker uses through `urls` (a node list: a dead node
/// is skipped), as a worker's consumer session does when it (re)connects.
async fn declare_worker_topology(urls: &str, topology: &Topology) -> anyhow::Result<()> {
    let connection = amqp::connect(urls, Duration::from_secs(5)).await?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel, &RETRY_DELAYS).await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
struct Answer {
    at: Duration,
    status: Option<u16>,
    code: Option<String>,
    id: Option<Uuid>,
}

async fn load(ports: Vec<u16>, token: String, stop: Arc<AtomicBool>, t0: Instant) -> Vec<Answer> {
    let answers = Arc::new(Mutex::new(Vec::new()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let pause = Duration::from_secs(1) * CLIENTS / RATE;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (client, token, stop, answers, ports) = (
                client.clone(),
                token.clone(),
                stop.clone(),
                answers.clone(),
                ports.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let port = ports[(n + c as usize) % ports.len()];
                    let email = format!("ha-{c}-{n}@example.com");
                    n += 1;
                    let started = Instant::now();
                    let at = t0.elapsed();
                    let reply = client
                        .post(format!("http://127.0.0.1:{port}{SEND_PATH}"))
                        .header("X-Auth-Token", &token)
                        .json(&valid_body(&email))
                        .send()
                        .await;
                    let answer = match reply {
                        Ok(r) => {
                            let reply = Reply::read(r).await;
                            Answer {
                                at,
                                status: Some(reply.status),
                                code: reply.error_code(),
                                id: reply.request_id.and_then(|v| Uuid::parse_str(&v).ok()),
                            }
                        }
                        Err(_) => Answer {
                            at,
                            status: None,
                            code: None,
                            id: None,
                        },
                    };
                    answers.lock().unwrap().push(answer);
                    if let Some(rest) = pause.checked_sub(started.elapsed()) {
                        tokio::time::sleep(rest).await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(answers).unwrap().into_inner().unwrap()
}

/// Seconds from `fault` until the last answer other than 204 to a send
/// started before `until`, the next fault or the end (0 when every send in
/// between was answered 204).
fn recovery(answers: &[Answer], fault: Duration, until: Duration) -> f64 {
    answers
        .iter()
        .filter(|a| a.at >= fault && a.at < until && a.status != Some(204))
        .map(|a| (a.at - fault).as_secs_f64())
        .fold(0.0, f64::max)
}

async fn wait_ready(ports: &[u16]) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for port in ports {
        while !client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "intake on {port} never ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn open_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM dispatches WHERE status IN ('queued', 'sending', 'retrying')",
    )
    .fetch_one(pool)
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the servers of scripts/ha-failover.sh"]
async fn failover_under_load() {
    let amqp_urls = env("HA_AMQP_URL");
    let db_url = env("HA_DATABASE_URL");
    let prefix = unique_prefix();
    let sink = SmtpSink::start().await;

    let status = Command::new(env!("CARGO_BIN_EXE_verimail"))
        .arg("migrate")
        .env("DATABASE_URL", &db_url)
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success(), "verimail migrate on the multi-host URL");
    let mut settings = db_settings(&db_url);
    settings.acquire_timeout = Duration::from_secs(2);
    let pool = db::pool(&settings).unwrap();
    let p = partner(&pool, AccountKind::Partner, false).await;

    let common: Vec<(String, String)> = [
        ("DATABASE_URL", db_url.clone()),
        ("AMQP_URL", amqp_urls.clone()),
        ("VERIMAIL_AMQP_PREFIX", prefix.clone()),
        ("VERIMAIL_SECRET", TEST_SECRET.to_owned()),
        ("SMTP_URL", format!("smtp://{}", sink.addr())),
        ("VERIMAIL_RATE_LIMIT", "1000/10000".into()),
        ("VERIMAIL_RETRY_SCHEDULE", "1s,2s".into()),
        ("VERIMAIL_MAX_ATTEMPTS", "20".into()),
        ("VERIMAIL_SWEEP_INTERVAL", "2s".into()),
        ("VERIMAIL_SWEEP_GRACE", "5s".into()),
        ("VERIMAIL_METRICS_LISTEN", "127.0.0.1:0".into()),
        ("VERIMAIL_INTAKE_METRICS_LISTEN", "127.0.0.1:0".into()),
        // Publisher (re)connections are part of the story of a node loss.
        ("RUST_LOG", "warn,verimail_infra::publisher=info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    // Every queue led by the first node (leaders are placed on the declaring
    // connection's node), so that one kill takes every leader.
    let topology = Topology::new(prefix.clone());
    let first_node = amqp_urls.split(',').next().unwrap().to_owned();
    declare_worker_topology(&first_node, &topology)
        .await
        .expect("declaring the topology through the first node");

    println!(
        "queues, leaders and members:\n{}",
        ctl(&["queues", &prefix])
    );

    let ports = vec![free_port(), free_port()];
    let mut procs: Vec<Proc> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let mut env = common.clone();
        env.push(("VERIMAIL_LISTEN".into(), format!("127.0.0.1:{port}")));
        procs.push(Proc::start("intake", format!("intake{i}"), &env));
    }
    for i in 0..3 {
        procs.push(Proc::start("worker", format!("worker{i}"), &common));
    }
    wait_ready(&ports).await;

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(ports.clone(), p.token.clone(), stop.clone(), t0));
    let at = |secs: u64| async move {
        if let Some(rest) = Duration::from_secs(secs).checked_sub(t0.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    };

    // rabbitmqctl is slow on a loaded machine: the leader is asked before
    // the kill is due, and every later step is timed from the one before.
    let queue = format!("{prefix}.dispatch");
    let leader = ctl(&["leader", &queue]);
    at(NODE_KILL_AT).await;
    let node_killed_at = t0.elapsed();
    ctl(&["kill-node", &leader]);
    println!("node {leader} (leader of {queue}) SIGKILLed at {node_killed_at:?}");

    // While the node is down: retries through delay queues that lost their
    // leader, the worker topology declared from the survivors, one worker
    // restarted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    sink.set_default(Behaviour::RejectData("451 4.3.0 try again later".into()));
    let declared = tokio::time::timeout(
        Duration::from_secs(15),
        declare_worker_topology(&amqp_urls, &topology),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out after 15 s"))
    .and_then(|result| result);
    let declared_after = t0.elapsed() - node_killed_at;
    match &declared {
        Ok(()) => println!("worker topology declared {declared_after:?} after the node kill"),
        Err(error) => println!("declaring the worker topology while the node is down: {error:#}"),
    }
    let restarted = procs.len() - 1;
    procs[restarted].stop().await;
    let mut worker_env = common.clone();
    worker_env.retain(|(k, _)| k != "RUST_LOG");
    worker_env.push((
        "RUST_LOG".into(),
        "warn,verimail_infra::publisher=info,verimail_worker=info".into(),
    ));
    procs[restarted] = Proc::start("worker", "worker-restarted".into(), &worker_env);
    let mut consumed_after = None;
    while t0.elapsed() < node_killed_at + NODE_BACK_AFTER {
        if procs[restarted].logged("worker consuming") {
            consumed_after = Some(t0.elapsed() - node_killed_at);
            break;
        }
        if t0.elapsed() >= node_killed_at + Duration::from_secs(1) + RELAY_451_FOR {
            sink.set_default(Behaviour::Accept);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("restarted worker consuming: {consumed_after:?} after the node kill");
    println!(
        "queues while the node is down:\n{}",
        ctl(&["queues", &prefix])
    );
    at((node_killed_at + Duration::from_secs(1) + RELAY_451_FOR).as_secs()).await;
    sink.set_default(Behaviour::Accept);
    at((node_killed_at + NODE_BACK_AFTER).as_secs()).await;
    let restart = tokio::task::spawn_blocking({
        let leader = leader.clone();
        move || ctl(&["start-node", &leader])
    });
    println!("node {leader} restarting at {:?}", t0.elapsed());
    at((node_killed_at + FAILOVER_AFTER).as_secs()).await;
    let failover_at = t0.elapsed();
    ctl(&["pg-failover"]);
    println!("primary stopped and standby promoted at {failover_at:?}");
    tokio::time::sleep(LOAD_AFTER_FAILOVER).await;
    stop.store(true, Ordering::Relaxed);
    let load_ended_at = t0.elapsed();
    restart.await.unwrap();
    println!("node {leader} back by {:?}", t0.elapsed());
    let answers = load.await.unwrap();
    let load_secs = t0.elapsed().as_secs_f64();

    // Every dispatch ends by itself.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if open_count(&pool).await.is_ok_and(|n| n == 0) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // --- figures ------------------------------------------------------------
    let accepted: HashSet<Uuid> = answers
        .iter()
        .filter(|a| a.status == Some(204))
        .filter_map(|a| a.id)
        .collect();
    let refused: HashSet<Uuid> = answers
        .iter()
        .filter(|a| a.status.is_some_and(|s| s != 204))
        .filter_map(|a| a.id)
        .collect();
    let mut by_answer: BTreeMap<String, usize> = BTreeMap::new();
    for a in &answers {
        let key = match (a.status, &a.code) {
            (None, _) => "no answer".to_owned(),
            (Some(s), Some(code)) => format!("{s} {code}"),
            (Some(s), None) => s.to_string(),
        };
        *by_answer.entry(key).or_default() += 1;
    }
    let server_errors = answers
        .iter()
        .filter(|a| a.status.is_none_or(|s| s >= 500 && s != 503))
        .count();
    let rows: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, status FROM dispatches")
        .fetch_all(&pool)
        .await
        .unwrap();
    let rows: HashMap<Uuid, String> = rows.into_iter().collect();
    let lost: Vec<&Uuid> = accepted
        .iter()
        .filter(|id| {
            rows.get(*id)
                .is_none_or(|s| ["queued", "sending", "retrying"].contains(&s.as_str()))
        })
        .collect();
    let mut final_of_accepted: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &accepted {
        let status = rows.get(id).map_or("missing", String::as_str);
        *final_of_accepted.entry(status).or_default() += 1;
    }
    let mut mails: HashMap<Uuid, usize> = HashMap::new();
    for mail in sink.messages() {
        let header = mail.header("Message-ID").unwrap_or_default();
        if let Some(id) = header
            .trim()
            .trim_start_matches('<')
            .split('@')
            .next()
            .and_then(|s| Uuid::parse_str(s).ok())
        {
            *mails.entry(id).or_default() += 1;
        }
    }
    let mailed_refused = refused.iter().filter(|id| mails.contains_key(*id)).count();
    let duplicates = mails.values().filter(|n| **n > 1).count();
    let not_running: Vec<String> = procs
        .iter_mut()
        .filter_map(|p| (!p.running()).then(|| p.name.clone()))
        .collect();
    let node_recovery = recovery(&answers, node_killed_at, failover_at);
    let failover_recovery = recovery(&answers, failover_at, load_ended_at);

    println!("\n=== high availability: a node SIGKILLed, a Postgres failover ===");
    println!(
        "sends: {} in {load_secs:.0} s ({:.0}/s); answers: {by_answer:?}",
        answers.len(),
        answers.len() as f64 / load_secs
    );
    println!("final state of the 204s: {final_of_accepted:?}");
    println!(
        "lost: {}, mails for error answers: {mailed_refused}, duplicates: {duplicates}, \
         5xx but shedding: {server_errors}, not running: {not_running:?}",
        lost.len()
    );
    let refused_between = |from: Duration, until: Duration| {
        let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
        for a in answers
            .iter()
            .filter(|a| a.at >= from && a.at < until && a.status != Some(204))
        {
            let key = a.code.clone().unwrap_or_else(|| format!("{:?}", a.status));
            *by_code.entry(key).or_default() += 1;
        }
        by_code
    };
    println!(
        "answers other than 204: before the node kill {:?}, after it {:?}, after the failover {:?}",
        refused_between(Duration::ZERO, node_killed_at),
        refused_between(node_killed_at, failover_at),
        refused_between(failover_at, load_ended_at),
    );
    println!(
        "sends answered 204 steadily again: {node_recovery:.1} s after the node kill (goal 10 s), \
         {failover_recovery:.1} s after the failover (goal 15 s)"
    );

    assert!(lost.is_empty(), "lost 204s: {lost:?}");
    assert_eq!(mailed_refused, 0, "error answers were mailed");
    assert_eq!(duplicates, 0, "dispatches mailed twice");
    assert_eq!(server_errors, 0, "5xx answers other than shedding");
    assert!(not_running.is_empty(), "processes died: {not_running:?}");
    assert!(
        declared.is_ok(),
        "the worker topology could not be declared while a node was down"
    );
    assert!(
        consumed_after.is_some(),
        "the restarted worker did not consume while a node was down"
    );
    assert!(
        accepted.len() > answers.len() / 2,
        "most sends were accepted"
    );
    pool.close().await;
}
