//! Turns a verification code into a complete MIME message.
//!
//! The templates live in `templates/{zh-cn,en-us}/` (subject, plain text,
//! HTML sharing `layout.html`). Only `.html` templates are HTML-escaped by
//! askama, which is what we want: the plain part must show a brand like
//! `A&B` verbatim.

use askama::Template;
use lettre::Message;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use uuid::Uuid;
use verimail_domain::Lang;

/// Sender-side configuration, fixed for the life of the worker.
#[derive(Debug, Clone)]
pub struct MailSettings {
    pub from: Mailbox,
    pub brand: String,
    /// Right-hand side of every `Message-ID`.
    pub message_id_domain: String,
}

impl MailSettings {
    /// Uses the sender's domain for `Message-ID`s, which is what receiving
    /// filters expect to see.
    pub fn new(from: Mailbox, brand: impl Into<String>) -> Self {
        let message_id_domain = from.email.domain().to_owned();
        Self {
            from,
            brand: brand.into(),
            message_id_domain,
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
}

/// Builds the message.
///
/// `Message-ID` is `<{dispatch_id}@{message_id_domain}>`, so every retry of a
/// dispatch carries the same id and receivers can drop duplicates.
pub fn render(settings: &MailSettings, mail: &CodeMail<'_>) -> Result<Message, RenderError> {
    let to: Mailbox = mail.to.parse().map_err(RenderError::Recipient)?;
    let parts = Parts::render(&settings.brand, mail)?;
    let message = Message::builder()
        .from(settings.from.clone())
        .to(to)
        .subject(parts.subject)
        .message_id(Some(format!(
            "<{}@{}>",
            mail.dispatch_id, settings.message_id_domain
        )))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Content-Language"),
            mail.lang.content_language().to_owned(),
        ))
        // RFC 3834: tells auto-responders (vacation replies, etc.) to stay quiet.
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".to_owned(),
        ))
        .multipart(MultiPart::alternative_plain_html(parts.text, parts.html))?;
    Ok(message)
}

struct Parts {
    subject: String,
    text: String,
    html: String,
}

impl Parts {
    fn render(brand: &str, mail: &CodeMail<'_>) -> Result<Self, askama::Error> {
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
                }
                .render()?,
                ZhHtml {
                    brand,
                    code,
                    minutes,
                    html_lang,
                }
                .render()?,
            ),
            Lang::EnUs => (
                EnSubject { brand }.render()?,
                EnText {
                    brand,
                    code,
                    minutes,
                }
                .render()?,
                EnHtml {
                    brand,
                    code,
                    minutes,
                    html_lang,
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
}

#[derive(Template)]
#[template(path = "zh-cn/body.html")]
struct ZhHtml<'a> {
    brand: &'a str,
    code: &'a str,
    minutes: u32,
    html_lang: &'a str,
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
}

#[derive(Template)]
#[template(path = "en-us/body.html")]
struct EnHtml<'a> {
    brand: &'a str,
    code: &'a str,
    minutes: u32,
    html_lang: &'a str,
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
    fn bad_recipient_is_a_render_error() {
        let mut bad = mail(Lang::EnUs);
        bad.to = "not an address";
        let err = render(&settings("Acme"), &bad).unwrap_err();
        assert!(matches!(err, RenderError::Recipient(_)));
    }
}
