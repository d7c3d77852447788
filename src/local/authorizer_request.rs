//! Reading an AWS IoT custom-authorizer request off the wire: which authorizer, and the token,
//! signature, user name, password, client id, headers and query it is handed.
//!
//! Over MQTT (TLS, ALPN `mqtt`) the fields ride in the CONNECT user name as a query string:
//! `user?x-amz-customauthorizer-name=A&x-amz-customauthorizer-signature=S&<token key>=T`, in any
//! order, possibly followed by the SDK metrics parameters (`&SDK=PythonV2&Version=1.2`). Over
//! WebSocket they may instead be upgrade-request headers or query parameters; failing that, the
//! caller reads them from the CONNECT user name as over MQTT.
//!
//! Parameters are percent-decoded; a `+` stays a plus sign (base64 signatures and tokens are
//! often sent unencoded, and AWS's own SDK does so), never a space.
//!
//! User name policy: [`AuthorizerRequest::username`] is the part before the `?` (the user name
//! the application chose, `None` when empty), and [`AuthorizerRequest::raw_username`] keeps the
//! CONNECT user name exactly as received, which is what AWS puts in the Lambda event's
//! `protocolData.mqtt.username` as far as its documentation shows.
//!
//! Nothing here puts a token, signature or password into a rejection or into `Debug` output.

use std::fmt;

use crate::local::sigv4_verify::HttpRequestHead;

/// The authorizer name, as a header or query key.
pub const NAME_KEY: &str = "x-amz-customauthorizer-name";
/// The token signature, as a header or query key.
pub const SIGNATURE_KEY: &str = "x-amz-customauthorizer-signature";

/// How the client reached the custom-authorizer listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthProtocol {
    /// MQTT over TLS with ALPN `mqtt`.
    Mqtt,
    /// MQTT over WebSocket.
    Wss,
}

impl AuthProtocol {
    /// `"mqtt"` or `"wss"`, as the Python request object spells it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mqtt => "mqtt",
            Self::Wss => "wss",
        }
    }
}

/// A registered custom authorizer, as the core keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizerSpec {
    /// The authorizer name (`x-amz-customauthorizer-name`).
    pub name: String,
    /// The query key / header name that carries the token, if the authorizer takes one.
    pub token_key_name: Option<String>,
    /// Whether the token must come with `x-amz-customauthorizer-signature`.
    pub signing: bool,
}

/// What a custom authorizer is asked to judge. `Debug` shows no token, signature, password,
/// raw user name, header value or query value.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthorizerRequest {
    /// The name of the authorizer that judges the request.
    pub authorizer: String,
    /// The token (the value under the authorizer's token key), percent-decoded.
    pub token: Option<String>,
    /// `x-amz-customauthorizer-signature`, percent-decoded (base64 of the token's RSA-SHA256
    /// signature; checking it is the authorizer's business).
    pub signature: Option<String>,
    /// The CONNECT user name before any `?` (`None` when absent or empty).
    pub username: Option<String>,
    /// The CONNECT user name exactly as received, query included.
    pub raw_username: Option<String>,
    /// The CONNECT password, as received.
    pub password: Option<Vec<u8>>,
    /// The MQTT client id (`None` until CONNECT is read, for a request built from the upgrade).
    pub client_id: Option<String>,
    /// The upgrade request headers over WebSocket (names as received); empty over MQTT.
    pub headers: Vec<(String, String)>,
    /// The query parameters, percent-decoded: of the upgrade URL over WebSocket, of the CONNECT
    /// user name over MQTT (all of them, the authorizer's own included).
    pub query: Vec<(String, String)>,
    /// How the client came.
    pub protocol: AuthProtocol,
}

impl AuthorizerRequest {
    /// Marks a request read from the CONNECT user name as having come over WebSocket, adding
    /// the upgrade request's headers and query (the CONNECT user name's query parameters are
    /// replaced by the URL's, as AWS passes `protocolData.http` for WebSocket).
    #[must_use]
    pub fn over_websocket(mut self, head: &HttpRequestHead) -> Self {
        self.protocol = AuthProtocol::Wss;
        self.headers.clone_from(&head.headers);
        self.query = head.query_pairs();
        self
    }
}

impl fmt::Debug for AuthorizerRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let present = |v: bool| if v { Some("***") } else { None };
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        let query_names: Vec<&str> = self.query.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("AuthorizerRequest")
            .field("authorizer", &self.authorizer)
            .field("token", &present(self.token.is_some()))
            .field("signature", &present(self.signature.is_some()))
            .field("username", &self.username)
            .field("password", &present(self.password.is_some()))
            .field("client_id", &self.client_id)
            .field("header_names", &header_names)
            .field("query_names", &query_names)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// Why a connection cannot be handed to a custom authorizer (a reason fit for logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizerRejection {
    reason: String,
}

impl AuthorizerRejection {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// The reason, for logs.
    #[must_use]
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for AuthorizerRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "custom authorizer request refused: {}", self.reason)
    }
}

impl std::error::Error for AuthorizerRejection {}

/// Looks up an authorizer by name, or the default one for `None`.
pub type FindAuthorizer<'a> = &'a dyn Fn(Option<&str>) -> Option<AuthorizerSpec>;

/// Reads the request from a CONNECT user name such as
/// `user?x-amz-customauthorizer-name=A&x-amz-customauthorizer-signature=S&tok=T&SDK=PythonV2&Version=1.2`.
/// Without a name the default authorizer (`find(None)`) is used.
///
/// # Errors
/// No such authorizer (or no default), or a signing authorizer without both token and
/// signature (`missing token signature`).
pub fn from_mqtt(
    username: Option<&str>,
    password: Option<&[u8]>,
    client_id: &str,
    find: FindAuthorizer<'_>,
) -> Result<AuthorizerRequest, AuthorizerRejection> {
    let (base, query) = match username.map(|u| u.split_once('?').unwrap_or((u, ""))) {
        Some((base, query)) => (Some(base), query),
        None => (None, ""),
    };
    let query = HttpRequestHead {
        query: query.to_owned(),
        ..HttpRequestHead::default()
    }
    .query_pairs();
    let name = query_value(&query, NAME_KEY);
    let spec = resolve(name, find)?;
    let token = spec
        .token_key_name
        .as_deref()
        .and_then(|key| query_value(&query, key))
        .map(str::to_owned);
    let signature = query_value(&query, SIGNATURE_KEY).map(str::to_owned);
    check_signing(&spec, token.as_deref(), signature.as_deref())?;
    Ok(AuthorizerRequest {
        authorizer: spec.name,
        token,
        signature,
        username: base.filter(|b| !b.is_empty()).map(str::to_owned),
        raw_username: username.map(str::to_owned),
        password: password.map(<[u8]>::to_vec),
        client_id: Some(client_id.to_owned()),
        headers: Vec::new(),
        query,
        protocol: AuthProtocol::Mqtt,
    })
}

/// Reads the request from the WebSocket upgrade request: each field from a header first, else
/// from a query parameter. Returns `Ok(None)` when the request carries no custom-authorizer
/// field at all (no name, no signature, no token under the default authorizer's key): the
/// caller then reads the CONNECT user name with [`from_mqtt`].
///
/// # Errors
/// As [`from_mqtt`].
pub fn from_http(
    head: &HttpRequestHead,
    find: FindAuthorizer<'_>,
) -> Result<Option<AuthorizerRequest>, AuthorizerRejection> {
    let query = head.query_pairs();
    let field = |key: &str| -> Option<String> {
        head.header(key)
            .or_else(|| query_value(&query, key))
            .map(str::to_owned)
    };
    let name = field(NAME_KEY);
    let signature = field(SIGNATURE_KEY);
    let token_of = |spec: &AuthorizerSpec| spec.token_key_name.as_deref().and_then(field);
    let (spec, token) = match name {
        Some(name) => {
            let spec = resolve(Some(&name), find)?;
            let token = token_of(&spec);
            (spec, token)
        }
        None => match find(None) {
            Some(spec) => {
                let token = token_of(&spec);
                if token.is_none() && signature.is_none() {
                    return Ok(None);
                }
                (spec, token)
            }
            None if signature.is_some() => {
                return Err(AuthorizerRejection::new(
                    "no authorizer named and no default authorizer registered",
                ))
            }
            None => return Ok(None),
        },
    };
    check_signing(&spec, token.as_deref(), signature.as_deref())?;
    Ok(Some(AuthorizerRequest {
        authorizer: spec.name,
        token,
        signature,
        username: None,
        raw_username: None,
        password: None,
        client_id: None,
        headers: head.headers.clone(),
        query,
        protocol: AuthProtocol::Wss,
    }))
}

/// The first value of query parameter `key`. The authorizer's fixed keys match in any case;
/// token keys match exactly as registered.
fn query_value<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    let fixed = key == NAME_KEY || key == SIGNATURE_KEY;
    query
        .iter()
        .find(|(n, _)| {
            if fixed {
                n.eq_ignore_ascii_case(key)
            } else {
                n == key
            }
        })
        .map(|(_, v)| v.as_str())
}

fn resolve(
    name: Option<&str>,
    find: FindAuthorizer<'_>,
) -> Result<AuthorizerSpec, AuthorizerRejection> {
    match name {
        Some(name) => find(Some(name)).ok_or_else(|| {
            AuthorizerRejection::new(format!("no custom authorizer named {name:?}"))
        }),
        None => find(None).ok_or_else(|| {
            AuthorizerRejection::new("no authorizer named and no default authorizer registered")
        }),
    }
}

fn check_signing(
    spec: &AuthorizerSpec,
    token: Option<&str>,
    signature: Option<&str>,
) -> Result<(), AuthorizerRejection> {
    if spec.signing && (token.is_none() || signature.is_none()) {
        return Err(AuthorizerRejection::new(format!(
            "missing token signature: authorizer {:?} signs its tokens and needs both {} and {}",
            spec.name,
            spec.token_key_name.as_deref().unwrap_or("a token key"),
            SIGNATURE_KEY
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::auth::custom_auth::{username_with_fields, AuthorizerFields};

    const SIG: &str = "dGVzdC1zaWc+/w==";
    const TOKEN: &str = "tok-en+value/1=";

    /// Two authorizers: `Signed` (token key `tok`, signing; the default) and `Open` (token key
    /// `token`, no signing).
    fn find(name: Option<&str>) -> Option<AuthorizerSpec> {
        let signed = AuthorizerSpec {
            name: "Signed".into(),
            token_key_name: Some("tok".into()),
            signing: true,
        };
        let open = AuthorizerSpec {
            name: "Open".into(),
            token_key_name: Some("token".into()),
            signing: false,
        };
        match name {
            None | Some("Signed") => Some(signed),
            Some("Open") => Some(open),
            Some(_) => None,
        }
    }

    fn only_open(name: Option<&str>) -> Option<AuthorizerSpec> {
        find(Some(name.unwrap_or("Open")))
    }

    fn no_default(name: Option<&str>) -> Option<AuthorizerSpec> {
        name.and_then(|n| find(Some(n)))
    }

    fn mqtt(username: &str) -> Result<AuthorizerRequest, AuthorizerRejection> {
        from_mqtt(Some(username), Some(b"pw\x00"), "client-1", &find)
    }

    #[test]
    fn awsiotsdk_username_shapes() {
        // Signature quoted by urllib.parse.quote (safe='/'), token raw, metrics suffix.
        let quoted = "user?x-amz-customauthorizer-name=Signed\
                      &x-amz-customauthorizer-signature=dGVzdC1zaWc%2B/w%3D%3D\
                      &tok=tok-en+value/1=&SDK=PythonV2&Version=1.2.3";
        // Signature left as is (it contained a '%' ... or the C++ builder: token first).
        let unquoted = "user?x-amz-customauthorizer-name=Signed&tok=tok-en+value/1=\
                        &x-amz-customauthorizer-signature=dGVzdC1zaWc+/w==";
        for username in [quoted, unquoted] {
            let r = mqtt(username).unwrap();
            assert_eq!(r.authorizer, "Signed");
            assert_eq!(r.token.as_deref(), Some(TOKEN), "{username}");
            assert_eq!(r.signature.as_deref(), Some(SIG), "{username}");
            assert_eq!(r.username.as_deref(), Some("user"));
            assert_eq!(r.raw_username.as_deref(), Some(username));
            assert_eq!(r.password.as_deref(), Some(&b"pw\x00"[..]));
            assert_eq!(r.client_id.as_deref(), Some("client-1"));
            assert_eq!(r.protocol, AuthProtocol::Mqtt);
            assert!(r.headers.is_empty());
        }
        let r = mqtt(quoted).unwrap();
        assert!(r.query.contains(&("SDK".to_owned(), "PythonV2".to_owned())));
        assert_eq!(r.query.len(), 5);
    }

    #[test]
    fn metrics_only_username_uses_the_default_authorizer() {
        let r = from_mqtt(Some("?SDK=PythonV2&Version=1.2"), None, "c", &only_open).unwrap();
        assert_eq!(r.authorizer, "Open");
        assert_eq!(r.username, None);
        assert_eq!(r.token, None);
        // Without any user name at all as well.
        let r = from_mqtt(None, None, "c", &only_open).unwrap();
        assert_eq!((r.authorizer.as_str(), r.raw_username), ("Open", None));
    }

    #[test]
    fn our_clients_usernames() {
        let fields = AuthorizerFields {
            authorizer_name: Some("Signed".into()),
            signature: Some(SIG.into()),
            token: Some(("tok".into(), TOKEN.into())),
        };
        let username = username_with_fields(Some("alice"), &fields).unwrap();
        let r = mqtt(&username).unwrap();
        assert_eq!(r.token.as_deref(), Some(TOKEN));
        assert_eq!(r.signature.as_deref(), Some(SIG));
        assert_eq!(r.username.as_deref(), Some("alice"));

        let open = AuthorizerFields {
            authorizer_name: Some("Open".into()),
            signature: None,
            token: Some(("token".into(), "a&b c".into())),
        };
        let username = username_with_fields(None, &open).unwrap();
        let r = mqtt(&username).unwrap();
        assert_eq!(r.authorizer, "Open");
        assert_eq!(r.token.as_deref(), Some("a&b c"));
        assert_eq!(r.username, None);
    }

    #[test]
    fn signing_needs_token_and_signature() {
        for username in [
            "u?x-amz-customauthorizer-name=Signed&tok=T",
            "u?x-amz-customauthorizer-name=Signed&x-amz-customauthorizer-signature=S",
            "u",
        ] {
            let err = mqtt(username).unwrap_err();
            assert!(err.reason().contains("missing token signature"), "{err}");
        }
        // A non-signing authorizer takes a token alone, or nothing.
        assert!(mqtt("u?x-amz-customauthorizer-name=Open&token=T").is_ok());
        assert!(mqtt("u?x-amz-customauthorizer-name=Open").is_ok());
    }

    #[test]
    fn unknown_or_missing_authorizer_is_refused() {
        let err = mqtt("u?x-amz-customauthorizer-name=Nope&tok=T").unwrap_err();
        assert!(err.to_string().contains("Nope"), "{err}");
        let err = from_mqtt(Some("u"), None, "c", &no_default).unwrap_err();
        assert!(err.reason().contains("default"), "{err}");
        // Names are percent-decoded before lookup.
        let r = mqtt("u?x-amz-customauthorizer-name=%4Fpen").unwrap();
        assert_eq!(r.authorizer, "Open");
    }

    fn head(query: &str, headers: &[(&str, &str)]) -> HttpRequestHead {
        HttpRequestHead {
            method: "GET".into(),
            path: "/mqtt".into(),
            query: query.into(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn wss_header_form() {
        let h = head(
            "",
            &[
                ("Host", "localhost"),
                ("X-Amz-CustomAuthorizer-Name", "Signed"),
                ("x-amz-customauthorizer-signature", SIG),
                ("TOK", TOKEN),
                ("Sec-WebSocket-Protocol", "mqtt"),
            ],
        );
        let r = from_http(&h, &find).unwrap().unwrap();
        assert_eq!(r.authorizer, "Signed");
        assert_eq!(r.token.as_deref(), Some(TOKEN));
        assert_eq!(r.signature.as_deref(), Some(SIG));
        assert_eq!(r.protocol, AuthProtocol::Wss);
        assert_eq!(r.headers.len(), 5);
        assert_eq!((r.username, r.client_id), (None, None));
    }

    #[test]
    fn wss_query_form() {
        let h = head(
            "x-amz-customauthorizer-name=Signed&tok=tok-en%2Bvalue%2F1%3D\
             &x-amz-customauthorizer-signature=dGVzdC1zaWc%2B%2Fw%3D%3D",
            &[("Host", "localhost")],
        );
        let r = from_http(&h, &find).unwrap().unwrap();
        assert_eq!(r.token.as_deref(), Some(TOKEN));
        assert_eq!(r.signature.as_deref(), Some(SIG));
        assert_eq!(r.query.len(), 3);
        // Only the default authorizer's token (no name): still recognised.
        let h = head("token=abc", &[]);
        let r = from_http(&h, &only_open).unwrap().unwrap();
        assert_eq!(
            (r.authorizer.as_str(), r.token.as_deref()),
            ("Open", Some("abc"))
        );
    }

    #[test]
    fn wss_without_fields_falls_back_to_connect() {
        let h = head("", &[("Host", "localhost"), ("Upgrade", "websocket")]);
        assert_eq!(from_http(&h, &find).unwrap(), None);
        assert_eq!(from_http(&h, &no_default).unwrap(), None);
        // Then the CONNECT user name, marked as WebSocket.
        let r = from_mqtt(
            Some("u?x-amz-customauthorizer-name=Open&token=T"),
            None,
            "c",
            &find,
        )
        .unwrap()
        .over_websocket(&h);
        assert_eq!(r.protocol, AuthProtocol::Wss);
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.token.as_deref(), Some("T"));
        assert!(r.query.is_empty());
        // Fields present but wrong are refused, not skipped.
        let h = head("x-amz-customauthorizer-name=Nope", &[]);
        assert!(from_http(&h, &find).is_err());
        let h = head(
            "",
            &[("x-amz-customauthorizer-name", "Signed"), ("tok", "T")],
        );
        let err = from_http(&h, &find).unwrap_err();
        assert!(err.reason().contains("missing token signature"), "{err}");
    }

    #[test]
    fn debug_and_rejections_redact_secrets() {
        let username = format!(
            "alice?x-amz-customauthorizer-name=Signed&tok={TOKEN}&x-amz-customauthorizer-signature={SIG}"
        );
        let r = from_mqtt(Some(&username), Some(b"hunter2"), "c", &find).unwrap();
        let d = format!("{r:?}");
        assert!(
            d.contains("Signed") && d.contains("alice") && d.contains("tok"),
            "{d}"
        );
        for secret in ["tok-en", "dGVzdC1zaWc", "hunter2", "104, 117"] {
            assert!(!d.contains(secret), "{secret} in {d}");
        }
        let err = from_mqtt(
            Some("?x-amz-customauthorizer-name=Signed&tok=S3CRET"),
            None,
            "c",
            &find,
        )
        .unwrap_err();
        assert!(!format!("{err} {err:?}").contains("S3CRET"));
        assert_eq!(AuthProtocol::Wss.as_str(), "wss");
    }
}
