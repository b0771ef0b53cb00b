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
mod relays;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use lettre::{AsyncFileTransport, AsyncTransport as _, Message, Tokio1Executor};

pub use self::error::SendError;
pub use self::relays::DEFAULT_COOLDOWN;
use self::{
    config::SmtpConfig,
    pool::Pool,
    relays::{Relay, Relays},
};

/// The one mail transport the worker uses.
pub struct Transport {
    inner: Inner,
}

enum Inner {
    Files {
        dir: std::path::PathBuf,
        transport: AsyncFileTransport<Tokio1Executor>,
    },
    Smtp(Relays),
}

impl Transport {
    /// `smtp_url` `None` writes each mail as `<uuid>.eml` into `outbox`
    /// (created if missing). Otherwise see the `SMTP_URL` forms in README's "Configuration":
    /// `smtp://host:port`, `smtp://host?tls=required|opportunistic|none`,
    /// `smtps://user:pass@host` (user and password percent-decoded), or
    /// several of those separated by commas: relays tried in order (see
    /// `relays`), each with its own `max_connections`.
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
            // The files hold plain codes: the service user's alone.
            restrict(outbox, 0o700)
                .with_context(|| format!("cannot restrict outbox {}", outbox.display()))?;
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
        let mut list = Vec::new();
        for (i, url) in url.split(',').map(str::trim).enumerate() {
            let config = SmtpConfig::parse(url)
                .with_context(|| format!("invalid SMTP_URL (relay {})", i + 1))?;
            if config.sends_credentials_in_clear() {
                tracing::warn!(smtp = %config, "SMTP credentials may be sent without TLS; use smtps:// or ?tls=required");
            }
            list.push(Relay::new(Pool::new(
                config,
                max_connections,
                connect_timeout,
                command_timeout,
            )));
        }
        Ok(Self {
            inner: Inner::Smtp(Relays {
                list,
                cooldown: DEFAULT_COOLDOWN,
            }),
        })
    }

    /// How long a relay that failed several sends in a row is skipped
    /// (`VERIMAIL_SMTP_COOLDOWN`).
    pub fn with_relay_cooldown(mut self, cooldown: Duration) -> Self {
        if let Inner::Smtp(relays) = &mut self.inner {
            relays.cooldown = cooldown;
        }
        self
    }

    /// Sends one message to its envelope recipients.
    pub async fn send(&self, msg: &Message) -> Result<(), SendError> {
        match &self.inner {
            Inner::Files { transport, dir } => {
                // A full disk or a permission problem can be fixed while the
                // dispatch waits for its retry.
                let id = transport
                    .send_raw(msg.envelope(), &msg.formatted())
                    .await
                    .map_err(|e| SendError::Transient(format!("writing to outbox: {e}")))?;
                restrict(&dir.join(format!("{id}.eml")), 0o600)
                    .map_err(|e| SendError::Transient(format!("restricting an outbox file: {e}")))
            }
            Inner::Smtp(relays) => relays.send(msg.envelope(), &msg.formatted()).await,
        }
    }

    /// Sets up one SMTP session (connect, TLS, greeting, AUTH) with every
    /// relay and says goodbye: the worker's start-up check, so a relay that
    /// refuses our login shows when the worker starts, not with the first
    /// mail's retry. Each relay's `host:port` and outcome; none for the
    /// outbox.
    pub async fn check(&self) -> Vec<(String, Result<(), SendError>)> {
        let Inner::Smtp(relays) = &self.inner else {
            return Vec::new();
        };
        let mut checked = Vec::new();
        for relay in &relays.list {
            checked.push((relay.label.clone(), relay.pool.check().await));
        }
        checked
    }

    /// Removes `.eml` files older than `age` (they hold plain codes, and no
    /// code lives longer than an hour); returns how many.
    pub fn prune_outbox(&self, age: Duration) -> std::io::Result<usize> {
        let Inner::Files { dir, .. } = &self.inner else {
            return Ok(0);
        };
        let mut removed = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|at| at.elapsed().is_ok_and(|e| e > age));
            if old && path.extension().is_some_and(|e| e == "eml") {
                std::fs::remove_file(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Says goodbye to idle SMTP sessions; call on shutdown. Safe to call
    /// more than once, and sending still works afterwards.
    pub async fn close(&self) {
        if let Inner::Smtp(relays) = &self.inner {
            for relay in &relays.list {
                relay.pool.close_idle().await;
            }
        }
    }
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn restrict(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// For the start-up log line; never shows credentials.
impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Files { dir, .. } => write!(f, ".eml files in {}", dir.display()),
            Inner::Smtp(relays) => {
                for (i, relay) in relays.list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", then ")?;
                    }
                    fmt::Display::fmt(relay.pool.config(), f)?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Transport").field(&self.to_string()).finish()
    }
}

/// TLS paths end to end. Here rather than in `tests/` because trusting the
/// sink's self-signed certificate needs the private config types.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tls_tests {
    use std::time::Instant;

    use lettre::transport::smtp::client::{Certificate, TlsParameters};
    use verimail_testkit::smtp_sink::{SinkOptions, SinkTls, SmtpSink};

    use super::config::Security;
    use super::*;
    use crate::mail::{CodeMail, MailSettings, render};

    const WAIT: Duration = Duration::from_secs(5);

    fn message() -> Message {
        let settings = MailSettings::new("no-reply@mail.example.com".parse().unwrap(), "Acme");
        let mail = CodeMail {
            dispatch_id: uuid::Uuid::now_v7(),
            to: "user@example.org",
            lang: verimail_domain::Lang::ZhCn,
            code: "246810",
            valid_minutes: 5,
        };
        render(&settings, &mail).unwrap()
    }

    async fn sink(tls: SinkTls, credentials: bool) -> SmtpSink {
        SmtpSink::start_with(SinkOptions {
            credentials: credentials.then(|| ("user".to_owned(), "pa:ss".to_owned())),
            tls: Some(tls),
            ..SinkOptions::default()
        })
        .await
    }

    /// A transport for `url` that trusts the sink's certificate.
    fn trusting(sink: &SmtpSink, url: &str) -> Transport {
        let mut config = SmtpConfig::parse(url).unwrap();
        let root = Certificate::from_der(sink.certificate_der().unwrap()).unwrap();
        let tls = TlsParameters::builder(config.host.clone())
            .add_root_certificate(root)
            .build_rustls()
            .unwrap();
        config.security = match config.security {
            Security::Implicit(_) => Security::Implicit(tls),
            Security::Required(_) => Security::Required(tls),
            Security::Opportunistic(_) => Security::Opportunistic(tls),
            Security::Plain => Security::Plain,
        };
        let pool = Pool::new(config, 2, Duration::from_secs(5), Duration::from_secs(5));
        Transport {
            inner: Inner::Smtp(Relays {
                list: vec![Relay::new(pool)],
                cooldown: DEFAULT_COOLDOWN,
            }),
        }
    }

    #[tokio::test]
    async fn implicit_tls_with_auth_delivers_and_reuses_the_session() {
        let sink = sink(SinkTls::Implicit, true).await;
        let url = format!("smtps://user:pa%3Ass@{}", sink.addr());
        let transport = trusting(&sink, &url);
        let msg = message();
        transport.send(&msg).await.unwrap();

        let n: u32 = 20;
        let started = Instant::now();
        for _ in 0..n {
            transport.send(&msg).await.unwrap();
        }
        // Same delayed-ACK guard as the plain test, through the TLS layers.
        let per_mail = started.elapsed() / n;
        assert!(
            per_mail < Duration::from_millis(15),
            "{per_mail:?} per mail"
        );

        let mails = sink.wait_for(21, WAIT).await;
        assert!(mails.iter().all(|m| m.tls && m.connection == 0));
        assert!(mails[0].text().unwrap().contains("246810"));
        assert_eq!(
            sink.auth_attempts(),
            [("user".to_owned(), "pa:ss".to_owned())]
        );
    }

    #[tokio::test]
    async fn required_starttls_upgrades_before_auth() {
        let sink = sink(SinkTls::StartTls, true).await;
        let url = format!("smtp://user:pa%3Ass@{}?tls=required", sink.addr());
        trusting(&sink, &url).send(&message()).await.unwrap();
        let mails = sink.wait_for(1, WAIT).await;
        assert!(mails[0].tls);
    }

    #[tokio::test]
    async fn opportunistic_tls_upgrades_when_offered() {
        let sink = sink(SinkTls::StartTls, false).await;
        let url = format!("smtp://{}?tls=opportunistic", sink.addr());
        trusting(&sink, &url).send(&message()).await.unwrap();
        assert!(sink.wait_for(1, WAIT).await[0].tls);
    }

    #[tokio::test]
    async fn untrusted_certificates_are_refused() {
        let implicit = sink(SinkTls::Implicit, false).await;
        let transport = Transport::from_url(
            Some(&implicit.url()),
            std::path::Path::new("unused"),
            1,
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .unwrap();
        let err = transport.send(&message()).await.unwrap_err();
        assert!(err.is_transient());
        let relay = implicit.addr().to_string();
        assert!(
            err.reason()
                .starts_with(&format!("{relay}: TLS handshake: ")),
            "{err}"
        );

        let starttls = sink(SinkTls::StartTls, false).await;
        let transport = Transport::from_url(
            Some(&starttls.url()),
            std::path::Path::new("unused"),
            1,
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .unwrap();
        let err = transport.send(&message()).await.unwrap_err();
        let relay = starttls.addr().to_string();
        assert!(
            err.reason().starts_with(&format!("{relay}: STARTTLS: ")),
            "{err}"
        );
        assert!(implicit.messages().is_empty() && starttls.messages().is_empty());
    }
}
