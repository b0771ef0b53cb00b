//! Any body: a parsed send request or a rejection, never a panic; whatever
//! parses is in its normal form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use verimail_domain::SendRequest;

fuzz_target!(|body: &[u8]| {
    if let Ok(request) = SendRequest::parse(body) {
        let minutes = request.ttl.minutes();
        assert!((1..=60).contains(&minutes));
        // The canonical address parses to itself.
        let again = verimail_domain::Email::parse_stored(request.email.as_str());
        assert_eq!(
            again,
            Some(request.email.clone()),
            "the stored form reads back"
        );
    }
});
