//! The schema spells a few state sets in SQL where a bound parameter cannot
//! go (an index predicate, a CHECK constraint). These tests keep those
//! spellings equal to `DispatchStatus`, the one definition in Rust.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;

use support::TestDb;
use verimail_core::DispatchStatus;

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

#[tokio::test]
async fn open_set_matches_the_partial_index() {
    let db = TestDb::new().await;
    let definition: String = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'dispatches' AND indexname = 'dispatches_open'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the partial index exists");
    let predicate = definition
        .split_once(" WHERE ")
        .map(|(_, p)| p)
        .expect("a partial index");
    assert_eq!(quoted_names(predicate), names(&DispatchStatus::OPEN));
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
