//! Who a verification mail is from, and how it names itself: the
//! operator's default sender (`VERIMAIL_MAIL_FROM`, `VERIMAIL_BRAND`), or a
//! partner's own (`verimail partner set`). The rules a partner's values meet
//! live here once: `verimail partner set` refuses what breaks them, and the
//! worker checks the stored values again (`Sender::for_partner`), so a
//! domain the operator stops allowing is not sent from.

use std::collections::BTreeSet;

use lettre::Address;
use lettre::message::Mailbox;
use verimail_infra::store::partners::SenderColumns;

/// Longest brand, in characters: it goes into the Subject.
pub const BRAND_MAX_CHARS: usize = 100;
/// Longest support URL stored.
pub const SUPPORT_URL_MAX: usize = 2000;
/// Longest mailbox stored (RFC 5321's path limit plus room for a name).
const MAILBOX_MAX: usize = 320;

/// The sender of one mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    /// Its domain picks the DKIM key and is the right-hand side of the
    /// Message-ID.
    pub from: Mailbox,
    pub reply_to: Option<Mailbox>,
    /// Shown in the subject and both parts; escaped in HTML only.
    pub brand: String,
    /// An http(s) URL shown in both parts.
    pub support_url: Option<String>,
}

impl Sender {
    pub fn new(from: Mailbox, brand: impl Into<String>) -> Self {
        Self {
            from,
            reply_to: None,
            brand: brand.into(),
            support_url: None,
        }
    }

    /// The partner's stored settings over `default`. A stored value that
    /// breaks a rule now (the operator no longer allows its domain, say) is
    /// left out, and what was wrong comes back to be logged.
    pub fn for_partner(
        default: &Self,
        domains: &SenderDomains,
        stored: &SenderColumns,
    ) -> (Self, Vec<String>) {
        let mut problems = Vec::new();
        let brand = stored
            .brand
            .as_deref()
            .and_then(|raw| kept(&mut problems, "brand", parse_brand(raw)));
        let from = stored
            .mail_from
            .as_deref()
            .and_then(|raw| kept(&mut problems, "From", parse_from(raw, domains)));
        let reply_to = stored
            .reply_to
            .as_deref()
            .and_then(|raw| kept(&mut problems, "Reply-To", parse_reply_to(raw)));
        let support_url = stored
            .support_url
            .as_deref()
            .and_then(|raw| kept(&mut problems, "support URL", parse_support_url(raw)));
        let sender = Self {
            from: from.unwrap_or_else(|| default.from.clone()),
            reply_to: reply_to.or_else(|| default.reply_to.clone()),
            brand: brand.unwrap_or_else(|| default.brand.clone()),
            support_url: support_url.or_else(|| default.support_url.clone()),
        };
        (sender, problems)
    }

    /// The From domain: DKIM key and Message-ID follow it.
    pub fn domain(&self) -> &str {
        self.from.email.domain()
    }
}

/// The value, or `None` with what was wrong noted in `problems`.
fn kept<T>(problems: &mut Vec<String>, field: &str, checked: Result<T, SenderError>) -> Option<T> {
    checked
        .map_err(|error| problems.push(format!("stored {field}: {error}")))
        .ok()
}

/// Why a partner's sender value is refused. Names the rule, never another
/// partner's settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SenderError {
    #[error("not a mailbox like \"Name <addr@example.com>\" ({0})")]
    Mailbox(String),
    #[error(
        "{domain} is not an allowed sender domain (allowed: {allowed}); the operator allows more in VERIMAIL_ALLOWED_SENDER_DOMAINS"
    )]
    DomainNotAllowed { domain: String, allowed: String },
    #[error("a brand is 1 to {max} characters, none of them a control character", max = BRAND_MAX_CHARS)]
    Brand,
    #[error("not an http(s) URL without a user or password: {0}")]
    SupportUrl(String),
}

/// The domains a From may be at: `VERIMAIL_MAIL_FROM`'s, always, and those
/// of `VERIMAIL_ALLOWED_SENDER_DOMAINS`, each as a lower-case A-label.
/// Exact names: allowing `example.com` does not allow `mail.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderDomains(BTreeSet<String>);

impl SenderDomains {
    /// `default_from`'s domain and `allowed` (already `domain_name`s).
    pub fn new(default_from: &Mailbox, allowed: impl IntoIterator<Item = String>) -> Self {
        let default = domain_name(default_from.email.domain())
            .unwrap_or_else(|| default_from.email.domain().to_ascii_lowercase());
        Self(std::iter::once(default).chain(allowed).collect())
    }

    /// `VERIMAIL_ALLOWED_SENDER_DOMAINS`: domain names separated by commas
    /// (blank entries ignored); the problem with the first bad one.
    pub fn parse_list(raw: &str) -> Result<Vec<String>, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                domain_name(entry)
                    .ok_or_else(|| format!("{entry:?} is not a domain name like mail.example.com"))
            })
            .collect()
    }

    pub fn allows(&self, domain: &str) -> bool {
        domain_name(domain).is_some_and(|d| self.0.contains(&d))
    }

    /// Sorted, for logs and refusals.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

/// One DNS label as host names spell it (RFC 1123): letters, digits and
/// inner hyphens, 1 to 63 of them.
pub fn dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The one spelling of a host name (a lower-case A-label with at least one
/// dot), or `None` for something that is not one. DKIM key files are named
/// by it, and allowed sender domains compared in it.
pub fn domain_name(raw: &str) -> Option<String> {
    let ascii = idna::domain_to_ascii(raw.trim().trim_end_matches('.')).ok()?;
    (ascii.contains('.') && ascii.split('.').all(dns_label)).then_some(ascii)
}

pub fn parse_brand(raw: &str) -> Result<String, SenderError> {
    let brand = raw.trim();
    let chars = brand.chars().count();
    if chars == 0 || chars > BRAND_MAX_CHARS || brand.chars().any(char::is_control) {
        return Err(SenderError::Brand);
    }
    Ok(brand.to_owned())
}

/// A From mailbox at an allowed domain, its domain spelled as `domain_name`
/// (so the DKIM key of that name signs it).
pub fn parse_from(raw: &str, domains: &SenderDomains) -> Result<Mailbox, SenderError> {
    let mailbox = parse_mailbox(raw)?;
    let domain = mailbox.email.domain();
    if !domains.allows(domain) {
        return Err(SenderError::DomainNotAllowed {
            domain: domain.to_owned(),
            allowed: domains.iter().collect::<Vec<_>>().join(", "),
        });
    }
    Ok(mailbox)
}

/// Any mailbox: replies go where the partner wants them.
pub fn parse_reply_to(raw: &str) -> Result<Mailbox, SenderError> {
    parse_mailbox(raw)
}

/// An http(s) URL with a host and no user or password (which would let a
/// link read as one site and lead to another), as the `url` crate writes it
/// (percent-encoded: no space, quote or angle bracket is left in it).
pub fn parse_support_url(raw: &str) -> Result<String, SenderError> {
    let bad = |why: &str| SenderError::SupportUrl(why.to_owned());
    let url = url::Url::parse(raw.trim()).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("it has a user or password"));
    }
    let written = url.to_string();
    if written.len() > SUPPORT_URL_MAX {
        return Err(bad(&format!("longer than {SUPPORT_URL_MAX} bytes")));
    }
    Ok(written)
}

fn parse_mailbox(raw: &str) -> Result<Mailbox, SenderError> {
    let raw = raw.trim();
    let too_long = || SenderError::Mailbox(format!("longer than {MAILBOX_MAX} bytes"));
    if raw.len() > MAILBOX_MAX {
        return Err(too_long());
    }
    // lettre reads folded whitespace inside a name; a header value we write
    // needs none, and a line break in a stored value would be one too many.
    if raw.chars().any(char::is_control) {
        return Err(SenderError::Mailbox("a control character".into()));
    }
    let mailbox: Mailbox = raw
        .parse()
        .map_err(|e: lettre::address::AddressError| SenderError::Mailbox(e.to_string()))?;
    let domain = domain_name(mailbox.email.domain())
        .ok_or_else(|| SenderError::Mailbox("the domain is not a host name".into()))?;
    let email = Address::new(mailbox.email.user(), &domain)
        .map_err(|e| SenderError::Mailbox(e.to_string()))?;
    let mailbox = Mailbox::new(mailbox.name, email);
    // As stored (an A-label is longer than its U-label, a name may gain
    // quotes): the column holds no more than this either.
    if mailbox.to_string().len() > MAILBOX_MAX {
        return Err(too_long());
    }
    Ok(mailbox)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn domains() -> SenderDomains {
        let default: Mailbox = "verimail <no-reply@Verimail.Example>".parse().unwrap();
        SenderDomains::new(
            &default,
            SenderDomains::parse_list(" mail.acme.example, ,Bücher.example ").unwrap(),
        )
    }

    #[test]
    fn the_default_domain_and_the_listed_ones_are_allowed_exactly() {
        let domains = domains();
        assert_eq!(
            domains.iter().collect::<Vec<_>>(),
            [
                "mail.acme.example",
                "verimail.example",
                "xn--bcher-kva.example"
            ]
        );
        for allowed in ["verimail.example", "MAIL.acme.example", "bücher.example"] {
            assert!(domains.allows(allowed), "{allowed}");
        }
        for refused in ["acme.example", "evil.mail.acme.example", "example", ""] {
            assert!(!domains.allows(refused), "{refused}");
        }
        assert!(SenderDomains::parse_list("ok.example,not a domain").is_err());
        assert!(SenderDomains::parse_list("localhost").is_err());
    }

    #[test]
    fn a_from_is_a_mailbox_at_an_allowed_domain_spelled_as_its_key_file() {
        let domains = domains();
        let from = parse_from("Acme <hello@Mail.Acme.Example>", &domains).unwrap();
        assert_eq!(from.to_string(), "Acme <hello@mail.acme.example>");
        let idn = parse_from("Bücher <info@bücher.example>", &domains).unwrap();
        assert_eq!(idn.email.domain(), "xn--bcher-kva.example");
        // What partner set stores reads back the same.
        for mailbox in [&from, &idn] {
            assert_eq!(
                &parse_from(&mailbox.to_string(), &domains).unwrap(),
                mailbox
            );
        }
        let refused = parse_from("Bank <security@bank.example>", &domains).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "bank.example is not an allowed sender domain (allowed: mail.acme.example, \
             verimail.example, xn--bcher-kva.example); the operator allows more in \
             VERIMAIL_ALLOWED_SENDER_DOMAINS"
        );
        for bad in [
            "",
            "no at sign",
            "Name <a@b@c>",
            "x <a@localhost>",
            "Acme\r\n <a@verimail.example>",
            "a@verimail.example\r\nBcc: b@evil.example",
        ] {
            assert!(
                matches!(parse_from(bad, &domains), Err(SenderError::Mailbox(_))),
                "{bad}"
            );
        }
        // 316 bytes as given, 324 as stored (quoted, the domain an A-label).
        let long = format!("{} <a@bücher.example>", "ü".repeat(148));
        assert_eq!(
            parse_from(&long, &domains),
            Err(SenderError::Mailbox("longer than 320 bytes".into()))
        );
    }

    #[test]
    fn brands_keep_markup_characters_and_refuse_control_ones() {
        assert_eq!(parse_brand(" A<b>&c ").unwrap(), "A<b>&c");
        assert_eq!(parse_brand("云 Cloud").unwrap(), "云 Cloud");
        let longest = "x".repeat(BRAND_MAX_CHARS);
        assert_eq!(parse_brand(&longest).unwrap(), longest);
        for bad in [
            "",
            "   ",
            "two\nlines",
            "tab\there",
            &"x".repeat(BRAND_MAX_CHARS + 1),
        ] {
            assert_eq!(parse_brand(bad), Err(SenderError::Brand), "{bad:?}");
        }
    }

    #[test]
    fn a_support_url_is_plain_http_or_https() {
        assert_eq!(
            parse_support_url("https://help.acme.example/verify?a=1&b=\"x\"").unwrap(),
            "https://help.acme.example/verify?a=1&b=%22x%22"
        );
        assert_eq!(
            parse_support_url("HTTP://Help.Example").unwrap(),
            "http://help.example/"
        );
        for bad in [
            "javascript:alert(1)",
            "mailto:help@acme.example",
            "ftp://acme.example/",
            "https://bank.example@evil.example/",
            "help.acme.example",
            "",
        ] {
            assert!(
                matches!(parse_support_url(bad), Err(SenderError::SupportUrl(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn stored_values_a_rule_now_refuses_fall_back_to_the_default() {
        let default = Sender::new(
            "verimail <no-reply@verimail.example>".parse().unwrap(),
            "verimail",
        );
        let stored = SenderColumns {
            brand: Some("Acme".into()),
            mail_from: Some("Acme <hello@gone.example>".into()),
            reply_to: Some("support@acme.example".into()),
            support_url: Some("https://help.acme.example/".into()),
        };
        let (sender, problems) = Sender::for_partner(&default, &domains(), &stored);
        assert_eq!(sender.brand, "Acme");
        assert_eq!(sender.from, default.from);
        assert_eq!(sender.reply_to.unwrap().to_string(), "support@acme.example");
        assert_eq!(
            sender.support_url.as_deref(),
            Some("https://help.acme.example/")
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("stored From: gone.example is not"),
            "{problems:?}"
        );

        let (none, problems) = Sender::for_partner(&default, &domains(), &SenderColumns::default());
        assert_eq!((none, problems.len()), (default, 0));
    }
}
