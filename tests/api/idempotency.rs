//! `Idempotency-Key`: a retried send gets the first answer and mails nothing
//! new, also when two retries race; the key with another body is refused.

#![allow(clippy::unwrap_used)]

use crate::support::*;
use serde_json::Value;

async fn send_with_key(stack: &Stack, key: &str, body: &Value) -> Reply {
    let response = stack
        .intake
        .client
        .post(stack.intake.url(SEND_PATH))
        .header("X-Auth-Token", &stack.partner.token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    Reply::read(response).await
}

#[tokio::test]
async fn a_retried_send_gets_the_first_answer_and_mails_nothing_new() {
    let stack = Stack::start().await;
    let body = valid_body("retry@example.com");
    let first = send_with_key(&stack, "order-42", &body).await;
    let retry = send_with_key(&stack, "order-42", &body).await;
    assert_eq!((first.status, retry.status), (204, 204));
    assert_eq!(retry.request_id, first.request_id);
    assert_eq!(stack.db.count("SELECT count(*) FROM dispatches").await, 1);
    assert_eq!(stack.broker.drain_dispatches().await.len(), 1);

    let other = send_with_key(&stack, "order-42", &valid_body("someone-else@example.com")).await;
    assert_eq!(other.status, 400);
    assert_eq!(other.error_code().as_deref(), Some("CBC.0100"));
    assert_eq!(stack.db.count("SELECT count(*) FROM dispatches").await, 1);

    // Another key is another send.
    let next = send_with_key(&stack, "order-43", &body).await;
    assert_eq!(next.status, 204);
    assert_ne!(next.request_id, first.request_id);
    stack.broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_agree_on_one_dispatch() {
    let stack = Stack::start().await;
    let body = valid_body("racing@example.com");
    let replies =
        futures_util::future::join_all((0..8).map(|_| send_with_key(&stack, "race-1", &body)))
            .await;
    let ids: std::collections::HashSet<_> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 204, "{r:?}");
            r.request_id.clone()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one X-Request-Id for all");
    assert_eq!(stack.db.count("SELECT count(*) FROM dispatches").await, 1);
    assert_eq!(stack.broker.drain_dispatches().await.len(), 1);
    stack.broker.cleanup().await;
}

#[tokio::test]
async fn an_error_is_not_remembered_and_a_bad_key_is_a_parameter_error() {
    let stack = Stack::start().await;
    let bad = send_with_key(&stack, "k1", &serde_json::json!({"receiver_type": 1})).await;
    assert_eq!(bad.error_code().as_deref(), Some("CBC.0100"));
    // Nothing was mailed, so the key is free for the corrected request.
    let good = send_with_key(&stack, "k1", &valid_body("fixed@example.com")).await;
    assert_eq!(good.status, 204);

    for key in ["", " ", &"x".repeat(256), "tab\tkey"] {
        let reply = send_with_key(&stack, key, &valid_body("fixed@example.com")).await;
        assert_eq!(reply.error_code().as_deref(), Some("CBC.0100"), "{key:?}");
    }
    stack.broker.cleanup().await;
}
