//! What a failed send means for the dispatch: try again later, or give up.

use std::error::Error as _;
use std::time::Duration;

use super::connect::{ConnectCause, ConnectError};

/// A failed send. The text is the SMTP reply (`451 4.3.0 try later`) or the
/// cause (`connect: Connection refused ...`), meant for `last_error`; it never
/// contains the message, so never the code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: connection trouble, timeouts, 4xx replies.
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying the same mail will fail the same way: 5xx replies to the
    /// transaction, or a message the server cannot take at all.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl SendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }

    /// The reason alone, without the transient/permanent prefix.
    pub fn reason(&self) -> &str {
        match self {
            Self::Transient(r) | Self::Permanent(r) => r,
        }
    }
}

/// Failures inside MAIL … end of DATA: the reply is about this message.
pub(super) fn from_transaction(e: &lettre::transport::smtp::Error) -> SendError {
    let reason = describe(e);
    if e.is_permanent() || e.is_client() {
        // Client errors here are lettre refusing the message for this server
        // (e.g. a non-ASCII address without SMTPUTF8): deterministic.
        SendError::Permanent(reason)
    } else {
        SendError::Transient(reason)
    }
}

/// Whether a failed transaction says the session itself was gone (the
/// socket closed or reset, a reply cut off, or 421: the server is closing
/// it) rather than anything about the message: what a NOOP before the
/// transaction would have found.
pub(super) fn session_was_dead(e: &lettre::transport::smtp::Error) -> bool {
    let closing = e.status().is_some_and(|code| code.to_string() == "421");
    closing || !(e.is_transient() || e.is_permanent() || e.is_client() || e.is_timeout())
}

/// Failures while setting a session up (greeting, EHLO, STARTTLS, AUTH) are
/// always transient, even with a 5xx reply: they describe the server or our
/// configuration, not the message, and failing every queued dispatch at once
/// on, say, a rotated password would be worse than retrying until fixed.
/// A refused login says so in words an operator acts on.
pub(super) fn from_connect(e: &ConnectError) -> SendError {
    let cause = match &e.source {
        ConnectCause::Io(io) => io.to_string(),
        ConnectCause::Smtp(smtp) => describe(smtp),
    };
    if e.login_refused() {
        return SendError::Transient(format!(
            "AUTH refused: {cause} (check the user and password in SMTP_URL)"
        ));
    }
    SendError::Transient(format!("{}: {cause}", e.step))
}

impl ConnectError {
    /// The relay answered our AUTH with a negative reply (535 bad
    /// credentials, 534/538 mechanism or TLS needed, 530…): it is up, and
    /// will keep refusing until the configuration changes.
    pub(super) fn login_refused(&self) -> bool {
        self.step == "AUTH"
            && matches!(&self.source, ConnectCause::Smtp(e) if e.is_permanent() || e.is_transient())
    }

    /// The relay's reply, for the log line; never holds a credential.
    pub(super) fn reply(&self) -> String {
        match &self.source {
            ConnectCause::Io(io) => io.to_string(),
            ConnectCause::Smtp(smtp) => describe(smtp),
        }
    }
}

/// A session whose setup did not finish in time, named by the step it was
/// in: a relay that pauses before refusing a login reads as `AUTH: no
/// reply…`, not as an unreachable network.
pub(super) fn setup_timed_out(step: &str, after: Duration) -> SendError {
    if step == "connect" {
        return timed_out("SMTP connect", after);
    }
    SendError::Transient(format!("{step}: no reply within {after:?}"))
}

pub(super) fn timed_out(step: &str, after: Duration) -> SendError {
    SendError::Transient(format!("{step}: timed out after {after:?}"))
}

/// `451 4.3.0 try later` for replies; lettre's own wording otherwise. Any
/// address quoted in it is redacted: the text goes to `last_error`, which
/// partners read, and to the logs.
fn describe(e: &lettre::transport::smtp::Error) -> String {
    let text = match (e.status(), e.source()) {
        (Some(code), Some(text)) => format!("{code} {text}"),
        (Some(code), None) => code.to_string(),
        _ => e.to_string(),
    };
    verimail_infra::telemetry::redact_addresses(&text)
}
