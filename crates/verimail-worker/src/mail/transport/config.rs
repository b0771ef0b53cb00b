//! `SMTP_URL` parsing.
//!
//! Same shape as lettre's `from_url` (so operators can read lettre's docs),
//! but stricter: unknown parameters and contradictory TLS settings are
//! configuration errors instead of being ignored.

use std::fmt;

use anyhow::{Context as _, anyhow, bail};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::TlsParameters;
use lettre::transport::smtp::extension::ClientId;
use percent_encoding::percent_decode_str;
use url::{Host, Url};

const SMTP_PORT: u16 = 25;
const SUBMISSION_PORT: u16 = 587;
const SUBMISSIONS_PORT: u16 = 465;

/// How the connection is protected.
#[derive(Clone)]
pub(super) enum Security {
    /// No TLS at all (`smtp://`, `tls=none`).
    Plain,
    /// STARTTLS when the server offers it (`tls=opportunistic`).
    Opportunistic(TlsParameters),
    /// STARTTLS or fail (`tls=required`).
    Required(TlsParameters),
    /// TLS from the first byte (`smtps://`).
    Implicit(TlsParameters),
}

impl Security {
    fn label(&self) -> &'static str {
        match self {
            Self::Plain => "no TLS",
            Self::Opportunistic(_) => "STARTTLS if offered",
            Self::Required(_) => "STARTTLS required",
            Self::Implicit(_) => "implicit TLS",
        }
    }
}

/// Everything needed to open one SMTP session.
#[derive(Clone)]
pub(super) struct SmtpConfig {
    /// Host name or IP literal (no brackets), for connecting and for TLS.
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub credentials: Option<Credentials>,
    pub hello: ClientId,
}

/// Never shows credentials: this ends up in logs.
impl fmt::Display for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "SMTP {host}:{} ({}", self.port, self.security.label())?;
        if self.credentials.is_some() {
            f.write_str(", with AUTH")?;
        }
        f.write_str(")")
    }
}

impl SmtpConfig {
    /// `host:port` (IPv6 in brackets): how logs, `last_error` and metrics
    /// name the relay, without its credentials.
    pub(super) fn relay(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl SmtpConfig {
    /// Parses `smtp://[user[:pass]@]host[:port][/helo-name][?tls=none|opportunistic|required]`
    /// or `smtps://[user[:pass]@]host[:port][/helo-name]`.
    ///
    /// Error messages never repeat the URL, which may hold a password.
    pub(super) fn parse(smtp_url: &str) -> anyhow::Result<Self> {
        let url = Url::parse(smtp_url).map_err(|e| anyhow!("not a valid URL ({e})"))?;
        let host = match url.host() {
            Some(Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            _ => bail!("no host"),
        };

        let mut tls = None;
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "tls" if tls.is_none() => tls = Some(value.into_owned()),
                "tls" => bail!("`tls` given more than once"),
                other => bail!("unknown parameter `{other}` (only `tls` is supported)"),
            }
        }

        let tls_parameters =
            || TlsParameters::new(host.clone()).context("cannot set up TLS for the SMTP host");
        let (security, default_port) = match (url.scheme(), tls.as_deref()) {
            ("smtp", None | Some("none")) => (Security::Plain, SMTP_PORT),
            ("smtp", Some("opportunistic")) => {
                (Security::Opportunistic(tls_parameters()?), SUBMISSION_PORT)
            }
            ("smtp", Some("required")) => (Security::Required(tls_parameters()?), SUBMISSION_PORT),
            ("smtp", Some(other)) => {
                bail!("unknown tls=`{other}` (use none, opportunistic or required)")
            }
            ("smtps", None) => (Security::Implicit(tls_parameters()?), SUBMISSIONS_PORT),
            ("smtps", Some(_)) => bail!("smtps:// is always TLS; drop the `tls` parameter"),
            (other, _) => bail!("unsupported scheme `{other}` (use smtp or smtps)"),
        };

        let credentials = if url.username().is_empty() {
            None
        } else {
            let user = decode(url.username()).context("user name")?;
            let password = decode(url.password().unwrap_or_default()).context("password")?;
            Some(Credentials::new(user, password))
        };

        // As in lettre: a path names the EHLO identity, for servers that
        // check it against the client's reverse DNS.
        let path = url.path().trim_matches('/');
        let hello = if path.is_empty() {
            ClientId::default()
        } else {
            ClientId::Domain(decode(path).context("EHLO name")?)
        };

        Ok(Self {
            host,
            port: url.port().unwrap_or(default_port),
            security,
            credentials,
            hello,
        })
    }

    /// Whether AUTH could travel in clear text to another machine.
    pub(super) fn sends_credentials_in_clear(&self) -> bool {
        let plain = matches!(self.security, Security::Plain | Security::Opportunistic(_));
        let loopback = self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        self.credentials.is_some() && plain && !loopback
    }
}

fn decode(s: &str) -> anyhow::Result<String> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| anyhow!("not valid UTF-8 after percent-decoding"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(url: &str) -> SmtpConfig {
        SmtpConfig::parse(url).unwrap()
    }

    #[test]
    fn plain_url_with_port() {
        let c = parse("smtp://127.0.0.1:1025");
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 1025));
        assert!(matches!(c.security, Security::Plain));
        assert!(c.credentials.is_none());
    }

    #[test]
    fn default_ports_follow_the_security_mode() {
        assert_eq!(parse("smtp://mx.example.com").port, 25);
        assert_eq!(parse("smtp://mx.example.com?tls=none").port, 25);
        assert_eq!(parse("smtp://mx.example.com?tls=required").port, 587);
        assert_eq!(parse("smtp://mx.example.com?tls=opportunistic").port, 587);
        assert_eq!(parse("smtps://mx.example.com").port, 465);
    }

    #[test]
    fn tls_modes() {
        assert!(matches!(
            parse("smtp://h?tls=required").security,
            Security::Required(_)
        ));
        assert!(matches!(
            parse("smtp://h?tls=opportunistic").security,
            Security::Opportunistic(_)
        ));
        assert!(matches!(parse("smtps://h").security, Security::Implicit(_)));
    }

    #[test]
    fn credentials_are_percent_decoded() {
        let c = parse("smtps://us%40er:p%3As%2Fs%20w@smtp.example.com");
        let expected = Credentials::new("us@er".to_owned(), "p:s/s w".to_owned());
        assert!(c.credentials == Some(expected));
    }

    #[test]
    fn ipv6_host_loses_brackets_for_connecting() {
        let c = parse("smtp://[::1]:2525");
        assert_eq!(c.host, "::1");
        assert_eq!(c.to_string(), "SMTP [::1]:2525 (no TLS)");
    }

    #[test]
    fn path_sets_the_ehlo_name() {
        let c = parse("smtp://h:25/worker.example.com");
        assert_eq!(c.hello, ClientId::Domain("worker.example.com".to_owned()));
    }

    #[test]
    fn display_hides_the_password() {
        let c = parse("smtp://user:hunter2@mx.example.com?tls=required");
        let shown = format!("{c} {c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("user"), "{shown}");
        assert_eq!(
            c.to_string(),
            "SMTP mx.example.com:587 (STARTTLS required, with AUTH)"
        );
    }

    #[test]
    fn clear_text_auth_is_detected() {
        assert!(parse("smtp://u:p@mx.example.com").sends_credentials_in_clear());
        assert!(!parse("smtp://u:p@127.0.0.1:1025").sends_credentials_in_clear());
        assert!(!parse("smtp://u:p@mx.example.com?tls=required").sends_credentials_in_clear());
        assert!(!parse("smtp://mx.example.com").sends_credentials_in_clear());
    }

    #[test]
    fn rejects_bad_urls_without_echoing_them() {
        for bad in [
            "http://u:secret@h",
            "smtp://u:secret@h?tls=maybe",
            "smtps://u:secret@h?tls=none",
            "smtp://u:secret@h?tsl=required",
            "smtp://u:secret@h?tls=none&tls=required",
            "smtp://",
            "u:secret@h",
        ] {
            let err = format!("{:#}", SmtpConfig::parse(bad).unwrap_err());
            assert!(!err.contains("secret"), "{bad}: {err}");
        }
    }
}
