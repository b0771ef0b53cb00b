//! Per-partner sender and brand (issue 25): `verimail partner set` as an
//! operator runs it, mails of two partners with their own From, brand,
//! Reply-To, support URL and DKIM `d=` (verified by dkimpy when it is
//! there), a partner without settings mailed as before, refusals in one
//! line, and how soon a change reaches a worker.
#![allow(clippy::unwrap_used)]

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use serde_json::{Value, json};
use verimail_intake::accounts::AccountKind;
use verimail_testkit::smtp_sink::{ReceivedMail, SmtpSink};
use verimail_worker::mail::MailSettings;
use verimail_worker::mail::dkim::DkimKeys;
use verimail_worker::senders::Senders;

use crate::dkim::{SELECTOR, dkim_python, dkimpy, keygen, record, signature_tags, verimail};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(15);
/// The test worker's own sender (`support::worker_settings`).
const DEFAULT_FROM: &str = "Verimail Test <no-reply@verimail.test>";
const DEFAULT_BRAND: &str = "Acme <Cloud> & Co";
const ALLOWED: &str = "mail.acme.example, mail.globex.example";

/// `verimail partner set` against `db_url`, as an operator with `ALLOWED`.
fn partner_set(db_url: &str, partner: uuid::Uuid, options: &[&str]) -> Output {
    let partner = partner.to_string();
    let mut args = vec!["partner", "set", "--partner", partner.as_str()];
    args.extend_from_slice(options);
    verimail(
        &args,
        &[
            ("DATABASE_URL", db_url),
            ("VERIMAIL_MAIL_FROM", DEFAULT_FROM),
            ("VERIMAIL_ALLOWED_SENDER_DOMAINS", ALLOWED),
        ],
    )
}

fn printed(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

/// The one line a refusal prints, after checking it is one, with exit code 2
/// and nothing on stdout.
fn refusal(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(output.stdout.is_empty(), "{stderr}");
    let lines: Vec<&str> = stderr.trim().lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].to_owned()
}

fn mail_to<'a>(mails: &'a [ReceivedMail], to: &str) -> &'a ReceivedMail {
    mails
        .iter()
        .find(|m| m.header("To").as_deref() == Some(to))
        .unwrap_or_else(|| panic!("no mail to {to}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_partners_mail_with_their_own_sender_brand_and_dkim_domain() {
    let keys_dir = tempfile::tempdir().unwrap();
    let domains = ["verimail.test", "mail.acme.example", "mail.globex.example"];
    let records: Vec<(String, String)> = domains
        .iter()
        .map(|domain| record(&keygen(keys_dir.path(), domain, &["--ed25519"])))
        .collect();
    let keys = Arc::new(DkimKeys::load(keys_dir.path(), SELECTOR).unwrap());

    let db = TestDb::new().await;
    let acme = partner(&db.pool, AccountKind::Partner, false).await;
    let globex = partner(&db.pool, AccountKind::Partner, false).await;
    let plain = partner(&db.pool, AccountKind::Partner, false).await;
    let set = printed(&partner_set(
        &db.url,
        acme.id,
        &[
            "--brand",
            "A<b>&c",
            "--from",
            "Acme Mail <hello@mail.acme.example>",
            "--reply-to",
            "Acme Help <help@acme.example>",
            "--support-url",
            "https://help.acme.example/verify?via=mail",
        ],
    ));
    assert_eq!(
        set,
        json!({"partner_id": acme.id, "brand": "A<b>&c",
               "from": "Acme Mail <hello@mail.acme.example>",
               "reply_to": "Acme Help <help@acme.example>",
               "support_url": "https://help.acme.example/verify?via=mail"})
    );
    // The domain is stored as the key file is named: lower case.
    let set = printed(&partner_set(
        &db.url,
        globex.id,
        &[
            "--brand",
            "Globex",
            "--from",
            "Globex <codes@Mail.Globex.Example>",
        ],
    ));
    assert_eq!(set["from"], "Globex <codes@mail.globex.example>");
    assert_eq!(set["reply_to"], Value::Null);

    let prefix = unique_prefix();
    let broker = Broker::connect(&prefix).await;
    let sink = SmtpSink::start().await;
    let intake = TestIntake::spawn(intake_settings(amqp_url(), &prefix), &db.url).await;
    let mut settings = worker_settings(&prefix, Some(sink.url()));
    settings.mail = (settings.mail)
        .with_sender_domains(["mail.acme.example".into(), "mail.globex.example".into()])
        .with_dkim(keys);
    let worker = TestWorker::spawn(settings, &db.url).await;
    for (who, email, lang) in [
        (&acme, "a@example.com", "en-us"),
        (&globex, "g@example.com", "zh-cn"),
        (&plain, "p@example.com", "en-us"),
    ] {
        let body = json!({"receiver_type": 2, "email": email, "lang": lang});
        assert_eq!(intake.send(&who.token, &body).await.status, 204);
    }
    let mails = sink.wait_for(3, WAIT).await;
    assert_eq!(mails.len(), 3);

    let acme_mail = mail_to(&mails, "a@example.com");
    let globex_mail = mail_to(&mails, "g@example.com");
    let plain_mail = mail_to(&mails, "p@example.com");
    for (mail, from, domain, brand) in [
        (
            acme_mail,
            "Acme Mail <hello@mail.acme.example>",
            "mail.acme.example",
            "A<b>&c",
        ),
        (
            globex_mail,
            "Globex <codes@mail.globex.example>",
            "mail.globex.example",
            "Globex",
        ),
        (plain_mail, DEFAULT_FROM, "verimail.test", DEFAULT_BRAND),
    ] {
        let header: Mailbox = mail.header("From").unwrap().parse().unwrap();
        assert_eq!(header, from.parse().unwrap());
        assert!(
            mail.mail_from.ends_with(&format!("@{domain}")),
            "{}",
            mail.mail_from
        );
        assert_eq!(signature_tags(mail)["d"], domain);
        let message_id = mail.header("Message-ID").unwrap();
        assert!(message_id.ends_with(&format!("@{domain}>")), "{message_id}");
        assert!(mail.subject().unwrap().contains(brand));
        assert!(
            mail.text().unwrap().contains(brand),
            "{}",
            mail.text().unwrap()
        );
    }

    // The brand as askama escapes it in HTML, as given in text and subject.
    let html = acme_mail.html().unwrap();
    assert!(html.contains("A&#60;b&#62;&#38;c"), "{html}");
    assert!(!html.contains("A<b>&c"), "{html}");
    assert_eq!(
        acme_mail.subject().unwrap(),
        "Your A<b>&c verification code"
    );
    let reply_to: Mailbox = acme_mail.header("Reply-To").unwrap().parse().unwrap();
    assert_eq!(reply_to, "Acme Help <help@acme.example>".parse().unwrap());
    let url = "https://help.acme.example/verify?via=mail";
    assert!(acme_mail.text().unwrap().contains(url));
    assert!(html.contains(&format!(r#"<a href="{url}""#)), "{html}");

    // Today's defaults for a partner without settings; no brand of another.
    for mail in [globex_mail, plain_mail] {
        assert_eq!(mail.header("Reply-To"), None);
        assert!(!mail.text().unwrap().contains("help.acme.example"));
        assert!(!mail.html().unwrap().contains("help.acme.example"));
    }
    assert_eq!(globex_mail.subject().unwrap(), "【Globex】邮箱验证码");
    assert_eq!(
        plain_mail.subject().unwrap(),
        format!("Your {DEFAULT_BRAND} verification code")
    );

    if let Some(python) = dkim_python() {
        let raw: Vec<String> = [acme_mail, globex_mail, plain_mail]
            .iter()
            .map(|m| m.raw())
            .collect();
        assert_eq!(dkimpy(&python, &records, &raw), [true; 3]);
        // Each signature verifies only with its own domain's record.
        let acme_only = &records[1..2];
        assert_eq!(dkimpy(&python, acme_only, &raw), [true, false, false]);
    }

    worker.stop().await.unwrap();
    broker.cleanup().await;
    db.assert_open_means_sealed().await;
}

#[tokio::test]
async fn partner_set_refuses_a_bad_value_in_one_line_and_writes_nothing() {
    let db = TestDb::new().await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    printed(&partner_set(&db.url, p.id, &["--brand", "Acme"]));

    let line = refusal(&partner_set(
        &db.url,
        p.id,
        &["--brand", "Bank", "--from", "Bank <security@bank.example>"],
    ));
    assert_eq!(
        line,
        "verimail: --from: bank.example is not an allowed sender domain (allowed: \
         mail.acme.example, mail.globex.example, verimail.test); the operator allows \
         more in VERIMAIL_ALLOWED_SENDER_DOMAINS"
    );
    // A subdomain of an allowed domain is another domain.
    refusal(&partner_set(
        &db.url,
        p.id,
        &["--from", "x@evil.mail.acme.example"],
    ));
    for (option, bad) in [
        ("--support-url", "javascript:alert(1)"),
        ("--support-url", "https://help.example@evil.example/"),
        ("--brand", "two\nlines"),
        ("--reply-to", "not a mailbox"),
        ("--from", "no-reply@verimail.test\r\nBcc: x@evil.example"),
    ] {
        let line = refusal(&partner_set(&db.url, p.id, &[option, bad]));
        assert!(line.starts_with(&format!("verimail: {option}: ")), "{line}");
    }
    let stored: (Option<String>, Option<String>) =
        sqlx::query_as("SELECT brand, mail_from FROM partners WHERE id = $1")
            .bind(p.id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, (Some("Acme".into()), None), "nothing was written");

    // "" gives a setting back to the default; options not given stay.
    let set = printed(&partner_set(
        &db.url,
        p.id,
        &["--from", "Verimail <codes@verimail.test>"],
    ));
    assert_eq!(set["brand"], "Acme");
    let set = printed(&partner_set(&db.url, p.id, &["--brand", ""]));
    assert_eq!(
        (set["brand"].clone(), set["from"].clone()),
        (Value::Null, json!("Verimail <codes@verimail.test>"))
    );
    let unknown = partner_set(&db.url, uuid::Uuid::new_v4(), &["--brand", "x"]);
    assert_eq!(unknown.status.code(), Some(1));
}

/// A worker reads a partner's sender again once its copy is `ttl` old, and
/// checks it against its own allowed domains: a From the operator no longer
/// allows is not sent from. While Postgres cannot be asked, the copy it has
/// stands in.
#[tokio::test]
async fn a_change_reaches_the_worker_after_its_cache_time_and_is_checked_again() {
    let db = TestDb::new().await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let mail = MailSettings::new(DEFAULT_FROM.parse().unwrap(), "verimail")
        .with_sender_domains(["mail.acme.example".into()]);
    let ttl = Duration::from_millis(300);
    let senders = Senders::new(db.pool.clone(), &mail, ttl);
    assert_eq!(*senders.of(p.id).await.unwrap(), mail.sender);

    printed(&partner_set(
        &db.url,
        p.id,
        &["--brand", "Acme", "--from", "Acme <hi@mail.acme.example>"],
    ));
    assert_eq!(senders.of(p.id).await.unwrap().brand, "verimail", "cached");
    tokio::time::sleep(ttl).await;
    let now = senders.of(p.id).await.unwrap();
    assert_eq!(
        (now.brand.as_str(), now.domain()),
        ("Acme", "mail.acme.example")
    );

    // Allowed when it was set, not by this worker: its own From instead.
    printed(&partner_set(
        &db.url,
        p.id,
        &["--from", "Globex <hi@mail.globex.example>"],
    ));
    let strict = Senders::new(db.pool.clone(), &mail, ttl);
    let sender = strict.of(p.id).await.unwrap();
    assert_eq!(
        (sender.brand.as_str(), &sender.from),
        ("Acme", &mail.sender.from)
    );

    // Postgres away: the sender read before, however old; never the
    // default in its place, so a worker that never read it retries.
    db.pool.close().await;
    tokio::time::sleep(ttl).await;
    assert_eq!(strict.of(p.id).await.unwrap().brand, "Acme");
    let never_read = Senders::new(db.pool.clone(), &mail, ttl);
    assert!(never_read.of(p.id).await.is_err());
}

/// Migration 0017 moved the claim into `claim_dispatch_with_partner`;
/// `claim_dispatch` answers as before for workers not yet upgraded, and
/// both are one claim.
#[tokio::test]
async fn a_worker_not_yet_upgraded_still_claims_through_claim_dispatch() {
    use sqlx::Row as _;
    let db = TestDb::new().await;
    let p = partner(&db.pool, AccountKind::Partner, false).await;
    let (id, _) = record_dispatch(&db.pool, p.id, "old-worker@example.com").await;
    let old = sqlx::query("SELECT c.* FROM claim_dispatch($1, 30, gen_random_uuid(), 1) c")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(old.len(), 10, "the answer workers not yet upgraded read");
    assert_eq!(old.get::<String, _>("outcome"), "claimed");
    assert_eq!(old.get::<i32, _>("attempts"), 1);
    let (outcome, partner_id): (String, Option<uuid::Uuid>) = sqlx::query_as(
        "SELECT outcome, partner_id FROM claim_dispatch_with_partner($1, 30, gen_random_uuid(), 1)",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((outcome.as_str(), partner_id), ("leased", None));
}
