//! Any body: a parsed check request or a rejection, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use verimail_domain::CheckRequest;

fuzz_target!(|body: &[u8]| {
    if let Ok(request) = CheckRequest::parse(body) {
        assert!(
            !request.code.is_empty()
                && request.code.chars().count() <= CheckRequest::CODE_MAX_CHARS
        );
    }
});
