//! Server-side verification of AWS SigV4 presigned WebSocket URLs (`GET /mqtt?X-Amz-...`), as
//! AWS IoT Core's WebSocket endpoint does it for the service `iotdevicegateway`.
//!
//! Any valid query-string SigV4 presign is accepted, not one client's shape:
//! - the signed headers are whatever `X-Amz-SignedHeaders` names (`host`, `connection;host`,
//!   ...), canonicalized from the request's actual header values;
//! - `X-Amz-Expires` is optional (the AWS CRT signer omits it);
//! - `X-Amz-Security-Token` may be signed in (part of the canonical query, botocore with
//!   temporary credentials) or appended after signing (excluded from it, as AWS IoT wants and
//!   aws-sigv4 / the AWS CRT produce): both are tried;
//! - the payload hash may be the SHA-256 of the empty body (botocore, aws-sigv4, the AWS CRT)
//!   or `UNSIGNED-PAYLOAD` (the S3 convention some hand-written signers copy): both are tried.
//!
//! Rejections say what was wrong for the logs and never carry the signature, the secret access
//! key or the session token. Signatures and tokens are compared in constant time.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use percent_encoding::{percent_decode_str, percent_encode};
use ring::{digest, hmac};

use crate::core::auth::uri::UNRESERVED;

/// The SigV4 service name of AWS IoT's data plane.
pub const SERVICE: &str = "iotdevicegateway";
/// The only signing algorithm AWS IoT accepts.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far the signing time may be from the server's clock (AWS IoT: 5 minutes).
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);
/// The longest `X-Amz-Expires` SigV4 allows (7 days).
pub const MAX_EXPIRES_SECS: u64 = 604_800;

/// The SHA-256 of the empty string, the payload hash of a body-less GET.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// The payload hash S3-style presigners use instead.
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

const P_ALGORITHM: &str = "X-Amz-Algorithm";
const P_CREDENTIAL: &str = "X-Amz-Credential";
const P_DATE: &str = "X-Amz-Date";
const P_EXPIRES: &str = "X-Amz-Expires";
const P_SIGNED_HEADERS: &str = "X-Amz-SignedHeaders";
const P_SIGNATURE: &str = "X-Amz-Signature";
const P_TOKEN: &str = "X-Amz-Security-Token";

/// The head of an HTTP request as the server read it.
///
/// `Debug` shows the method, the path and the names of the headers and query parameters, never
/// their values (they carry signatures, tokens and authorizer credentials).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HttpRequestHead {
    /// The request method, as received (`GET`).
    pub method: String,
    /// The request path without the query (`/mqtt`), still percent-encoded as received.
    pub path: String,
    /// The raw query string, without the leading `?` (empty when there is none).
    pub query: String,
    /// The header fields in the order received, names as received (compare them
    /// case-insensitively), values with surrounding whitespace removed.
    pub headers: Vec<(String, String)>,
}

impl HttpRequestHead {
    /// The first value of header `name` (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).next()
    }

    /// Every value of header `name` (case-insensitive), in the order received.
    pub fn header_values<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The query parameters, percent-decoded (`+` stays a plus sign, as RFC 3986 has it; bytes
    /// that are not UTF-8 become U+FFFD), in the order received. A parameter without `=` has
    /// an empty value; empty segments (`a=1&&b=2`) are skipped.
    #[must_use]
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        raw_query_pairs(&self.query)
            .map(|(n, v)| (decode_lossy(n), decode_lossy(v)))
            .collect()
    }
}

impl fmt::Debug for HttpRequestHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let query_names: Vec<&str> = raw_query_pairs(&self.query).map(|(n, _)| n).collect();
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("HttpRequestHead")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query_names", &query_names)
            .field("header_names", &header_names)
            .finish()
    }
}

/// What the core knows about an access key id: its secret and, for temporary credentials, the
/// session token requests must carry. `Debug` shows neither.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret {
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token registered with the key, if any.
    pub session_token: Option<String>,
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningSecret")
            .field("secret_access_key", &"***")
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Why a presigned URL was refused, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// A parameter is missing, duplicated or malformed, or a signed header is absent.
    Malformed,
    /// The credential scope names another service than `iotdevicegateway`.
    WrongService,
    /// No secret is registered for the access key id.
    UnknownAccessKey,
    /// The signing time is later than now plus the allowed clock skew.
    ClockSkew,
    /// The URL is past `X-Amz-Date` + `X-Amz-Expires` (or past the clock skew without it).
    Expired,
    /// The session token is missing, does not match, or is given for long-term credentials.
    SessionToken,
    /// The signature does not match the request.
    SignatureMismatch,
}

/// Why a presigned URL was refused: a reason fit for logs, never the signature, the secret or
/// the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigV4Rejection {
    kind: RejectionKind,
    reason: String,
}

impl SigV4Rejection {
    fn new(kind: RejectionKind, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason.into(),
        }
    }

    fn malformed(reason: impl Into<String>) -> Self {
        Self::new(RejectionKind::Malformed, reason)
    }

    /// The kind of failure.
    #[must_use]
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// The reason, for logs.
    #[must_use]
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for SigV4Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigV4 presigned URL refused: {}", self.reason)
    }
}

impl std::error::Error for SigV4Rejection {}

/// Verifies an AWS SigV4 presigned WebSocket URL for the service `iotdevicegateway` and returns
/// the access key id (the principal).
///
/// `lookup` gives the secret registered for an access key id; `now` is the server's clock.
///
/// # Errors
/// A [`SigV4Rejection`] saying what was wrong (see [`RejectionKind`]).
pub fn verify_presigned(
    head: &HttpRequestHead,
    lookup: &dyn Fn(&str) -> Option<SigningSecret>,
    now: SystemTime,
) -> Result<String, SigV4Rejection> {
    let params = QueryParams::parse(&head.query);
    let algorithm = params.required(P_ALGORITHM)?;
    if algorithm != ALGORITHM {
        return Err(SigV4Rejection::malformed(format!(
            "unsupported algorithm {algorithm:?} (only {ALGORITHM})"
        )));
    }
    let amz_date = params.required(P_DATE)?;
    let signed_at = parse_amz_date(&amz_date)?;
    let scope = CredentialScope::parse(&params.required(P_CREDENTIAL)?, &amz_date)?;
    check_time(signed_at, params.optional(P_EXPIRES)?.as_deref(), now)?;
    let signature = decode_signature(&params.required(P_SIGNATURE)?)?;
    let signed_headers = params.required(P_SIGNED_HEADERS)?;
    let token = params.optional(P_TOKEN)?;

    let secret = lookup(&scope.access_key_id).ok_or_else(|| {
        SigV4Rejection::new(
            RejectionKind::UnknownAccessKey,
            format!("unknown access key id {:?}", scope.access_key_id),
        )
    })?;
    check_session_token(&secret, token.as_deref(), &scope.access_key_id)?;

    let canonical_headers = canonical_headers(head, &signed_headers)?;
    let canonical_uri = canonical_uri(&head.path);
    let key = signing_key(&secret.secret_access_key, &scope);
    let token_variants: &[bool] = if token.is_some() {
        &[true, false]
    } else {
        &[false]
    };
    for &include_token in token_variants {
        let query = params.canonical_query(include_token);
        for payload_hash in [EMPTY_SHA256, UNSIGNED_PAYLOAD] {
            let canonical_request = format!(
                "{}\n{canonical_uri}\n{query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
                head.method
            );
            let to_sign = string_to_sign(&amz_date, &scope, &canonical_request);
            if hmac::verify(&key, to_sign.as_bytes(), &signature).is_ok() {
                return Ok(scope.access_key_id);
            }
        }
    }
    Err(SigV4Rejection::new(
        RejectionKind::SignatureMismatch,
        format!(
            "the signature does not match the request for access key id {:?} \
             (wrong secret, a modified URL or a different Host)",
            scope.access_key_id
        ),
    ))
}

/// The SigV4 query parameters, raw and decoded.
struct QueryParams {
    /// (decoded name, decoded value) as bytes, in the order received.
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl QueryParams {
    fn parse(query: &str) -> Self {
        let pairs = raw_query_pairs(query)
            .map(|(n, v)| {
                (
                    percent_decode_str(n).collect::<Vec<u8>>(),
                    percent_decode_str(v).collect::<Vec<u8>>(),
                )
            })
            .collect();
        Self { pairs }
    }

    /// The single value of `name`, if present.
    fn optional(&self, name: &str) -> Result<Option<String>, SigV4Rejection> {
        let mut found = self
            .pairs
            .iter()
            .filter(|(n, _)| n.as_slice() == name.as_bytes());
        let first = found.next();
        if found.next().is_some() {
            return Err(SigV4Rejection::malformed(format!(
                "{name} is given more than once"
            )));
        }
        match first {
            None => Ok(None),
            Some((_, v)) => String::from_utf8(v.clone())
                .map(Some)
                .map_err(|_| SigV4Rejection::malformed(format!("{name} is not UTF-8"))),
        }
    }

    fn required(&self, name: &str) -> Result<String, SigV4Rejection> {
        self.optional(name)?
            .ok_or_else(|| SigV4Rejection::malformed(format!("{name} is missing")))
    }

    /// Every parameter but the signature (and the session token unless `include_token`),
    /// re-encoded per SigV4 and sorted by name then value.
    fn canonical_query(&self, include_token: bool) -> String {
        let mut encoded: Vec<(String, String)> = self
            .pairs
            .iter()
            .filter(|(n, _)| {
                n.as_slice() != P_SIGNATURE.as_bytes()
                    && (include_token || n.as_slice() != P_TOKEN.as_bytes())
            })
            .map(|(n, v)| {
                (
                    percent_encode(n, UNRESERVED).to_string(),
                    percent_encode(v, UNRESERVED).to_string(),
                )
            })
            .collect();
        encoded.sort();
        encoded
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// `X-Amz-Credential`: `<access key id>/<yyyymmdd>/<region>/<service>/aws4_request`.
struct CredentialScope {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
}

impl CredentialScope {
    fn parse(credential: &str, amz_date: &str) -> Result<Self, SigV4Rejection> {
        let parts: Vec<&str> = credential.split('/').collect();
        let [access_key_id, date, region, service, terminator] = parts.as_slice() else {
            return Err(SigV4Rejection::malformed(
                "X-Amz-Credential is not <access key id>/<date>/<region>/<service>/aws4_request",
            ));
        };
        if access_key_id.is_empty() || region.is_empty() || *terminator != "aws4_request" {
            return Err(SigV4Rejection::malformed(
                "X-Amz-Credential is not <access key id>/<date>/<region>/<service>/aws4_request",
            ));
        }
        if *service != SERVICE {
            return Err(SigV4Rejection::new(
                RejectionKind::WrongService,
                format!("the URL is signed for service {service:?}, not {SERVICE:?}"),
            ));
        }
        if amz_date.get(..8) != Some(*date) {
            return Err(SigV4Rejection::malformed(
                "the X-Amz-Credential date is not the day of X-Amz-Date",
            ));
        }
        Ok(Self {
            access_key_id: (*access_key_id).to_owned(),
            date: (*date).to_owned(),
            region: (*region).to_owned(),
            service: (*service).to_owned(),
        })
    }

    fn as_string(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// Splits a raw query into (raw name, raw value), skipping empty segments.
fn raw_query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|s| s.split_once('=').unwrap_or((s, "")))
}

fn decode_lossy(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Parses `yyyymmddThhmmssZ` (UTC).
fn parse_amz_date(s: &str) -> Result<SystemTime, SigV4Rejection> {
    let bad = || SigV4Rejection::malformed("X-Amz-Date is not yyyymmddThhmmssZ");
    let b = s.as_bytes();
    if b.len() != 16 || b.get(8) != Some(&b'T') || b.get(15) != Some(&b'Z') {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<u64, SigV4Rejection> {
        let digits = s.get(range).ok_or_else(bad)?;
        if !digits.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        digits.parse::<u64>().map_err(|_| bad())
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if year < 1970
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let days = days_since_epoch(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

fn is_leap(year: u64) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given date (year ≥ 1970; test-scale loop, at most ~8000 steps).
fn days_since_epoch(year: u64, month: u64, day: u64) -> u64 {
    let mut days = 0;
    for y in 1970..year {
        days += if is_leap(y) { 366 } else { 365 };
    }
    for m in 1..month {
        days += days_in_month(year, m);
    }
    days + day - 1
}

/// The signing time must not be in the future beyond the skew, and the URL must still be valid:
/// until `X-Amz-Date` + `X-Amz-Expires` (+ skew), or + skew alone without `X-Amz-Expires`.
fn check_time(
    signed_at: SystemTime,
    expires: Option<&str>,
    now: SystemTime,
) -> Result<(), SigV4Rejection> {
    if signed_at > now + CLOCK_SKEW {
        return Err(SigV4Rejection::new(
            RejectionKind::ClockSkew,
            "X-Amz-Date is more than 5 minutes in the future (check the client's clock)",
        ));
    }
    let lifetime = match expires {
        None => Duration::ZERO,
        Some(e) => {
            let secs = e
                .parse::<u64>()
                .ok()
                .filter(|s| (1..=MAX_EXPIRES_SECS).contains(s))
                .ok_or_else(|| {
                    SigV4Rejection::malformed(format!(
                        "X-Amz-Expires must be a whole number of seconds from 1 to {MAX_EXPIRES_SECS}"
                    ))
                })?;
            Duration::from_secs(secs)
        }
    };
    if now > signed_at + lifetime + CLOCK_SKEW {
        let why = if expires.is_some() {
            "the URL has expired (X-Amz-Date + X-Amz-Expires is past)"
        } else {
            "the URL has expired (no X-Amz-Expires, and X-Amz-Date is more than 5 minutes old)"
        };
        return Err(SigV4Rejection::new(RejectionKind::Expired, why));
    }
    Ok(())
}

/// `X-Amz-Signature`: 64 hex digits.
fn decode_signature(hex: &str) -> Result<Vec<u8>, SigV4Rejection> {
    let bad = || SigV4Rejection::malformed("X-Amz-Signature is not 64 hex digits");
    if hex.len() != 64 {
        return Err(bad());
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

/// A registered token must be presented (and match); no token may be presented for keys
/// registered without one.
fn check_session_token(
    secret: &SigningSecret,
    presented: Option<&str>,
    access_key_id: &str,
) -> Result<(), SigV4Rejection> {
    let reject = |why: &str| {
        Err(SigV4Rejection::new(
            RejectionKind::SessionToken,
            format!("{why} (access key id {access_key_id:?})"),
        ))
    };
    match (&secret.session_token, presented) {
        (None, None) => Ok(()),
        (None, Some(_)) => reject("a session token was given for long-term credentials"),
        (Some(_), None) => reject("the session token (X-Amz-Security-Token) is missing"),
        (Some(expected), Some(given)) => {
            if constant_time_eq(expected.as_bytes(), given.as_bytes()) {
                Ok(())
            } else {
                reject("the session token does not match")
            }
        }
    }
}

/// Compares two secrets without leaking where they differ: both are MACed under a fresh random
/// key and the tags compared by `hmac::verify` (constant time).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let rng = ring::rand::SystemRandom::new();
    let Ok(key) = hmac::Key::generate(hmac::HMAC_SHA256, &rng) else {
        return false;
    };
    let tag = hmac::sign(&key, a);
    hmac::verify(&key, b, tag.as_ref()).is_ok()
}

/// `name:value\n` for every signed header, values trimmed with inner whitespace runs collapsed
/// and repeated headers joined with `,`.
fn canonical_headers(
    head: &HttpRequestHead,
    signed_headers: &str,
) -> Result<String, SigV4Rejection> {
    let names: Vec<&str> = signed_headers.split(';').collect();
    if names.iter().any(|n| n.is_empty()) {
        return Err(SigV4Rejection::malformed(
            "X-Amz-SignedHeaders has an empty header name",
        ));
    }
    if !names.iter().any(|n| n.eq_ignore_ascii_case("host")) {
        return Err(SigV4Rejection::malformed(
            "X-Amz-SignedHeaders must include host",
        ));
    }
    let mut out = String::new();
    for name in names {
        let values: Vec<String> = head
            .header_values(name)
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return Err(SigV4Rejection::malformed(format!(
                "the signed header {name:?} is not in the request"
            )));
        }
        out.push_str(&name.to_ascii_lowercase());
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    Ok(out)
}

/// The SigV4 canonical URI of a (non-S3) request: the path with `.`/`..` segments resolved,
/// each segment URI-encoded once more (so a received `%2F` is signed as `%252F`, as botocore
/// and aws-sigv4 do).
fn canonical_uri(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/').skip(1) {
        match segment {
            "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let encoded: Vec<String> = segments
        .iter()
        .map(|s| percent_encode(s.as_bytes(), UNRESERVED).to_string())
        .collect();
    format!("/{}", encoded.join("/"))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

/// The SigV4 signing key for the scope.
fn signing_key(secret_access_key: &str, scope: &CredentialScope) -> hmac::Key {
    let k_date = hmac_sha256(
        format!("AWS4{secret_access_key}").as_bytes(),
        scope.date.as_bytes(),
    );
    let k_region = hmac_sha256(k_date.as_ref(), scope.region.as_bytes());
    let k_service = hmac_sha256(k_region.as_ref(), scope.service.as_bytes());
    let k_signing = hmac_sha256(k_service.as_ref(), b"aws4_request");
    hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn string_to_sign(amz_date: &str, scope: &CredentialScope, canonical_request: &str) -> String {
    let hash = digest::digest(&digest::SHA256, canonical_request.as_bytes());
    format!(
        "{ALGORITHM}\n{amz_date}\n{}\n{}",
        scope.as_string(),
        hex(hash.as_ref())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::auth::sigv4::{presign_url, AwsCredentials};
    use crate::core::secret::Secret;

    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const TOKEN: &str = "FQoGZXIvYXdzE//+tok=en/with+chars==";

    /// 2024-01-02T03:04:05Z, the signing time of every fixed vector below.
    fn signed_at() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_704_164_645)
    }

    fn lookup_with(token: Option<&'static str>) -> impl Fn(&str) -> Option<SigningSecret> {
        move |akid: &str| {
            (akid == AKID).then(|| SigningSecret {
                secret_access_key: SECRET.into(),
                session_token: token.map(str::to_owned),
            })
        }
    }

    /// The head a WebSocket client sends for `url` (`Host` = the URL's authority).
    fn head_for(url: &str, extra: &[(&str, &str)]) -> HttpRequestHead {
        let rest = url.split_once("://").unwrap().1;
        let (authority, path_query) = rest.split_at(rest.find('/').unwrap());
        let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
        let mut headers = vec![("Host".to_owned(), authority.to_owned())];
        headers.extend(
            extra
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
        );
        HttpRequestHead {
            method: "GET".into(),
            path: path.into(),
            query: query.into(),
            headers,
        }
    }

    fn verify(
        head: &HttpRequestHead,
        token: Option<&'static str>,
        now: SystemTime,
    ) -> Result<String, SigV4Rejection> {
        verify_presigned(head, &lookup_with(token), now)
    }

    fn kind(r: Result<String, SigV4Rejection>) -> RejectionKind {
        r.unwrap_err().kind()
    }

    fn our_client_url(token: Option<&str>, port: u16) -> String {
        let creds = AwsCredentials {
            access_key_id: AKID.into(),
            secret_access_key: Secret::new(SECRET.into()),
            session_token: token.map(|t| Secret::new(t.to_owned())),
            expiry: None,
        };
        presign_url(
            "localhost",
            port,
            "us-east-1",
            &creds,
            signed_at(),
            Duration::from_secs(300),
        )
        .unwrap()
    }

    // botocore 1.43.11: SigV4QueryAuth(Credentials(AKID, SECRET[, TOKEN]), "iotdevicegateway",
    // "us-east-1", expires=300) on GET https://localhost:8883/mqtt, get_current_datetime patched
    // to 2024-01-02T03:04:05 (the same URL is produced for http://).
    const BOTOCORE_NO_TOKEN: &str = "wss://localhost:8883/mqtt?X-Amz-Algorithm=AWS4-HMAC-SHA256\
        &X-Amz-Credential=AKIDEXAMPLE%2F20240102%2Fus-east-1%2Fiotdevicegateway%2Faws4_request\
        &X-Amz-Date=20240102T030405Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host\
        &X-Amz-Signature=fa5d80ff8cf1864a17aa20ddeca533e573b088aaaa9500337c181acb90ab0527";
    /// botocore with a token-bearing Credentials: the token is signed in, before the signature.
    const BOTOCORE_TOKEN_SIGNED: &str =
        "wss://localhost:8883/mqtt?X-Amz-Algorithm=AWS4-HMAC-SHA256\
        &X-Amz-Credential=AKIDEXAMPLE%2F20240102%2Fus-east-1%2Fiotdevicegateway%2Faws4_request\
        &X-Amz-Date=20240102T030405Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host\
        &X-Amz-Security-Token=FQoGZXIvYXdzE%2F%2F%2Btok%3Den%2Fwith%2Bchars%3D%3D\
        &X-Amz-Signature=0c50dac3370082aa7bdb0c393a10f326d5033f3cc41fd2935e4aefbdc22591ad";

    // awscrt 0.38.1: aws_sign_request on the WebSocket handshake request (Host: localhost,
    // Upgrade, Connection: Upgrade, Sec-WebSocket-Key/Version/Protocol) with
    // AwsSigningConfig(V4, HTTP_REQUEST_QUERY_PARAMS, region us-east-1, service
    // iotdevicegateway, omit_session_token=True, date 2024-01-02T03:04:05Z), as the
    // awsiotsdk's websockets_with_default_aws_signing does: no X-Amz-Expires, `connection;host`
    // signed, the unsigned token placed before the signature.
    const AWSCRT_PATH: &str = "/mqtt?X-Amz-Algorithm=AWS4-HMAC-SHA256\
        &X-Amz-Credential=AKIDEXAMPLE%2F20240102%2Fus-east-1%2Fiotdevicegateway%2Faws4_request\
        &X-Amz-Date=20240102T030405Z&X-Amz-SignedHeaders=connection%3Bhost\
        &X-Amz-Security-Token=FQoGZXIvYXdzE%2F%2F%2Btok%3Den%2Fwith%2Bchars%3D%3D\
        &X-Amz-Signature=3ace530c849669faee80be94205e531aa8225bf513d502094182e9f1fcb938ed";

    fn awscrt_head() -> HttpRequestHead {
        let (path, query) = AWSCRT_PATH.split_once('?').unwrap();
        HttpRequestHead {
            method: "GET".into(),
            path: path.into(),
            query: query.into(),
            headers: [
                ("Host", "localhost"),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Protocol", "mqtt"),
            ]
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        }
    }

    #[test]
    fn our_clients_presign_round_trips_with_and_without_token() {
        let now = signed_at() + Duration::from_secs(10);
        let plain = head_for(&our_client_url(None, 8883), &[]);
        assert_eq!(verify(&plain, None, now).unwrap(), AKID);
        let with_token = head_for(&our_client_url(Some(TOKEN), 8883), &[]);
        assert_eq!(verify(&with_token, Some(TOKEN), now).unwrap(), AKID);
        // Port 443: the client leaves the port out of both the URL and the signed host.
        let default_port = head_for(&our_client_url(Some(TOKEN), 443), &[]);
        assert_eq!(default_port.header("host"), Some("localhost"));
        assert_eq!(verify(&default_port, Some(TOKEN), now).unwrap(), AKID);
    }

    #[test]
    fn botocore_vectors_verify() {
        let now = signed_at() + Duration::from_secs(200);
        let head = head_for(BOTOCORE_NO_TOKEN, &[("Connection", "Upgrade")]);
        assert_eq!(verify(&head, None, now).unwrap(), AKID);
        let head = head_for(BOTOCORE_TOKEN_SIGNED, &[]);
        assert_eq!(verify(&head, Some(TOKEN), now).unwrap(), AKID);
    }

    #[test]
    fn awscrt_vector_verifies() {
        let now = signed_at() + Duration::from_secs(60);
        assert_eq!(verify(&awscrt_head(), Some(TOKEN), now).unwrap(), AKID);
        // `connection` is signed: another Connection value breaks the signature.
        let mut head = awscrt_head();
        head.headers[2].1 = "keep-alive, Upgrade".into();
        assert_eq!(
            kind(verify(&head, Some(TOKEN), now)),
            RejectionKind::SignatureMismatch
        );
        // ... and without it the request is malformed.
        let mut head = awscrt_head();
        head.headers.remove(2);
        let err = verify(&head, Some(TOKEN), now).unwrap_err();
        assert_eq!(err.kind(), RejectionKind::Malformed);
        assert!(err.reason().contains("connection"), "{err}");
    }

    #[test]
    fn no_expires_means_five_minutes_of_skew() {
        let head = awscrt_head();
        assert!(verify(&head, Some(TOKEN), signed_at() + Duration::from_secs(300)).is_ok());
        assert_eq!(
            kind(verify(
                &head,
                Some(TOKEN),
                signed_at() + Duration::from_secs(301)
            )),
            RejectionKind::Expired
        );
    }

    #[test]
    fn unsigned_payload_hash_is_accepted() {
        // Re-sign the botocore vector's canonical request with UNSIGNED-PAYLOAD.
        let mut head = head_for(BOTOCORE_NO_TOKEN, &[]);
        let params = QueryParams::parse(&head.query);
        let scope =
            CredentialScope::parse(&params.required(P_CREDENTIAL).unwrap(), "20240102T030405Z")
                .unwrap();
        let canonical = format!(
            "GET\n/mqtt\n{}\nhost:localhost:8883\n\nhost\n{UNSIGNED_PAYLOAD}",
            params.canonical_query(false)
        );
        let sts = string_to_sign("20240102T030405Z", &scope, &canonical);
        let sig = hmac::sign(&signing_key(SECRET, &scope), sts.as_bytes());
        let old = head
            .query
            .rsplit_once("X-Amz-Signature=")
            .unwrap()
            .0
            .to_owned();
        head.query = format!("{old}X-Amz-Signature={}", hex(sig.as_ref()));
        assert_eq!(verify(&head, None, signed_at()).unwrap(), AKID);
    }

    #[test]
    fn wrong_secret_and_unknown_key_are_refused() {
        let head = head_for(BOTOCORE_NO_TOKEN, &[]);
        let wrong = |akid: &str| {
            (akid == AKID).then(|| SigningSecret {
                secret_access_key: "not-the-secret".into(),
                session_token: None,
            })
        };
        let err = verify_presigned(&head, &wrong, signed_at()).unwrap_err();
        assert_eq!(err.kind(), RejectionKind::SignatureMismatch);
        let none = |_: &str| None;
        let err = verify_presigned(&head, &none, signed_at()).unwrap_err();
        assert_eq!(err.kind(), RejectionKind::UnknownAccessKey);
        assert!(err.to_string().contains(AKID), "{err}");
    }

    #[test]
    fn tampering_is_refused() {
        let now = signed_at();
        let url = BOTOCORE_NO_TOKEN;
        // Another expiry, another date, an extra parameter, another host, another path.
        for tampered in [
            url.replace("X-Amz-Expires=300", "X-Amz-Expires=301"),
            url.replace("T030405Z", "T030406Z"),
            format!("{url}&extra=1"),
            url.replace("localhost:8883", "localhost:8884"),
            url.replace("/mqtt?", "/other?"),
        ] {
            let head = head_for(&tampered, &[]);
            assert_eq!(
                kind(verify(&head, None, now)),
                RejectionKind::SignatureMismatch,
                "{tampered}"
            );
        }
        let flipped = url.replace("fa5d80ff", "fa5d80fe");
        assert_eq!(
            kind(verify(&head_for(&flipped, &[]), None, now)),
            RejectionKind::SignatureMismatch
        );
        // Duplicated or missing parameters are malformed.
        for bad in [
            format!("{url}&X-Amz-Date=20240102T030405Z"),
            url.replace("X-Amz-Algorithm=AWS4-HMAC-SHA256&", ""),
            url.replace("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=upgrade"),
            url.replace("fa5d80ff", "zz5d80ff"),
            url.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1"),
            url.replace("X-Amz-Expires=300", "X-Amz-Expires=0"),
            url.replace("T030405Z", "T250405Z"),
        ] {
            assert_eq!(
                kind(verify(&head_for(&bad, &[]), None, now)),
                RejectionKind::Malformed,
                "{bad}"
            );
        }
    }

    #[test]
    fn expiry_and_clock_skew() {
        let head = head_for(BOTOCORE_NO_TOKEN, &[]);
        // Valid until date + 300 s + 5 min skew.
        assert!(verify(&head, None, signed_at() + Duration::from_secs(600)).is_ok());
        assert_eq!(
            kind(verify(&head, None, signed_at() + Duration::from_secs(601))),
            RejectionKind::Expired
        );
        // Signed up to 5 minutes in the future is tolerated, not more.
        assert!(verify(&head, None, signed_at() - Duration::from_secs(300)).is_ok());
        assert_eq!(
            kind(verify(&head, None, signed_at() - Duration::from_secs(301))),
            RejectionKind::ClockSkew
        );
    }

    #[test]
    fn session_token_rules() {
        let now = signed_at();
        // Registered with a token: the request must carry it.
        let plain = head_for(&our_client_url(None, 8883), &[]);
        assert_eq!(
            kind(verify(&plain, Some(TOKEN), now)),
            RejectionKind::SessionToken
        );
        // The wrong token.
        let url = our_client_url(Some(TOKEN), 8883);
        let wrong = head_for(&url.replace("tok%3Den", "tok%3DEN"), &[]);
        assert_eq!(
            kind(verify(&wrong, Some(TOKEN), now)),
            RejectionKind::SessionToken
        );
        // Registered without a token: a token in the URL is refused.
        let with_token = head_for(&url, &[]);
        let err = verify(&with_token, None, now).unwrap_err();
        assert_eq!(err.kind(), RejectionKind::SessionToken);
        assert!(!err.to_string().contains("FQoG"), "{err}");
    }

    #[test]
    fn wrong_service_is_refused() {
        let url = BOTOCORE_NO_TOKEN.replace("%2Fiotdevicegateway%2F", "%2Fexecute-api%2F");
        assert_eq!(
            kind(verify(&head_for(&url, &[]), None, signed_at())),
            RejectionKind::WrongService
        );
    }

    #[test]
    fn rejections_and_debug_never_show_secrets() {
        let head = head_for(BOTOCORE_TOKEN_SIGNED, &[]);
        let wrong = |_: &str| {
            Some(SigningSecret {
                secret_access_key: "other".into(),
                session_token: Some(TOKEN.into()),
            })
        };
        let err = verify_presigned(&head, &wrong, signed_at()).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(
            !text.contains("0c50dac3") && !text.contains("FQoG"),
            "{text}"
        );
        let d = format!("{head:?}");
        assert!(d.contains("X-Amz-Signature") && d.contains("Host"), "{d}");
        assert!(!d.contains("0c50dac3") && !d.contains("FQoG"), "{d}");
        let s = SigningSecret {
            secret_access_key: SECRET.into(),
            session_token: Some(TOKEN.into()),
        };
        let d = format!("{s:?}");
        assert!(!d.contains(SECRET) && !d.contains(TOKEN), "{d}");
    }

    #[test]
    fn amz_date_parsing() {
        assert_eq!(parse_amz_date("20240102T030405Z").unwrap(), signed_at());
        assert_eq!(parse_amz_date("19700101T000000Z").unwrap(), UNIX_EPOCH);
        assert_eq!(
            parse_amz_date("20240229T000000Z").unwrap(),
            UNIX_EPOCH + Duration::from_secs(1_709_164_800)
        );
        for bad in [
            "20230229T000000Z",
            "2024010T030405Z",
            "20240102 030405Z",
            "2024+102T030405Z",
            "20241302T030405Z",
            "20240102T030405",
            "",
        ] {
            assert!(parse_amz_date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn canonical_helpers() {
        assert_eq!(canonical_uri("/mqtt"), "/mqtt");
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/a/./b/../c%2F"), "/a/c%252F");
        let head = HttpRequestHead {
            query: "b=2&a=x%20y&a=1&flag&&c=%7e+".into(),
            ..HttpRequestHead::default()
        };
        let params = QueryParams::parse(&head.query);
        assert_eq!(
            params.canonical_query(false),
            "a=1&a=x%20y&b=2&c=~%2B&flag="
        );
        assert_eq!(
            head.query_pairs(),
            vec![
                ("b".into(), "2".into()),
                ("a".into(), "x y".into()),
                ("a".into(), "1".into()),
                ("flag".into(), String::new()),
                ("c".into(), "~+".into()),
            ]
        );
    }
}
