//! Keys derived from `VERIMAIL_SECRET`, and what they protect: code digests,
//! sealed codes, sealed AK/SK secret keys and sealed webhook secrets; and the
//! digest of API tokens.
//!
//! Each purpose gets its own HKDF-SHA256 subkey, so a digest key can never be
//! used to open a sealed value and vice versa.

use crate::code::Code;
use crate::webhook::WebhookSecret;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

const NONCE_LEN: usize = 24;

/// The decoded master secret. Never printed.
#[derive(Clone)]
pub struct MasterSecret(Vec<u8>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("must be base64")]
    NotBase64,
    #[error("must decode to at least 32 bytes (got {0})")]
    TooShort(usize),
}

impl MasterSecret {
    pub const MIN_BYTES: usize = 32;

    pub fn from_base64(encoded: &str) -> Result<Self, SecretError> {
        let trimmed = encoded.trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(trimmed)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed))
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
            .map_err(|_| SecretError::NotBase64)?;
        if bytes.len() < Self::MIN_BYTES {
            return Err(SecretError::TooShort(bytes.len()));
        }
        Ok(Self(bytes))
    }

    /// A random secret for `verimail all`: codes sealed with it die with the process.
    pub fn ephemeral() -> Self {
        let mut bytes = vec![0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        Self(bytes)
    }
}

impl std::fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterSecret(<redacted>)")
    }
}

/// A sealed value could not be opened: wrong key, wrong owner or corrupted.
#[derive(Debug, thiserror::Error)]
#[error("sealed value could not be opened")]
pub struct OpenError;

/// Purpose-bound keys. Cheap to clone, never printed.
#[derive(Clone)]
pub struct Keys {
    code_digest: [u8; 32],
    code_seal: [u8; 32],
    access_key_seal: [u8; 32],
    webhook_secret_seal: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Keys {
    pub fn derive(master: &MasterSecret) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"verimail/v1"), &master.0);
        let expand = |info: &[u8]| {
            let mut out = [0u8; 32];
            // 32 bytes is far below HKDF-SHA256's 8160-byte limit.
            hk.expand(info, &mut out).map(|()| out)
        };
        let derive = |info: &[u8]| expand(info).unwrap_or([0u8; 32]);
        Self {
            code_digest: derive(b"code-digest"),
            code_seal: derive(b"code-seal"),
            access_key_seal: derive(b"access-key-seal"),
            webhook_secret_seal: derive(b"webhook-secret-seal"),
        }
    }

    /// Keyed digest of a code, bound to its dispatch so equal codes of two
    /// dispatches never share a digest.
    pub fn code_digest(&self, dispatch_id: Uuid, code: &str) -> Vec<u8> {
        let mut mac = hmac(&self.code_digest);
        mac.update(dispatch_id.as_bytes());
        mac.update(code.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// Constant-time check of a code against a stored digest.
    pub fn code_matches(&self, dispatch_id: Uuid, code: &str, digest: &[u8]) -> bool {
        let mut mac = hmac(&self.code_digest);
        mac.update(dispatch_id.as_bytes());
        mac.update(code.as_bytes());
        mac.verify_slice(digest).is_ok()
    }

    /// Encrypts a code for the worker; the dispatch id is authenticated data,
    /// so a sealed code moved to another row does not open.
    pub fn seal_code(&self, dispatch_id: Uuid, code: &str) -> Vec<u8> {
        seal(&self.code_seal, dispatch_id.as_bytes(), code.as_bytes())
    }

    pub fn open_code(&self, dispatch_id: Uuid, sealed: &[u8]) -> Result<Code, OpenError> {
        let plain = open(&self.code_seal, dispatch_id.as_bytes(), sealed)?;
        String::from_utf8(plain)
            .map(Code::from_plain)
            .map_err(|_| OpenError)
    }

    pub fn seal_access_secret(&self, access_key: &str, secret: &str) -> Vec<u8> {
        seal(
            &self.access_key_seal,
            access_key.as_bytes(),
            secret.as_bytes(),
        )
    }

    /// Seals a partner's webhook signing secret; the partner id is
    /// authenticated data, so a sealed secret moved to another partner's
    /// row does not open.
    pub fn seal_webhook_secret(&self, partner_id: Uuid, secret: &WebhookSecret) -> Vec<u8> {
        seal(
            &self.webhook_secret_seal,
            partner_id.as_bytes(),
            secret.as_bytes(),
        )
    }

    pub fn open_webhook_secret(
        &self,
        partner_id: Uuid,
        sealed: &[u8],
    ) -> Result<WebhookSecret, OpenError> {
        open(&self.webhook_secret_seal, partner_id.as_bytes(), sealed)
            .map(WebhookSecret::from_bytes)
    }

    pub fn open_access_secret(
        &self,
        access_key: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, OpenError> {
        open(&self.access_key_seal, access_key.as_bytes(), sealed)
    }
}

/// A connection URL that may carry a password (Postgres, RabbitMQ, SMTP).
/// `Debug` masks the password, so settings that hold one can be printed;
/// only `expose` hands the URL to a client library.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password (in the user info or a `password=` query
    /// parameter) replaced by `***`.
    pub fn redacted(&self) -> String {
        // A list of URLs (AMQP_URL's cluster form) holds one password each.
        // Only a comma before another scheme starts a URL: one in a password
        // or between hosts (libpq's h1,h2) does not.
        let mut urls: Vec<String> = Vec::new();
        for part in self.0.split(',') {
            match urls.last_mut() {
                Some(url) if !starts_with_scheme(part) => {
                    url.push(',');
                    url.push_str(part);
                }
                _ => urls.push(part.to_owned()),
            }
        }
        let masked = urls
            .iter()
            .map(|url| mask_userinfo_password(url))
            .collect::<Vec<_>>()
            .join(",");
        match masked.find("password=") {
            Some(at) => {
                let value = at + "password=".len();
                let end = masked[value..]
                    .find('&')
                    .map_or(masked.len(), |i| value + i);
                format!("{}***{}", &masked[..value], &masked[end..])
            }
            None => masked,
        }
    }
}

fn starts_with_scheme(part: &str) -> bool {
    part.trim_start()
        .split_once("://")
        .is_some_and(|(scheme, _)| {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        })
}

fn mask_userinfo_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    match authority[..at].find(':') {
        Some(colon) => format!(
            "{}***{}",
            &url[..scheme_end + colon + 1],
            &url[scheme_end + at..]
        ),
        None => url.to_owned(),
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// Tokens are looked up by digest, so the table never holds a usable token.
/// A token carries 256 random bits, so an unkeyed SHA-256 is enough, and the
/// CLI can issue tokens without knowing `VERIMAIL_SECRET`.
pub fn token_digest(token: &str) -> Vec<u8> {
    use sha2::Digest;
    Sha256::digest(token.as_bytes()).to_vec()
}

fn hmac(key: &[u8; 32]) -> HmacSha256 {
    // HMAC accepts keys of any length; a 32-byte key cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

fn seal(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
        .unwrap_or_default();
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
    if sealed.len() < NONCE_LEN {
        return Err(OpenError);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    XChaCha20Poly1305::new(key.into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad })
        .map_err(|_| OpenError)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::derive(&MasterSecret::from_base64(&"A".repeat(44)).expect("valid"))
    }

    #[test]
    fn short_or_garbled_secrets_are_refused() {
        assert_eq!(
            MasterSecret::from_base64("AAAA").unwrap_err(),
            SecretError::TooShort(3)
        );
        assert_eq!(
            MasterSecret::from_base64("!!!").unwrap_err(),
            SecretError::NotBase64
        );
    }

    #[test]
    fn a_digest_accepts_its_code_only_for_its_dispatch() {
        let (keys, id) = (keys(), Uuid::now_v7());
        let digest = keys.code_digest(id, "123456");
        assert!(keys.code_matches(id, "123456", &digest));
        assert!(!keys.code_matches(id, "123457", &digest));
        assert!(!keys.code_matches(Uuid::now_v7(), "123456", &digest));
    }

    #[test]
    fn a_sealed_code_opens_only_for_its_dispatch_and_hides_the_code() {
        let (keys, id) = (keys(), Uuid::now_v7());
        let sealed = keys.seal_code(id, "654321");
        assert!(!sealed.windows(6).any(|w| w == b"654321"));
        assert_eq!(
            keys.open_code(id, &sealed).expect("opens").expose(),
            "654321"
        );
        assert!(keys.open_code(Uuid::now_v7(), &sealed).is_err());
    }

    #[test]
    fn another_master_secret_cannot_open_or_match() {
        let other = Keys::derive(&MasterSecret::from_base64(&"B".repeat(44)).expect("valid"));
        let id = Uuid::now_v7();
        let sealed = keys().seal_code(id, "111111");
        assert!(other.open_code(id, &sealed).is_err());
    }

    #[test]
    fn urls_print_without_their_password() {
        for (url, shown) in [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            (
                "postgres://u:p%40ss@db/verimail",
                "postgres://u:***@db/verimail",
            ),
            (
                "smtps://user:pa:ss@mail.example.com",
                "smtps://user:***@mail.example.com",
            ),
            ("smtp://127.0.0.1:1025", "smtp://127.0.0.1:1025"),
            (
                "postgres://localhost/verimail",
                "postgres://localhost/verimail",
            ),
            (
                "postgres://who@db/x?password=y&a=b",
                "postgres://who@db/x?password=***&a=b",
            ),
            ("not a url", "not a url"),
            (
                "amqp://g:one@a:5672/%2f, amqp://g:two@b:5672/%2f",
                "amqp://g:***@a:5672/%2f, amqp://g:***@b:5672/%2f",
            ),
            (
                "postgres://u:p,q@h1:5432,h2:5432/db?target_session_attrs=read-write",
                "postgres://u:***@h1:5432,h2:5432/db?target_session_attrs=read-write",
            ),
        ] {
            let secret = SecretUrl::new(url);
            assert_eq!(secret.redacted(), shown);
            assert_eq!(format!("{secret:?}"), format!("{shown:?}"));
            assert_eq!(secret.expose(), url);
        }
    }
}
