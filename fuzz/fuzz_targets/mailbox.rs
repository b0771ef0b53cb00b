//! The mailbox canonicaliser: accepted addresses are ASCII, in one spelling
//! (canonicalising twice changes nothing), with no invisible characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use verimail_domain::Email;

fuzz_target!(|raw: &str| {
    if let Ok(email) = Email::parse(raw) {
        let canonical = email.as_str();
        assert!(canonical.is_ascii(), "{canonical:?}");
        assert!(
            !canonical
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        );
        assert_eq!(
            Email::parse_stored(canonical),
            Some(email.clone()),
            "reads back"
        );
        assert_eq!(email.normalised(), canonical.to_ascii_lowercase());
    }
});
