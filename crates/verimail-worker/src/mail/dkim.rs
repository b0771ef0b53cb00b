//! DKIM: one key per sending domain, loaded once at start; `keygen` for
//! `verimail dkim keygen`.
//!
//! Signing is `dkim_signature.rs`'s (relaxed/relaxed, with the header list
//! below, RSA by ring), held to an independent verifier (dkimpy) by
//! `tests/api/dkim.rs` on real rendered mails of both languages and both key
//! types. Key files are PKCS#8 PEM (what `keygen` and `openssl genpkey`
//! write) or PKCS#1 PEM for RSA; the `rsa` crate reads them and makes RSA
//! keys, ring signs with them.

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use lettre::Message;
use lettre::message::header::{HeaderName, HeaderValue};
use rsa::pkcs1::{DecodeRsaPrivateKey as _, EncodeRsaPrivateKey as _};

use super::dkim_signature::{Signing, SigningKey, signature_value};
use rsa::pkcs8::{EncodePublicKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;

/// `VERIMAIL_DKIM_SELECTOR`'s default.
pub const DEFAULT_SELECTOR: &str = "verimail";

/// RSA keys shorter than this are refused (RFC 8301 requires 1024 at least;
/// 2048 is what receivers expect today).
const RSA_BITS: usize = 2048;

/// The headers every signature covers. Names absent from a mail are signed
/// as absent (RFC 6376 §5.4), so `Reply-To` cannot be added on the way.
const SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Language",
    "Auto-Submitted",
    "Reply-To",
];

/// The key kinds a DKIM record can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA-SHA256, 2048-bit keys.
    Rsa,
    /// Ed25519-SHA256 (RFC 8463).
    Ed25519,
}

impl KeyKind {
    fn record_tag(self) -> &'static str {
        match self {
            Self::Rsa => "rsa",
            Self::Ed25519 => "ed25519",
        }
    }
}

/// A key file that cannot be used. The message names the file and never
/// shows its contents.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", file.display())]
pub struct KeyFileError {
    pub file: PathBuf,
    pub problem: String,
}

fn key_error(file: &Path, problem: impl Into<String>) -> KeyFileError {
    KeyFileError {
        file: file.to_path_buf(),
        problem: problem.into(),
    }
}

/// The signing keys of every sending domain, and the selector they are
/// published under.
pub struct DkimKeys {
    selector: String,
    by_domain: HashMap<String, SigningKey>,
}

/// Names the domains only: the keys must never reach a log.
impl fmt::Debug for DkimKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut domains: Vec<&str> = self.by_domain.keys().map(String::as_str).collect();
        domains.sort_unstable();
        f.debug_struct("DkimKeys")
            .field("selector", &self.selector)
            .field("domains", &domains)
            .finish()
    }
}

impl DkimKeys {
    /// No keys: every mail goes out unsigned (and is counted).
    pub fn none() -> Self {
        Self {
            selector: DEFAULT_SELECTOR.to_owned(),
            by_domain: HashMap::new(),
        }
    }

    /// Every `<domain>.pem` in `dir`. Any file of those that is not a
    /// usable key is an error naming it; other files are ignored.
    pub fn load(dir: &Path, selector: &str) -> Result<Self, KeyFileError> {
        let entries = std::fs::read_dir(dir).map_err(|e| key_error(dir, e.to_string()))?;
        let mut by_domain = HashMap::new();
        for entry in entries {
            let path = entry.map_err(|e| key_error(dir, e.to_string()))?.path();
            if path.extension().is_none_or(|e| e != "pem") {
                continue;
            }
            let Some(domain) = path.file_stem().and_then(|s| s.to_str()) else {
                return Err(key_error(&path, "the file name is not a domain"));
            };
            let domain = domain.to_ascii_lowercase();
            let pem =
                std::fs::read_to_string(&path).map_err(|e| key_error(&path, e.to_string()))?;
            let key = parse_key(&pem).map_err(|problem| key_error(&path, problem))?;
            by_domain.insert(domain, key);
        }
        Ok(Self {
            selector: selector.to_owned(),
            by_domain,
        })
    }

    pub fn selector(&self) -> &str {
        &self.selector
    }

    pub fn has_key_for(&self, domain: &str) -> bool {
        self.by_domain.contains_key(&domain.to_ascii_lowercase())
    }

    /// The domains that have a key, sorted (for the start-up log).
    pub fn domains(&self) -> Vec<&str> {
        let mut domains: Vec<&str> = self.by_domain.keys().map(String::as_str).collect();
        domains.sort_unstable();
        domains
    }

    /// Signs `message` with the key of `domain` (its From domain); `false`
    /// when there is none (or, logged, when signing failed).
    pub fn sign(&self, message: &mut Message, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        let Some(key) = self.by_domain.get(&domain) else {
            return false;
        };
        let signing = Signing {
            domain: &domain,
            selector: &self.selector,
            headers: SIGNED_HEADERS,
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        match signature_value(&message.formatted(), &signing, key) {
            Ok(value) => {
                message.headers_mut().insert_raw(HeaderValue::new(
                    HeaderName::new_from_ascii_str("DKIM-Signature"),
                    value,
                ));
                true
            }
            Err(error) => {
                tracing::error!(domain, error = %error, "DKIM signing failed; the mail goes out unsigned");
                false
            }
        }
    }
}

/// An RSA (PKCS#8 or PKCS#1) or Ed25519 (PKCS#8) private key in PEM.
fn parse_key(pem: &str) -> Result<SigningKey, String> {
    let rsa = rsa::RsaPrivateKey::from_pkcs1_pem(pem).or_else(|_| {
        use rsa::pkcs8::DecodePrivateKey as _;
        rsa::RsaPrivateKey::from_pkcs8_pem(pem)
    });
    if let Ok(rsa) = rsa {
        let bits = rsa.size() * 8;
        if bits < RSA_BITS {
            return Err(format!(
                "an RSA key of {bits} bits; DKIM keys need at least {RSA_BITS}"
            ));
        }
        let pkcs1 = rsa
            .to_pkcs1_der()
            .map_err(|e| format!("cannot re-encode the RSA key ({e})"))?;
        return ring::signature::RsaKeyPair::from_der(pkcs1.as_bytes())
            .map(SigningKey::Rsa)
            .map_err(|e| format!("an RSA key ring cannot sign with ({e})"));
    }
    if let Ok(ed25519) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
        return Ok(SigningKey::Ed25519(ed25519));
    }
    Err("not an RSA or Ed25519 private key in PEM (PKCS#8, or PKCS#1 for RSA)".to_owned())
}

/// The DNS record that publishes a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxtRecord {
    /// `<selector>._domainkey.<domain>`
    pub name: String,
    /// `v=DKIM1; k=…; p=…`
    pub value: String,
}

/// Why `keygen` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    #[error("{} exists; pass --force to replace it (the old key's DNS record then stops verifying)", .0.display())]
    Exists(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating the key: {0}")]
    Generate(String),
}

/// Makes a key for `domain` (an already checked, lower-case A-label), writes
/// it to `dir/<domain>.pem` (mode 0600; `dir` made 0700 if missing) and
/// returns the record to publish. Refuses to replace a key unless `force`.
pub fn keygen(
    dir: &Path,
    domain: &str,
    selector: &str,
    kind: KeyKind,
    force: bool,
) -> Result<TxtRecord, KeygenError> {
    let file = dir.join(format!("{domain}.pem"));
    if file.exists() && !force {
        return Err(KeygenError::Exists(file));
    }
    let mut rng = rand::rngs::OsRng;
    let (pem, public) = match kind {
        KeyKind::Rsa => {
            let key = rsa::RsaPrivateKey::new(&mut rng, RSA_BITS)
                .map_err(|e| KeygenError::Generate(e.to_string()))?;
            let pem = {
                use rsa::pkcs8::EncodePrivateKey as _;
                key.to_pkcs8_pem(LineEnding::LF)
            }
            .map_err(|e| KeygenError::Generate(e.to_string()))?;
            // RFC 6376 §3.6.1: p= is the DER SubjectPublicKeyInfo.
            let public = key
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| KeygenError::Generate(e.to_string()))?;
            (pem, public.as_bytes().to_vec())
        }
        KeyKind::Ed25519 => {
            let key = ed25519_dalek::SigningKey::generate(&mut rng);
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| KeygenError::Generate(e.to_string()))?;
            // RFC 8463 §4: p= is the bare 32-byte public key.
            (pem, key.verifying_key().to_bytes().to_vec())
        }
    };
    write_private(dir, &file, pem.as_bytes(), force)?;
    Ok(TxtRecord {
        name: format!("{selector}._domainkey.{domain}"),
        value: format!(
            "v=DKIM1; k={}; p={}",
            kind.record_tag(),
            BASE64.encode(public)
        ),
    })
}

/// Writes a private key readable by its owner alone, from the first byte:
/// the file is created 0600, never chmod-ed after being written.
fn write_private(dir: &Path, file: &Path, bytes: &[u8], force: bool) -> Result<(), KeygenError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeygenError::Io { path, source }
    };
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(io(dir))?;
    }
    // A replacement is written beside the old key and renamed over it, so a
    // worker starting meanwhile reads the old key or the new, never half.
    let target = if force {
        dir.join(format!(".{}.new", file_name(file)))
    } else {
        file.to_path_buf()
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(&target).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => KeygenError::Exists(file.to_path_buf()),
        _ => KeygenError::Io {
            path: target.clone(),
            source: e,
        },
    })?;
    out.write_all(bytes).map_err(io(&target))?;
    out.sync_all().map_err(io(&target))?;
    if force {
        std::fs::rename(&target, file).map_err(io(file))?;
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_an_owner_only_key_that_loads_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let record = keygen(&keys, "mail.example.com", "sel", KeyKind::Ed25519, false).unwrap();
        assert_eq!(record.name, "sel._domainkey.mail.example.com");
        assert!(record.value.starts_with("v=DKIM1; k=ed25519; p="));

        let file = keys.join("mail.example.com.pem");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&file), 0o600);
            assert_eq!(mode(&keys), 0o700);
        }
        let before = std::fs::read(&file).unwrap();
        let refused = keygen(&keys, "mail.example.com", "sel", KeyKind::Ed25519, false);
        assert!(
            matches!(refused, Err(KeygenError::Exists(_))),
            "{refused:?}"
        );
        assert_eq!(std::fs::read(&file).unwrap(), before);

        let replaced = keygen(&keys, "mail.example.com", "sel", KeyKind::Ed25519, true).unwrap();
        assert_ne!(replaced, record);
        assert_ne!(std::fs::read(&file).unwrap(), before);

        let loaded = DkimKeys::load(&keys, "sel").unwrap();
        assert_eq!(loaded.domains(), ["mail.example.com"]);
        assert!(!format!("{loaded:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_bad_key_file_is_named_and_its_contents_are_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("README.txt"), "not a key, not a .pem").unwrap();
        let bad = dir.path().join("bad.example.pem");
        std::fs::write(
            &bad,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let error = DkimKeys::load(dir.path(), "sel").unwrap_err();
        assert_eq!(error.file, bad);
        let said = error.to_string();
        assert!(said.starts_with(&bad.display().to_string()), "{said}");
        assert!(!said.contains("c2VjcmV0") && !said.contains('\n'), "{said}");
    }

    #[test]
    fn a_short_rsa_key_is_refused() {
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024).unwrap();
        let pem = key.to_pkcs1_pem(LineEnding::LF).unwrap();
        let problem = parse_key(&pem).err().unwrap();
        assert_eq!(
            problem,
            "an RSA key of 1024 bits; DKIM keys need at least 2048"
        );
    }

    #[test]
    fn a_missing_directory_is_named() {
        let error = DkimKeys::load(Path::new("/nonexistent/dkim"), "sel").unwrap_err();
        assert!(
            error.to_string().starts_with("/nonexistent/dkim: "),
            "{error}"
        );
    }
}
