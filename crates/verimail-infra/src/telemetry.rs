//! Logging: one place decides the format and filter, and how addresses
//! are hidden where they are logged or stored as an error text. Spans carry
//! request and dispatch ids; emails are redacted where they are logged and
//! codes, tokens and keys are never passed to a log macro.

use tracing_subscriber::EnvFilter;

const DEFAULT_FILTER: &str = "info,sqlx=warn,lapin=warn,amq_protocol=warn";

pub fn init(json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    use std::io::IsTerminal;
    // Colour codes only for people, not for files and log collectors.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().with_current_span(true).init();
    } else {
        builder.init();
    }
}

/// Hides the local part of every address in a text (SMTP replies often
/// quote the recipient: `550 5.1.1 <victim@x.example>: unknown user`).
pub fn redact_addresses(text: &str) -> String {
    let is_part = |c: char| !c.is_whitespace() && !"<>()[],;:\"'".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        let start = rest[..at]
            .char_indices()
            .rev()
            .find(|(_, c)| !is_part(*c))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let end = rest[at..]
            .char_indices()
            .find(|(_, c)| !is_part(*c))
            .map_or(rest.len(), |(i, _)| at + i);
        out.push_str(&rest[..start]);
        out.push_str(&redact(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Hides the local part of an address for logs (`a***@example.com`).
pub fn redact(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let first = local.chars().next().unwrap_or('*');
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_keeps_its_domain_and_the_first_letter_of_its_mailbox() {
        let email = verimail_domain::Email::parse("  User@Example.COM ").expect("valid");
        assert_eq!(redact(email.as_str()), "U***@example.com");
    }

    #[test]
    fn addresses_in_smtp_replies_are_redacted() {
        assert_eq!(
            redact_addresses("550 5.1.1 <victim@x.example>: Recipient address rejected"),
            "550 5.1.1 <v***@x.example>: Recipient address rejected"
        );
        assert_eq!(
            redact_addresses("451 a@b.example and c.d@e.example busy"),
            "451 a***@b.example and c***@e.example busy"
        );
        assert_eq!(redact_addresses("421 try later"), "421 try later");
    }
}
