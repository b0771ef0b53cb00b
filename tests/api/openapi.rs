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

/// A JSON Schema `pattern` and length limits, run here as a generator of
/// positive data would read them.
struct StringSchema {
    pattern: regex_automata::dfa::regex::Regex,
    min: usize,
    max: usize,
}

impl StringSchema {
    fn of(schema: &Value) -> Self {
        let limit = |key: &str, default: u64| schema[key].as_u64().unwrap_or(default) as usize;
        Self {
            pattern: regex_automata::dfa::regex::Regex::new(schema["pattern"].as_str().unwrap())
                .unwrap(),
            min: limit("minLength", 0),
            max: limit("maxLength", u64::MAX),
        }
    }

    fn accepts(&self, s: &str) -> bool {
        (self.min..=self.max).contains(&s.chars().count()) && self.pattern.is_match(s)
    }
}

/// Schema-valid data must be accepted (schemathesis' positive data once
/// sent `{"email": ""}`), and what the schema refuses should be refused: the
/// email pattern agrees with `Email::parse` on every address here but the
/// kinds its description lists as beyond a pattern.
#[test]
fn the_request_schemas_accept_what_the_api_accepts() {
    use verimail_domain::Email;
    let doc: Value = serde_json::from_str(verimail_intake::routes::health::OPENAPI).unwrap();
    let schemas = &doc["components"]["schemas"];
    for body in ["SendRequest", "CheckRequest"] {
        assert_eq!(
            schemas[body]["properties"]["email"]["$ref"], "#/components/schemas/Email",
            "{body}"
        );
    }
    let email = StringSchema::of(&schemas["Email"]);
    let both = |s: &str| (email.accepts(s), Email::parse(s).is_ok());

    let locals = [
        "a",
        "user",
        "first.last",
        "a.b.c",
        "x+tag",
        "!#$%&'*+/=?^_`{|}~-",
        "0",
        ".a",
        "a.",
        "a..b",
        "\"a\"",
        "a\\b",
        "a b",
        "vïctim",
        "a@b",
        "",
    ];
    let domains = [
        "example.com",
        "b.c",
        "a-b.example",
        "a.b-c.d",
        "1.2.3.com",
        "x.1-2",
        "x.1a",
        "x.a1",
        "localhost",
        "1.2.3.4",
        "x.123",
        "-a.com",
        "a-.com",
        "a.-b",
        "a_b.com",
        "example.com.",
        ".example.com",
        "a..b",
        "[127.0.0.1]",
        "ex ample.com",
        "a.b-",
        "",
    ];
    let mut agreed = 0;
    for local in locals {
        for domain in domains {
            let address = format!("{local}@{domain}");
            let (schema, parser) = both(&address);
            assert_eq!(
                schema, parser,
                "{address:?}: schema {schema}, parser {parser}"
            );
            agreed += usize::from(schema);
        }
    }
    assert!(agreed > 50, "only {agreed} addresses accepted");

    let longest = format!("{}@example.com", "a".repeat(64 - 12));
    for refused_by_both in [
        "",
        " ",
        "a",
        "a@b",
        "user.example.com",
        "a@b@example.com",
        "User <user@example.com>",
        "user\u{7}@example.com",
        &format!("a{longest}"),
    ] {
        assert_eq!(both(refused_by_both), (false, false), "{refused_by_both:?}");
    }
    assert_eq!(both(&longest), (true, true));
    // What the description says the pattern cannot express.
    for parser_only in [
        " user@example.com ",
        "user@example.com\n",
        "user@bücher.example",
        "user@xn--bcher-kva.example",
        "user@a--b.example",
    ] {
        assert_eq!(both(parser_only), (false, true), "{parser_only:?}");
    }

    let lang = StringSchema::of(&schemas["SendRequest"]["properties"]["lang"]);
    for tag in [
        "", "zh-cn", "en-us", "EN-US", "Zh-Cn", "fr-fr", "en", "zh_cn", " zh-cn", "en-us\n",
    ] {
        let parsed = verimail_domain::Lang::parse_field(Some(&Value::from(tag))).is_ok();
        assert_eq!(lang.accepts(tag), parsed, "lang {tag:?}");
    }
}

/// The send's 204 links its X-Request-Id to the dispatch, so stateful
/// testing reaches real dispatches instead of only 404s.
#[test]
fn the_send_links_its_request_id_to_the_dispatch() {
    let doc: Value = serde_json::from_str(verimail_intake::routes::health::OPENAPI).unwrap();
    let link = &doc["paths"]["/v2/bases/verificationcode/send"]["post"]["responses"]["204"]["links"]
        ["getDispatch"];
    assert_eq!(link["parameters"]["id"], "$response.header.X-Request-Id");
    let target = &doc["paths"]["/v2/bases/verificationcode/dispatches/{id}"]["get"];
    assert_eq!(target["operationId"], link["operationId"]);
    assert_eq!(target["parameters"][0]["name"], "id");
}
