//! The schema spells a few state sets in SQL where a bound parameter cannot
//! go (a CHECK constraint). These tests keep those spellings equal to
//! `DispatchStatus`, the one definition in Rust, and hold the indexes and
//! functions to what the hot path needs of them.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use crate::support::TestDb;
use verimail_domain::DispatchStatus;

/// The quoted names in an SQL fragment, e.g. `status IN ('a', 'b')`.
fn quoted_names(sql: &str) -> BTreeSet<String> {
    sql.split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn names(set: &[DispatchStatus]) -> BTreeSet<String> {
    set.iter().map(|s| s.as_str().to_owned()).collect()
}

/// The sweeper's index holds the open set as "still has a sealed code",
/// keyed on `sweep_at`, a bound of `next_attempt_at` that claims, renewals
/// and retries leave where it is (migrations/0010, 0012), so that they
/// change no indexed value and stay HOT (`sweep.rs` checks the bound holds
/// still under a retry). The correspondence of
/// the two sets is checked on real rows by `assert_open_means_sealed` at the
/// end of the pipeline, check and fault-injection tests.
#[tokio::test]
async fn the_sweepers_index_is_keyed_on_nothing_a_claim_changes() {
    let db = TestDb::new().await;
    let definition: String = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'dispatches' AND indexname = 'dispatches_unsent'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the partial index exists");
    assert!(
        definition.ends_with("USING btree (sweep_at) WHERE (code_sealed IS NOT NULL)"),
        "{definition}"
    );
    // Every column any index of `dispatches` uses, predicates included:
    // what a HOT update must leave alone.
    let indexed: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT a.attname FROM pg_index i
           JOIN pg_attribute a ON a.attrelid = i.indrelid
          WHERE i.indrelid = 'dispatches'::regclass AND a.attnum > 0 AND NOT a.attisdropped
            AND (a.attnum = ANY(i.indkey)
                 OR pg_get_expr(i.indpred, i.indrelid) LIKE '%' || a.attname || '%')
          ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        indexed,
        ["code_sealed", "created_at", "id", "recipient", "sweep_at"]
    );
    // Partitions leave room on each page for the updated versions.
    let fillfactors: Vec<Option<Vec<String>>> = sqlx::query_scalar(
        "SELECT c.reloptions FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'dispatches'::regclass",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(!fillfactors.is_empty());
    assert!(
        fillfactors
            .iter()
            .all(|o| o.as_deref() == Some(&["fillfactor=70".to_owned()][..])),
        "{fillfactors:?}"
    );
}

#[tokio::test]
async fn every_state_and_only_those_pass_the_check_constraint() {
    let db = TestDb::new().await;
    let constraint: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint
          WHERE conrelid = 'dispatches'::regclass AND contype = 'c'
            AND pg_get_constraintdef(oid) LIKE '%status%'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("a status CHECK constraint");
    assert_eq!(quoted_names(&constraint), names(&DispatchStatus::ALL));
}

/// The functions of the migrations (`accept_dispatch`, `supersede_older`,
/// `claim_dispatch`, `claim_dispatch_with_partner`) are the other place SQL spells states: a function body
/// cannot take the set as a parameter without changing its signature under
/// running workers. Every list they spell is one of `DispatchStatus`'s named
/// sets, and every single name is a state.
#[tokio::test]
async fn every_state_set_the_functions_spell_is_a_named_set() {
    let db = TestDb::new().await;
    let bodies: Vec<(String, String)> = sqlx::query_as(
        "SELECT proname::text, prosrc FROM pg_proc
          WHERE proname IN ('accept_dispatch', 'supersede_older', 'claim_dispatch',
                            'claim_dispatch_with_partner')",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    // Every overload (0001's accept_dispatch without a hand-off window is
    // still there for intakes that were not upgraded; 0017's claim_dispatch
    // wraps claim_dispatch_with_partner for workers not yet upgraded).
    let functions: BTreeSet<&str> = bodies.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(functions.len(), 4, "{functions:?}");
    let named = [
        names(&DispatchStatus::OPEN),
        names(&DispatchStatus::WAITING),
        names(&DispatchStatus::CHECKABLE),
    ];
    let mut lists = 0;
    for (function, body) in &bodies {
        let body = body.to_lowercase();
        for (at, _) in body.match_indices("in (") {
            let list = &body[at + 4..];
            let list = &list[..list.find(')').unwrap()];
            if !list.trim_start().starts_with('\'') {
                continue;
            }
            lists += 1;
            let set = quoted_names(list);
            assert!(
                named.contains(&set),
                "{function} spells the set {set:?}, which is none of DispatchStatus's named sets"
            );
        }
        for name in quoted_names(&body) {
            if body.contains(&format!("status = '{name}'"))
                || body.contains(&format!("status <> '{name}'"))
            {
                assert!(
                    DispatchStatus::parse(&name).is_some(),
                    "{function} compares a status with {name:?}, which is no state"
                );
            }
        }
    }
    assert!(lists >= 3, "found only {lists} state lists");
}

#[tokio::test]
async fn the_token_digest_is_documented_as_what_it_is() {
    let db = TestDb::new().await;
    let comment: Option<String> = sqlx::query_scalar(
        "SELECT col_description('tokens'::regclass, attnum) FROM pg_attribute
          WHERE attrelid = 'tokens'::regclass AND attname = 'digest'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(comment.unwrap_or_default().starts_with("SHA-256"));
}

/// `verimail_id_at` bounds `id` in every per-recipient scan. It must keep
/// 0006's value for every instant (partition bounds were made with it), and
/// it must inline: called through the SQL function executor instead, it
/// re-parsed its body on every statement (migrations/0009).
#[tokio::test]
async fn the_id_bound_keeps_its_value_and_is_inlined() {
    let db = TestDb::new().await;
    let (differ, total): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE verimail_id_at(t) IS DISTINCT FROM
                    (lpad(to_hex(floor(extract(epoch FROM t) * 1000)::bigint), 12, '0')
                     || '00000000000000000000')::uuid),
                count(*)
           FROM (SELECT timestamptz '2026-12-03 00:00:00+00'
                        + (random() * 4e9 - 2e9) * interval '1 millisecond'
                        + (random() * 1e6)::int * interval '1 microsecond'
                        + n * interval '17 days' AS t
                   FROM generate_series(-1000, 9000) n) s",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (differ, total),
        (0, 10_001),
        "values that differ from 0006's"
    );

    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN (VERBOSE, COSTS OFF)
         SELECT id FROM dispatches WHERE id >= verimail_id_at(clock_timestamp() - interval '1 day')",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(
        !plan.contains("verimail_id_at"),
        "verimail_id_at is called, not inlined:\n{plan}"
    );
}
