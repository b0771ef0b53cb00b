//! The data lifecycle of `dispatches` (README, "Data retention"): daily
//! partitions by UUIDv7 id, retention by dropping whole partitions, the
//! online migration of an unpartitioned table, and erasure of one address.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::Value;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;
use verimail_intake::accounts::AccountKind;
use verimail_testkit::smtp_sink::SmtpSink;
use verimail_worker::maintenance::{self, Outcome, Policy, Report};

const DAY: time::Duration = time::Duration::DAY;
const RETENTION: Duration = Duration::from_secs(72 * 3600);

async fn db_now(pool: &PgPool) -> OffsetDateTime {
    sqlx::query_scalar("SELECT now()")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn day_start(at: OffsetDateTime) -> OffsetDateTime {
    at.replace_time(time::Time::MIDNIGHT)
}

fn ms(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

fn day_name(day: OffsetDateTime) -> String {
    format!(
        "dispatches_p{}",
        day.format(time::macros::format_description!("[year][month][day]"))
            .unwrap()
    )
}

/// A partition made by hand, as a test needs the layout.
async fn create_partition(pool: &PgPool, name: &str, from: OffsetDateTime, to: OffsetDateTime) {
    let sql = format!(
        "CREATE TABLE {name} PARTITION OF dispatches FOR VALUES FROM ('{}') TO ('{}')",
        maintenance::ms_uuid(ms(from)),
        maintenance::ms_uuid(ms(to))
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await
        .unwrap();
}

async fn exec(pool: &PgPool, sql: String) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await
        .unwrap();
}

async fn partitions(pool: &PgPool) -> BTreeSet<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'dispatches'::regclass",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// A sent dispatch as if accepted at `at`: its id is made at that instant
/// too, so it lands in the partition of that time. Returns id and code.
/// A partition's storage options and how many of the parent's indexes it has.
async fn partition_shape(pool: &PgPool, name: &str) -> (Option<Vec<String>>, i64) {
    sqlx::query_as(
        "SELECT c.reloptions,
                (SELECT count(*) FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid
                  WHERE x.indrelid = c.oid
                    AND i.inhparent IN (SELECT indexrelid FROM pg_index
                                         WHERE indrelid = 'dispatches'::regclass))
           FROM pg_class c WHERE c.relname = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn place(pool: &PgPool, partner: Uuid, email: &str, at: OffsetDateTime) -> (Uuid, String) {
    let nanos = at.unix_timestamp_nanos();
    let id = Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        (nanos / 1_000_000_000) as u64,
        (nanos % 1_000_000_000) as u32,
    ));
    let code = verimail_domain::code::Code::generate(6);
    let digest = test_keys().code_digest(id, code.expose());
    sqlx::query(
        "INSERT INTO dispatches (id, partner_id, recipient, email, lang, ttl_minutes, status,
                                 code_digest, next_attempt_at, created_at, expires_at, sent_at)
         VALUES ($1, $2, $3, $3, 'en-us', 60, 'sent', $4, $5, $5, $5 + interval '60 minutes', $5)",
    )
    .bind(id)
    .bind(partner)
    .bind(email)
    .bind(digest)
    .bind(at)
    .execute(pool)
    .await
    .unwrap();
    (id, code.expose().to_owned())
}

async fn maintain(pool: &PgPool, wait: Duration, now: Option<OffsetDateTime>) -> Report {
    let policy = Policy {
        retention: RETENTION,
    };
    match maintenance::maintain(pool, policy, wait, now)
        .await
        .unwrap()
    {
        Outcome::Done(report) => report,
        Outcome::Busy => panic!("maintenance found the lock taken"),
    }
}

fn dropped_names(report: &Report) -> BTreeSet<String> {
    report.dropped.iter().map(|d| d.partition.clone()).collect()
}

async fn status_of(stack: &Stack, id: Uuid) -> u16 {
    let url = stack
        .intake
        .url(&format!("/v2/bases/verificationcode/dispatches/{id}"));
    let response = stack
        .intake
        .client
        .get(url)
        .header("X-Auth-Token", &stack.partner.token)
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

/// Old daily partitions d days back, for d in `days`; returns which of them
/// hold only rows past the retention (what maintenance must drop).
async fn old_days(
    pool: &PgPool,
    today: OffsetDateTime,
    days: std::ops::RangeInclusive<i32>,
) -> BTreeSet<String> {
    let now = db_now(pool).await;
    let cutoff = now - RETENTION - time::Duration::minutes(5);
    let mut expired = BTreeSet::new();
    for d in days {
        let from = today - DAY * d;
        create_partition(pool, &day_name(from), from, from + DAY).await;
        if from + DAY <= cutoff {
            expired.insert(day_name(from));
        }
    }
    expired
}

#[tokio::test]
async fn maintenance_drops_partitions_past_the_retention_and_prepares_the_next_days() {
    let stack = Stack::start().await;
    let pool = &stack.db.pool;
    let now = db_now(pool).await;
    let today = day_start(now);
    let expired = old_days(pool, today, 2..=6).await;
    assert!(expired.len() >= 3, "{expired:?}");
    let (old, _) = place(
        pool,
        stack.partner.id,
        "old@example.com",
        today - DAY * 5 + time::Duration::HOUR,
    )
    .await;
    let (kept, _) = place(
        pool,
        stack.partner.id,
        "kept@example.com",
        now - time::Duration::hours(47),
    )
    .await;
    // The last partition ahead is missing, as if the day had come.
    let last_ahead = day_name(today + DAY * 3);
    exec(pool, format!("DROP TABLE {last_ahead}")).await;
    assert_eq!(status_of(&stack, old).await, 200);

    let report = maintain(pool, Duration::ZERO, None).await;
    assert_eq!(dropped_names(&report), expired);
    assert_eq!(report.created, vec![last_ahead.clone()]);
    assert_eq!(report.covered_until, today + DAY * 4);
    let now_there = partitions(pool).await;
    assert!(now_there.is_disjoint(&expired), "{now_there:?}");
    assert!(now_there.contains(&last_ahead));
    assert_eq!(
        status_of(&stack, old).await,
        404,
        "a dispatch retention removed"
    );
    assert_eq!(status_of(&stack, kept).await, 200);

    let again = maintain(pool, Duration::ZERO, None).await;
    assert!(
        again.created.is_empty() && again.dropped.is_empty(),
        "{again:?}"
    );
    assert_eq!(partitions(pool).await, now_there);

    // Two at once (two workers and an operator, say): one waits for the
    // other; every expired partition is dropped once.
    let expired = old_days(pool, today, 4..=6).await;
    let (a, b) = tokio::join!(
        maintain(pool, Duration::from_secs(30), None),
        maintain(pool, Duration::from_secs(30), None)
    );
    let (a, b) = (dropped_names(&a), dropped_names(&b));
    assert!(a.is_disjoint(&b), "{a:?} {b:?}");
    assert_eq!(a.union(&b).cloned().collect::<BTreeSet<_>>(), expired);
    assert_eq!(partitions(pool).await, now_there);

    // A run that died between detaching and dropping is finished by the next.
    let leftover = day_name(today - DAY * 8);
    create_partition(pool, &leftover, today - DAY * 8, today - DAY * 7).await;
    exec(
        pool,
        format!("ALTER TABLE dispatches DETACH PARTITION {leftover}"),
    )
    .await;
    exec(
        pool,
        format!(
            "ALTER TABLE {leftover} ADD CONSTRAINT {leftover}_bound CHECK (id < '{}')",
            maintenance::ms_uuid(ms(today - DAY * 7))
        ),
    )
    .await;
    let report = maintain(pool, Duration::ZERO, None).await;
    assert_eq!(dropped_names(&report), BTreeSet::from([leftover.clone()]));
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&leftover)
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(!exists);
}

#[tokio::test]
async fn moving_the_clock_forward_creates_the_days_ahead_and_retires_the_past() {
    let db = TestDb::new().await;
    let now = db_now(&db.pool).await;
    let today = day_start(now);
    let report = maintain(&db.pool, Duration::ZERO, Some(now + DAY * 4)).await;
    // Today's and earlier partitions are now past the retention; the days
    // through four ahead of the moved clock exist.
    let expected: BTreeSet<String> = (4..=7).map(|d| day_name(today + DAY * d)).collect();
    assert_eq!(
        report.created.iter().cloned().collect::<BTreeSet<_>>(),
        expected
    );
    assert!(dropped_names(&report).contains(&day_name(today - DAY)));
    assert_eq!(report.covered_until, today + DAY * 8);
    // A day maintain made is built like one the migrations made: the same
    // storage options (the fillfactor that keeps claims HOT, pinned by
    // tests/api/schema.rs) and every index of the parent.
    let made_by_migration = partition_shape(&db.pool, &day_name(today + DAY * 3)).await;
    let parent_indexes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_index WHERE indrelid = 'dispatches'::regclass")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(made_by_migration.0.is_some());
    assert_eq!(made_by_migration.1, parent_indexes);
    for created in &report.created {
        assert_eq!(
            partition_shape(&db.pool, created).await,
            made_by_migration,
            "{created}"
        );
    }
}

#[tokio::test]
async fn every_worker_keeps_the_partitions_ready_by_itself() {
    let db = TestDb::new().await;
    let today = day_start(db_now(&db.pool).await);
    let last_ahead = day_name(today + DAY * 3);
    exec(&db.pool, format!("DROP TABLE {last_ahead}")).await;
    let prefix = unique_prefix();
    let mut settings = worker_settings(&prefix, None);
    settings.maintenance_interval = Duration::from_secs(3600);
    let worker = TestWorker::spawn(settings, &db.url).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !partitions(&db.pool).await.contains(&last_ahead) {
        assert!(
            Instant::now() < deadline,
            "the worker did not create {last_ahead}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop().await.unwrap();
    Broker::connect(&prefix).await.cleanup().await;
}

#[tokio::test]
async fn the_rate_limit_and_check_hold_across_a_partition_boundary() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let mut settings = intake_settings(amqp_url(), &prefix);
    settings.rate_limit = verimail_intake::RateLimit {
        per_hour: 3,
        per_day: 60,
    };
    let intake = TestIntake::spawn(settings, &db.url).await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    // Split the day at 20 minutes ago: rows placed 30 minutes ago and the
    // sends made now lie in different partitions.
    let now = db_now(&db.pool).await;
    let boundary = now - time::Duration::minutes(20);
    let day = day_start(boundary);
    exec(&db.pool, format!("DROP TABLE {}", day_name(day))).await;
    create_partition(&db.pool, "dispatches_before_boundary", day, boundary).await;
    create_partition(&db.pool, "dispatches_after_boundary", boundary, day + DAY).await;

    let email = "edge@example.com";
    let half_hour_ago = now - time::Duration::minutes(30);
    let (_, old_code) = place(&db.pool, p.id, email, half_hour_ago).await;
    place(
        &db.pool,
        p.id,
        email,
        half_hour_ago + time::Duration::SECOND,
    )
    .await;
    let first = intake.send(&p.token, &valid_body(email)).await;
    assert_eq!(first.status, 204, "{}", first.body);
    let limited = intake.send(&p.token, &valid_body(email)).await;
    assert_eq!(
        limited.error_code().as_deref(),
        Some("CBC.99004015"),
        "two sends before the boundary and one after make three in the hour"
    );
    let spread: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT tableoid) FROM dispatches WHERE recipient = $1")
            .bind(email)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(spread, 2);

    // /check: the newest code (after the boundary) is the one that counts;
    // an older code (before it) is superseded, not a wrong try.
    let id: Uuid = first.request_id.unwrap().parse().unwrap();
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT code_sealed FROM dispatches WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let new_code = test_keys()
        .open_code(id, &sealed)
        .unwrap()
        .expose()
        .to_owned();
    let check = |code: String| {
        let request = intake
            .client
            .post(intake.url("/v2/bases/verificationcode/check"))
            .header("X-Auth-Token", &p.token)
            .json(&serde_json::json!({"email": email, "verification_code": code}));
        async move { Reply::read(request.send().await.unwrap()).await }
    };
    let old = check(old_code).await;
    assert_eq!(
        old.error_code().as_deref(),
        Some("CBC.99004008"),
        "{}",
        old.body
    );
    let failures: i32 = sqlx::query_scalar("SELECT check_failures FROM dispatches WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(failures, 0);
    let new = check(new_code).await;
    assert!(new.status < 300, "{} {}", new.status, new.body);
    broker.cleanup().await;
}

#[tokio::test]
async fn an_id_made_far_from_the_database_clock_is_refused() {
    let db = TestDb::new().await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let skewed = Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        (OffsetDateTime::now_utc() - time::Duration::minutes(10)).unix_timestamp() as u64,
        0,
    ));
    let error = sqlx::query_scalar::<_, String>(
        "SELECT accept_dispatch($1, $2, 'skew@example.com', 'skew@example.com', 'en-us', 5,
                                '\\x00', '\\x00', 15, 60, 3)",
    )
    .bind(skewed)
    .bind(p.id)
    .fetch_one(&db.pool)
    .await
    .unwrap_err();
    assert!(error.to_string().contains("clock"), "{error}");
    assert_eq!(db.count("SELECT count(*) FROM dispatches").await, 0);
}

/// A fingerprint of the rows a migration must keep as they were.
async fn fingerprint(pool: &PgPool) -> (i64, String) {
    sqlx::query_as(
        "SELECT count(*), md5(string_agg(id::text || status || recipient || created_at::text
                                          || attempts::text, ',' ORDER BY id))
           FROM dispatches WHERE recipient NOT LIKE 'during-%'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn migrating_a_populated_table_keeps_every_row_and_guarantee() {
    const ROWS: i64 = 200_000;
    let db = TestDb::unmigrated().await;
    let migrator = &verimail_infra::db::MIGRATOR;
    migrator.run_to(5, &db.pool).await.unwrap();
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    // History: two days of finished sends, UUIDv7 ids made at created_at.
    sqlx::query(
        "INSERT INTO dispatches (id, partner_id, recipient, email, lang, ttl_minutes, status,
                                 code_digest, next_attempt_at, created_at, expires_at, updated_at)
         SELECT (lpad(to_hex(ms), 12, '0') || '7' || substr(h, 1, 3) || '8' || substr(h, 4, 15))::uuid,
                $1, 'r' || (g % 5000) || '@example.com', 'r' || (g % 5000) || '@example.com',
                'en-us', 10, (ARRAY['sent', 'failed', 'expired', 'verified'])[1 + g % 4],
                '\\x00', at, at, at + interval '10 minutes', at
           FROM generate_series(1, $2) g,
                LATERAL (SELECT (floor(extract(epoch FROM now()) * 1000) - 3600000 - g * 800)::bigint AS ms,
                                md5(g::text) AS h) x,
                LATERAL (SELECT to_timestamp(ms / 1000.0) AS at) y",
    )
    .bind(p.id)
    .bind(ROWS)
    .execute(&db.pool)
    .await
    .unwrap();
    // Live state the guarantees are about: a full hourly limit, a code to
    // check, and a dispatch still waiting for a worker.
    for _ in 0..15 {
        record_dispatch(&db.pool, p.id, "limit@example.com").await;
    }
    let (_, code) = record_dispatch(&db.pool, p.id, "check@example.com").await;
    let (waiting, _) = record_dispatch(&db.pool, p.id, "waiting@example.com").await;
    let before = fingerprint(&db.pool).await;
    assert_eq!(before.0, ROWS + 17);

    // Sends go on while the migration runs.
    let writer_pool = verimail_infra::db::pool(&db_settings(&db.url)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let (stop, partner) = (stop.clone(), p.id);
        async move {
            let (mut done, mut failed, mut slowest) = (0u32, Vec::new(), Duration::ZERO);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                match try_record(&writer_pool, partner, &format!("during-{done}@example.com")).await
                {
                    Ok(()) => done += 1,
                    Err(error) => failed.push(format!("{error:#}")),
                }
                slowest = slowest.max(started.elapsed());
            }
            (done, failed, slowest)
        }
    });
    let mut steps = Vec::new();
    for version in [6, 7, 8] {
        let started = Instant::now();
        migrator.run_to(version, &db.pool).await.unwrap();
        steps.push(started.elapsed());
    }
    migrator.run(&db.pool).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (written, failed, slowest) = writer.await.unwrap();
    println!(
        "migrated {ROWS} rows: 0006 {:?}, 0007 {:?}, 0008 {:?}; {written} sends meanwhile, slowest {slowest:?}",
        steps[0], steps[1], steps[2]
    );
    assert!(
        failed.is_empty(),
        "sends failed during the migration: {failed:?}"
    );
    assert!(written > 0);

    let kind: String =
        sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE relname = 'dispatches'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(kind, "p");
    assert!(partitions(&db.pool).await.contains("dispatches_legacy"));
    assert_eq!(
        fingerprint(&db.pool).await,
        before,
        "every row kept as it was"
    );
    let during: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dispatches WHERE recipient LIKE 'during-%'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(during, i64::from(written));

    // The guarantees read the old rows as before.
    let admission = try_accept(&db.pool, p.id, "limit@example.com")
        .await
        .unwrap();
    assert_eq!(
        admission,
        verimail_infra::store::dispatches::Admission::RateLimited
    );
    let check = verimail_domain::CheckRequest {
        email: verimail_domain::Email::parse("check@example.com").unwrap(),
        code,
    };
    let outcome = verimail_infra::store::dispatches::check::check_code(
        &mut db.pool.acquire().await.unwrap(),
        &test_keys(),
        p.id,
        &check,
    )
    .await
    .unwrap();
    assert!(
        matches!(
            outcome,
            verimail_infra::store::dispatches::CheckOutcome::Verified(_)
        ),
        "{outcome:?}"
    );
    let sink = SmtpSink::start().await;
    let core = processor(
        worker_settings(&unique_prefix(), Some(sink.url())),
        &db.pool,
    );
    assert_eq!(
        core.process(waiting).await.unwrap(),
        verimail_worker::Next::Ack
    );
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(
        wait_status(&db.pool, waiting, &["sent"], Duration::from_secs(1))
            .await
            .0,
        "sent"
    );

    // The old table is an ordinary partition for retention: once its newest
    // possible row is past the retention, it goes.
    let later = db_now(&db.pool).await + DAY * 6;
    let report = maintain(&db.pool, Duration::ZERO, Some(later)).await;
    assert!(
        dropped_names(&report).contains("dispatches_legacy"),
        "{report:?}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM dispatches WHERE recipient LIKE 'r%'")
            .await,
        0
    );
}

async fn try_accept(
    pool: &PgPool,
    partner_id: Uuid,
    email: &str,
) -> anyhow::Result<verimail_infra::store::dispatches::Admission> {
    Ok(try_record_dispatch(pool, partner_id, email).await?.2)
}

async fn try_record(pool: &PgPool, partner_id: Uuid, email: &str) -> anyhow::Result<()> {
    match try_accept(pool, partner_id, email).await? {
        verimail_infra::store::dispatches::Admission::Accepted { .. } => Ok(()),
        other => anyhow::bail!("{other:?}"),
    }
}

fn run_cli(args: &[&str], db: &TestDb, outbox: &std::path::Path) -> Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_verimail"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("VERIMAIL_OUTBOX", outbox)
        .env("VERIMAIL_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "verimail {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn forget_leaves_no_row_or_file_of_the_address() {
    let stack = Stack::start().await;
    let pool = &stack.db.pool;
    let outbox = tempfile::tempdir().unwrap();
    let mut settings = worker_settings(&stack.prefix, None);
    settings.outbox = outbox.path().to_path_buf();
    let worker = TestWorker::spawn(settings, &stack.db.url).await;
    // Two spellings of one mailbox, one of them with an Idempotency-Key
    // (a remembered answer), an older row in yesterday's partition, and a
    // neighbour whose address contains the victim's.
    let mut ids = Vec::new();
    for (email, key) in [
        ("Victim@Example.com", None),
        ("victim@EXAMPLE.com", Some("k-1")),
        ("jimvictim@example.com", None),
    ] {
        let mut request = stack
            .intake
            .client
            .post(stack.intake.url("/v2/bases/verificationcode/send"))
            .header("X-Auth-Token", &stack.partner.token)
            .json(&valid_body(email));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let reply = Reply::read(request.send().await.unwrap()).await;
        assert_eq!(reply.status, 204, "{}", reply.body);
        ids.push(reply.request_id.unwrap().parse::<Uuid>().unwrap());
    }
    for id in &ids {
        // The first code may be superseded by the second before it is mailed.
        wait_status(pool, *id, &["sent", "superseded"], Duration::from_secs(15)).await;
    }
    let yesterday = day_start(db_now(pool).await) - time::Duration::minutes(30);
    place(pool, stack.partner.id, "victim@example.com", yesterday).await;
    let files = |needle: &'static str| {
        let dir = outbox.path().to_path_buf();
        move || {
            std::fs::read_dir(&dir)
                .unwrap()
                .filter(|e| {
                    let text = std::fs::read_to_string(e.as_ref().unwrap().path()).unwrap();
                    text.to_ascii_lowercase().contains(needle)
                })
                .count()
        }
    };
    let mailed = files("to: victim@example.com")();
    assert!(mailed >= 1);
    assert_eq!(stack.db.count("SELECT count(*) FROM send_replays").await, 1);

    let printed = run_cli(
        &["forget", "--email", "VICTIM@example.com"],
        &stack.db,
        outbox.path(),
    );
    assert_eq!(printed["recipient"], "victim@example.com");
    assert_eq!(printed["dispatch_rows"], 3);
    assert_eq!(
        printed["partitions"].as_object().unwrap().len(),
        2,
        "{printed}"
    );
    assert_eq!(printed["replay_records"], 1);
    assert_eq!(printed["outbox_files"].as_array().unwrap().len(), mailed);

    let traces: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dispatches WHERE recipient ILIKE '%victim@example.com' AND recipient <> 'jimvictim@example.com'
            OR email ILIKE 'victim@example.com'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(traces, 0);
    assert_eq!(stack.db.count("SELECT count(*) FROM send_replays").await, 0);
    assert_eq!(files("to: victim@example.com")(), 0);
    assert_eq!(
        files("jimvictim@example.com")(),
        1,
        "the neighbour's mail stays"
    );
    assert_eq!(stack.db.count("SELECT count(*) FROM dispatches").await, 1);
    // The status of an erased send is gone like any other unknown id.
    assert_eq!(status_of(&stack, ids[0]).await, 404);
    worker.stop().await.unwrap();
    stack.broker.cleanup().await;
}

#[tokio::test]
async fn maintain_from_the_command_line_prints_what_it_did() {
    let db = TestDb::new().await;
    let today = day_start(db_now(&db.pool).await);
    let expired = old_days(&db.pool, today, 4..=5).await;
    let printed = run_cli(&["maintain"], &db, std::path::Path::new("/nonexistent"));
    let dropped: BTreeSet<String> = printed["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["partition"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(dropped, expired, "{printed}");
    assert_eq!(printed["created"].as_array().unwrap().len(), 0);
    assert_eq!(printed["partitions"], 5);
}

/// Scans so far of each partition of `dispatches` by this backend, as its
/// not yet reported counters say (Postgres 15 keeps them per backend until
/// it reports them, so only a difference of two readings is one statement's).
async fn partition_scans(conn: &mut sqlx::PgConnection) -> BTreeMap<String, i64> {
    sqlx::query_as(
        "SELECT relname::text, seq_scan + coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables
          WHERE relname LIKE 'dispatches_%'",
    )
    .fetch_all(conn)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// The partitions `check_code` scans, read on a connection of its own.
async fn partitions_a_check_reads(
    db: &TestDb,
    partner_id: Uuid,
    request: &verimail_domain::CheckRequest,
) -> (
    verimail_infra::store::dispatches::CheckOutcome,
    BTreeSet<String>,
) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let before = partition_scans(&mut tx).await;
    let outcome = verimail_infra::store::dispatches::check::check_code(
        &mut tx,
        &test_keys(),
        partner_id,
        request,
    )
    .await
    .unwrap();
    let after = partition_scans(&mut tx).await;
    tx.rollback().await.unwrap();
    let scanned = after
        .into_iter()
        .filter(|(name, scans)| before.get(name).copied().unwrap_or(0) < *scans)
        .map(|(name, _)| name)
        .collect();
    (outcome, scanned)
}

/// `/check` on a database holding a week of partitions reads only those a
/// live code can be in: the right code the last hour's, a wrong one (which
/// also looks for an earlier mail's code) the last day's.
#[tokio::test]
async fn check_reads_only_the_partitions_a_live_code_can_be_in() {
    let db = TestDb::new().await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let now = db_now(&db.pool).await;
    let today = day_start(now);
    let existing = partitions(&db.pool).await;
    for d in 1..=7 {
        let from = today - DAY * d;
        if !existing.contains(&day_name(from)) {
            create_partition(&db.pool, &day_name(from), from, from + DAY).await;
        }
    }
    let email = "week@example.com";
    for d in 1..=7 {
        place(&db.pool, p.id, email, now - DAY * d).await;
    }
    let (live_id, live_code) = record_dispatch(&db.pool, p.id, email).await;
    // The partitions that can hold a row of the window (plus the id margin).
    let touching = |window: time::Duration| -> BTreeSet<String> {
        let from = now - window - time::Duration::minutes(5);
        (0..=8)
            .map(|d| today - DAY * d)
            .filter(|day| *day + DAY > from)
            .map(day_name)
            .collect()
    };
    let check = |code: &str| verimail_domain::CheckRequest {
        email: verimail_domain::Email::parse(email).unwrap(),
        code: code.to_owned(),
    };

    let (wrong, scanned) = partitions_a_check_reads(&db, p.id, &check("000000")).await;
    assert_eq!(
        wrong,
        verimail_infra::store::dispatches::CheckOutcome::Wrong
    );
    assert!(!scanned.is_empty());
    let day = touching(time::Duration::DAY);
    assert!(
        scanned.is_subset(&day),
        "a wrong code read {scanned:?}; only {day:?} can hold the last day"
    );

    let (right, scanned) = partitions_a_check_reads(&db, p.id, &check(&live_code)).await;
    assert_eq!(
        right,
        verimail_infra::store::dispatches::CheckOutcome::Verified(live_id)
    );
    let hour = touching(time::Duration::hours(1));
    assert!(
        scanned.is_subset(&hour),
        "the right code read {scanned:?}; only {hour:?} can hold a live code"
    );
}
