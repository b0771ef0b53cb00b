//! The `Authorization` header parser and the signature verifier: any header
//! and any request either verify or are refused, never a panic; and a
//! request signed with `sign` always verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use verimail_domain::sdk_signature::{self, SignedRequest};

fuzz_target!(|input: (&str, &str, &str, &[u8], &str)| {
    let (authorization, path, query, body, date) = input;
    let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    let headers = [
        ("X-Sdk-Date", date),
        ("Host", "h"),
        ("Content-Type", "application/json"),
    ];
    let request = SignedRequest {
        method: "POST",
        path,
        query: (!query.is_empty()).then_some(query),
        headers: &headers,
        body,
    };
    if let Ok(parsed) = sdk_signature::parse_authorization(authorization) {
        let _ = sdk_signature::verify(
            &request,
            &parsed,
            b"secret",
            now,
            sdk_signature::DEFAULT_MAX_SKEW,
        );
    }
    // What we sign ourselves verifies.
    let date = sdk_signature::format_sdk_date(now);
    let headers = [("X-Sdk-Date", date.as_str()), ("Host", "h")];
    let request = SignedRequest {
        headers: &headers,
        ..request
    };
    if let Ok(signed) = sdk_signature::sign(&request, "AK0123456789", b"secret") {
        let parsed = sdk_signature::parse_authorization(&signed).expect("our own header parses");
        sdk_signature::verify(
            &request,
            &parsed,
            b"secret",
            now,
            sdk_signature::DEFAULT_MAX_SKEW,
        )
        .expect("our own signature verifies");
    }
});
