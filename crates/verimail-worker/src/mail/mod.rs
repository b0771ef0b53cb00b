//! Building verification mails and handing them to SMTP (or to `.eml` files).

pub mod dkim;
mod dkim_signature;
pub mod render;
pub mod sender;
pub mod transport;

pub use render::{CodeMail, MailSettings, RenderError, render, render_as};
pub use sender::{Sender, SenderDomains};
pub use transport::{SendError, Transport};
