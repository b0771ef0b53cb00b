//! The `DKIM-Signature` header of one formatted mail (RFC 6376, relaxed
//! header and body canonicalisation; RFC 8463 for Ed25519).
//!
//! Why not lettre's signer: it computes RSA signatures with the pure-Rust
//! `rsa` crate, 1.6 ms of worker CPU per mail, which cut signed throughput
//! to a third (BENCHMARKS.md, "Issue 25"); ring, already in the build
//! through rustls, signs RSA-2048 several times faster. What is signed here
//! is the mail exactly as it is sent (its formatted bytes), and
//! `tests/api/dkim.rs` holds the result to an independent verifier (dkimpy):
//! both key types, both languages, and a mail altered after signing.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::Signer as _;
use sha2::{Digest as _, Sha256};

/// A private key, ready to sign.
pub enum SigningKey {
    /// RSA-SHA256 (PKCS#1 v1.5).
    Rsa(ring::signature::RsaKeyPair),
    /// Ed25519-SHA256: Ed25519 over the SHA-256 of the signed data.
    Ed25519(ed25519_dalek::SigningKey),
}

impl SigningKey {
    fn algorithm(&self) -> &'static str {
        match self {
            Self::Rsa(_) => "rsa-sha256",
            Self::Ed25519(_) => "ed25519-sha256",
        }
    }

    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, SignError> {
        match self {
            Self::Rsa(key) => {
                let mut signature = vec![0; key.public().modulus_len()];
                key.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &ring::rand::SystemRandom::new(),
                    data,
                    &mut signature,
                )
                .map_err(|_| SignError::Crypto)?;
                Ok(signature)
            }
            Self::Ed25519(key) => Ok(key.sign(&Sha256::digest(data)).to_bytes().to_vec()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the mail has no end of headers")]
    NoBody,
    #[error("the signature could not be computed")]
    Crypto,
}

/// What a signature says besides the signature itself.
pub struct Signing<'a> {
    pub domain: &'a str,
    pub selector: &'a str,
    /// Header names, in the order signed; absent ones are signed as absent.
    pub headers: &'a [&'a str],
    /// Seconds since the epoch, for `t=`.
    pub timestamp: u64,
}

/// The value of the `DKIM-Signature` header for `formatted` (a whole mail,
/// headers and body, with CRLF line ends).
pub fn signature_value(
    formatted: &[u8],
    signing: &Signing<'_>,
    key: &SigningKey,
) -> Result<String, SignError> {
    let split = formatted
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(SignError::NoBody)?;
    let (head, body) = (&formatted[..split + 2], &formatted[split + 4..]);
    let bh = BASE64.encode(Sha256::digest(relaxed_body(body)));
    let names = signing
        .headers
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(":");
    let unsigned = format!(
        "v=1; a={}; d={}; s={}; c=relaxed/relaxed; q=dns/txt; t={}; h={names}; bh={bh}; b=",
        key.algorithm(),
        signing.domain,
        signing.selector,
        signing.timestamp,
    );

    let fields = header_fields(head);
    let mut data = Vec::with_capacity(head.len() + unsigned.len() + 32);
    // RFC 6376 §5.4.2: each name signs its last instance not yet signed.
    let mut used: Vec<(&str, usize)> = Vec::new();
    for name in signing.headers {
        let slot = match used.iter().position(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some(slot) => slot,
            None => {
                used.push((name, 0));
                used.len() - 1
            }
        };
        let seen = used[slot].1;
        used[slot].1 += 1;
        let instance = fields
            .iter()
            .rev()
            .filter(|(field_name, _)| {
                field_name
                    .trim_ascii()
                    .eq_ignore_ascii_case(name.as_bytes())
            })
            .nth(seen);
        if let Some((field_name, value)) = instance {
            relaxed_header(field_name, value, &mut data);
            data.extend_from_slice(b"\r\n");
        }
    }
    // The signature's own header, with an empty b= and no CRLF (§3.7).
    relaxed_header(b"DKIM-Signature", unsigned.as_bytes(), &mut data);
    let signature = key.sign(&data)?;
    Ok(format!("{unsigned}{}", BASE64.encode(signature)))
}

/// The header block's fields as (name, raw value with its folding).
fn header_fields(head: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut fields: Vec<(&[u8], &[u8])> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < head.len() {
        // A field ends at a CRLF not followed by whitespace (unfolded there).
        if head[i] == b'\r'
            && head.get(i + 1) == Some(&b'\n')
            && !matches!(head.get(i + 2), Some(b' ' | b'\t'))
        {
            let field = &head[start..i];
            if let Some(colon) = field.iter().position(|&b| b == b':') {
                fields.push((&field[..colon], &field[colon + 1..]));
            }
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    fields
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `name:value` in relaxed form (§3.4.2): the name lower-cased and trimmed,
/// the value unfolded, each run of whitespace one space, none at its ends.
fn relaxed_header(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.extend(name.trim_ascii().iter().map(u8::to_ascii_lowercase));
    out.push(b':');
    let unfolded = value.iter().copied().filter(|&b| b != b'\r' && b != b'\n');
    push_collapsed(unfolded, false, out);
}

/// Appends `text` with each run of whitespace as one space and none at its
/// end; a leading run is kept (as one space) only if `keep_leading`.
fn push_collapsed(text: impl Iterator<Item = u8>, keep_leading: bool, out: &mut Vec<u8>) {
    let mut pending_space = false;
    let mut started = keep_leading;
    for b in text {
        if is_wsp(b) {
            pending_space = started;
            continue;
        }
        if pending_space {
            out.push(b' ');
            pending_space = false;
        }
        out.push(b);
        started = true;
    }
}

/// The body in relaxed form (§3.4.4): each run of whitespace in a line one
/// space, none at line ends, no empty lines at the end, and a final CRLF
/// unless the body is empty.
fn relaxed_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut empty_lines = 0;
    let mut lines = body.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if lines.peek().is_none() && line.is_empty() {
            // The split after the last line break.
            break;
        }
        let mut canonical = Vec::with_capacity(line.len());
        push_collapsed(line.iter().copied(), true, &mut canonical);
        if canonical.is_empty() {
            empty_lines += 1;
            continue;
        }
        for _ in 0..empty_lines {
            out.extend_from_slice(b"\r\n");
        }
        empty_lines = 0;
        out.extend_from_slice(&canonical);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relaxed_body_follows_the_rfc_example() {
        // RFC 6376 §3.4.5.
        assert_eq!(
            relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n"),
            b" C\r\nD E\r\n".to_vec()
        );
        assert_eq!(relaxed_body(b""), b"".to_vec());
        assert_eq!(relaxed_body(b"\r\n\r\n"), b"".to_vec());
        assert_eq!(relaxed_body(b"a\r\n\r\nb"), b"a\r\n\r\nb\r\n".to_vec());
    }

    #[test]
    fn relaxed_headers_follow_the_rfc_example() {
        // RFC 6376 §3.4.5: "A: X\r\nB : Y\t\r\n\tZ  \r\n".
        let fields = header_fields(b"A: X\r\nB : Y\t\r\n\tZ  \r\n");
        let mut out = Vec::new();
        for (name, value) in fields {
            relaxed_header(name, value, &mut out);
            out.extend_from_slice(b"\r\n");
        }
        assert_eq!(out, b"a:X\r\nb:Y Z\r\n".to_vec());
    }
}
