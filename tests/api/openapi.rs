//! `GET /openapi.json` is the API as a document, and is held to the code:
//! every route in the router is in it and nothing else, every CBC code the
//! API can answer with is in it, and each documented operation answers as a
//! route (not the router's fallback) on a running intake.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use crate::support::*;
use serde_json::Value;
use verimail_domain::ErrorCode;

async fn document(stack: &Stack) -> Value {
    let reply = Reply::read(
        stack
            .intake
            .client
            .get(stack.intake.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/json"))
    );
    reply.json()
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_lists_exactly_the_routes() {
    let stack = Stack::start().await;
    let doc = document(&stack).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    let routed: BTreeSet<(String, String)> = verimail_intake::startup::routes()
        .into_iter()
        .map(|(method, path, _)| (method.to_owned(), path.to_owned()))
        .collect();
    assert_eq!(documented, routed);

    // Every $ref resolves.
    let text = doc.to_string();
    for reference in text.split("\"$ref\":\"").skip(1) {
        let pointer = reference.split('"').next().unwrap();
        let pointer = pointer.trim_start_matches('#');
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {pointer}");
    }

    // Every CBC code the API answers with is documented.
    let codes: BTreeSet<&str> =
        doc["components"]["schemas"]["Error"]["properties"]["error_code"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
    for code in ErrorCode::ALL {
        assert!(
            codes.contains(code.code()),
            "{} is not documented",
            code.code()
        );
        assert!(text.contains(code.code()));
    }
    stack.broker.cleanup().await;
}

#[tokio::test]
async fn each_documented_operation_is_a_route_on_a_running_intake() {
    let stack = Stack::start().await;
    let doc = document(&stack).await;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let url = stack
                .intake
                .url(&path.replace("{id}", &uuid::Uuid::now_v7().to_string()));
            let request = match method.as_str() {
                "get" => stack.intake.client.get(url),
                "post" => stack.intake.client.post(url).json(&serde_json::json!({})),
                other => panic!("undocumented method {other}"),
            };
            let reply = Reply::read(
                request
                    .header("X-Auth-Token", &stack.partner.token)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            let fallback = reply.status == 405 || reply.body.contains("No such resource");
            assert!(!fallback, "{method} {path} is not routed: {reply:?}");
            let documented = item[method]["responses"]
                .as_object()
                .unwrap()
                .contains_key(&reply.status.to_string());
            assert!(
                documented,
                "{method} {path} answered an undocumented {}",
                reply.status
            );
        }
    }
    stack.broker.cleanup().await;
}
