//! The development bootstrap (src/dev_bootstrap.rs): `verimail migrate`
//! with `VERIMAIL_DEV_BOOTSTRAP=true` makes the `VERIMAIL_DEV_*` token and
//! AK/SK work, idempotently; without the switch every command refuses them
//! (exit 2).

#![allow(clippy::unwrap_used)]

use std::process::Command;

use crate::support::*;
use uuid::Uuid;

const TOKEN: &str = "vmt_dev_only_test_token_0123456789";
const AK: &str = "DEVTESTACCESSKEY0000";
const SK: &str = "devTestSecretKey0000000000000000000000000";

fn migrate(db_url: &str, prefix: &str, vars: &[(&str, &str)]) -> std::process::Output {
    verimail(&["migrate"], db_url, prefix, vars)
}

fn verimail(
    args: &[&str],
    db_url: &str,
    prefix: &str,
    vars: &[(&str, &str)],
) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_verimail"));
    command
        .args(args)
        .env_remove("VERIMAIL_DEV_BOOTSTRAP")
        .env_remove("VERIMAIL_DEV_PARTNER_ID")
        .env_remove("VERIMAIL_DEV_TOKEN")
        .env_remove("VERIMAIL_DEV_ACCESS_KEY")
        .env_remove("VERIMAIL_DEV_SECRET_KEY")
        .env("DATABASE_URL", db_url)
        .env("AMQP_URL", amqp_url())
        .env("VERIMAIL_AMQP_PREFIX", prefix)
        .env("VERIMAIL_SECRET", TEST_SECRET);
    for (name, value) in vars {
        command.env(name, value);
    }
    command.output().unwrap()
}

#[tokio::test]
async fn migrate_makes_the_dev_credentials_live_only_when_enabled() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();

    // Refused without the switch: exit 2, one line naming the variable.
    for switch in [None, Some("false")] {
        let mut vars = vec![("VERIMAIL_DEV_TOKEN", TOKEN)];
        if let Some(s) = switch {
            vars.push(("VERIMAIL_DEV_BOOTSTRAP", s));
        }
        let out = migrate(&db.url, &prefix, &vars);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("invalid VERIMAIL_DEV_TOKEN")
                && stderr.contains("refused unless VERIMAIL_DEV_BOOTSTRAP=true"),
            "{stderr}"
        );
    }
    // Any command, not only migrate: the intake refuses to start.
    let out = verimail(
        &["intake"],
        &db.url,
        &prefix,
        &[("VERIMAIL_DEV_SECRET_KEY", SK)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid VERIMAIL_DEV_SECRET_KEY"),
        "{stderr}"
    );
    assert_eq!(db.count("SELECT count(*) FROM tokens").await, 0);

    let enabled = [
        ("VERIMAIL_DEV_BOOTSTRAP", "true"),
        ("VERIMAIL_DEV_TOKEN", TOKEN),
        ("VERIMAIL_DEV_ACCESS_KEY", AK),
        ("VERIMAIL_DEV_SECRET_KEY", SK),
    ];
    for _ in 0..2 {
        let out = migrate(&db.url, &prefix, &enabled);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("DEVELOPMENT ONLY"));
    }
    // Twice: still one partner, one token, one key.
    assert_eq!(db.count("SELECT count(*) FROM partners").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM tokens").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM access_keys").await, 1);
    let partner: Uuid = sqlx::query_scalar("SELECT partner_id FROM access_keys")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(partner.to_string(), "00000000-0000-4000-8000-000000000001");
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT secret_sealed FROM access_keys")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        test_keys().open_access_secret(AK, &sealed).unwrap(),
        SK.as_bytes()
    );

    // The token is accepted by the intake; a revoked one comes back on the next migrate.
    let broker = Broker::connect(&prefix).await;
    let intake = TestIntake::spawn(intake_settings(amqp_url(), &prefix), &db.url).await;
    let reply = intake.send(TOKEN, &valid_body("dev@example.com")).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    sqlx::query("UPDATE tokens SET revoked_at = now()")
        .execute(&db.pool)
        .await
        .unwrap();
    let reply = intake.send(TOKEN, &valid_body("dev2@example.com")).await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert!(migrate(&db.url, &prefix, &enabled).status.success());
    let reply = intake.send(TOKEN, &valid_body("dev2@example.com")).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    broker.cleanup().await;
}
