//! Where rendered mails go: SMTP, or `.eml` files when no `SMTP_URL` is set.
//!
//! Every transport decision lives under this module so it can be swapped in
//! one place. In particular the SMTP pool (`pool`, `connect`) exists only
//! because lettre 0.11.23 never sets TCP_NODELAY on its sockets, which costs
//! ~44 ms per mail through delayed ACKs. Once a lettre release carries the
//! fix (lettre PR #1159), replace `pool`/`connect` with lettre's own
//! `AsyncSmtpTransport` (feature `pool`, `from_url`) and keep `SendError`'s
//! classification as it is.

mod config;
mod connect;
mod error;
mod pool;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use lettre::{AsyncFileTransport, AsyncTransport as _, Message, Tokio1Executor};

pub use self::error::SendError;
use self::{config::SmtpConfig, pool::Pool};

/// The one mail transport the worker uses.
pub struct Transport {
    inner: Inner,
}

enum Inner {
    Files {
        dir: std::path::PathBuf,
        transport: AsyncFileTransport<Tokio1Executor>,
    },
    Smtp(Pool),
}

impl Transport {
    /// `smtp_url` `None` writes each mail as `<uuid>.eml` into `outbox`
    /// (created if missing). Otherwise see the `SMTP_URL` forms in SPEC §6:
    /// `smtp://host:port`, `smtp://host?tls=required|opportunistic|none`,
    /// `smtps://user:pass@host` (user and password percent-decoded).
    ///
    /// `max_connections` bounds concurrent and idle SMTP sessions;
    /// `connect_timeout` bounds session setup (TCP, greeting, TLS, AUTH);
    /// `command_timeout` bounds one probe or one whole transaction.
    ///
    /// Nothing is connected here: an unreachable server shows up as
    /// transient send errors, not as a start-up failure.
    pub fn from_url(
        smtp_url: Option<&str>,
        outbox: &Path,
        max_connections: usize,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let Some(url) = smtp_url else {
            std::fs::create_dir_all(outbox)
                .with_context(|| format!("cannot create outbox {}", outbox.display()))?;
            return Ok(Self {
                inner: Inner::Files {
                    dir: outbox.to_path_buf(),
                    transport: AsyncFileTransport::new(outbox),
                },
            });
        };
        if max_connections == 0 {
            bail!("SMTP max connections must be at least 1");
        }
        let config = SmtpConfig::parse(url).context("invalid SMTP_URL")?;
        if config.sends_credentials_in_clear() {
            tracing::warn!(smtp = %config, "SMTP credentials may be sent without TLS; use smtps:// or ?tls=required");
        }
        Ok(Self {
            inner: Inner::Smtp(Pool::new(
                config,
                max_connections,
                connect_timeout,
                command_timeout,
            )),
        })
    }

    /// Sends one message to its envelope recipients.
    pub async fn send(&self, msg: &Message) -> Result<(), SendError> {
        match &self.inner {
            Inner::Files { transport, .. } => transport
                .send_raw(msg.envelope(), &msg.formatted())
                .await
                .map(drop)
                // A full disk or a permission problem can be fixed while the
                // dispatch waits for its retry.
                .map_err(|e| SendError::Transient(format!("writing to outbox: {e}"))),
            Inner::Smtp(pool) => pool.send(msg.envelope(), &msg.formatted()).await,
        }
    }

    /// Says goodbye to idle SMTP sessions; call on shutdown. Safe to call
    /// more than once, and sending still works afterwards.
    pub async fn close(&self) {
        if let Inner::Smtp(pool) = &self.inner {
            pool.close_idle().await;
        }
    }
}

/// For the start-up log line; never shows credentials.
impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Files { dir, .. } => write!(f, ".eml files in {}", dir.display()),
            Inner::Smtp(pool) => fmt::Display::fmt(pool.config(), f),
        }
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Transport").field(&self.to_string()).finish()
    }
}
