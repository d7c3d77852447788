//! AWS IoT custom authorizers: what goes on the wire. Over MQTT (TCP, port 443, ALPN `mqtt`)
//! the authorizer fields ride in the CONNECT user name as a query string; over WebSocket they
//! can go in the upgrade request headers or query instead. [`CustomAuth`] is the authorizer as
//! the application describes it; [`CustomAuth::place`] checks it and says where each field goes.
//! The field names are spelled here and nowhere else.

use crate::core::auth::uri;
use crate::core::error::{Error, Result};
use crate::core::secret::Secret;

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

/// Where the authorizer fields go over WebSocket (`credentials_in`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Upgrade request headers.
    Headers,
    /// Upgrade request URL query.
    Query,
    /// The CONNECT user name (as over MQTT).
    Username,
}

impl Placement {
    /// Parses `"headers"`, `"query"` or `"username"`.
    ///
    /// # Errors
    /// [`Error::Config`] for anything else.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "headers" => Ok(Self::Headers),
            "query" => Ok(Self::Query),
            "username" => Ok(Self::Username),
            other => Err(Error::Config(format!(
                "credentials_in must be \"headers\", \"query\" or \"username\", not {other:?}"
            ))),
        }
    }
}

/// A custom authorizer as the application describes it (Python's `CustomAuth`): the field
/// values, and where they go. `Debug` never shows the token, signature, password or values.
#[derive(Clone)]
pub struct CustomAuth {
    /// The authorizer name (`x-amz-customauthorizer-name`).
    pub authorizer_name: Option<String>,
    /// The token signature (`x-amz-customauthorizer-signature`).
    pub signature: Option<Secret<String>>,
    /// The token key name configured on the authorizer (goes with `token`).
    pub token_key_name: Option<String>,
    /// The token (goes with `token_key_name`).
    pub token: Option<Secret<String>>,
    /// CONNECT user name (the fields are appended to it when they go there).
    pub username: Option<String>,
    /// CONNECT password, passed through.
    pub password: Option<Secret<String>>,
    /// Extra upgrade request headers (WebSocket only).
    pub headers: Vec<(String, Secret<String>)>,
    /// Extra upgrade request query parameters (WebSocket only).
    pub query: Vec<(String, Secret<String>)>,
    /// MQTT over WebSocket instead of MQTT over TLS.
    pub websockets: bool,
    /// Over WebSocket: `"headers"` (the default), `"query"` or `"username"`.
    pub credentials_in: String,
}

impl Default for CustomAuth {
    fn default() -> Self {
        Self {
            authorizer_name: None,
            signature: None,
            token_key_name: None,
            token: None,
            username: None,
            password: None,
            headers: Vec::new(),
            query: Vec::new(),
            websockets: false,
            credentials_in: "headers".into(),
        }
    }
}

impl std::fmt::Debug for CustomAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names =
            |v: &[(String, Secret<String>)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        f.debug_struct("CustomAuth")
            .field("authorizer_name", &self.authorizer_name)
            .field("token_key_name", &self.token_key_name)
            .field("username", &self.username)
            .field("headers", &names(&self.headers))
            .field("query", &names(&self.query))
            .field("websockets", &self.websockets)
            .field("credentials_in", &self.credentials_in)
            .finish_non_exhaustive()
    }
}

/// Where a [`CustomAuth`] puts everything.
#[derive(Debug, Default)]
pub struct Placed {
    /// Fields for the CONNECT user name (over MQTT, or `credentials_in="username"`).
    pub username_fields: AuthorizerFields,
    /// Upgrade request headers (checked with [`validate_header`]).
    pub headers: Vec<(String, Secret<String>)>,
    /// Upgrade request query parameters.
    pub query: Vec<(String, Secret<String>)>,
}

impl CustomAuth {
    /// Checks the description and says where each field goes: in the CONNECT user name over
    /// MQTT (or with `credentials_in="username"`), else in the upgrade headers or query.
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown `credentials_in`, a token without its key name (or the
    /// reverse), headers or query without WebSocket, and invalid headers. Messages never
    /// contain a token, signature or header value.
    pub fn place(&self) -> Result<Placed> {
        let placement = Placement::parse(&self.credentials_in)?;
        let token = match (&self.token_key_name, &self.token) {
            (Some(key), Some(token)) => Some((key.clone(), token.expose().clone())),
            (None, None) => None,
            _ => return Err(Error::Config("token and token_key_name go together".into())),
        };
        let upgrade_extras = !self.headers.is_empty() || !self.query.is_empty();
        if upgrade_extras && !self.websockets {
            return Err(Error::Config(
                "headers and query need websockets=True (they go in the HTTP upgrade)".into(),
            ));
        }
        let fields = AuthorizerFields {
            authorizer_name: self.authorizer_name.clone(),
            signature: self.signature.as_ref().map(|s| s.expose().clone()),
            token,
        };
        let mut placed = Placed {
            username_fields: AuthorizerFields::default(),
            headers: self.headers.clone(),
            query: self.query.clone(),
        };
        let pairs = || fields.pairs().into_iter().map(|(k, v)| (k, Secret::new(v)));
        match placement {
            _ if !self.websockets => placed.username_fields = fields.clone(),
            Placement::Username => placed.username_fields = fields.clone(),
            Placement::Headers => placed.headers.extend(pairs()),
            Placement::Query => placed.query.extend(pairs()),
        }
        for (name, value) in &placed.headers {
            validate_header(name, value.expose())?;
        }
        Ok(placed)
    }
}

/// `k1=v1&k2=v2`, each key and value percent-encoded.
#[must_use]
pub fn query_string(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", uri::encode(k), uri::encode(v)))
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
            uri::encode("a-b_c.d~e f+g/h=i"),
            "a-b_c.d~e%20f%2Bg%2Fh%3Di"
        );
    }
}
