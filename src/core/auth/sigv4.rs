//! SigV4 presigned WebSocket URLs for AWS IoT Core (`wss://<endpoint>/mqtt?X-Amz-...`).
//!
//! The signature is computed by `aws-sigv4` with query-string signing for the service
//! `iotdevicegateway`. AWS IoT wants the session token left out of the canonical request and
//! appended after the signature (`SessionTokenMode::Exclude`). The only signed header is `host`,
//! whose value must be what the WebSocket client sends as `Host`: `host` for port 443 and
//! `host:port` otherwise.
//!
//! Nothing here ever puts a secret (secret access key, session token, signature) into an error
//! message; [`redact_url`] masks a presigned URL for logs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SessionTokenMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;

use crate::core::auth::uri;
use crate::core::error::{Error, Result};
use crate::core::secret::Secret;

/// The SigV4 service name of the AWS IoT Core data plane (MQTT over WebSocket).
pub const SERVICE: &str = "iotdevicegateway";

/// The longest validity SigV4 allows for a presigned URL (7 days).
pub const MAX_EXPIRES: Duration = Duration::from_secs(604_800);

/// Query parameters whose values are masked by [`redact_url`].
const REDACTED_PARAMS: [&str; 3] = [
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

/// AWS credentials used to sign a WebSocket URL. `Debug` never prints the secret access key or
/// the session token.
#[derive(Debug, Clone)]
pub struct AwsCredentials {
    /// The access key id (`AKIA...` or `ASIA...`).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: Secret<String>,
    /// The session token of temporary credentials (STS, Cognito, IAM roles).
    pub session_token: Option<Secret<String>>,
    /// When temporary credentials expire, if known.
    pub expiry: Option<SystemTime>,
}

/// Presigns the AWS IoT MQTT-over-WebSocket URL for `host:port`.
///
/// Returns `wss://<host>/mqtt?...` when `port` is 443 and `wss://<host>:<port>/mqtt?...`
/// otherwise, signed at `time` and valid for `expires` (whole seconds, 1 s to 7 days). A session
/// token, if any, is appended after the signature as `X-Amz-Security-Token`.
///
/// # Errors
/// [`Error::Config`] for an invalid host, port, region, expiry, time or empty credentials. The
/// message never contains secret material.
pub fn presign_url(
    host: &str,
    port: u16,
    region: &str,
    creds: &AwsCredentials,
    time: SystemTime,
    expires: Duration,
) -> Result<String> {
    validate_host(host)?;
    if port == 0 {
        return Err(Error::Config(
            "the WebSocket port must be between 1 and 65535, not 0".into(),
        ));
    }
    validate_region(region)?;
    validate_credentials(creds)?;
    validate_time(time)?;
    let secs = expires.as_secs();
    if secs == 0 || expires > MAX_EXPIRES {
        return Err(Error::Config(format!(
            "the presigned URL lifetime must be between 1 second and {} seconds (7 days), not {expires:?}",
            MAX_EXPIRES.as_secs()
        )));
    }

    // aws-sigv4 leaves the port out of the signed `host` header only for https:443, which is
    // exactly when the WebSocket client leaves it out of `Host`.
    let authority = if port == 443 {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    let signed_url = format!("https://{authority}/mqtt");

    let identity = Credentials::new(
        creds.access_key_id.as_str(),
        creds.secret_access_key.expose().as_str(),
        creds.session_token.as_ref().map(|t| t.expose().clone()),
        creds.expiry,
        "awsiot-rs",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    // Without `expires_in`, query signing panics inside aws-sigv4.
    settings.expires_in = Some(Duration::from_secs(secs));
    settings.session_token_mode = SessionTokenMode::Exclude;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| Error::Config(format!("cannot sign the WebSocket URL: {e}")))?
        .into();

    let request = SignableRequest::new(
        "GET",
        signed_url.as_str(),
        std::iter::empty(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|_| {
        Error::Config(format!(
            "cannot sign the WebSocket URL: '{authority}' is not a valid host and port"
        ))
    })?;
    // The signing error types carry no secrets, but say only what failed to be safe.
    let (instructions, _signature) = sign(request, &params)
        .map_err(|_| Error::Config("cannot sign the WebSocket URL (SigV4 signing failed)".into()))?
        .into_parts();

    let mut url = format!("wss://{authority}/mqtt");
    for (i, (name, value)) in instructions.params().iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(&uri::encode(name));
        url.push('=');
        url.push_str(&uri::encode(value));
    }
    Ok(url)
}

/// Masks the credential scope, signature and session token of a presigned URL for logs:
/// `wss://host/mqtt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***&...`.
/// Scheme, host, port, path and other parameters are kept.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let (base, rest) = match url.split_once('?') {
        Some(parts) => parts,
        None => return url.to_owned(),
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (rest, None),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(base);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) if REDACTED_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name)) => {
                out.push_str(name);
                out.push_str("=***");
            }
            _ => out.push_str(pair),
        }
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

fn validate_host(host: &str) -> Result<()> {
    const HINT: &str = "give the bare endpoint name such as \
                        'xxxxxxxx-ats.iot.us-east-1.amazonaws.com', without scheme, port or path";
    if host.is_empty() {
        return Err(Error::Config(format!("the endpoint host is empty; {HINT}")));
    }
    if host.len() > 253 {
        return Err(Error::Config(format!(
            "the endpoint host is {} characters long; at most 253 are allowed",
            host.len()
        )));
    }
    let ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // A bracketed IPv6 literal.
        !inner.is_empty()
            && inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
    } else {
        host.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && !host.starts_with(['.', '-'])
            && !host.ends_with('-')
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "the endpoint host {host:?} is not a valid host name; {HINT}"
        )))
    }
}

fn validate_region(region: &str) -> Result<()> {
    if region.is_empty() {
        return Err(Error::Config(
            "the AWS region is empty; give one such as 'us-east-1'".into(),
        ));
    }
    if region.len() > 64
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(Error::Config(format!(
            "the AWS region {region:?} is invalid: only lowercase letters, digits and '-' are \
             allowed (for example 'us-east-1')"
        )));
    }
    Ok(())
}

fn validate_credentials(creds: &AwsCredentials) -> Result<()> {
    let key_id = creds.access_key_id.as_str();
    if key_id.is_empty() {
        return Err(Error::Config("the AWS access key id is empty".into()));
    }
    // Real access key ids are upper-case letters and digits; '/' would break the credential
    // scope and whitespace or control characters the query string.
    if !key_id.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
        return Err(Error::Config(
            "the AWS access key id may contain only printable ASCII characters other than '/' \
             (real ones are letters and digits)"
                .into(),
        ));
    }
    if creds.secret_access_key.expose().is_empty() {
        return Err(Error::Config("the AWS secret access key is empty".into()));
    }
    if creds
        .session_token
        .as_ref()
        .is_some_and(|t| t.expose().is_empty())
    {
        return Err(Error::Config(
            "the AWS session token is empty; leave it out for long-term credentials".into(),
        ));
    }
    Ok(())
}

fn validate_time(time: SystemTime) -> Result<()> {
    // aws-sigv4 formats the time with the `time` crate, which panics outside years 0..=9999.
    const YEAR_10000: Duration = Duration::from_secs(253_402_300_800);
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) if since < YEAR_10000 => Ok(()),
        _ => Err(Error::Config(
            "the signing time must be between 1970 and 9999 (is the system clock right?)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "example-ats.iot.us-east-1.amazonaws.com";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const TOKEN: &str = "FQoGZXIvYXdzE//+tok=en/with+chars==";
    const SIG_443: &str = "96a76a6e12819cf0b4ea3687683286a1807d768ec83de20171765997cff8803b";

    /// 2024-01-02T03:04:05Z
    fn when() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_704_164_645)
    }

    fn creds(token: Option<&str>) -> AwsCredentials {
        AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Secret::new(SECRET.into()),
            session_token: token.map(|t| Secret::new(t.to_owned())),
            expiry: None,
        }
    }

    fn hour() -> Duration {
        Duration::from_secs(3600)
    }

    fn param<'a>(url: &'a str, name: &str) -> Option<&'a str> {
        let query = url.split_once('?')?.1;
        query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    #[test]
    fn known_answer_with_session_token() {
        let url = presign_url(HOST, 443, "us-east-1", &creds(Some(TOKEN)), when(), hour()).unwrap();
        assert_eq!(
            url,
            "wss://example-ats.iot.us-east-1.amazonaws.com/mqtt?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIDEXAMPLE%2F20240102%2Fus-east-1%2Fiotdevicegateway%2Faws4_request\
             &X-Amz-Date=20240102T030405Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=96a76a6e12819cf0b4ea3687683286a1807d768ec83de20171765997cff8803b\
             &X-Amz-Security-Token=FQoGZXIvYXdzE%2F%2F%2Btok%3Den%2Fwith%2Bchars%3D%3D"
        );
    }

    #[test]
    fn without_token_same_signature_and_no_token_param() {
        let url = presign_url(HOST, 443, "us-east-1", &creds(None), when(), hour()).unwrap();
        assert_eq!(param(&url, "X-Amz-Signature"), Some(SIG_443));
        assert!(!url.contains("X-Amz-Security-Token"), "{url}");
        assert!(url.starts_with("wss://example-ats.iot.us-east-1.amazonaws.com/mqtt?"));
    }

    #[test]
    fn non_default_port_is_in_url_and_signature() {
        let url =
            presign_url(HOST, 8443, "us-east-1", &creds(Some(TOKEN)), when(), hour()).unwrap();
        assert!(
            url.starts_with("wss://example-ats.iot.us-east-1.amazonaws.com:8443/mqtt?"),
            "{url}"
        );
        let sig = param(&url, "X-Amz-Signature").unwrap();
        assert_eq!(sig.len(), 64);
        assert_ne!(sig, SIG_443);
        assert_eq!(
            param(&url, "X-Amz-Security-Token"),
            Some("FQoGZXIvYXdzE%2F%2F%2Btok%3Den%2Fwith%2Bchars%3D%3D")
        );
    }

    #[test]
    fn deterministic_and_time_dependent() {
        let c = creds(None);
        let a = presign_url(HOST, 443, "us-east-1", &c, when(), hour()).unwrap();
        let b = presign_url(HOST, 443, "us-east-1", &c, when(), hour()).unwrap();
        assert_eq!(a, b);
        let later = when() + Duration::from_secs(1);
        let c2 = presign_url(HOST, 443, "us-east-1", &c, later, hour()).unwrap();
        assert_ne!(param(&a, "X-Amz-Signature"), param(&c2, "X-Amz-Signature"));
        assert_eq!(param(&c2, "X-Amz-Date"), Some("20240102T030406Z"));
    }

    fn config_err(r: Result<String>) -> String {
        match r {
            Err(Error::Config(m)) => m,
            other => panic!("expected a Config error, got {other:?}"),
        }
    }

    #[test]
    fn bad_region_is_a_config_error() {
        for region in ["", "US-EAST-1", "us east 1", "us-east-1/x", "üs-east-1"] {
            let m = config_err(presign_url(HOST, 443, region, &creds(None), when(), hour()));
            assert!(m.contains("region"), "{m}");
        }
    }

    #[test]
    fn bad_host_port_expiry_and_credentials_are_config_errors() {
        let c = creds(Some(TOKEN));
        for host in [
            "",
            "wss://x.example.com",
            "x.example.com:443",
            "x.example.com/mqtt",
            "a b",
        ] {
            let m = config_err(presign_url(host, 443, "us-east-1", &c, when(), hour()));
            assert!(m.contains("host"), "{m}");
        }
        let m = config_err(presign_url(HOST, 0, "us-east-1", &c, when(), hour()));
        assert!(m.contains("port"), "{m}");
        for expires in [
            Duration::ZERO,
            Duration::from_millis(999),
            MAX_EXPIRES + Duration::from_secs(1),
        ] {
            let m = config_err(presign_url(HOST, 443, "us-east-1", &c, when(), expires));
            assert!(m.contains("lifetime"), "{m}");
        }
        let m = config_err(presign_url(
            HOST,
            443,
            "us-east-1",
            &c,
            UNIX_EPOCH - Duration::from_secs(1),
            hour(),
        ));
        assert!(m.contains("time"), "{m}");

        let mut no_key = creds(Some(TOKEN));
        no_key.access_key_id.clear();
        let mut no_secret = creds(Some(TOKEN));
        no_secret.secret_access_key = Secret::new(String::new());
        let mut empty_token = creds(None);
        empty_token.session_token = Some(Secret::new(String::new()));
        for bad in [no_key, no_secret, empty_token] {
            let m = config_err(presign_url(HOST, 443, "us-east-1", &bad, when(), hour()));
            assert!(!m.contains(SECRET) && !m.contains(TOKEN), "{m}");
        }
    }

    #[test]
    fn ipv6_literal_host_is_accepted() {
        let url = presign_url("[::1]", 8443, "us-east-1", &creds(None), when(), hour()).unwrap();
        assert!(url.starts_with("wss://[::1]:8443/mqtt?"), "{url}");
    }

    #[test]
    fn debug_hides_secrets() {
        let c = creds(Some(TOKEN));
        let d = format!("{c:?}");
        assert!(d.contains("AKIDEXAMPLE"), "{d}");
        assert!(!d.contains(SECRET) && !d.contains(TOKEN), "{d}");
    }

    #[test]
    fn redact_url_masks_credential_signature_and_token() {
        let url =
            presign_url(HOST, 8443, "us-east-1", &creds(Some(TOKEN)), when(), hour()).unwrap();
        let r = redact_url(&url);
        assert_eq!(
            r,
            "wss://example-ats.iot.us-east-1.amazonaws.com:8443/mqtt?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=***&X-Amz-Date=20240102T030405Z&X-Amz-Expires=3600\
             &X-Amz-SignedHeaders=host&X-Amz-Signature=***&X-Amz-Security-Token=***"
        );
        assert!(!r.contains("AKIDEXAMPLE"));
        assert!(!r.contains(param(&url, "X-Amz-Signature").unwrap()));
        assert_eq!(redact_url("wss://h/mqtt"), "wss://h/mqtt");
        assert_eq!(
            redact_url("wss://h/mqtt?a=1&x-amz-signature=abc&flag#frag"),
            "wss://h/mqtt?a=1&x-amz-signature=***&flag#frag"
        );
    }
}
