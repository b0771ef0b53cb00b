//! Checking a code: single use, three wrong tries, expiry,
//! supersession, concurrency, and partner isolation.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::support::*;
use futures_util::future::join_all;
use serde_json::json;
use uuid::Uuid;
use verimail_intake::accounts::AccountKind;
use verimail_testkit::smtp_sink::SmtpSink;

const CHECK_PATH: &str = "/v2/bases/verificationcode/check";
const WAIT: Duration = Duration::from_secs(15);

/// This file's `Stack` with its own helpers: in one test crate an inherent
/// `impl Stack` here would clash with another module's.
struct Env(Stack);

impl std::ops::Deref for Env {
    type Target = Stack;

    fn deref(&self) -> &Stack {
        &self.0
    }
}

async fn env() -> Env {
    Env(Stack::start().await)
}

impl Env {
    async fn send(&self, email: &str) -> Uuid {
        let reply = self
            .intake
            .send(&self.partner.token, &valid_body(email))
            .await;
        assert_eq!(reply.status, 204, "{}", reply.body);
        reply.request_id.unwrap().parse().unwrap()
    }

    async fn check_as(&self, token: &str, email: &str, code: &str) -> Reply {
        let body = json!({"email": email, "verification_code": code});
        let request = self
            .intake
            .client
            .post(self.intake.url(CHECK_PATH))
            .header("X-Auth-Token", token)
            .json(&body);
        Reply::read(request.send().await.unwrap()).await
    }

    async fn check(&self, email: &str, code: &str) -> Reply {
        self.check_as(&self.partner.token, email, code).await
    }

    /// The code of a dispatch, as the worker would mail it.
    async fn code_of(&self, id: Uuid) -> String {
        let sealed: Vec<u8> =
            sqlx::query_scalar("SELECT code_sealed FROM dispatches WHERE id = $1")
                .bind(id)
                .fetch_one(&self.db.pool)
                .await
                .unwrap();
        test_keys()
            .open_code(id, &sealed)
            .unwrap()
            .expose()
            .to_owned()
    }
}

fn outcome(reply: &Reply) -> (u16, Option<String>) {
    (reply.status, reply.error_code())
}

fn err(code: &str) -> (u16, Option<String>) {
    (400, Some(code.to_owned()))
}

fn wrong_code(code: &str) -> String {
    code.chars()
        .map(|c| {
            if c == '9' {
                '0'
            } else {
                char::from(c as u8 + 1)
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_code_from_the_mail_verifies_once() {
    let env = env().await;
    let sink = SmtpSink::start().await;
    let worker = TestWorker::spawn(
        worker_settings(env.broker.topology.prefix(), Some(sink.url())),
        &env.db.url,
    )
    .await;
    let id = env.send("check@example.com").await;
    let mails = sink.wait_for(1, WAIT).await;
    wait_status(&env.db.pool, id, &["sent"], WAIT).await;
    let code = find_code(&mails[0].text().unwrap(), 6).unwrap();

    assert_eq!(
        outcome(&env.check("Check@Example.com ", &code).await),
        (204, None),
        "address normalised"
    );
    assert_eq!(
        outcome(&env.check("check@example.com", &code).await),
        err("CBC.99004008"),
        "single use"
    );
    let status = Reply::read(
        env.intake
            .client
            .get(
                env.intake
                    .url(&format!("/v2/bases/verificationcode/dispatches/{id}")),
            )
            .header("X-Auth-Token", &env.partner.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status.json()["status"], "verified");
    env.db.assert_open_means_sealed().await;
    worker.stop().await.unwrap();
    env.broker.cleanup().await;
}

#[tokio::test]
async fn three_wrong_tries_void_the_code() {
    let env = env().await;
    let id = env.send("wrong@example.com").await;
    let code = env.code_of(id).await;
    for _ in 0..3 {
        assert_eq!(
            outcome(&env.check("wrong@example.com", &wrong_code(&code)).await),
            err("CBC.99004010")
        );
    }
    assert_eq!(
        outcome(&env.check("wrong@example.com", &code).await),
        err("CBC.99004009"),
        "void even for the right code"
    );
    assert_eq!(
        outcome(&env.check("wrong@example.com", "000000").await),
        err("CBC.99004009")
    );
    env.broker.cleanup().await;
}

#[tokio::test]
async fn expired_superseded_and_missing_codes_do_not_verify() {
    let env = env().await;
    let expired = env.send("exp@example.com").await;
    let code = env.code_of(expired).await;
    sqlx::query("UPDATE dispatches SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(expired)
        .execute(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(
        outcome(&env.check("exp@example.com", &code).await),
        err("CBC.99004008")
    );

    let first = env.send("two@example.com").await;
    let first_code = env.code_of(first).await;
    let second = env.send("two@example.com").await;
    let second_code = env.code_of(second).await;
    let status: String = sqlx::query_scalar("SELECT status FROM dispatches WHERE id = $1")
        .bind(first)
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(status, "superseded");
    if first_code != second_code {
        assert_eq!(
            outcome(&env.check("two@example.com", &first_code).await),
            err("CBC.99004008"),
            "the first code is superseded"
        );
        let failures: i32 =
            sqlx::query_scalar("SELECT check_failures FROM dispatches WHERE id = $1")
                .bind(second)
                .fetch_one(&env.db.pool)
                .await
                .unwrap();
        assert_eq!(failures, 0, "an old code is not a wrong try");
    }
    assert_eq!(
        outcome(&env.check("two@example.com", &second_code).await),
        (204, None)
    );

    assert_eq!(
        outcome(&env.check("never@example.com", "123456").await),
        err("CBC.99004008"),
        "no code pending"
    );
    env.db.assert_open_means_sealed().await;
    env.broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_checks_consume_once_and_count_wrong_tries_exactly() {
    let env = env().await;
    let id = env.send("race@example.com").await;
    let code = env.code_of(id).await;
    let right = join_all((0..20).map(|_| env.check("race@example.com", &code))).await;
    assert_eq!(
        right.iter().filter(|r| r.status == 204).count(),
        1,
        "exactly one consumes the code"
    );
    assert!(
        right
            .iter()
            .filter(|r| r.status != 204)
            .all(|r| r.error_code().as_deref() == Some("CBC.99004008"))
    );

    let id = env.send("race2@example.com").await;
    let code = env.code_of(id).await;
    let bad = wrong_code(&code);
    let wrong = join_all((0..20).map(|_| env.check("race2@example.com", &bad))).await;
    let counted = wrong
        .iter()
        .filter(|r| r.error_code().as_deref() == Some("CBC.99004010"))
        .count();
    let void = wrong
        .iter()
        .filter(|r| r.error_code().as_deref() == Some("CBC.99004009"))
        .count();
    assert_eq!((counted, void), (3, 17));
    assert_eq!(
        outcome(&env.check("race2@example.com", &code).await),
        err("CBC.99004009")
    );
    env.broker.cleanup().await;
}

#[tokio::test]
async fn a_partner_cannot_check_another_partners_code() {
    let env = env().await;
    let id = env.send("mine@example.com").await;
    let code = env.code_of(id).await;
    let other = partner(&env.db.pool, AccountKind::Partner, false).await;
    assert_eq!(
        outcome(&env.check_as(&other.token, "mine@example.com", &code).await),
        err("CBC.99004008"),
        "as if no code existed"
    );
    assert_eq!(
        outcome(&env.check("mine@example.com", &code).await),
        (204, None),
        "and it is not consumed"
    );
    env.broker.cleanup().await;
}

#[tokio::test]
async fn check_parameters_and_auth_are_validated_like_send() {
    let env = env().await;
    let post = |body: serde_json::Value, token: Option<&str>| {
        let mut request = env
            .intake
            .client
            .post(env.intake.url(CHECK_PATH))
            .json(&body);
        if let Some(token) = token {
            request = request.header("X-Auth-Token", token);
        }
        request.send()
    };
    let token = Some(env.partner.token.as_str());
    let cases = [
        (
            json!({"verification_code": "123456"}),
            token,
            400,
            "CBC.99004004",
        ),
        (
            json!({"email": "", "verification_code": "123456"}),
            token,
            400,
            "CBC.99004004",
        ),
        (
            json!({"email": "bad", "verification_code": "123456"}),
            token,
            400,
            "CBC.99004004",
        ),
        (json!({"email": "a@example.com"}), token, 400, "CBC.0100"),
        (
            json!({"email": "a@example.com", "verification_code": 123456}),
            token,
            400,
            "CBC.0100",
        ),
        (
            json!({"email": "a@example.com", "verification_code": ""}),
            token,
            400,
            "CBC.0100",
        ),
        (
            json!({"email": "a@example.com", "verification_code": "123456"}),
            None,
            401,
            "CBC.0154",
        ),
    ];
    for (body, token, status, code) in cases {
        let reply = Reply::read(post(body.clone(), token).await.unwrap()).await;
        assert_eq!(outcome(&reply), (status, Some(code.to_owned())), "{body}");
    }
    env.broker.cleanup().await;
}
