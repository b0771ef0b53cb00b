//! Huawei Cloud SDK AK/SK request signatures (`SDK-HMAC-SHA256`).
//!
//! Partners call us with the official Huawei Cloud SDKs, so the canonical
//! request must be rebuilt byte for byte the way
//! `huaweicloudsdkcore/signer/signer.py` (3.1.219) builds it:
//!
//! ```text
//! METHOD\n
//! canonical path (percent-decoded, re-encoded, always ending in '/')\n
//! canonical query (pairs sorted, re-encoded)\n
//! name:value\n   (one line per signed header, value trimmed)
//! \n
//! signed;header;names\n
//! hex(sha256(body))
//! ```
//!
//! The string to sign is `SDK-HMAC-SHA256\n<X-Sdk-Date>\n<hex sha256 of the
//! canonical request>` and the signature is its hex HMAC-SHA256 under the SK.
//!
//! Callers must hand over what arrived on the wire: the raw (still
//! percent-encoded) path and query, the header values as UTF-8 (the SDK sends
//! UTF-8 bytes, not Latin-1), and the body bytes before any JSON parsing. On
//! HTTP/2 the `:authority` has to be passed as a `host` header.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

/// The only algorithm accepted; the SM3, ECDSA and derived (`V11-…`) variants
/// of the SDK are deliberately not supported.
pub const ALGORITHM: &str = "SDK-HMAC-SHA256";
/// Lower-cased, as it appears in `SignedHeaders`.
pub const DATE_HEADER: &str = "x-sdk-date";
/// When present with a non-empty body, the SDK signs this header's value in
/// place of the body hash.
pub const CONTENT_SHA256_HEADER: &str = "x-sdk-content-sha256";
/// Huawei Cloud's API gateway also refuses dates more than 15 minutes off.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(15 * 60);

const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

type HmacSha256 = Hmac<Sha256>;

/// The parts of an incoming request that the signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// Raw path as received, still percent-encoded, without the query.
    pub path: &'a str,
    /// Raw query string without the leading `?`.
    pub query: Option<&'a str>,
    /// Header `(name, value)` pairs as received; names in any case.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// A parsed `Authorization: SDK-HMAC-SHA256 Access=…, SignedHeaders=…, Signature=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationHeader {
    pub access_key: String,
    /// Lower-cased, in the order the client listed them (the order is signed).
    pub signed_headers: Vec<String>,
    /// 64 lower-case hex digits.
    pub signature: String,
}

impl std::fmt::Display for AuthorizationHeader {
    /// Renders the exact layout the SDK emits.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{ALGORITHM} Access={}, SignedHeaders={}, Signature={}",
            self.access_key,
            self.signed_headers.join(";"),
            self.signature
        )
    }
}

/// Why a signature was refused. The messages are returned to API clients, so
/// they name the failed check but never carry key material or the expected
/// signature.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("malformed signature: {0}")]
    Malformed(&'static str),
    #[error("unsupported signing algorithm: only {ALGORITHM} is accepted")]
    UnsupportedAlgorithm,
    #[error("X-Sdk-Date is not listed in SignedHeaders")]
    DateNotSigned,
    #[error("the X-Sdk-Date header is missing")]
    DateMissing,
    #[error("X-Sdk-Date must have the form YYYYMMDDTHHMMSSZ (UTC)")]
    DateMalformed,
    #[error("X-Sdk-Date is too far from the server's clock")]
    DateSkewed,
    #[error("the signed header `{0}` is missing from the request")]
    SignedHeaderMissing(String),
    #[error("the header `{0}` must appear only once")]
    DuplicateHeader(String),
    #[error(
        "the request body must be signed: X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD is not accepted"
    )]
    UnsignedPayload,
    #[error("X-Sdk-Content-Sha256 does not match the request body")]
    PayloadHashMismatch,
    #[error("the signature does not match the request")]
    BadSignature,
}

use SignatureError::Malformed;

/// Parses an `Authorization` header value without judging the signature.
///
/// # Errors
///
/// [`SignatureError::UnsupportedAlgorithm`] for any scheme but
/// `SDK-HMAC-SHA256`, [`SignatureError::Malformed`] for anything else that
/// does not have the SDK's shape.
pub fn parse_authorization(value: &str) -> Result<AuthorizationHeader, SignatureError> {
    let value = value.trim_matches(is_http_whitespace);
    if value.is_empty() {
        return Err(Malformed("the Authorization header is empty"));
    }
    let (algorithm, params) = value.split_once(' ').unwrap_or((value, ""));
    if algorithm != ALGORITHM {
        return Err(SignatureError::UnsupportedAlgorithm);
    }

    let mut access_key = None;
    let mut signed_headers = None;
    let mut signature = None;
    for param in params.split(',') {
        let param = param.trim_matches(is_http_whitespace);
        if param.is_empty() {
            continue;
        }
        let (key, val) = param
            .split_once('=')
            .ok_or(Malformed("Authorization parameters must be Name=value"))?;
        let slot = match key {
            "Access" => &mut access_key,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => return Err(Malformed("unknown Authorization parameter")),
        };
        if slot.replace(val).is_some() {
            return Err(Malformed("repeated Authorization parameter"));
        }
    }

    let access_key = access_key.ok_or(Malformed("Access is missing"))?;
    if !is_valid_access_key(access_key) {
        return Err(Malformed("Access is empty or contains invalid characters"));
    }
    let signed_headers =
        parse_signed_headers(signed_headers.ok_or(Malformed("SignedHeaders is missing"))?)?;
    let signature = signature.ok_or(Malformed("Signature is missing"))?;
    decode_signature(signature)?;

    Ok(AuthorizationHeader {
        access_key: access_key.to_owned(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
    })
}

/// Checks `auth` against `req` with the partner's secret key.
///
/// # Errors
///
/// The first check that fails, in this order: date signed, present,
/// well-formed and within `max_skew` of `now`; signed headers present once
/// each; body covered by the signature; signature matches.
///
/// The date is checked before the signature so that a client with a wrong
/// clock learns that rather than a generic mismatch; neither check reveals
/// anything about the key.
pub fn verify(
    req: &SignedRequest<'_>,
    auth: &AuthorizationHeader,
    secret_key: &[u8],
    now: OffsetDateTime,
    max_skew: Duration,
) -> Result<(), SignatureError> {
    if !auth.signed_headers.iter().any(|h| h == DATE_HEADER) {
        return Err(SignatureError::DateNotSigned);
    }
    let raw_date =
        python_strip(single_header(req.headers, DATE_HEADER)?.ok_or(SignatureError::DateMissing)?);
    let date = parse_sdk_date(raw_date)?;
    // A max_skew too large for time::Duration means "no limit".
    let within_skew = time::Duration::try_from(max_skew)
        .ok()
        .is_none_or(|max| (now - date).abs() <= max);
    if !within_skew {
        return Err(SignatureError::DateSkewed);
    }
    let provided = decode_signature(&auth.signature)?;

    // The SDK lets X-Sdk-Content-Sha256 stand in for the body hash, which
    // with UNSIGNED-PAYLOAD leaves the body (the e-mail address) open to
    // tampering; only a value that covers the actual body is accepted.
    let payload_hash = sdk_payload_hash(req)?;
    if payload_hash != hex_sha256(req.body) {
        return Err(if payload_hash == UNSIGNED_PAYLOAD {
            SignatureError::UnsignedPayload
        } else {
            SignatureError::PayloadHashMismatch
        });
    }

    let canonical = canonical_request(req, &auth.signed_headers, &payload_hash)?;
    let expected = compute_signature(secret_key, raw_date, &canonical);
    if bool::from(expected.ct_eq(&provided)) {
        Ok(())
    } else {
        Err(SignatureError::BadSignature)
    }
}

/// Produces the `Authorization` value the SDK would send for `req`.
///
/// Like the SDK, every header in `req.headers` is signed except names
/// containing `_` and `Authorization` itself, so pass only the headers the
/// SDK sets (`Content-Type`, `User-Agent`, `X-Sdk-Date`, `Host`,
/// `X-Domain-Id`, …), not those the HTTP stack adds later such as
/// `Content-Length`. `req.headers` must contain `X-Sdk-Date` (see
/// [`format_sdk_date`]) and should contain `Host`.
///
/// # Errors
///
/// When `X-Sdk-Date` is missing or malformed, a header is repeated, or a
/// header name or the access key cannot be written into the header.
pub fn sign(
    req: &SignedRequest<'_>,
    access_key: &str,
    secret_key: &[u8],
) -> Result<String, SignatureError> {
    let mut names: Vec<String> = req
        .headers
        .iter()
        .map(|(name, _)| name.to_ascii_lowercase())
        .filter(|name| !name.contains('_') && name != "authorization")
        .collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(SignatureError::DuplicateHeader(pair[0].clone()));
    }
    sign_with_headers(req, access_key, secret_key, names)
}

/// Formats a UTC instant the way `X-Sdk-Date` carries it.
#[must_use]
pub fn format_sdk_date(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

fn sign_with_headers(
    req: &SignedRequest<'_>,
    access_key: &str,
    secret_key: &[u8],
    signed_headers: Vec<String>,
) -> Result<String, SignatureError> {
    if !is_valid_access_key(access_key) {
        return Err(Malformed("Access is empty or contains invalid characters"));
    }
    if !signed_headers
        .iter()
        .all(|name| is_signed_header_name(name))
    {
        return Err(Malformed("a header name is not a valid HTTP token"));
    }
    let raw_date =
        python_strip(single_header(req.headers, DATE_HEADER)?.ok_or(SignatureError::DateMissing)?);
    parse_sdk_date(raw_date)?;
    let payload_hash = sdk_payload_hash(req)?;
    let canonical = canonical_request(req, &signed_headers, &payload_hash)?;
    let signature = hex::encode(compute_signature(secret_key, raw_date, &canonical));
    Ok(AuthorizationHeader {
        access_key: access_key.to_owned(),
        signed_headers,
        signature,
    }
    .to_string())
}

fn compute_signature(secret_key: &[u8], date: &str, canonical_request: &str) -> [u8; 32] {
    let string_to_sign = format!(
        "{ALGORITHM}\n{date}\n{}",
        hex_sha256(canonical_request.as_bytes())
    );
    let Ok(mut mac) = HmacSha256::new_from_slice(secret_key) else {
        unreachable!("HMAC accepts keys of any length");
    };
    mac.update(string_to_sign.as_bytes());
    mac.finalize().into_bytes().into()
}

fn canonical_request(
    req: &SignedRequest<'_>,
    signed_headers: &[String],
    payload_hash: &str,
) -> Result<String, SignatureError> {
    let mut out = String::with_capacity(256 + req.path.len() + req.query.map_or(0, str::len));
    out.push_str(&req.method.to_ascii_uppercase());
    out.push('\n');
    canonical_uri_into(&mut out, req.path)?;
    out.push('\n');
    canonical_query_into(&mut out, req.query);
    out.push('\n');
    for name in signed_headers {
        let value = single_header(req.headers, name)?
            .ok_or_else(|| SignatureError::SignedHeaderMissing(name.clone()))?;
        out.push_str(name);
        out.push(':');
        out.push_str(python_strip(value));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

/// The SDK runs `unquote` over the whole path, so `%2F` becomes a separator
/// and every other escape is normalised, then quotes each segment with only
/// `A-Za-z0-9-._~` left bare, and appends `/` unless the path already ends
/// with one.
fn canonical_uri_into(out: &mut String, path: &str) -> Result<(), SignatureError> {
    let decoded = percent_decode(path.as_bytes(), false);
    // Python would substitute U+FFFD, letting different paths share one
    // signature; no SDK can produce such a path, so refusing costs nothing.
    if std::str::from_utf8(&decoded).is_err() {
        return Err(Malformed(
            "the request path is not UTF-8 once percent-decoded",
        ));
    }
    let start = out.len();
    for (i, segment) in decoded.split(|&b| b == b'/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        percent_encode_into(out, segment);
    }
    if !out[start..].ends_with('/') {
        out.push('/');
    }
    Ok(())
}

/// The SDK sorts the decoded `(key, value)` pairs, not their encoded form,
/// and only then encodes them; bytewise order of UTF-8 equals Python's
/// code-point order.
///
/// `+` is read as a space because form-style query parsers (axum's `Query`)
/// read it so: taking it literally would let `+` and `%2B`, which the
/// application sees differently, share one signature. The Python SDK always
/// sends `%2B` and `%20`, so it is unaffected.
fn canonical_query_into(out: &mut String, query: Option<&str>) {
    let Some(query) = query else {
        return;
    };
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(key.as_bytes(), true),
                percent_decode(value.as_bytes(), true),
            )
        })
        .collect();
    pairs.sort_unstable();
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode_into(out, key);
        out.push('=');
        percent_encode_into(out, value);
    }
}

/// The SDK hashes an empty body as the empty string regardless of
/// `X-Sdk-Content-Sha256`, and otherwise lets that header replace the hash.
fn sdk_payload_hash(req: &SignedRequest<'_>) -> Result<String, SignatureError> {
    if req.body.is_empty() {
        return Ok(hex_sha256(req.body));
    }
    let declared = single_header(req.headers, CONTENT_SHA256_HEADER)?
        .map(python_strip)
        .filter(|declared| !declared.is_empty());
    Ok(declared.map_or_else(|| hex_sha256(req.body), str::to_owned))
}

/// A repeated header would make it ambiguous which value was signed (the
/// SDK keeps headers in a dict, so it never sends one twice).
fn single_header<'a>(
    headers: &[(&'a str, &'a str)],
    name: &str,
) -> Result<Option<&'a str>, SignatureError> {
    let mut matching = headers
        .iter()
        .filter(|(key, _)| key.eq_ignore_ascii_case(name));
    let found = matching.next().map(|(_, value)| *value);
    if matching.next().is_some() {
        return Err(SignatureError::DuplicateHeader(name.to_ascii_lowercase()));
    }
    Ok(found)
}

/// Strict `YYYYMMDDTHHMMSSZ`: Python's `strptime` would also take unpadded
/// fields, but then signs the re-padded form, so only the padded form can
/// be verified from the header text alone.
fn parse_sdk_date(raw: &str) -> Result<OffsetDateTime, SignatureError> {
    let bytes = raw.as_bytes();
    let well_formed = bytes.len() == 16
        && bytes[8] == b'T'
        && bytes[15] == b'Z'
        && bytes[..8]
            .iter()
            .chain(&bytes[9..15])
            .all(u8::is_ascii_digit);
    if !well_formed {
        return Err(SignatureError::DateMalformed);
    }
    let num = |range: std::ops::Range<usize>| {
        bytes[range]
            .iter()
            .fold(0_u16, |acc, d| acc * 10 + u16::from(d - b'0'))
    };
    let narrow = |v: u16| u8::try_from(v).map_err(|_| SignatureError::DateMalformed);
    let month = Month::try_from(narrow(num(4..6))?).map_err(|_| SignatureError::DateMalformed)?;
    let date = Date::from_calendar_date(i32::from(num(0..4)), month, narrow(num(6..8))?)
        .map_err(|_| SignatureError::DateMalformed)?;
    let time = Time::from_hms(
        narrow(num(9..11))?,
        narrow(num(11..13))?,
        narrow(num(13..15))?,
    )
    .map_err(|_| SignatureError::DateMalformed)?;
    Ok(PrimitiveDateTime::new(date, time).assume_utc())
}

fn parse_signed_headers(list: &str) -> Result<Vec<String>, SignatureError> {
    let mut names: Vec<String> = Vec::new();
    for name in list.split(';') {
        if !is_signed_header_name(name) {
            return Err(Malformed(
                "SignedHeaders must list lower-case header names separated by ';'",
            ));
        }
        if names.iter().any(|seen| seen == name) {
            return Err(Malformed("SignedHeaders lists a header twice"));
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

fn decode_signature(signature: &str) -> Result<[u8; 32], SignatureError> {
    let mut out = [0_u8; 32];
    hex::decode_to_slice(signature, &mut out)
        .map_err(|_| Malformed("Signature must be 64 hex digits"))?;
    Ok(out)
}

/// Kept to visible ASCII without `,` so that it survives the round trip
/// through the comma-separated header and is safe to log.
fn is_valid_access_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

/// An RFC 9110 token in lower case, as the SDK lower-cases every name.
fn is_signed_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

fn is_http_whitespace(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Python's `str.strip()`: Unicode whitespace plus the ASCII separators
/// U+001C..U+001F, which Rust does not count as whitespace.
fn python_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// Python's `unquote_to_bytes`: `%XX` in either case becomes a byte, a `%`
/// not followed by two hex digits stays literal.
fn percent_decode(input: &[u8], plus_as_space: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while let Some((&first, tail)) = rest.split_first() {
        match (first, tail) {
            (b'%', [hi, lo, after @ ..]) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                out.push((hex_value(*hi) << 4) | hex_value(*lo));
                rest = after;
                continue;
            }
            (b'+', _) if plus_as_space => out.push(b' '),
            _ => out.push(first),
        }
        rest = tail;
    }
    out
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

/// Python's `quote(s, safe='~')` over UTF-8 bytes: only `A-Za-z0-9-._~`
/// stay bare and escapes use upper-case hex.
fn percent_encode_into(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests;
