//! Building verification mails and handing them to SMTP (or to `.eml` files).

pub mod render;
pub mod transport;

pub use render::{CodeMail, MailSettings, RenderError, render};
pub use transport::{SendError, Transport};
