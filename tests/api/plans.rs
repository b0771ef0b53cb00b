//! Plans that do not depend on statistics (issue 27). Postgres caches a
//! generic plan for a prepared statement (and for each statement inside a
//! PL/pgSQL function) after a few runs, and replaces it only on ANALYZE or
//! DDL: a plan chosen while the day's partition was small and never
//! analysed (every midnight, and always where autovacuum is off) must not
//! scan that partition once it has grown. These tests force the worst
//! case: generic plans made on a tiny partition, then used on a grown one.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::support::*;
use sqlx::{Executor, PgPool};
use uuid::Uuid;
use verimail_infra::store::dispatches::claims::{Claim, claim_many, renew};
use verimail_infra::store::dispatches::outcomes::{Finish, Outcome, finish_many};
use verimail_infra::store::dispatches::{CheckOutcome, check::check_code, view};
use verimail_intake::accounts::AccountKind;

const GROWN: i64 = 20_000;

/// A pool of one connection whose statements use their generic plan from
/// the first run: the plan a busy worker or intake would have cached in
/// the partition's first minutes.
async fn generic_plans_only(url: &str) -> PgPool {
    one_connection(url, "SET plan_cache_mode = force_generic_plan").await
}

/// A pool of one connection that plans every statement for its values: the
/// planner's own guesses about a partition it has no statistics of.
async fn custom_plans_only(url: &str) -> PgPool {
    one_connection(url, "SET plan_cache_mode = force_custom_plan").await
}

async fn one_connection(url: &str, setting: &'static str) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                conn.execute(setting).await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .unwrap()
}

/// Rows of `dispatches` read so far by sequential scans and through
/// indexes, as the shared statistics have them once `pool`'s one
/// connection has flushed its own.
async fn rows_read(pool: &PgPool) -> (i64, i64) {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query_as(
        "SELECT coalesce(sum(seq_tup_read), 0)::int8, coalesce(sum(idx_tup_fetch), 0)::int8
           FROM pg_stat_user_tables
          WHERE relid IN (SELECT inhrelid FROM pg_inherits
                           WHERE inhparent = 'dispatches'::regclass)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// What a send, its mail and its check do to `dispatches`, through the
/// stores' own statements: record (rate limit and supersession), claim,
/// renew the lease, record the outcome, read the dispatch, check the code.
async fn hot_path(pool: &PgPool, partner_id: Uuid, tag: &str) {
    let mut sent = Vec::new();
    for n in 0..3 {
        let email = format!("{tag}-{n}@example.com");
        let (id, code) = record_dispatch(pool, partner_id, &email).await;
        sent.push((id, code, email));
    }
    let ids: Vec<Uuid> = sent.iter().map(|(id, _, _)| *id).collect();
    let lease = Duration::from_secs(60);
    let mut finishes = Vec::new();
    for (id, claim) in ids.iter().zip(claim_many(pool, &ids, lease).await) {
        let Claim::Mine(_, token) = claim.unwrap() else {
            panic!("{id}: not claimed");
        };
        assert!(renew(pool, *id, token, lease).await.unwrap());
        finishes.push(Finish {
            id: *id,
            token,
            outcome: Outcome::Sent,
        });
    }
    for changed in finish_many(pool, &finishes).await {
        assert!(changed.unwrap());
    }
    let (id, code, email) = &sent[0];
    let found = view::find(pool, *id, partner_id).await.unwrap();
    assert!(found.is_some());
    let check = verimail_domain::CheckRequest {
        email: verimail_domain::Email::parse(email).unwrap(),
        code: code.clone(),
    };
    let outcome = check_code(
        &mut pool.acquire().await.unwrap(),
        &test_keys(),
        partner_id,
        &check,
    )
    .await
    .unwrap();
    assert_eq!(outcome, CheckOutcome::Verified(*id));
}

/// Generic plans made while the day's partition held a handful of rows,
/// then the partition grows to 20,000 rows with no ANALYZE: the hot path
/// still finds every row through an index. (The outcome batch's cached
/// plan used to be a hash join over a scan of every partition: 78 ms a
/// batch at 300,000 rows.) Plans made for each statement's values, with
/// no statistics to go by, do the same.
#[tokio::test]
async fn plans_made_on_a_tiny_partition_do_not_scan_it_once_grown() {
    let db = TestDb::new().await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let one = generic_plans_only(&db.url).await;
    hot_path(&one, p.id, "tiny").await;

    sqlx::query(
        "INSERT INTO dispatches (id, partner_id, recipient, email, lang, ttl_minutes, status,
                                 code_digest, code_sealed, next_attempt_at, created_at,
                                 expires_at, claim_token, lease_until)
         SELECT (left(replace(verimail_id_at(at)::text, '-', ''), 12)
                 || left(md5(g::text), 20))::uuid,
                $1, 'g' || g, 'g' || g || '@example.com', 'en-us', 60, 'sending',
                '\\x00', '\\x01', at + interval '1 minute', at, at + interval '60 minutes',
                gen_random_uuid(), at + interval '1 minute'
           FROM generate_series(1, $2::int8) g,
                LATERAL (SELECT now() - (g * interval '5 minutes') / $2 AS at) t",
    )
    .bind(p.id)
    .bind(GROWN)
    .execute(&db.pool)
    .await
    .unwrap();
    let analysed: Option<i64> = sqlx::query_scalar(
        "SELECT max(analyze_count + autoanalyze_count) FROM pg_stat_user_tables
          WHERE relid IN (SELECT inhrelid FROM pg_inherits
                           WHERE inhparent = 'dispatches'::regclass)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        analysed,
        Some(0),
        "the test is about partitions never analysed"
    );

    for (pool, tag, plans) in [
        (&one, "generic", "generic plans made on the tiny partition"),
        (
            &custom_plans_only(&db.url).await,
            "custom",
            "plans made without statistics",
        ),
    ] {
        let before = rows_read(pool).await;
        hot_path(pool, p.id, tag).await;
        let after = rows_read(pool).await;
        let (scanned, fetched) = (after.0 - before.0, after.1 - before.1);
        assert_eq!(
            scanned, 0,
            "{plans}: the hot path read {scanned} rows of the grown partition by sequential scans"
        );
        // Each step finds its rows by key: a few dozen fetches in all, not
        // a range of the partition.
        assert!(
            fetched < 200,
            "{plans}: the hot path fetched {fetched} rows of the grown partition through indexes"
        );
    }
    db.assert_open_means_sealed().await;
}

/// The functions of the hot path plan once per session, as index probes
/// (migrations/0015, 0016, 0017): left to `plan_cache_mode = auto`, Postgres
/// planned the claim's statements anew at every call where partitions
/// were unanalysed (28 s of planning in a 30 s bench run). A later
/// `CREATE OR REPLACE` that forgot the `SET` list would drop it silently.
#[tokio::test]
async fn hot_path_functions_plan_once_with_index_probes_only() {
    let db = TestDb::new().await;
    let functions = [
        "accept_dispatch(uuid,uuid,text,text,text,integer,bytea,bytea,integer,integer,double precision)",
        "claim_dispatch(uuid,double precision,uuid,double precision)",
        "claim_dispatch_with_partner(uuid,double precision,uuid,double precision)",
        "finish_dispatches(uuid[],uuid[],text[],text[],double precision[],boolean[],text,text)",
        "supersede_older(uuid)",
    ];
    for function in functions {
        let config: Option<Vec<String>> =
            sqlx::query_scalar("SELECT proconfig FROM pg_proc WHERE oid = $1::regprocedure")
                .bind(function)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        let config = config.unwrap_or_default();
        for setting in [
            "plan_cache_mode=force_generic_plan",
            "enable_seqscan=off",
            "enable_bitmapscan=off",
        ] {
            assert!(
                config.iter().any(|c| c == setting),
                "{function} lacks {setting}: {config:?}"
            );
        }
    }
}
