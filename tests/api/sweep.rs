//! The sweeper's cost (issue 27): a sweep reads the overdue rows and the
//! rows whose bound fell behind since the last sweep, not the open set
//! (migrations/0012). Functional sweeps: `pipeline.rs`
//! `the_sweeper_republishes_a_dispatch_whose_message_was_lost`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::*;
use sqlx::PgPool;
use uuid::Uuid;
use verimail_infra::store::dispatches::sweep::overdue;
use verimail_intake::accounts::AccountKind;

const OPEN: i64 = 20_000;
const GRACE: Duration = Duration::from_secs(30);

/// Entries of the sweeper's index and heap tuples of `dispatches` read by
/// index scans so far, as the shared statistics have them: the pool's one
/// connection flushes its own counters first.
async fn reads(pool: &PgPool) -> (i64, i64) {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query_as(
        "SELECT (SELECT coalesce(sum(idx_tup_read), 0)::int8 FROM pg_stat_user_indexes
                  WHERE indexrelid IN (SELECT inhrelid FROM pg_inherits
                                        WHERE inhparent = 'dispatches_unsent'::regclass)),
                (SELECT coalesce(sum(idx_tup_fetch), 0)::int8 FROM pg_stat_user_tables
                  WHERE relid IN (SELECT inhrelid FROM pg_inherits
                                   WHERE inhparent = 'dispatches'::regclass))",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// One sweep (the worker's batch of 500) on `pool`'s one connection: the
/// ids it picked, and the index entries and heap tuples it read.
async fn measured_sweep(pool: &PgPool) -> (BTreeSet<Uuid>, i64, i64) {
    let before = reads(pool).await;
    let ids = overdue(pool, GRACE, 500).await.unwrap();
    let after = reads(pool).await;
    (
        ids.into_iter().collect(),
        after.0 - before.0,
        after.1 - before.1,
    )
}

/// 20,000 open dispatches made over the last 50 minutes, all but three
/// retrying an hour ahead (a retry leaves the bound where the insert put
/// it, so they are behind once): the first sweep picks the three and
/// raises the others' bound; the next read no open row at all (and, once
/// the raised bounds' dead index entries are marked, no entry); a write
/// that brings a row's next look forward brings its bound along, and the
/// sweep after finds it.
#[tokio::test]
async fn a_sweep_with_nothing_overdue_reads_no_open_row() {
    let db = TestDb::new().await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let sealed: Vec<u8> = vec![1, 2, 3];
    sqlx::query(
        "INSERT INTO dispatches (id, partner_id, recipient, email, lang, ttl_minutes, status,
                                 code_digest, code_sealed, next_attempt_at, created_at,
                                 expires_at)
         SELECT (left(replace(verimail_id_at(at)::text, '-', ''), 12)
                 || left(md5(g::text), 20))::uuid,
                $1, 'r' || g, 'r' || g || '@example.com', 'en-us', 60, 'queued',
                '\\x00', $2, at, at, at + interval '60 minutes'
           FROM generate_series(1, $3::int8) g,
                LATERAL (SELECT now() - interval '40 seconds'
                                - (g * interval '50 minutes') / $3 AS at) t",
    )
    .bind(p.id)
    .bind(&sealed)
    .bind(OPEN)
    .execute(&db.pool)
    .await
    .unwrap();
    let stuck: BTreeSet<Uuid> =
        sqlx::query_scalar("SELECT id FROM dispatches WHERE recipient IN ('r1', 'r777', 'r9999')")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(stuck.len(), 3);
    let retried = sqlx::query(
        "UPDATE dispatches SET status = 'retrying', attempts = 1,
                next_attempt_at = now() + interval '1 hour'
          WHERE recipient NOT IN ('r1', 'r777', 'r9999')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(retried.rows_affected() as i64, OPEN - 3);
    let moved: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dispatches WHERE sweep_at IS DISTINCT FROM created_at",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(moved, 0, "a retry leaves the sweeper's bound alone");

    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let (picked, entries, tuples) = measured_sweep(&one).await;
    assert_eq!(
        picked, stuck,
        "the overdue rows and only those, though 40 batches of raised bounds came first"
    );
    assert!(
        entries >= OPEN && tuples >= OPEN,
        "the first sweep raises every bound that fell behind: {entries} entries, {tuples} tuples"
    );

    // The raised bounds left a dead index entry each: the sweeps after
    // step over them, reading no live row, and mark them dead in the index
    // (as soon as no transaction anywhere can still see the old versions,
    // which a busy server may delay a moment; vacuum would clear them too).
    let mut entries = i64::MAX;
    for _ in 0..50 {
        let (picked, read, tuples) = measured_sweep(&one).await;
        assert!(picked.is_empty(), "{picked:?}");
        assert!(
            tuples <= 3,
            "a sweep with nothing overdue read {tuples} rows of {OPEN} open"
        );
        entries = read;
        if entries <= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        entries <= 3,
        "the dead entries were never marked: {entries} index entries read"
    );

    // Any write that brings `next_attempt_at` before the bound lowers it.
    let late: Uuid = sqlx::query_scalar(
        "UPDATE dispatches SET next_attempt_at = now() - interval '1 minute'
          WHERE recipient = 'r5000' RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let (picked, entries, _) = measured_sweep(&one).await;
    assert_eq!(picked, BTreeSet::from([late]));
    assert!(entries <= 3, "{entries}");
    db.assert_open_means_sealed().await;
}
