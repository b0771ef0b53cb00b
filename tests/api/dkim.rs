//! DKIM (issue 25): real rendered mails, as the SMTP server received them,
//! verified by dkimpy (an independent implementation) against the DNS
//! records `verimail dkim keygen` printed; keygen's file and refusals; a bad
//! key file stopping the processes that send.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use verimail_domain::Lang;
use verimail_intake::accounts::AccountKind;
use verimail_testkit::smtp_sink::{ReceivedMail, SmtpSink};
use verimail_worker::mail::dkim::DkimKeys;
use verimail_worker::mail::{CodeMail, MailSettings, Transport, render};

use crate::support::*;

pub(crate) const SELECTOR: &str = "s2026";
const RSA_DOMAIN: &str = "verimail.test";
const ED_DOMAIN: &str = "ed.example.net";
const WAIT: Duration = Duration::from_secs(15);

pub(crate) fn verimail(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_verimail"));
    command
        .args(args)
        .env_remove("VERIMAIL_DKIM_KEYS")
        .env_remove("VERIMAIL_DKIM_SELECTOR")
        .env("DATABASE_URL", "postgres://127.0.0.1:1/unused")
        .env("AMQP_URL", "amqp://127.0.0.1:1/%2f")
        .env("VERIMAIL_SECRET", TEST_SECRET);
    for (name, value) in vars {
        command.env(name, value);
    }
    command.output().unwrap()
}

/// `verimail dkim keygen` into `dir`; the printed record.
pub(crate) fn keygen(dir: &Path, domain: &str, extra: &[&str]) -> Output {
    let mut args = vec!["dkim", "keygen", "--domain", domain];
    args.extend_from_slice(extra);
    verimail(
        &args,
        &[
            ("VERIMAIL_DKIM_KEYS", dir.to_str().unwrap()),
            ("VERIMAIL_DKIM_SELECTOR", SELECTOR),
        ],
    )
}

pub(crate) fn record(output: &Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_str(stdout.trim()).unwrap();
    let fields: Vec<&String> = printed.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["name", "value"], "{printed}");
    (
        printed["name"].as_str().unwrap().to_owned(),
        printed["value"].as_str().unwrap().to_owned(),
    )
}

/// The interpreter of a virtualenv with dkimpy and PyNaCl; `.ci/run` makes
/// one and sets `VERIMAIL_DKIM_PYTHON`.
pub(crate) fn dkim_python() -> Option<String> {
    match std::env::var("VERIMAIL_DKIM_PYTHON") {
        Ok(python) => Some(python),
        Err(_) if std::env::var("CI").is_ok() => {
            panic!("CI must set VERIMAIL_DKIM_PYTHON (see .ci/run)")
        }
        Err(_) => {
            eprintln!(
                "SKIPPED: set VERIMAIL_DKIM_PYTHON to a python with dkimpy and PyNaCl to verify signatures"
            );
            None
        }
    }
}

/// dkimpy's verdict on each message, its DNS answered from `records` only.
pub(crate) fn dkimpy(python: &str, records: &[(String, String)], messages: &[String]) -> Vec<bool> {
    let records: serde_json::Map<String, Value> = records
        .iter()
        .map(|(name, value)| (name.clone(), json!(value)))
        .collect();
    let answer = run_json_script(
        python,
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dkim/verify.py"),
        &json!({"records": records, "messages": messages}),
    );
    answer["verified"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_bool().unwrap())
        .collect()
}

/// The tags of the mail's one DKIM-Signature, unfolded.
pub(crate) fn signature_tags(mail: &ReceivedMail) -> std::collections::HashMap<String, String> {
    let header = mail.header("DKIM-Signature").expect("a DKIM-Signature");
    header
        .split(';')
        .filter_map(|tag| tag.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_owned(),
                v.split_whitespace().collect::<String>(),
            )
        })
        .collect()
}

/// What someone changing a mail on the way would do.
fn altered(raw: &str) -> [String; 2] {
    let subject = raw.replacen("Subject: ", "Subject: Re: ", 1);
    assert_ne!(subject, raw);
    let body = format!("{raw}Call +1 555 0100 to confirm.\r\n");
    [subject, body]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_mails_verify_with_dkimpy_and_fail_once_altered() {
    let Some(python) = dkim_python() else { return };
    let keys_dir = tempfile::tempdir().unwrap();
    let rsa = record(&keygen(keys_dir.path(), RSA_DOMAIN, &[]));
    let ed = record(&keygen(keys_dir.path(), ED_DOMAIN, &["--ed25519"]));
    assert_eq!(rsa.0, format!("{SELECTOR}._domainkey.{RSA_DOMAIN}"));
    assert!(rsa.1.starts_with("v=DKIM1; k=rsa; p=MII"), "{}", rsa.1);
    assert!(ed.1.starts_with("v=DKIM1; k=ed25519; p="), "{}", ed.1);
    let keys = Arc::new(DkimKeys::load(keys_dir.path(), SELECTOR).unwrap());

    // RSA: through the whole pipeline, as a worker signs them (the test
    // sender is no-reply@verimail.test, its brand "Acme <Cloud> & Co").
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let sink = SmtpSink::start().await;
    let intake = TestIntake::spawn(intake_settings(amqp_url(), &prefix), &db.url).await;
    let mut settings = worker_settings(&prefix, Some(sink.url()));
    settings.mail = settings.mail.with_dkim(keys.clone());
    let worker = TestWorker::spawn(settings, &db.url).await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    for (email, lang) in [("zh@example.com", "zh-cn"), ("en@example.com", "en-us")] {
        let body = json!({"receiver_type": 2, "email": email, "lang": lang});
        assert_eq!(intake.send(&p.token, &body).await.status, 204);
    }
    sink.wait_for(2, WAIT).await;

    // Ed25519: rendered and sent by the same code, another sender domain.
    let ed_settings = MailSettings::new(
        format!("Ed Sender <no-reply@{ED_DOMAIN}>").parse().unwrap(),
        "Édition & <Co>",
    )
    .with_dkim(keys.clone());
    let transport = Transport::from_url(
        Some(&sink.url()),
        Path::new("unused"),
        1,
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .unwrap();
    for lang in [Lang::ZhCn, Lang::EnUs] {
        let mail = CodeMail {
            dispatch_id: uuid::Uuid::now_v7(),
            to: "ed@example.org",
            lang,
            code: "135790",
            valid_minutes: 10,
        };
        transport
            .send(&render(&ed_settings, &mail).unwrap())
            .await
            .unwrap();
    }
    let mails = sink.wait_for(4, WAIT).await;
    assert_eq!(mails.len(), 4);

    for mail in &mails {
        let tags = signature_tags(mail);
        let ed25519 = mail.mail_from.ends_with(ED_DOMAIN);
        let (algorithm, domain) = if ed25519 {
            ("ed25519-sha256", ED_DOMAIN)
        } else {
            ("rsa-sha256", RSA_DOMAIN)
        };
        assert_eq!(tags["a"], algorithm);
        assert_eq!(tags["d"], domain);
        assert_eq!(tags["s"], SELECTOR);
        assert_eq!(tags["c"], "relaxed/relaxed");
        let signed: Vec<&str> = tags["h"].split(':').collect();
        for header in [
            "from",
            "to",
            "subject",
            "date",
            "message-id",
            "mime-version",
            "content-type",
            "content-language",
        ] {
            assert!(signed.contains(&header), "{header} unsigned: {signed:?}");
        }
    }
    let languages: Vec<String> = mails
        .iter()
        .map(|m| m.header("Content-Language").unwrap())
        .collect();
    assert_eq!(
        languages.iter().filter(|l| *l == "zh-CN").count(),
        2,
        "{languages:?}"
    );

    let records = [rsa, ed];
    let raw: Vec<String> = mails.iter().map(ReceivedMail::raw).collect();
    assert_eq!(dkimpy(&python, &records, &raw), [true; 4], "as received");
    let tampered: Vec<String> = raw.iter().flat_map(|r| altered(r)).collect();
    assert_eq!(dkimpy(&python, &records, &tampered), [false; 8], "altered");
    // Against another key under the same name: not verified either.
    let other_dir = tempfile::tempdir().unwrap();
    let other = record(&keygen(other_dir.path(), RSA_DOMAIN, &[]));
    assert_eq!(dkimpy(&python, &[other], &raw[..1]), [false]);

    worker.stop().await.unwrap();
    broker.cleanup().await;
}

#[test]
fn keygen_writes_an_owner_only_key_and_will_not_overwrite_it_unasked() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("dkim");
    let first = record(&keygen(&keys, "Mail.Example.COM", &["--ed25519"]));
    assert_eq!(first.0, format!("{SELECTOR}._domainkey.mail.example.com"));
    let file = keys.join("mail.example.com.pem");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let key = std::fs::read(&file).unwrap();

    let refused = keygen(&keys, "mail.example.com", &["--ed25519"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert!(refused.stdout.is_empty());
    assert_eq!(std::fs::read(&file).unwrap(), key, "the key is untouched");

    let replaced = record(&keygen(&keys, "mail.example.com", &["--force"]));
    assert!(replaced.1.starts_with("v=DKIM1; k=rsa; "));
    assert_ne!(std::fs::read(&file).unwrap(), key);

    for bad in ["not a domain", "localhost", "under_score.example.com"] {
        let out = keygen(&keys, bad, &[]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
    }
    let unset = verimail(&["dkim", "keygen", "--domain", "example.com"], &[]);
    let stderr = String::from_utf8_lossy(&unset.stderr);
    assert_eq!(unset.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("VERIMAIL_DKIM_KEYS"), "{stderr}");
}

#[test]
fn a_bad_key_file_stops_worker_and_all_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.example.com.pem");
    std::fs::write(
        &bad,
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    for command in ["worker", "all"] {
        let out = verimail(
            &[command],
            &[("VERIMAIL_DKIM_KEYS", dir.path().to_str().unwrap())],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        let lines: Vec<&str> = stderr.trim().lines().collect();
        assert_eq!(lines.len(), 1, "{command}: {stderr}");
        assert!(
            lines[0].starts_with(&format!(
                "verimail: invalid VERIMAIL_DKIM_KEYS: {}: ",
                bad.display()
            )),
            "{command}: {stderr}"
        );
        assert!(!stderr.contains("bm90IGEga2V5"), "{stderr}");
    }
}
