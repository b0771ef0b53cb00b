//! Test support for verimail; a dev-dependency only, never shipped.

pub mod smtp_sink;

pub use smtp_sink::{Behaviour, MailView, ReceivedMail, SinkOptions, SinkTls, SmtpSink};
