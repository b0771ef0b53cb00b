//! `DATABASE_URL` in libpq's forms: one host as sqlx reads it, or several,
//! `postgres://user@h1:5432,h2:5432/db?target_session_attrs=read-write`
//! (the convention of libpq, JDBC, pgx and npgsql; sqlx takes one host).

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;

/// Which server a connection may stay on (libpq's `target_session_attrs`).
/// verimail writes, so only the values that can land on a writable server
/// are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAttrs {
    /// Any server that answers (libpq's default).
    Any,
    /// A server whose sessions are not read-only (`transaction_read_only`
    /// off), as libpq checks it.
    ReadWrite,
    /// A server not in recovery (`pg_is_in_recovery()` false).
    Primary,
}

impl SessionAttrs {
    fn parse(value: &str) -> Result<Self, String> {
        match value {
            "any" => Ok(Self::Any),
            "read-write" => Ok(Self::ReadWrite),
            "primary" => Ok(Self::Primary),
            "read-only" | "standby" | "prefer-standby" => Err(format!(
                "target_session_attrs={value} cannot work: verimail writes (use read-write, primary or any)"
            )),
            other => Err(format!(
                "target_session_attrs={other} is unknown (use read-write, primary or any)"
            )),
        }
    }
}

/// The hosts of `DATABASE_URL`, in the order they are tried, each with the
/// URL's other settings.
#[derive(Clone)]
pub struct Targets {
    hosts: Vec<PgConnectOptions>,
    attrs: SessionAttrs,
}

impl Targets {
    /// Reads a URL. A URL with one host and no `target_session_attrs` is
    /// handed to sqlx unchanged, so it means exactly what it always did.
    /// Errors name no part of the URL that could hold a password.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url.split_once("://").ok_or("expected a postgres:// URL")?;
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => authority.split_at(at + 1),
            None => ("", authority),
        };
        let (tail, attrs) = take_session_attrs(tail)?;
        let hosts: Vec<&str> = hosts.split(',').collect();
        if hosts.len() > 1 && !matches!(scheme, "postgres" | "postgresql") {
            return Err("expected a postgres:// URL".into());
        }
        let options = if hosts.len() == 1 && attrs.is_none() {
            vec![PgConnectOptions::from_str(url).map_err(|e| format!("not a Postgres URL: {e}"))?]
        } else {
            hosts
                .iter()
                .enumerate()
                .map(|(i, host)| {
                    if host.is_empty() && hosts.len() > 1 {
                        return Err(format!("host {} of the list is empty", i + 1));
                    }
                    PgConnectOptions::from_str(&format!("{scheme}://{userinfo}{host}{tail}"))
                        .map_err(|e| format!("not a Postgres URL (host {}): {e}", i + 1))
                })
                .collect::<Result<_, _>>()?
        };
        Ok(Self {
            hosts: options,
            attrs: attrs.unwrap_or(SessionAttrs::Any),
        })
    }

    pub fn hosts(&self) -> &[PgConnectOptions] {
        &self.hosts
    }

    pub fn attrs(&self) -> SessionAttrs {
        self.attrs
    }

    /// The same hosts, each with its options changed by `f`.
    pub fn map(self, f: impl Fn(PgConnectOptions) -> PgConnectOptions) -> Self {
        Self {
            hosts: self.hosts.into_iter().map(f).collect(),
            attrs: self.attrs,
        }
    }
}

/// `host:port` (or the socket) of one target, for logs and metrics.
pub fn label(options: &PgConnectOptions) -> String {
    match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}

/// Splits `target_session_attrs` off the query (sqlx does not know it), and
/// refuses host or port lists given as query parameters, which would
/// otherwise reach sqlx as one unusable host.
fn take_session_attrs(tail: &str) -> Result<(String, Option<SessionAttrs>), String> {
    let Some((path, query)) = tail.split_once('?') else {
        return Ok((tail.to_owned(), None));
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, format!("#{f}")),
        None => (query, String::new()),
    };
    let mut attrs = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "target_session_attrs" => attrs = Some(SessionAttrs::parse(value)?),
            "host" | "hostaddr" | "port"
                if value.contains(',') || value.to_ascii_lowercase().contains("%2c") =>
            {
                return Err(format!(
                    "a list in {key}= is not supported: list the hosts as user@h1:5432,h2:5432"
                ));
            }
            _ => kept.push(pair),
        }
    }
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    Ok((format!("{path}{query}{fragment}"), attrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(url: &str) -> Vec<String> {
        Targets::parse(url)
            .expect(url)
            .hosts()
            .iter()
            .map(label)
            .collect()
    }

    #[test]
    fn one_host_reads_as_sqlx_reads_it() {
        for url in [
            "postgres://localhost/verimail",
            "postgres://postgres@127.0.0.1/verimail",
            "postgresql://u:p@db.example:6432/x?sslmode=disable",
            "postgres:///verimail?host=/tmp",
        ] {
            let ours = Targets::parse(url).expect(url);
            let theirs = PgConnectOptions::from_str(url).expect(url);
            assert_eq!(ours.hosts().len(), 1);
            assert_eq!(ours.attrs(), SessionAttrs::Any);
            let ours = &ours.hosts()[0];
            assert_eq!(label(ours), label(&theirs), "{url}");
            assert_eq!(ours.get_database(), theirs.get_database(), "{url}");
            assert_eq!(ours.get_username(), theirs.get_username(), "{url}");
        }
    }

    #[test]
    fn several_hosts_keep_their_order_and_share_the_rest() {
        let url = "postgres://app:pw@h1:5432,h2:5433,[::1]/db?target_session_attrs=read-write&sslmode=disable";
        assert_eq!(hosts(url), ["h1:5432", "h2:5433", "[::1]:5432"]);
        let targets = Targets::parse(url).expect(url);
        assert_eq!(targets.attrs(), SessionAttrs::ReadWrite);
        for host in targets.hosts() {
            assert_eq!(host.get_database(), Some("db"));
            assert_eq!(host.get_username(), "app");
        }
        assert_eq!(hosts("postgres://h1,h2/db"), ["h1:5432", "h2:5432"]);
        assert_eq!(
            Targets::parse("postgres://h1,h2/db")
                .expect("no attrs")
                .attrs(),
            SessionAttrs::Any
        );
        assert_eq!(
            Targets::parse("postgres://h1/db?target_session_attrs=primary")
                .expect("primary")
                .attrs(),
            SessionAttrs::Primary
        );
        assert_eq!(
            Targets::parse("postgres://h1:1,h2:2/db?target_session_attrs=any")
                .expect("any")
                .attrs(),
            SessionAttrs::Any
        );
    }

    #[test]
    fn bad_forms_are_refused_in_one_line_without_the_password() {
        for bad in [
            "localhost/verimail",
            "postgres://u:secret@h1:5432,,h2/db",
            "postgres://u:secret@h1:5432,h2:notaport/db",
            "postgres://u:secret@h1,h2/db?target_session_attrs=standby",
            "postgres://u:secret@h1/db?target_session_attrs=prefer-standby",
            "postgres://u:secret@h1/db?target_session_attrs=read-only",
            "postgres://u:secret@h1/db?target_session_attrs=fastest",
            "postgres://u:secret@/db?host=h1,h2",
            "mysql://u:secret@h1,h2/db",
        ] {
            let error = Targets::parse(bad).err().unwrap_or_else(|| panic!("{bad}"));
            assert!(
                !error.contains("secret") && !error.contains('\n'),
                "{error}"
            );
        }
    }
}
