//! Parsing of request bodies at the edge (the rules README's "HTTP API"
//! section lists). Every field rule lives
//! here once; handlers only ever see the parsed types.

use serde_json::{Map, Value};

use crate::ErrorCode;

/// A rejected request: which CBC code answers it and why (the reason is
/// shown to the client, so it never contains the offending value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Rejection {
    pub code: ErrorCode,
    pub reason: String,
}

impl Rejection {
    fn param(reason: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::ParameterError,
            reason: reason.into(),
        }
    }
    fn email(reason: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::InvalidEmail,
            reason: reason.into(),
        }
    }
}

/// A recipient mailbox in its one canonical spelling: the address the mail
/// is sent to, and (lower-cased) the key of the rate limit, supersession and
/// `/check`. Every spelling that reaches one mailbox must be one recipient,
/// or an attacker multiplies the rate limit by re-spelling the victim's
/// address, so the parser accepts only what has a single spelling:
///
/// - the local part is an RFC 5321 dot-atom of ASCII characters (no quoted
///   strings, no escapes: `"victim"@x` and `v\ictim@x` reach `victim@x`);
/// - the domain is a DNS host name with at least one dot, stored as its
///   lower-case A-label (`bücher.example` is `xn--bcher-kva.example`);
/// - no whitespace, control or format characters anywhere (U+200B, U+202E,
///   U+00AD, U+FEFF… would otherwise be invisible twins of a real address).
///
/// Provider-specific aliases (`+tags`, Gmail's dots) stay distinct: they are
/// separate mailboxes as far as SMTP knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub const MAX_CHARS: usize = 64;

    /// Parses the `email` field: `None` means absent or `null`.
    pub fn parse_field(value: Option<&Value>) -> Result<Self, Rejection> {
        match value {
            None | Some(Value::Null) => Err(Rejection::email("email is required")),
            Some(Value::String(s)) => Self::parse(s),
            Some(_) => Err(Rejection::param("email must be a string")),
        }
    }

    pub fn parse(raw: &str) -> Result<Self, Rejection> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(Rejection::email("email is required"));
        }
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(Rejection::param("email must be at most 64 characters"));
        }
        canonical_mailbox(trimmed)
            .map(Self)
            .ok_or_else(|| Rejection::email("email is not a valid address"))
    }

    /// An address read back from storage: it must already be canonical. The
    /// 64-character limit applies to what the client sent; an IDN domain's
    /// A-label can make the canonical form longer (found by fuzzing).
    pub fn parse_stored(stored: &str) -> Option<Self> {
        canonical_mailbox(stored)
            .filter(|canonical| canonical == stored)
            .map(Self)
    }

    /// The canonical address: what the mail is sent to.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key the rate limit, supersession and `/check` go by.
    pub fn normalised(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

/// `local@domain` in its one spelling, or `None` when the address has
/// another spelling, hides characters, or cannot be delivered over SMTP.
fn canonical_mailbox(s: &str) -> Option<String> {
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || is_format_char(c))
    {
        return None;
    }
    let (local, domain) = s.rsplit_once('@')?;
    if !is_dot_atom(local) || local.len() > 64 {
        return None;
    }
    if domain.starts_with('[') || domain.ends_with('.') {
        return None;
    }
    let domain = idna::domain_to_ascii_strict(domain).ok()?;
    let labels: Vec<&str> = domain.split('.').collect();
    let host_name = labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // A top-level label of digits only is an IP address, not a host.
        && !labels.last()?.bytes().all(|b| b.is_ascii_digit());
    let address = format!("{local}@{domain}");
    (host_name && address.len() <= 254).then_some(address)
}

/// RFC 5321 `Dot-string`: atoms of `atext` joined by single dots.
fn is_dot_atom(local: &str) -> bool {
    const SPECIALS: &[u8] = b"!#$%&'*+-/=?^_`{|}~";
    !local.is_empty()
        && local.split('.').all(|atom| {
            !atom.is_empty()
                && atom
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || SPECIALS.contains(&b))
        })
}

/// Unicode's format characters (category Cf): invisible, so an address with
/// one looks exactly like the address without it.
fn is_format_char(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
}

/// The language of the mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lang {
    ZhCn,
    EnUs,
}

impl Lang {
    pub const MAX_CHARS: usize = 16;

    pub fn parse_field(value: Option<&Value>) -> Result<Self, Rejection> {
        match value {
            None | Some(Value::Null) => Ok(Self::ZhCn),
            Some(Value::String(s)) if s.is_empty() => Ok(Self::ZhCn),
            Some(Value::String(s)) => {
                if s.chars().count() > Self::MAX_CHARS {
                    return Err(Rejection::param("lang must be at most 16 characters"));
                }
                Self::from_tag(s).ok_or_else(|| Rejection::param("lang must be zh-cn or en-us"))
            }
            Some(_) => Err(Rejection::param("lang must be a string")),
        }
    }

    /// Case-insensitive tag lookup (`EN-US` is `en-us`).
    pub fn from_tag(tag: &str) -> Option<Self> {
        if tag.eq_ignore_ascii_case("zh-cn") {
            Some(Self::ZhCn)
        } else if tag.eq_ignore_ascii_case("en-us") {
            Some(Self::EnUs)
        } else {
            None
        }
    }

    /// The stored, lower-case tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ZhCn => "zh-cn",
            Self::EnUs => "en-us",
        }
    }

    /// The BCP 47 spelling for `Content-Language`.
    pub fn content_language(self) -> &'static str {
        match self {
            Self::ZhCn => "zh-CN",
            Self::EnUs => "en-US",
        }
    }
}

/// How long a code stays valid, after the seed's normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeTtl(u32);

impl CodeTtl {
    pub const DEFAULT_MINUTES: u32 = 10;
    /// The seed fixes any timeout over an hour to 5 minutes.
    pub const CAPPED_MINUTES: u32 = 5;
    /// The longest lifetime a code can have: no code older than this is live.
    pub const MAX_MINUTES: u32 = 60;

    pub fn parse_field(value: Option<&Value>) -> Result<Self, Rejection> {
        let minutes = match value {
            None | Some(Value::Null) => return Ok(Self(Self::DEFAULT_MINUTES)),
            Some(Value::Number(n)) => whole_number(n),
            Some(_) => None,
        };
        match minutes {
            Some(m @ 1..=60) => Ok(Self(m as u32)),
            Some(61..=3000) => Ok(Self(Self::CAPPED_MINUTES)),
            _ => Err(Rejection::param(
                "timeout must be an integer from 1 to 3000",
            )),
        }
    }

    /// A lifetime read back from storage: only the normalised range (1..=60)
    /// is a lifetime the intake can have given.
    pub fn from_stored(minutes: i64) -> Option<Self> {
        u32::try_from(minutes)
            .ok()
            .filter(|m| (1..=Self::MAX_MINUTES).contains(m))
            .map(Self)
    }

    pub fn minutes(self) -> u32 {
        self.0
    }
}

/// A non-negative whole number in either JSON spelling, `5` or `5.0` (or
/// `5e0`): JSON does not tell them apart, nor does the OpenAPI document's
/// `integer`, and clients whose numbers are floats send the second. Too large
/// a float saturates, so it is out of any range checked after.
fn whole_number(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        let f = n.as_f64()?;
        (f.fract() == 0.0 && f >= 0.0).then_some(f as u64)
    })
}

fn parse_receiver_type(value: Option<&Value>) -> Result<(), Rejection> {
    match value.and_then(Value::as_number).and_then(whole_number) {
        Some(2) => Ok(()),
        _ => Err(Rejection::param("receiver_type must be 2 (email)")),
    }
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Rejection> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Rejection::param("the body must be a JSON object")),
        Err(_) => Err(Rejection::param("the body is not valid JSON")),
    }
}

/// A valid `send` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    pub email: Email,
    pub ttl: CodeTtl,
    pub lang: Lang,
}

impl SendRequest {
    /// Parses a JSON body. Fields are checked in the seed's order, so the
    /// first broken rule is the one reported; unknown fields are ignored.
    pub fn parse(body: &[u8]) -> Result<Self, Rejection> {
        let map = parse_object(body)?;
        parse_receiver_type(map.get("receiver_type"))?;
        let ttl = CodeTtl::parse_field(map.get("timeout"))?;
        let email = Email::parse_field(map.get("email"))?;
        let lang = Lang::parse_field(map.get("lang"))?;
        Ok(Self { email, ttl, lang })
    }
}

/// A valid `check` request (README, "Checking a code").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRequest {
    pub email: Email,
    pub code: String,
}

impl CheckRequest {
    /// Counted in characters, like every other field limit (and as the
    /// OpenAPI document's `maxLength` counts).
    pub const CODE_MAX_CHARS: usize = 16;

    pub fn parse(body: &[u8]) -> Result<Self, Rejection> {
        let map = parse_object(body)?;
        let email = Email::parse_field(map.get("email"))?;
        let code = match map.get("verification_code") {
            Some(Value::String(s))
                if !s.is_empty() && s.chars().count() <= Self::CODE_MAX_CHARS =>
            {
                s.clone()
            }
            _ => {
                return Err(Rejection::param(
                    "verification_code must be a non-empty string of at most 16 characters",
                ));
            }
        };
        Ok(Self { email, code })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const P: Option<ErrorCode> = Some(ErrorCode::ParameterError);
    const E: Option<ErrorCode> = Some(ErrorCode::InvalidEmail);

    fn body(overrides: Value) -> Vec<u8> {
        let mut base =
            json!({"receiver_type": 2, "timeout": 5, "email": "user@example.com", "lang": "en-us"});
        for (k, v) in overrides.as_object().expect("object") {
            if v == &json!("<absent>") {
                base.as_object_mut().expect("object").remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        serde_json::to_vec(&base).expect("json")
    }

    fn outcome(overrides: Value) -> Result<SendRequest, Option<ErrorCode>> {
        SendRequest::parse(&body(overrides)).map_err(|r| Some(r.code))
    }

    #[test]
    fn every_rule_of_the_send_table() {
        let email64 = format!("{}@example.com", "a".repeat(64 - 12));
        let email65 = format!("{}@example.com", "a".repeat(65 - 12));
        let cases: Vec<(&str, Value, Option<ErrorCode>)> = vec![
            (
                "receiver_type absent",
                json!({"receiver_type": "<absent>"}),
                P,
            ),
            ("receiver_type null", json!({"receiver_type": null}), P),
            ("receiver_type 1", json!({"receiver_type": 1}), P),
            ("receiver_type \"2\"", json!({"receiver_type": "2"}), P),
            ("receiver_type 2.0", json!({"receiver_type": 2.0}), None),
            ("receiver_type 2.5", json!({"receiver_type": 2.5}), P),
            ("receiver_type -2", json!({"receiver_type": -2}), P),
            ("timeout 0", json!({"timeout": 0}), P),
            ("timeout -1", json!({"timeout": -1}), P),
            ("timeout 1", json!({"timeout": 1}), None),
            ("timeout 60", json!({"timeout": 60}), None),
            ("timeout 61", json!({"timeout": 61}), None),
            ("timeout 3000", json!({"timeout": 3000}), None),
            ("timeout 3001", json!({"timeout": 3001}), P),
            ("timeout 1.5", json!({"timeout": 1.5}), P),
            ("timeout 5.0", json!({"timeout": 5.0}), None),
            ("timeout 217.0", json!({"timeout": 217.0}), None),
            ("timeout -0.0", json!({"timeout": -0.0}), P),
            ("timeout -5.0", json!({"timeout": -5.0}), P),
            ("timeout 3001.0", json!({"timeout": 3001.0}), P),
            ("timeout 1e300", json!({"timeout": 1e300}), P),
            ("timeout \"5\"", json!({"timeout": "5"}), P),
            ("timeout true", json!({"timeout": true}), P),
            ("timeout null", json!({"timeout": null}), None),
            ("timeout absent", json!({"timeout": "<absent>"}), None),
            ("email absent", json!({"email": "<absent>"}), E),
            ("email null", json!({"email": null}), E),
            ("email empty", json!({"email": ""}), E),
            ("email blank", json!({"email": "   "}), E),
            ("email number", json!({"email": 42}), P),
            ("email array", json!({"email": ["a@b.co"]}), P),
            ("email 64 chars", json!({"email": email64}), None),
            ("email 65 chars", json!({"email": email65}), P),
            ("email no at", json!({"email": "user.example.com"}), E),
            (
                "email no dot in domain",
                json!({"email": "user@localhost"}),
                E,
            ),
            (
                "email inner space",
                json!({"email": "us er@example.com"}),
                E,
            ),
            (
                "email control char",
                json!({"email": "user\u{7}@example.com"}),
                E,
            ),
            ("email two ats", json!({"email": "a@b@example.com"}), E),
            (
                "email display name",
                json!({"email": "User <user@example.com>"}),
                E,
            ),
            ("email trailing dot", json!({"email": "user@example."}), E),
            ("lang absent", json!({"lang": "<absent>"}), None),
            ("lang null", json!({"lang": null}), None),
            ("lang empty", json!({"lang": ""}), None),
            ("lang EN-US", json!({"lang": "EN-US"}), None),
            ("lang Zh-Cn", json!({"lang": "Zh-Cn"}), None),
            ("lang fr-fr", json!({"lang": "fr-fr"}), P),
            ("lang 16 chars", json!({"lang": "abcdefghijklmnop"}), P),
            ("lang 17 chars", json!({"lang": "abcdefghijklmnopq"}), P),
            ("lang number", json!({"lang": 1}), P),
            (
                "extra fields ignored",
                json!({"customer_id": "x", "extra": {"a": 1}}),
                None,
            ),
        ];
        for (name, overrides, expected) in cases {
            assert_eq!(outcome(overrides).err(), expected.map(Some), "{name}");
        }
    }

    #[test]
    fn timeouts_are_normalised_as_the_seed_says() {
        for (given, minutes) in [
            (json!(null), 10),
            (json!(1), 1),
            (json!(60), 60),
            (json!(61), 5),
            (json!(3000), 5),
            (json!(7.0), 7),
            (json!(61.0), 5),
        ] {
            let req = outcome(json!({ "timeout": given })).expect("valid");
            assert_eq!(req.ttl.minutes(), minutes, "timeout {given}");
        }
        let req = outcome(json!({"timeout": "<absent>"})).expect("valid");
        assert_eq!(req.ttl.minutes(), 10);
    }

    #[test]
    fn whole_numbers_count_in_any_json_spelling() {
        let parsed =
            SendRequest::parse(br#"{"receiver_type": 2.0, "timeout": 1e1, "email": "a@b.co"}"#)
                .expect("2.0 and 1e1 are whole numbers");
        assert_eq!(parsed.ttl.minutes(), 10);
        let fraction =
            SendRequest::parse(br#"{"receiver_type": 2, "timeout": 0.5e1, "email": "a@b.co"}"#);
        assert_eq!(fraction.map(|r| r.ttl.minutes()), Ok(5));
        let not_whole =
            SendRequest::parse(br#"{"receiver_type": 2, "timeout": 5.5, "email": "a@b.co"}"#);
        assert_eq!(
            not_whole.map_err(|r| r.code),
            Err(ErrorCode::ParameterError)
        );
    }

    #[test]
    fn lang_defaults_to_chinese_and_ignores_case() {
        assert_eq!(
            outcome(json!({"lang": "<absent>"})).expect("valid").lang,
            Lang::ZhCn
        );
        assert_eq!(
            outcome(json!({"lang": ""})).expect("valid").lang,
            Lang::ZhCn
        );
        assert_eq!(
            outcome(json!({"lang": "EN-US"})).expect("valid").lang,
            Lang::EnUs
        );
    }

    #[test]
    fn the_first_broken_rule_in_seed_order_is_reported() {
        let both = outcome(json!({"receiver_type": 1, "email": ""}));
        assert_eq!(both.err(), Some(P));
        let email_then_lang = outcome(json!({"email": "nope", "lang": "fr"}));
        assert_eq!(email_then_lang.err(), Some(E));
    }

    #[test]
    fn bodies_that_are_not_objects_are_parameter_errors() {
        for raw in [
            &b"{"[..],
            b"",
            b"[]",
            b"null",
            b"\"x\"",
            b"{\"receiver_type\":2,}",
        ] {
            assert_eq!(
                SendRequest::parse(raw).map_err(|r| r.code).err(),
                Some(ErrorCode::ParameterError)
            );
        }
    }

    #[test]
    fn emails_are_trimmed_normalised_and_redacted() {
        let email = Email::parse("  User@Example.COM ").expect("valid");
        assert_eq!(email.as_str(), "User@example.com");
        assert_eq!(email.normalised(), "user@example.com");
    }

    #[test]
    fn every_spelling_of_one_mailbox_is_one_recipient_or_refused() {
        let key = "victim@evil.example";
        for same in [
            "victim@evil.example",
            "VICTIM@Evil.Example",
            "Victim@EVIL.EXAMPLE",
        ] {
            assert_eq!(Email::parse(same).expect(same).normalised(), key, "{same}");
        }
        let idn = Email::parse("user@bücher.example").expect("an IDN domain");
        assert_eq!(idn.as_str(), "user@xn--bcher-kva.example");
        assert_eq!(
            Email::parse("user@XN--BCHER-KVA.example")
                .expect("A-label")
                .normalised(),
            idn.normalised()
        );
        for other in [
            "\"victim\"@evil.example",
            "\"v\\ictim\"@evil.example",
            "\"\\v\\i\\c\\t\\i\\m\"@evil.example",
            "v\\ictim@evil.example",
            "victim@evil.example.",
            "victim.@evil.example",
            ".victim@evil.example",
            "vic..tim@evil.example",
            "victim@[127.0.0.1]",
            "victim@127.0.0.1",
            "victim@-evil.example",
            "victim@evil_example.com",
            "vïctim@evil.example",
        ] {
            assert!(Email::parse(other).is_err(), "{other} must be refused");
        }
    }

    #[test]
    fn a_canonical_form_longer_than_the_field_limit_reads_back() {
        // Found by the `mailbox` fuzz target: 64 characters as sent, longer
        // once the IDN label is an A-label.
        let raw = "dXXXXXXXddddXXXXXXXXXXXXXn@dXXXXXXXddddXXXXXXXXXXXXXXXXXddXddg.\u{6b4}";
        let email = Email::parse(raw).expect("64 characters as sent");
        assert!(email.as_str().len() > Email::MAX_CHARS);
        assert_eq!(Email::parse_stored(email.as_str()), Some(email.clone()));
        assert_eq!(
            Email::parse_stored("User@Example.com"),
            None,
            "not canonical"
        );
    }

    #[test]
    fn invisible_and_control_characters_are_refused_anywhere() {
        for c in [
            '\u{202E}', '\u{200B}', '\u{00AD}', '\u{FEFF}', '\u{2060}', '\0', '\r', '\n', '\t',
        ] {
            for address in [
                format!("vic{c}tim@evil.example"),
                format!("victim@ev{c}il.example"),
                format!("victim@evil.exam{c}ple"),
            ] {
                let rejected = Email::parse(&address).map_err(|r| r.code);
                assert_eq!(
                    rejected,
                    Err(ErrorCode::InvalidEmail),
                    "U+{:04X} in {address:?}",
                    c as u32
                );
            }
        }
    }

    #[test]
    fn check_requests_need_an_email_and_a_code() {
        let ok = CheckRequest::parse(br#"{"email":"a@b.co","verification_code":"123456"}"#)
            .expect("valid");
        assert_eq!(ok.code, "123456");
        let no_code = CheckRequest::parse(br#"{"email":"a@b.co"}"#).map_err(|r| r.code);
        assert_eq!(no_code.err(), Some(ErrorCode::ParameterError));
        let no_email = CheckRequest::parse(br#"{"verification_code":"1"}"#).map_err(|r| r.code);
        assert_eq!(no_email.err(), Some(ErrorCode::InvalidEmail));
        // 16 characters (48 bytes) is a code to check; 17 is a parameter error.
        let code = |c: &str| {
            CheckRequest::parse(
                serde_json::to_vec(&json!({"email": "a@b.co", "verification_code": c}))
                    .expect("json")
                    .as_slice(),
            )
            .map(|r| r.code)
            .map_err(|r| r.code)
        };
        assert_eq!(code(&"€".repeat(16)), Ok("€".repeat(16)));
        assert_eq!(code(&"1".repeat(17)), Err(ErrorCode::ParameterError));
        assert_eq!(code(""), Err(ErrorCode::ParameterError));
    }
}
