//! The races that faults open, each staged on purpose: a stale worker after
//! a takeover, an outcome write that fails after SMTP said 250, a confirm
//! that comes too late, a resend that fails, and the rate limit under a
//! database whose default isolation is REPEATABLE READ.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::support::proxy::Proxy;
use crate::support::*;
use verimail_domain::CodeTtl;
use verimail_infra::store::dispatches::accept as intake_store;
use verimail_infra::store::dispatches::{self as store, Admission, Claim, NewDispatch, Outcome};
use verimail_intake::accounts::AccountKind;
use verimail_testkit::smtp_sink::{Behaviour, SmtpSink};
use verimail_worker::Next;

async fn status_of(pool: &sqlx::PgPool, id: uuid::Uuid) -> String {
    sqlx::query_scalar("SELECT status FROM dispatches WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Ends the current lease of `id` as if its holder had gone quiet long ago.
async fn expire_lease(pool: &sqlx::PgPool, id: uuid::Uuid) {
    sqlx::query("UPDATE dispatches SET lease_until = now() - interval '1 minute' WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}

/// The group-committed forms: many claims in one statement answer each
/// dispatch as alone, and a batch of outcomes is fenced row by row.
#[tokio::test]
async fn batched_claims_and_outcomes_are_fenced_row_by_row() {
    let db = TestDb::new().await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let lease = Duration::from_secs(30);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            record_dispatch(&db.pool, p.id, &format!("batch{i}@example.com"))
                .await
                .0,
        );
    }
    let stray = uuid::Uuid::now_v7();
    let mut asked = ids.clone();
    asked.insert(1, stray);
    let claims = store::claim_many(&db.pool, &asked, lease).await;
    assert!(matches!(claims[1], Ok(Claim::Missing)), "{:?}", claims[1]);
    let tokens: Vec<_> = [0, 2, 3]
        .iter()
        .map(|&i| match &claims[i] {
            Ok(Claim::Mine(_, token)) => *token,
            other => panic!("claim {i}: {other:?}"),
        })
        .collect();
    // Claimed twice in one batch: the second finds the first's lease.
    let twice = store::claim_many(&db.pool, &[ids[0], ids[0]], lease).await;
    assert!(
        twice.iter().all(|c| matches!(c, Ok(Claim::Leased(_)))),
        "{twice:?}"
    );

    // The first dispatch is taken over; its old holder's outcome must not land.
    expire_lease(&db.pool, ids[0]).await;
    let Claim::Mine(_, fresh) = store::claim(&db.pool, ids[0], lease).await.unwrap() else {
        panic!("takeover");
    };
    let outcomes: Vec<_> = ids
        .iter()
        .zip(&tokens)
        .map(|(id, token)| store::Finish {
            id: *id,
            token: *token,
            outcome: Outcome::Sent,
        })
        .collect();
    let written = with_error_texts(store::finish_many(&db.pool, &outcomes).await);
    assert_eq!(written, vec![Ok(false), Ok(true), Ok(true)]);
    assert_eq!(status_of(&db.pool, ids[0]).await, "sending");
    assert_eq!(status_of(&db.pool, ids[1]).await, "sent");
    assert!(
        store::finish(&db.pool, ids[0], fresh, &Outcome::Sent)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_stale_workers_outcome_after_a_takeover_is_refused() {
    let db = TestDb::new().await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let (id, _) = record_dispatch(&db.pool, p.id, "stale@example.com").await;
    let lease = Duration::from_secs(30);

    let Claim::Mine(_, stale) = store::claim(&db.pool, id, lease).await.unwrap() else {
        panic!("first claim");
    };
    expire_lease(&db.pool, id).await;
    let Claim::Mine(_, fresh) = store::claim(&db.pool, id, lease).await.unwrap() else {
        panic!("takeover after the lease ran out");
    };

    let failed = Outcome::Failed("the stale worker's view".into());
    assert!(!store::finish(&db.pool, id, stale, &failed).await.unwrap());
    assert!(!store::renew(&db.pool, id, stale, lease).await.unwrap());
    assert_eq!(status_of(&db.pool, id).await, "sending");
    assert!(
        store::finish(&db.pool, id, fresh, &Outcome::Sent)
            .await
            .unwrap()
    );
    assert_eq!(status_of(&db.pool, id).await, "sent");
    let retry = Outcome::Retry {
        reason: "late".into(),
        after: Duration::from_secs(1),
    };
    assert!(!store::finish(&db.pool, id, stale, &retry).await.unwrap());
    assert_eq!(
        status_of(&db.pool, id).await,
        "sent",
        "no third send follows"
    );
}

#[tokio::test]
async fn a_lease_that_just_ran_out_is_left_to_its_holder_for_the_grace() {
    let db = TestDb::new().await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let (id, _) = record_dispatch(&db.pool, p.id, "grace@example.com").await;
    let Claim::Mine(..) = store::claim(&db.pool, id, Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("first claim");
    };
    sqlx::query(
        "UPDATE dispatches SET lease_until = now() - interval '200 milliseconds' WHERE id = $1",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    let claim = store::claim(&db.pool, id, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        matches!(claim, Claim::Leased(wait) if wait <= store::TAKEOVER_GRACE),
        "{claim:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_write_that_fails_after_smtp_accepted_is_retried_and_mails_once() {
    let db = TestDb::new().await;
    let proxy = Proxy::start(target(&db.url)).await;
    let sink = SmtpSink::start().await;
    // The mail is accepted after a pause, during which Postgres goes away.
    sink.push_behaviour(Behaviour::DelayAccept(Duration::from_millis(800)));
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let (id, _) = record_dispatch(&db.pool, p.id, "once@example.com").await;
    let pool = verimail_infra::db::pool(&db_settings(&db.url_via(proxy.addr()))).unwrap();
    let core = processor(worker_settings(&unique_prefix(), Some(sink.url())), &pool);

    let outage = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        proxy.restore();
    };
    let (next, ()) = tokio::join!(core.process(id), outage);

    assert_eq!(next.unwrap(), Next::Ack);
    assert_eq!(status_of(&db.pool, id).await, "sent");
    // The redelivered message finds the dispatch final.
    assert_eq!(core.process(id).await.unwrap(), Next::Ack);
    assert_eq!(sink.messages().len(), 1, "one mail");
}

#[tokio::test]
async fn a_late_confirm_gives_204_or_no_mail_never_both() {
    let db = TestDb::new().await;
    let sink = SmtpSink::start().await;
    let core = processor(
        worker_settings(&unique_prefix(), Some(sink.url())),
        &db.pool,
    );
    let p = partner(&db.pool, AccountKind::Partner, false).await;

    // The message got through and a worker has it: the failure record is
    // refused, so the intake answers 204 (and the mail goes out).
    let (claimed, _) = record_dispatch(&db.pool, p.id, "late1@example.com").await;
    assert_eq!(core.process(claimed).await.unwrap(), Next::Ack);
    assert!(
        !intake_store::mark_handoff_failed(&db.pool, claimed, "confirm timed out")
            .await
            .unwrap()
    );
    assert_eq!(status_of(&db.pool, claimed).await, "sent");

    // The failure record came first: CBC.99004003, and the message that
    // arrives afterwards mails nothing.
    let (voided, _) = record_dispatch(&db.pool, p.id, "late2@example.com").await;
    assert!(
        intake_store::mark_handoff_failed(&db.pool, voided, "confirm timed out")
            .await
            .unwrap()
    );
    assert_eq!(core.process(voided).await.unwrap(), Next::Ack);
    assert_eq!(status_of(&db.pool, voided).await, "failed");

    // Past the hand-off window the record is refused too: the sweeper
    // delivers it, so 204 is the truth.
    let (late, _) = record_dispatch(&db.pool, p.id, "late3@example.com").await;
    sqlx::query("UPDATE dispatches SET handoff_by = now() - interval '1 second' WHERE id = $1")
        .bind(late)
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(
        !intake_store::mark_handoff_failed(&db.pool, late, "confirm timed out")
            .await
            .unwrap()
    );
    assert_eq!(status_of(&db.pool, late).await, "queued");

    let mails = sink.messages();
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0]
            .header("Message-ID")
            .unwrap()
            .contains(&claimed.to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_resend_leaves_the_earlier_code_valid() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let proxy = Proxy::start(target(&amqp_url())).await;
    let mut settings = intake_settings(amqp_via(proxy.addr()), &prefix);
    settings.amqp.publish_timeout = Duration::from_millis(800);
    let intake = TestIntake::spawn(settings, &db.url).await;
    let sink = SmtpSink::start().await;
    let worker = TestWorker::spawn(worker_settings(&prefix, Some(sink.url())), &db.url).await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let email = "resend@example.com";

    let first = intake.send(&p.token, &valid_body(email)).await;
    assert_eq!(first.status, 204);
    let mails = sink.wait_for(1, Duration::from_secs(10)).await;
    let code = find_code(&mails[0].text().unwrap(), 6).unwrap();

    proxy.cut();
    let resend = intake.send(&p.token, &valid_body(email)).await;
    assert_eq!(resend.error_code().as_deref(), Some("CBC.99004003"));
    proxy.restore();

    let check = intake
        .client
        .post(intake.url("/v2/bases/verificationcode/check"))
        .header("X-Auth-Token", &p.token)
        .json(&serde_json::json!({"email": email, "verification_code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        check.status().as_u16(),
        204,
        "the code the user holds still verifies"
    );
    worker.stop().await.unwrap();
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_exact_when_the_database_defaults_to_repeatable_read() {
    let db = TestDb::new().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {} SET default_transaction_isolation = 'repeatable read'",
        db.name
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    // A pool opened after the change, as an intake would open it.
    let pool = verimail_infra::db::pool(&db_settings(&db.url)).unwrap();
    let p = partner(&pool, AccountKind::Partner, false).await;
    let limit = verimail_intake::RateLimit {
        per_hour: 1,
        per_day: 1,
    };
    // Open every connection first, so the sends below really do overlap.
    let warm: Vec<_> = futures_util::future::join_all((0..8).map(|_| pool.acquire())).await;
    drop(warm);
    let keys = test_keys();
    let email = verimail_domain::Email::parse("rr@example.com").unwrap();
    let attempts: Vec<_> = (0..16)
        .map(|_| {
            let (pool, keys, email) = (pool.clone(), keys.clone(), email.clone());
            tokio::spawn(async move {
                let id = uuid::Uuid::now_v7();
                let new = NewDispatch {
                    id,
                    partner_id: p.id,
                    email,
                    lang: verimail_domain::Lang::EnUs,
                    ttl: CodeTtl::from_stored(5).unwrap(),
                    code_digest: keys.code_digest(id, "123456"),
                    code_sealed: keys.seal_code(id, "123456"),
                };
                intake_store::accept(&pool, &new, limit, Duration::from_secs(3))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut accepted = 0;
    for attempt in attempts {
        if matches!(attempt.await.unwrap(), Admission::Accepted { .. }) {
            accepted += 1;
        }
    }
    assert_eq!(
        accepted, 1,
        "exactly one of 16 concurrent sends at a limit of 1"
    );
    assert_eq!(db.count("SELECT count(*) FROM dispatches").await, 1);
}

fn record_for(partner_id: uuid::Uuid, email: &str, id: uuid::Uuid) -> NewDispatch {
    let email = verimail_domain::Email::parse(email).unwrap();
    let keys = test_keys();
    NewDispatch {
        id,
        partner_id,
        email,
        lang: verimail_domain::Lang::EnUs,
        ttl: CodeTtl::from_stored(5).unwrap(),
        code_digest: keys.code_digest(id, "123456"),
        code_sealed: keys.seal_code(id, "123456"),
    }
}

/// The intake's group commit: sends to one address in one batch count each
/// other exactly, and a record Postgres refuses fails only itself.
#[tokio::test]
async fn a_batch_of_records_keeps_the_limit_exact_and_fails_only_the_bad_one() {
    let db = TestDb::new().await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let limit = verimail_intake::RateLimit {
        per_hour: 2,
        per_day: 10,
    };
    let window = Duration::from_secs(3);
    let same: Vec<_> = (0..3)
        .map(|_| record_for(p.id, "same@example.com", uuid::Uuid::now_v7()))
        .collect();
    let mut batch = same.clone();
    batch.insert(
        1,
        record_for(p.id, "other@example.com", uuid::Uuid::now_v7()),
    );
    let answers =
        with_error_texts(intake_store::accept_many(&db.pool, &batch, limit, window).await);
    assert_eq!(
        answers,
        vec![
            Ok(Admission::Accepted {
                older_waiting: false
            }),
            Ok(Admission::Accepted {
                older_waiting: false
            }),
            Ok(Admission::Accepted {
                older_waiting: true
            }),
            Ok(Admission::RateLimited),
        ]
    );
    assert_eq!(db.count("SELECT count(*) FROM dispatches").await, 3);

    // An id from a skewed clock is refused by Postgres; its neighbour is not.
    let skewed = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        1_000_000_000,
        0,
    ));
    let batch = vec![
        record_for(p.id, "skewed@example.com", skewed),
        record_for(p.id, "fine@example.com", uuid::Uuid::now_v7()),
    ];
    let answers =
        with_error_texts(intake_store::accept_many(&db.pool, &batch, limit, window).await);
    assert!(
        answers[0].as_ref().is_err_and(|e| e.contains("clock")),
        "{answers:?}"
    );
    assert_eq!(
        answers[1],
        Ok(Admission::Accepted {
            older_waiting: false
        })
    );
    assert_eq!(db.count("SELECT count(*) FROM dispatches").await, 4);
}

/// The answers with each error as its text (cause chain included), to
/// compare and search.
fn with_error_texts<T>(answers: Vec<anyhow::Result<T>>) -> Vec<Result<T, String>> {
    answers
        .into_iter()
        .map(|answer| answer.map_err(|e| format!("{e:#}")))
        .collect()
}
