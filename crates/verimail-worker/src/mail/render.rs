//! Turns a verification code into a complete MIME message.
//!
//! The templates live in `templates/{zh-cn,en-us}/` (subject, plain text,
//! HTML sharing `layout.html`). Only `.html` templates are HTML-escaped by
//! askama, which is what we want: the plain part must show a brand like
//! `A&B` verbatim.

use std::sync::Arc;

use askama::Template;
use lettre::Message;
use lettre::message::header::{
    ContentTransferEncoding, ContentType, HeaderName, HeaderValue, MIME_VERSION_1_0,
};
use lettre::message::{Body, Mailbox, MultiPart};
use uuid::Uuid;
use verimail_domain::Lang;
use verimail_infra::metrics as m;

use super::dkim::DkimKeys;
use super::sender::{Sender, SenderDomains};

/// Sender-side configuration, fixed for the life of the worker.
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// The sender of partners without settings of their own
    /// (`VERIMAIL_MAIL_FROM`, `VERIMAIL_BRAND`).
    pub sender: Sender,
    /// The domains a partner's From may be at.
    pub sender_domains: SenderDomains,
    /// DKIM keys by sending domain; a mail whose From domain has none goes
    /// out unsigned and is counted.
    pub dkim: Arc<DkimKeys>,
}

impl MailSettings {
    /// `from`'s domain is the only sender domain until
    /// `with_sender_domains` adds others.
    pub fn new(from: Mailbox, brand: impl Into<String>) -> Self {
        let sender_domains = SenderDomains::new(&from, []);
        Self {
            sender: Sender::new(from, brand),
            sender_domains,
            dkim: Arc::new(DkimKeys::none()),
        }
    }

    /// The same settings, signing with `keys`.
    pub fn with_dkim(self, keys: Arc<DkimKeys>) -> Self {
        Self { dkim: keys, ..self }
    }

    /// The same settings, partners' From allowed at `allowed` too.
    pub fn with_sender_domains(self, allowed: impl IntoIterator<Item = String>) -> Self {
        let sender_domains = SenderDomains::new(&self.sender.from, allowed);
        Self {
            sender_domains,
            ..self
        }
    }
}

/// One verification mail to render.
#[derive(Debug, Clone, Copy)]
pub struct CodeMail<'a> {
    pub dispatch_id: Uuid,
    pub to: &'a str,
    pub lang: Lang,
    pub code: &'a str,
    pub valid_minutes: u32,
}

/// Why a mail could not be rendered. Nothing here is retryable: the same
/// input renders the same way every time. Messages name no address and no code.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("recipient is not a valid mailbox: {0}")]
    Recipient(#[source] lettre::address::AddressError),
    #[error("template rendering failed: {0}")]
    Template(#[from] askama::Error),
    #[error("message could not be built: {0}")]
    Build(#[from] lettre::error::Error),
    #[error("the multipart body could not be built: {0}")]
    Multipart(&'static str),
}

/// The mail from the default sender (see `render_as`).
pub fn render(settings: &MailSettings, mail: &CodeMail<'_>) -> Result<Message, RenderError> {
    render_as(settings, &settings.sender, mail)
}

/// Builds the message from `sender`, DKIM-signed when its From domain has a
/// key.
///
/// `Message-ID` is `<{dispatch_id}@{From domain}>`, so every retry of a
/// dispatch carries the same id and receivers can drop duplicates.
pub fn render_as(
    settings: &MailSettings,
    sender: &Sender,
    mail: &CodeMail<'_>,
) -> Result<Message, RenderError> {
    let to: Mailbox = mail.to.parse().map_err(RenderError::Recipient)?;
    let parts = Parts::render(sender, mail)?;
    let (content_type, body) = alternative(parts.text, parts.html)?;
    let mut builder = Message::builder()
        .from(sender.from.clone())
        .to(to)
        .subject(parts.subject)
        .message_id(Some(format!("<{}@{}>", mail.dispatch_id, sender.domain())));
    if let Some(reply_to) = &sender.reply_to {
        builder = builder.reply_to(reply_to.clone());
    }
    let mut message = builder
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Content-Language"),
            mail.lang.content_language().to_owned(),
        ))
        // RFC 3834: tells auto-responders (vacation replies, etc.) to stay quiet.
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".to_owned(),
        ))
        .header(MIME_VERSION_1_0)
        .header(content_type)
        .body(body)?;
    if !settings.dkim.sign(&mut message, sender.domain()) {
        metrics::counter!(m::MAILS_UNSIGNED).increment(1);
    }
    Ok(message)
}

/// The text and HTML parts as one `multipart/alternative` body, with its
/// Content-Type as a header of the message itself.
///
/// lettre writes a multipart body's Content-Type only when it formats the
/// message, so lettre's own DKIM signer, which read the message's headers,
/// signed without it and never verified (dkimpy said so, `tests/api/dkim.rs`). Written here, the multipart is a
/// pre-encoded 7-bit body (every part is quoted-printable) and its
/// Content-Type a header signed like any other.
fn alternative(text: String, html: String) -> Result<(ContentType, Body), RenderError> {
    let multipart = MultiPart::alternative_plain_html(text, html);
    let content_type = multipart
        .headers()
        .get::<ContentType>()
        .ok_or(RenderError::Multipart("no Content-Type"))?;
    let formatted = multipart.formatted();
    let start = formatted
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(RenderError::Multipart("no end of headers"))?;
    let body = &formatted[start + 4..];
    // lettre encoded every part (7-bit, quoted-printable or base64).
    if !body.is_ascii() {
        return Err(RenderError::Multipart("not 7-bit"));
    }
    let body = Body::dangerous_pre_encoded(body.to_vec(), ContentTransferEncoding::SevenBit);
    Ok((content_type, body))
}

struct Parts {
    subject: String,
    text: String,
    html: String,
}

impl Parts {
    fn render(sender: &Sender, mail: &CodeMail<'_>) -> Result<Self, askama::Error> {
        let brand = sender.brand.as_str();
        let support_url = sender.support_url.as_deref();
        let code = mail.code;
        let minutes = mail.valid_minutes;
        let html_lang = mail.lang.content_language();
        let (subject, text, html) = match mail.lang {
            Lang::ZhCn => (
                ZhSubject { brand }.render()?,
                ZhText {
                    brand,
                    code,
                    minutes,
                    support_url,
                }
                .render()?,
                ZhHtml {
                    brand,
                    code,
                    minutes,
                    html_lang,
                    support_url,
                }
                .render()?,
            ),
            Lang::EnUs => (
                EnSubject { brand }.render()?,
                EnText {
                    brand,
                    code,
                    minutes,
                    support_url,
                }
                .render()?,
                EnHtml {
                    brand,
                    code,
                    minutes,
                    html_lang,
                    support_url,
                }
                .render()?,
            ),
        };
        Ok(Self {
            // A stray line break from the template file would fold the header.
            subject: subject.trim().to_owned(),
            text,
            html,
        })
    }
}

#[derive(Template)]
#[template(path = "zh-cn/subject.txt")]
struct ZhSubject<'a> {
    brand: &'a str,
}

#[derive(Template)]
#[template(path = "zh-cn/body.txt")]
struct ZhText<'a> {
    brand: &'a str,
    code: &'a str,
    minutes: u32,
    support_url: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "zh-cn/body.html")]
struct ZhHtml<'a> {
    brand: &'a str,
    code: &'a str,
    minutes: u32,
    html_lang: &'a str,
    support_url: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "en-us/subject.txt")]
struct EnSubject<'a> {
    brand: &'a str,
}

#[derive(Template)]
#[template(path = "en-us/body.txt")]
struct EnText<'a> {
    brand: &'a str,
    code: &'a str,
    minutes: u32,
    support_url: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "en-us/body.html")]
struct EnHtml<'a> {
    brand: &'a str,
    code: &'a str,
    minutes: u32,
    html_lang: &'a str,
    support_url: Option<&'a str>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use verimail_testkit::smtp_sink::MailView;

    const CODE: &str = "482913";

    fn settings(brand: &str) -> MailSettings {
        MailSettings::new(
            "Verimail <no-reply@mail.example.com>".parse().unwrap(),
            brand,
        )
    }

    fn mail(lang: Lang) -> CodeMail<'static> {
        CodeMail {
            dispatch_id: Uuid::from_u128(0x0190_1234_5678_7abc_8def_0123_4567_89ab),
            to: "user@example.org",
            lang,
            code: CODE,
            valid_minutes: 7,
        }
    }

    fn rendered(brand: &str, lang: Lang) -> Vec<u8> {
        render(&settings(brand), &mail(lang)).unwrap().formatted()
    }

    #[test]
    fn chinese_mail_has_code_and_validity_in_both_parts() {
        let raw = rendered("Acme", Lang::ZhCn);
        let view = MailView::new(&raw);
        assert_eq!(view.subject().unwrap(), "【Acme】邮箱验证码");
        let text = view.text().unwrap();
        let html = view.html().unwrap();
        for part in [&text, &html] {
            assert!(part.contains(CODE), "{part}");
            assert!(part.contains("7 分钟"), "{part}");
            assert!(part.contains("Acme"), "{part}");
        }
        assert!(text.contains("验证码在 7 分钟内有效"), "{text}");
        assert!(html.contains(r#"<html lang="zh-CN">"#), "{html}");
        assert_eq!(view.header("Content-Language").unwrap(), "zh-CN");
    }

    #[test]
    fn english_mail_has_code_and_validity_in_both_parts() {
        let raw = rendered("Acme", Lang::EnUs);
        let view = MailView::new(&raw);
        assert_eq!(view.subject().unwrap(), "Your Acme verification code");
        let text = view.text().unwrap();
        let html = view.html().unwrap();
        for part in [&text, &html] {
            assert!(part.contains(CODE), "{part}");
            assert!(part.contains("7 minutes"), "{part}");
        }
        assert!(html.contains(r#"<html lang="en-US">"#), "{html}");
        assert_eq!(view.header("Content-Language").unwrap(), "en-US");
    }

    #[test]
    fn english_uses_singular_for_one_minute() {
        let mut one = mail(Lang::EnUs);
        one.valid_minutes = 1;
        let raw = render(&settings("Acme"), &one).unwrap().formatted();
        let text = MailView::new(&raw).text().unwrap();
        assert!(text.contains("valid for 1 minute."), "{text}");
    }

    #[test]
    fn brand_is_escaped_in_html_only() {
        let brand = "<b>A&B</b>";
        for lang in [Lang::ZhCn, Lang::EnUs] {
            let raw = rendered(brand, lang);
            let view = MailView::new(&raw);
            let html = view.html().unwrap();
            assert!(!html.contains(brand), "{html}");
            assert!(html.contains("&#60;b&#62;A&#38;B&#60;/b&#62;"), "{html}");
            assert!(view.text().unwrap().contains(brand));
            assert!(view.subject().unwrap().contains(brand));
        }
    }

    #[test]
    fn headers_are_stable_and_mark_the_mail_automatic() {
        let first = rendered("Acme", Lang::EnUs);
        let second = rendered("Acme", Lang::EnUs);
        let expected = "<01901234-5678-7abc-8def-0123456789ab@mail.example.com>";
        for raw in [&first, &second] {
            let view = MailView::new(raw);
            assert_eq!(view.header("Message-ID").unwrap(), expected);
            assert_eq!(view.header("Auto-Submitted").unwrap(), "auto-generated");
            assert_eq!(
                view.header("From").unwrap(),
                "Verimail <no-reply@mail.example.com>"
            );
            assert_eq!(view.header("To").unwrap(), "user@example.org");
        }
    }

    #[test]
    fn body_is_alternative_plain_then_html() {
        let raw = rendered("Acme", Lang::ZhCn);
        let view = MailView::new(&raw);
        assert!(
            view.header("Content-Type")
                .unwrap()
                .starts_with("multipart/alternative")
        );
        // Transfer-encoded, so SMTP servers without 8BITMIME take it too.
        assert!(raw.is_ascii());
    }

    #[test]
    fn only_a_mail_whose_from_domain_has_a_key_is_signed() {
        let dir = tempfile::tempdir().unwrap();
        crate::mail::dkim::keygen(
            dir.path(),
            "mail.example.com",
            "sel",
            crate::mail::dkim::KeyKind::Ed25519,
            false,
        )
        .unwrap();
        let keys = Arc::new(DkimKeys::load(dir.path(), "sel").unwrap());
        let signed = render(&settings("Acme").with_dkim(keys.clone()), &mail(Lang::EnUs))
            .unwrap()
            .formatted();
        let signature = MailView::new(&signed).header("DKIM-Signature").unwrap();
        assert!(
            signature.contains("d=mail.example.com; s=sel;"),
            "{signature}"
        );

        let other = MailSettings::new("x <no-reply@other.example>".parse().unwrap(), "Acme")
            .with_dkim(keys);
        let unsigned = render(&other, &mail(Lang::EnUs)).unwrap().formatted();
        assert_eq!(MailView::new(&unsigned).header("DKIM-Signature"), None);
    }

    fn partner_sender() -> Sender {
        Sender {
            from: "Acme Mail <hello@mail.acme.example>".parse().unwrap(),
            reply_to: Some("Acme Support <support@acme.example>".parse().unwrap()),
            brand: "A<b>&c".into(),
            support_url: Some("https://help.acme.example/verify?from=mail".into()),
        }
    }

    #[test]
    fn a_partners_sender_sets_from_reply_to_message_id_and_dkim_domain() {
        let dir = tempfile::tempdir().unwrap();
        for domain in ["mail.example.com", "mail.acme.example"] {
            crate::mail::dkim::keygen(
                dir.path(),
                domain,
                "sel",
                crate::mail::dkim::KeyKind::Ed25519,
                false,
            )
            .unwrap();
        }
        let keys = Arc::new(DkimKeys::load(dir.path(), "sel").unwrap());
        let settings = settings("Acme").with_dkim(keys);
        let raw = render_as(&settings, &partner_sender(), &mail(Lang::EnUs))
            .unwrap()
            .formatted();
        let view = MailView::new(&raw);
        // lettre quotes a display name with a space in it.
        assert_eq!(
            view.header("From").unwrap(),
            r#""Acme Mail" <hello@mail.acme.example>"#
        );
        assert_eq!(
            view.header("Reply-To").unwrap(),
            r#""Acme Support" <support@acme.example>"#
        );
        assert_eq!(
            view.header("Message-ID").unwrap(),
            "<01901234-5678-7abc-8def-0123456789ab@mail.acme.example>"
        );
        let signature = view.header("DKIM-Signature").unwrap();
        assert!(
            signature.contains("d=mail.acme.example; s=sel;"),
            "{signature}"
        );

        // A partner's From domain without a key: unsigned (and counted),
        // never signed with another domain's key.
        let keyless = Sender {
            from: "Globex <codes@mail.globex.example>".parse().unwrap(),
            ..partner_sender()
        };
        let raw = render_as(&settings, &keyless, &mail(Lang::EnUs))
            .unwrap()
            .formatted();
        assert_eq!(MailView::new(&raw).header("DKIM-Signature"), None);

        // The default sender has no Reply-To, and its own d=.
        let raw = render(&settings, &mail(Lang::EnUs)).unwrap().formatted();
        let view = MailView::new(&raw);
        assert_eq!(view.header("Reply-To"), None);
        let signature = view.header("DKIM-Signature").unwrap();
        assert!(
            signature.contains("d=mail.example.com; s=sel;"),
            "{signature}"
        );
    }

    #[test]
    fn a_partners_brand_is_escaped_in_html_only_and_its_support_url_is_in_both_parts() {
        let sender = partner_sender();
        for lang in [Lang::ZhCn, Lang::EnUs] {
            let raw = render_as(&settings("Acme"), &sender, &mail(lang))
                .unwrap()
                .formatted();
            let view = MailView::new(&raw);
            let (text, html) = (view.text().unwrap(), view.html().unwrap());
            assert!(view.subject().unwrap().contains("A<b>&c"));
            assert!(text.contains("A<b>&c"), "{text}");
            assert!(!html.contains("A<b>&c"), "{html}");
            assert!(html.contains("A&#60;b&#62;&#38;c"), "{html}");
            assert!(!text.contains("Acme") && !html.contains("Acme"));
            assert!(
                text.contains("https://help.acme.example/verify?from=mail"),
                "{text}"
            );
            assert!(
                html.contains(r#"<a href="https://help.acme.example/verify?from=mail""#),
                "{html}"
            );
        }
        // Without a support URL, no help line at all.
        let raw = rendered("Acme", Lang::EnUs);
        let view = MailView::new(&raw);
        assert!(!view.text().unwrap().contains("Need help"));
        assert!(!view.html().unwrap().contains("Need help"));
    }

    /// Not a check: a micro-measurement of what signing adds to rendering.
    /// `cargo test --release -p verimail-worker --lib signing_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "prints figures; run by hand in release mode"]
    fn signing_cost() {
        use crate::mail::dkim::{KeyKind, keygen};
        let dir = tempfile::tempdir().unwrap();
        keygen(dir.path(), "mail.example.com", "sel", KeyKind::Rsa, false).unwrap();
        keygen(dir.path(), "ed.example.com", "sel", KeyKind::Ed25519, false).unwrap();
        let keys = Arc::new(DkimKeys::load(dir.path(), "sel").unwrap());
        let rsa = settings("Acme").with_dkim(keys.clone());
        let ed = MailSettings::new("x <no-reply@ed.example.com>".parse().unwrap(), "Acme")
            .with_dkim(keys);
        let n = 2000_u32;
        for (name, settings) in [
            ("unsigned", settings("Acme")),
            ("rsa-2048", rsa),
            ("ed25519", ed),
        ] {
            let started = std::time::Instant::now();
            for _ in 0..n {
                let raw = render(&settings, &mail(Lang::ZhCn)).unwrap().formatted();
                std::hint::black_box(raw);
            }
            println!(
                "{name}: {:?} per mail (render + format)",
                started.elapsed() / n
            );
        }
    }

    #[test]
    fn bad_recipient_is_a_render_error() {
        let mut bad = mail(Lang::EnUs);
        bad.to = "not an address";
        let err = render(&settings("Acme"), &bad).unwrap_err();
        assert!(matches!(err, RenderError::Recipient(_)));
    }
}
