//! Several RabbitMQ nodes and several Postgres hosts (README, "Running
//! highly available"): every connection skips a dead node or host, the pool
//! refuses a server that cannot take writes, and follows the primary when
//! the one in use dies or turns read-only, each request bounded as in any
//! outage. Postgres servers that must die or be read-only are the test's
//! own (`support::own_postgres`); RabbitMQ nodes are proxies to the shared
//! broker, cut like a node that dies.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;
use verimail_domain::secrets::SecretUrl;
use verimail_infra::{amqp, db};
use verimail_intake::accounts::AccountKind;
use verimail_testkit::smtp_sink::SmtpSink;

use crate::support::own_postgres::OwnPostgres;
use crate::support::proxy::Proxy;
use crate::support::*;

/// `db_settings`' acquire timeout: the bound on any request in an outage.
const ACQUIRE: Duration = Duration::from_secs(1);
/// What a request may take beyond that bound on a loaded test machine.
const SLACK: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(20);

/// A port nobody listens on: one free at the time of asking.
fn closed_port() -> u16 {
    free_port()
}

/// `host:port` of the shared Postgres.
fn shared_pg() -> (String, u16) {
    let url = url::Url::parse(&pg_admin_url()).unwrap();
    let port = url.port().unwrap_or(5432);
    (format!("{}:{port}", url.host_str().unwrap()), port)
}

fn multi_host_url(hosts: &[String], attrs: &str) -> String {
    format!(
        "postgres://postgres@{}/postgres?target_session_attrs={attrs}",
        hosts.join(",")
    )
}

/// A write (DDL is refused in a read-only transaction, SQLSTATE 25006)
/// answered with the port of the server that took it.
async fn write(pool: &PgPool) -> Result<i32, sqlx::Error> {
    sqlx::query("CREATE TEMP TABLE ha_probe (x int) ON COMMIT DROP")
        .execute(pool)
        .await?;
    sqlx::query_scalar("SELECT inet_server_port()")
        .fetch_one(pool)
        .await
}

/// Writes until they land on `port`, each answered within the bound;
/// returns how long that took.
async fn writes_until_on(pool: &PgPool, port: i32) -> Duration {
    let started = Instant::now();
    loop {
        let asked = Instant::now();
        let landed = write(pool).await;
        assert!(
            asked.elapsed() < ACQUIRE + SLACK,
            "a request waited {:?}: {landed:?}",
            asked.elapsed()
        );
        if landed.as_ref().is_ok_and(|p| *p == port) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < WAIT,
            "the pool did not move to :{port}: {landed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_skips_a_dead_first_host() {
    let (shared, shared_port) = shared_pg();
    let dead = format!("127.0.0.1:{}", closed_port());
    let url = multi_host_url(&[dead, shared], "read-write");

    let pool = db::pool(&db_settings(&url)).unwrap();

    assert_eq!(write(&pool).await.unwrap(), i32::from(shared_port));
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_in_recovery_is_refused_as_the_primary() {
    let standby = OwnPostgres::start(true);
    let (shared, shared_port) = shared_pg();

    for attrs in ["read-write", "primary"] {
        let url = multi_host_url(&[standby.host(), shared.clone()], attrs);
        let pool = db::pool(&db_settings(&url)).unwrap();
        assert_eq!(
            write(&pool).await.unwrap(),
            i32::from(shared_port),
            "{attrs}"
        );
        pool.close().await;
    }

    // `any` takes the first server that answers, as libpq does.
    let url = multi_host_url(&[standby.host(), shared.clone()], "any");
    let pool = db::pool(&db_settings(&url)).unwrap();
    let port: i32 = sqlx::query_scalar("SELECT inet_server_port()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(port, i32::from(standby.port));
    pool.close().await;

    // Only the standby: refused, within the bound, never used for a write.
    let url = multi_host_url(&[standby.host()], "read-write");
    let pool = db::pool(&db_settings(&url)).unwrap();
    let asked = Instant::now();
    let refused = write(&pool).await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(asked.elapsed() < ACQUIRE + SLACK, "{:?}", asked.elapsed());
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_follows_the_primary_when_it_turns_read_only() {
    let primary = OwnPostgres::start(false);
    let (shared, shared_port) = shared_pg();
    let url = multi_host_url(&[primary.host(), shared], "read-write");
    let pool = db::pool(&db_settings(&url)).unwrap();
    for _ in 0..4 {
        assert_eq!(write(&pool).await.unwrap(), i32::from(primary.port));
    }

    // Demoted without a dropped connection: its sessions, the pool's
    // included, now answer writes with SQLSTATE 25006.
    let admin = format!("postgres://postgres@{}/postgres", primary.host());
    let admin = sqlx::PgPool::connect(&admin).await.unwrap();
    sqlx::query("ALTER SYSTEM SET default_transaction_read_only = on")
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;

    let took = writes_until_on(&pool, i32::from(shared_port)).await;
    println!("moved off the read-only server in {took:?}");
    // Not one write goes back to the old server.
    for _ in 0..20 {
        assert_eq!(write(&pool).await.unwrap(), i32::from(shared_port));
    }
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_follows_the_primary_when_it_dies() {
    let mut primary = OwnPostgres::start(false);
    let (shared, shared_port) = shared_pg();
    let url = multi_host_url(&[primary.host(), shared], "read-write");
    let pool = db::pool(&db_settings(&url)).unwrap();
    for _ in 0..4 {
        assert_eq!(write(&pool).await.unwrap(), i32::from(primary.port));
    }

    primary.kill();

    let took = writes_until_on(&pool, i32::from(shared_port)).await;
    println!("moved off the dead server in {took:?}");
    for _ in 0..20 {
        assert_eq!(write(&pool).await.unwrap(), i32::from(shared_port));
    }
    pool.close().await;
}

fn amqp_target() -> SocketAddr {
    let url = url::Url::parse(&amqp_url()).unwrap();
    format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5672))
        .parse()
        .unwrap()
}

/// The broker's URL with another address (a proxy, or a closed port).
fn amqp_url_at(addr: &str) -> String {
    let mut url = url::Url::parse(&amqp_url()).unwrap();
    let (host, port) = addr.rsplit_once(':').unwrap();
    url.set_host(Some(host)).unwrap();
    url.set_port(Some(port.parse().unwrap())).unwrap();
    url.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_amqp_connection_skips_a_dead_node() {
    let dead = amqp_url_at(&format!("127.0.0.1:{}", closed_port()));
    let list = format!("{dead},{}", amqp_url());

    // Shuffled: over several connects the dead node comes first too.
    for _ in 0..8 {
        let connection = amqp::connect(&list, Duration::from_secs(5)).await.unwrap();
        connection.close(200, "done".into()).await.unwrap();
    }

    let other_dead = format!("amqp://guest:secret-pw@127.0.0.1:{}/%2f", closed_port());
    let error = amqp::connect(&format!("{dead},{other_dead}"), Duration::from_secs(5))
        .await
        .unwrap_err();
    let line = format!("{error:#}");
    assert!(line.contains("no RabbitMQ node answered"), "{line}");
    assert!(
        !line.contains("secret-pw") && !line.contains("guest:"),
        "{line}"
    );
}

/// Sends until `streak` sends in a row answer 204; returns the ids of every
/// 204, and how long the streak took to start. Other answers may only be
/// 5xx (the outage), never a 4xx.
async fn sends_until_steady(
    intake: &TestIntake,
    token: &str,
    streak: usize,
    ids: &mut Vec<Uuid>,
) -> Duration {
    let started = Instant::now();
    let mut in_a_row = 0;
    let mut steady_since = None;
    let mut last_refusal = None;
    while in_a_row < streak {
        assert!(
            started.elapsed() < WAIT,
            "sends did not recover; last refusal: {last_refusal:?}"
        );
        let email = format!("ha-{}@example.com", Uuid::new_v4().simple());
        let reply = intake.send(token, &valid_body(&email)).await;
        if reply.status == 204 {
            ids.push(reply.request_id.unwrap().parse().unwrap());
            if in_a_row == 0 {
                steady_since = Some(started.elapsed());
            }
            in_a_row += 1;
        } else {
            assert!(reply.status >= 500, "{} {}", reply.status, reply.body);
            last_refusal = Some((reply.status, reply.body));
            in_a_row = 0;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    steady_since.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_loss_moves_every_connection_to_another_node() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let (a, b) = (
        Proxy::start(amqp_target()).await,
        Proxy::start(amqp_target()).await,
    );
    let list = format!(
        "{},{}",
        amqp_url_at(&a.addr().to_string()),
        amqp_url_at(&b.addr().to_string())
    );
    let sink = SmtpSink::start().await;
    let intake = TestIntake::spawn(intake_settings(list.clone(), &prefix), &db.url).await;
    let mut settings = worker_settings(&prefix, Some(sink.url()));
    settings.amqp_url = SecretUrl::new(list);
    let worker = TestWorker::spawn(settings, &db.url).await;
    let partner = partner(&db.pool, AccountKind::Partner, false).await;
    let mut ids = Vec::new();
    sends_until_steady(&intake, &partner.token, 3, &mut ids).await;

    // One node dies, then it returns and the other dies: each time every
    // connection on it (the intake's publisher, the worker's consumer and
    // publisher) moves to the node left.
    a.cut();
    let first = sends_until_steady(&intake, &partner.token, 10, &mut ids).await;
    a.restore();
    b.cut();
    let second = sends_until_steady(&intake, &partner.token, 10, &mut ids).await;
    println!("sends steady again {first:?} and {second:?} after a node loss");

    // Every accepted send is mailed, once.
    sink.wait_for(ids.len(), WAIT).await;
    for id in &ids {
        wait_status(&db.pool, *id, &["sent"], WAIT).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = sink.messages();
    let recipients: HashSet<String> = mails.iter().map(|m| m.rcpt_to.join(",")).collect();
    assert_eq!(mails.len(), ids.len(), "a second mail was sent");
    assert_eq!(recipients.len(), ids.len());

    worker.stop().await.unwrap();
    broker.cleanup().await;
}
