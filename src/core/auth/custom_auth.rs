//! AWS IoT custom authorizers: what goes on the wire. Over MQTT (TCP, port 443, ALPN `mqtt`)
//! the authorizer fields ride in the CONNECT user name as a query string; over WebSocket they
//! can go in the upgrade request headers or query instead.

use crate::core::error::{Error, Result};

/// The authorizer name header / query key.
pub const NAME_KEY: &str = "x-amz-customauthorizer-name";
/// The token signature header / query key.
pub const SIGNATURE_KEY: &str = "x-amz-customauthorizer-signature";

/// The custom-authorizer fields.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthorizerFields {
    /// `x-amz-customauthorizer-name`.
    pub authorizer_name: Option<String>,
    /// `x-amz-customauthorizer-signature` (base64 RSA-SHA256 signature of the token).
    pub signature: Option<String>,
    /// The token key name configured on the authorizer, and the token.
    pub token: Option<(String, String)>,
}

impl std::fmt::Debug for AuthorizerFields {
    /// The name and the token key are shown; the token and signature never are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizerFields")
            .field("authorizer_name", &self.authorizer_name)
            .field("signature", &self.signature.as_ref().map(|_| "***"))
            .field("token_key_name", &self.token.as_ref().map(|(k, _)| k))
            .finish()
    }
}

impl AuthorizerFields {
    /// The fields as (key, value) pairs, in the order AWS documents them.
    #[must_use]
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        if let Some(n) = &self.authorizer_name {
            v.push((NAME_KEY.to_string(), n.clone()));
        }
        if let Some(s) = &self.signature {
            v.push((SIGNATURE_KEY.to_string(), s.clone()));
        }
        if let Some((k, t)) = &self.token {
            v.push((k.clone(), t.clone()));
        }
        v
    }

    /// Whether any field is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.authorizer_name.is_none() && self.signature.is_none() && self.token.is_none()
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
#[must_use]
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `k1=v1&k2=v2`, each key and value percent-encoded.
#[must_use]
pub fn query_string(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The CONNECT user name carrying the authorizer fields:
/// `user?x-amz-customauthorizer-name=..&x-amz-customauthorizer-signature=..&<key>=<token>`.
/// Returns `username` unchanged when there are no fields.
#[must_use]
pub fn username_with_fields(username: Option<&str>, fields: &AuthorizerFields) -> Option<String> {
    if fields.is_empty() {
        return username.map(str::to_string);
    }
    let user = username.unwrap_or("");
    let sep = if user.contains('?') { '&' } else { '?' };
    Some(format!("{user}{sep}{}", query_string(&fields.pairs())))
}

/// Checks an HTTP header name (RFC 7230 token) and value (visible ASCII and spaces).
///
/// # Errors
/// [`Error::Config`] naming the header (never its value).
pub fn validate_header(name: &str, value: &str) -> Result<()> {
    let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token_char) {
        return Err(Error::Config(format!(
            "{name:?} is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)"
        )));
    }
    let reserved = [
        "host",
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
    ];
    if reserved.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(Error::Config(format!(
            "header {name:?} is set by the WebSocket handshake and cannot be overridden"
        )));
    }
    if !value
        .chars()
        .all(|c| c == ' ' || c == '\t' || c.is_ascii_graphic())
    {
        return Err(Error::Config(format!(
            "the value of header {name:?} must be visible ASCII (no line breaks)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> AuthorizerFields {
        AuthorizerFields {
            authorizer_name: Some("MyAuth".into()),
            signature: Some("abc/def=".into()),
            token: Some(("token".into(), "xyz".into())),
        }
    }

    #[test]
    fn username_carries_the_fields_percent_encoded() {
        assert_eq!(
            username_with_fields(Some("alice"), &fields()).unwrap(),
            "alice?x-amz-customauthorizer-name=MyAuth&x-amz-customauthorizer-signature=abc%2Fdef%3D&token=xyz"
        );
        assert_eq!(
            username_with_fields(None, &fields()).unwrap(),
            "?x-amz-customauthorizer-name=MyAuth&x-amz-customauthorizer-signature=abc%2Fdef%3D&token=xyz"
        );
        assert_eq!(
            username_with_fields(Some("u?a=1"), &fields()).unwrap(),
            "u?a=1&x-amz-customauthorizer-name=MyAuth&x-amz-customauthorizer-signature=abc%2Fdef%3D&token=xyz"
        );
        assert_eq!(
            username_with_fields(Some("bob"), &AuthorizerFields::default()).as_deref(),
            Some("bob")
        );
    }

    #[test]
    fn debug_hides_token_and_signature() {
        let d = format!("{:?}", fields());
        assert!(!d.contains("xyz") && !d.contains("abc/def"), "{d}");
        assert!(d.contains("MyAuth"));
    }

    #[test]
    fn header_names_and_values_are_checked() {
        assert!(validate_header("x-custom", "v 1").is_ok());
        assert!(validate_header("bad header", "v").is_err());
        assert!(validate_header("Host", "v").is_err());
        assert!(validate_header("x", "a\r\nb").is_err());
        let err = validate_header("x", "S3CRET\n").unwrap_err().to_string();
        assert!(!err.contains("S3CRET"));
    }

    #[test]
    fn percent_encoding_keeps_unreserved_only() {
        assert_eq!(
            percent_encode("a-b_c.d~e f+g/h=i"),
            "a-b_c.d~e%20f%2Bg%2Fh%3Di"
        );
    }
}
