//! DEVELOPMENT ONLY: a partner and credentials taken from the environment,
//! so a compose e2e test knows a working token or AK/SK pair without
//! running `verimail partner create` / `token issue` / `key create` in a
//! container.
//!
//! `verimail migrate` applies it after the migrations when, and only when,
//! `VERIMAIL_DEV_BOOTSTRAP=true`: it makes the partner
//! `VERIMAIL_DEV_PARTNER_ID` (active) and makes `VERIMAIL_DEV_TOKEN` and/or
//! the pair `VERIMAIL_DEV_ACCESS_KEY` / `VERIMAIL_DEV_SECRET_KEY` live for
//! it, again on every run (a revoked one comes back). Any `VERIMAIL_DEV_*`
//! credential set without that switch stops every command at start (exit
//! 2): a credential that is public by construction must never be accepted,
//! or thought to be in effect, by accident.

use anyhow::Context;
use sqlx::PgPool;
use uuid::Uuid;
use verimail_domain::secrets::{Keys, token_digest};
use verimail_infra::db;
use verimail_infra::store::{access_keys, partners, tokens};

use crate::config::{self, ConfigError, Source};

/// The switch; every other `VERIMAIL_DEV_*` variable is refused without it.
pub const SWITCH: &str = "VERIMAIL_DEV_BOOTSTRAP";
/// The partner the credentials belong to (its simple form is the SDK's `domain_id`).
pub const PARTNER_ID: &str = "VERIMAIL_DEV_PARTNER_ID";
pub const TOKEN: &str = "VERIMAIL_DEV_TOKEN";
pub const ACCESS_KEY: &str = "VERIMAIL_DEV_ACCESS_KEY";
pub const SECRET_KEY: &str = "VERIMAIL_DEV_SECRET_KEY";

/// Name of the partner row the bootstrap creates.
pub const PARTNER_NAME: &str = "dev-bootstrap";

/// What `VERIMAIL_DEV_*` asks for, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevBootstrap {
    pub partner_id: Uuid,
    pub token: Option<String>,
    /// Access key and secret key.
    pub access_key: Option<(String, String)>,
}

fn error(var: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        problem: problem.into(),
    }
}

fn check_token(token: &str) -> Result<(), String> {
    if !(16..=256).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("expected 16 to 256 visible ASCII characters, no spaces".into());
    }
    Ok(())
}

fn check_alphanumeric(value: &str, min: usize, max: usize) -> Result<(), String> {
    if !(min..=max).contains(&value.len()) || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!(
            "expected {min} to {max} ASCII letters and digits (SDKs check the shape)"
        ));
    }
    Ok(())
}

impl DevBootstrap {
    /// `Ok(None)` when the bootstrap is off and nothing asks for it.
    pub fn load(src: &dyn Source) -> Result<Option<Self>, ConfigError> {
        let enabled = match src.get(SWITCH) {
            None => false,
            Some(v) if v.trim().eq_ignore_ascii_case("false") => false,
            Some(v) if v.trim().eq_ignore_ascii_case("true") => true,
            Some(_) => return Err(error(SWITCH, "expected true or false")),
        };
        let token = src.get(TOKEN).map(|v| v.trim().to_owned());
        let access_key = src.get(ACCESS_KEY).map(|v| v.trim().to_owned());
        let secret_key = src.get(SECRET_KEY).map(|v| v.trim().to_owned());
        if !enabled {
            for (var, set) in [
                (PARTNER_ID, src.get(PARTNER_ID).is_some()),
                (TOKEN, token.is_some()),
                (ACCESS_KEY, access_key.is_some()),
                (SECRET_KEY, secret_key.is_some()),
            ] {
                if set {
                    return Err(error(
                        var,
                        format!("is a development-only credential, refused unless {SWITCH}=true"),
                    ));
                }
            }
            return Ok(None);
        }
        let partner_id = {
            let raw = src
                .get(PARTNER_ID)
                .unwrap_or_else(|| config::default_of(PARTNER_ID).to_owned());
            Uuid::parse_str(raw.trim()).map_err(|_| error(PARTNER_ID, "expected a UUID"))?
        };
        if let Some(token) = &token {
            check_token(token).map_err(|p| error(TOKEN, p))?;
        }
        let access_key = match (access_key, secret_key) {
            (None, None) => None,
            (Some(ak), Some(sk)) => {
                check_alphanumeric(&ak, 8, 64).map_err(|p| error(ACCESS_KEY, p))?;
                check_alphanumeric(&sk, 16, 128).map_err(|p| error(SECRET_KEY, p))?;
                Some((ak, sk))
            }
            (Some(_), None) => {
                return Err(error(SECRET_KEY, format!("is required with {ACCESS_KEY}")));
            }
            (None, Some(_)) => {
                return Err(error(ACCESS_KEY, format!("is required with {SECRET_KEY}")));
            }
        };
        if token.is_none() && access_key.is_none() {
            return Err(error(
                SWITCH,
                format!("is true, but neither {TOKEN} nor {ACCESS_KEY}/{SECRET_KEY} is set"),
            ));
        }
        Ok(Some(Self {
            partner_id,
            token,
            access_key,
        }))
    }

    /// Makes the partner and credentials live; the same on every run.
    pub async fn apply(&self, pool: &PgPool, keys: Option<&Keys>) -> anyhow::Result<()> {
        let mut tx = pool.begin().await.context("dev bootstrap: begin")?;
        partners::upsert_active(&mut tx, self.partner_id, PARTNER_NAME)
            .await
            .context("dev bootstrap")?;
        if let Some(token) = &self.token {
            tokens::upsert_live(&mut tx, &token_digest(token), self.partner_id)
                .await
                .context("dev bootstrap")?;
        }
        if let Some((ak, sk)) = &self.access_key {
            let keys = keys.context("dev bootstrap: an access key needs VERIMAIL_SECRET")?;
            access_keys::upsert_live(
                &mut tx,
                ak,
                self.partner_id,
                &keys.seal_access_secret(ak, sk),
            )
            .await
            .context("dev bootstrap")?;
        }
        tx.commit().await.context("dev bootstrap: commit")?;
        tracing::warn!(
            partner_id = %self.partner_id,
            token = self.token.is_some(),
            access_key = self.access_key.as_ref().map(|(ak, _)| ak.as_str()),
            "DEVELOPMENT ONLY: {SWITCH}=true made credentials from the environment live; never enable this outside tests"
        );
        Ok(())
    }
}

/// What `run` in src/cli.rs asks before any command: `Err` (exit 2) when a
/// credential is set without the switch, whatever the command;
/// `Some` when the command is `migrate` and the switch is on.
pub fn for_command(migrate: bool, src: &dyn Source) -> Result<Option<DevBootstrap>, ConfigError> {
    let bootstrap = DevBootstrap::load(src)?;
    Ok(bootstrap.filter(|_| migrate))
}

impl DevBootstrap {
    /// After `migrate` has applied the migrations.
    pub async fn run(&self, src: &dyn Source, common: &config::Common) -> anyhow::Result<()> {
        let keys = match &self.access_key {
            Some(_) => Some(Keys::derive(&config::require_secret(src)?)),
            None => None,
        };
        let pool = db::pool(&common.db())?;
        self.apply(&pool, keys.as_ref()).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const TOKEN_VALUE: &str = "vmt_dev_token_for_e2e_tests";

    #[test]
    fn off_by_default() {
        assert_eq!(DevBootstrap::load(&env(&[])).unwrap(), None);
        assert_eq!(
            DevBootstrap::load(&env(&[(SWITCH, "false")])).unwrap(),
            None
        );
    }

    #[test]
    fn a_credential_without_the_switch_is_refused() {
        for var in [TOKEN, ACCESS_KEY, SECRET_KEY, PARTNER_ID] {
            for switch in [None, Some("false")] {
                let mut e = env(&[(var, "whatever-value-1234")]);
                if let Some(s) = switch {
                    e.insert(SWITCH.to_owned(), s.to_owned());
                }
                let err = DevBootstrap::load(&e).unwrap_err();
                assert_eq!(err.var, var);
                assert!(
                    err.to_string()
                        .contains("refused unless VERIMAIL_DEV_BOOTSTRAP=true")
                );
            }
        }
        let err = DevBootstrap::load(&env(&[(SWITCH, "yes"), (TOKEN, TOKEN_VALUE)])).unwrap_err();
        assert_eq!(err.var, SWITCH);
    }

    #[test]
    fn enabled_reads_and_checks_the_credentials() {
        let loaded = DevBootstrap::load(&env(&[(SWITCH, "true"), (TOKEN, TOKEN_VALUE)]))
            .unwrap()
            .unwrap();
        assert_eq!(loaded.token.as_deref(), Some(TOKEN_VALUE));
        assert_eq!(
            loaded.partner_id.to_string(),
            config::default_of(PARTNER_ID)
        );
        assert_eq!(loaded.access_key, None);

        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], SWITCH),
            (&[(TOKEN, "short")], TOKEN),
            (&[(TOKEN, "has a space in it, so no")], TOKEN),
            (&[(ACCESS_KEY, "DEVACCESSKEY0000")], SECRET_KEY),
            (&[(SECRET_KEY, "devsecretkey00000000")], ACCESS_KEY),
            (
                &[
                    (ACCESS_KEY, "DEV-KEY-0000"),
                    (SECRET_KEY, "devsecretkey00000000"),
                ],
                ACCESS_KEY,
            ),
            (
                &[(ACCESS_KEY, "DEVACCESSKEY0000"), (SECRET_KEY, "short")],
                SECRET_KEY,
            ),
            (
                &[(TOKEN, TOKEN_VALUE), (PARTNER_ID, "not-a-uuid")],
                PARTNER_ID,
            ),
        ];
        for (pairs, var) in cases {
            let mut e = env(pairs);
            e.insert(SWITCH.to_owned(), "TRUE".to_owned());
            assert_eq!(DevBootstrap::load(&e).unwrap_err().var, *var, "{pairs:?}");
        }
    }

    #[test]
    fn only_migrate_applies_it_but_every_command_refuses() {
        let on = env(&[(SWITCH, "true"), (TOKEN, TOKEN_VALUE)]);
        assert!(for_command(true, &on).unwrap().is_some());
        assert!(for_command(false, &on).unwrap().is_none());
        let refused = env(&[(TOKEN, TOKEN_VALUE)]);
        assert_eq!(for_command(true, &refused).unwrap_err().var, TOKEN);
        assert_eq!(for_command(false, &refused).unwrap_err().var, TOKEN);
    }

    #[test]
    fn the_default_partner_id_is_a_uuid() {
        Uuid::parse_str(config::default_of(PARTNER_ID)).unwrap();
    }
}
