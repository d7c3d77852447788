//! [`ClientOptions`]: the client configuration as an application (or a host language) hands it
//! over: seconds as `f64`, integers as `i64`, PEM bytes, plain strings. [`ClientOptions::build`]
//! is the one place that turns it into a validated [`ClientConfig`]: it derives the defaults that
//! depend on other options (port, ALPN), converts units, assembles the transport (TLS, WebSocket,
//! SigV4, custom-authorizer fields) and checks every bound, here or in
//! [`ClientConfig::validate`]. The Python `Client(...)` only converts its arguments into these
//! fields.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::core::auth::credentials::{self, CredentialsProvider};
use crate::core::auth::custom_auth::{self, CustomAuth};
use crate::core::config::{
    check_range, duration_from_secs, ClientConfig, OfflineQueueConfig, PolicyCheck, QoS,
    ReconnectConfig, Will, POLICY_COUNT_RANGE, PORT_RANGE,
};
use crate::core::error::{Error, Result};
use crate::core::net::proxy::Proxy;
use crate::core::net::tls::{self, ClientIdentity, TlsOptions};
use crate::core::net::transport::Transport;
use crate::core::net::websocket::{SigV4, WebSocket};
use crate::core::protocol::topic::Limits;
use crate::core::secret::Secret;

/// Cached temporary SigV4 credentials are refreshed this long before they expire.
pub const CREDENTIALS_MARGIN: Duration = Duration::from_secs(300);

/// How the client proves who it is.
#[derive(Clone, Default)]
pub enum AuthOptions {
    /// Nothing beyond `username` / `password` (and TLS server verification).
    #[default]
    None,
    /// Mutual TLS with an X.509 device certificate (PEM).
    Mtls {
        /// The certificate chain.
        cert_pem: Vec<u8>,
        /// The private key.
        key_pem: Secret<Vec<u8>>,
    },
    /// MQTT over WebSocket, the upgrade presigned with SigV4.
    SigV4 {
        /// AWS region of the endpoint, such as `us-east-1`.
        region: String,
        /// Asked for credentials before each connection attempt (cached until near expiry).
        credentials: Arc<dyn CredentialsProvider>,
    },
    /// An AWS IoT custom authorizer.
    Custom(CustomAuth),
}

impl std::fmt::Debug for AuthOptions {
    /// The kind (and the custom authorizer's public fields); never keys or tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Mtls { .. } => f.write_str("Mtls"),
            Self::SigV4 { region, .. } => write!(f, "SigV4({region})"),
            Self::Custom(c) => c.fmt(f),
        }
    }
}

impl AuthOptions {
    /// The name of the auth object in the Python API (used in messages).
    #[must_use]
    pub fn name(&self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::Mtls { .. } => Some("MtlsAuth"),
            Self::SigV4 { .. } => Some("SigV4Auth"),
            Self::Custom(_) => Some("CustomAuth"),
        }
    }

    /// Whether MQTT runs over WebSocket.
    #[must_use]
    pub fn websocket(&self) -> bool {
        match self {
            Self::SigV4 { .. } => true,
            Self::Custom(c) => c.websockets,
            Self::None | Self::Mtls { .. } => false,
        }
    }

    /// The port used when none is given: 443 (80 without TLS) for SigV4 and custom
    /// authorizers, else 8883 (1883 without TLS).
    #[must_use]
    pub fn default_port(&self, tls: bool) -> u16 {
        match (self, tls) {
            (Self::SigV4 { .. } | Self::Custom(_), true) => 443,
            (Self::SigV4 { .. } | Self::Custom(_), false) => 80,
            (_, true) => 8883,
            (_, false) => 1883,
        }
    }

    /// The ALPN protocols offered when none are given: `x-amzn-mqtt-ca` for mutual TLS on port
    /// 443, `mqtt` for a custom authorizer over MQTT (not WebSocket) on 443, else none (AWS IoT
    /// needs no ALPN on 8883 or for WebSocket).
    #[must_use]
    pub fn default_alpn(&self, port: u16) -> Vec<String> {
        match self {
            _ if port != 443 => Vec::new(),
            Self::Mtls { .. } => vec!["x-amzn-mqtt-ca".into()],
            Self::Custom(c) if !c.websockets => vec!["mqtt".into()],
            _ => Vec::new(),
        }
    }

    /// Checks what can be checked without the rest of the configuration (the SigV4 region; a
    /// custom authorizer's fields, headers and placement). Auth objects call this when they
    /// are built, so a mistake is reported where it was made.
    ///
    /// # Errors
    /// [`Error::Config`].
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::SigV4 { region, .. } => {
                let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
                if region.is_empty() || !region.chars().all(ok) {
                    return Err(Error::Config(format!(
                        "region must look like 'us-east-1', not {region:?}"
                    )));
                }
                Ok(())
            }
            Self::Custom(c) => c.place().map(|_| ()),
            Self::None | Self::Mtls { .. } => Ok(()),
        }
    }
}

/// The last will (`Will(topic, payload, qos, retain)`).
#[derive(Debug, Clone, Default)]
pub struct WillOptions {
    /// Topic the broker publishes the will to.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// QoS (0 or 1).
    pub qos: i64,
    /// Retained flag.
    pub retain: bool,
}

/// Automatic reconnect (`Reconnect(...)`), in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectOptions {
    /// First delay.
    pub min_delay: f64,
    /// Largest delay.
    pub max_delay: f64,
    /// Full jitter.
    pub jitter: bool,
    /// Attempts before giving up; 0 = unlimited.
    pub max_attempts: i64,
    /// The backoff resets only after staying connected this long.
    pub reset_after: f64,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        Self {
            min_delay: 1.0,
            max_delay: 60.0,
            jitter: true,
            max_attempts: 0,
            reset_after: 30.0,
        }
    }
}

/// The offline queue (`OfflineQueue(limit, qos0)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineQueueOptions {
    /// How many operations may wait while disconnected.
    pub limit: i64,
    /// Whether QoS 0 publishes wait too.
    pub qos0: bool,
}

impl Default for OfflineQueueOptions {
    fn default() -> Self {
        Self {
            limit: 1000,
            qos0: false,
        }
    }
}

/// Policy-violation loop detection (`PolicyViolationCheck(count, window)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyCheckOptions {
    /// Drops in a row that condemn an operation.
    pub count: i64,
    /// Seconds after sending within which the drop must come.
    pub window: f64,
}

impl Default for PolicyCheckOptions {
    fn default() -> Self {
        Self {
            count: 3,
            window: 2.0,
        }
    }
}

/// Every client option, as plain data; [`ClientOptions::new`] gives the documented defaults
/// (those of Python's `Client(...)`). See the README for what each one does.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Broker host name or IP address (also the TLS server name).
    pub endpoint: String,
    /// `None`: [`AuthOptions::default_port`].
    pub port: Option<i64>,
    /// `None`: generated (`awsiot-rs-<hex>`).
    pub client_id: Option<String>,
    /// How the client proves who it is.
    pub auth: AuthOptions,
    /// TLS (or, when false, plain TCP: local brokers without auth only).
    pub tls: bool,
    /// CA certificates (PEM) replacing the default roots.
    pub ca_pem: Option<Vec<u8>>,
    /// `None`: [`AuthOptions::default_alpn`].
    pub alpn: Option<Vec<String>>,
    /// MQTT CONNECT user name.
    pub username: Option<String>,
    /// MQTT CONNECT password.
    pub password: Option<Secret<String>>,
    /// Keep-alive, whole seconds.
    pub keep_alive: f64,
    /// MQTT clean session flag.
    pub clean_session: bool,
    /// Last will.
    pub will: Option<WillOptions>,
    /// `"aws"` or `"mqtt"`.
    pub limits: String,
    /// Seconds an operation waits for its acknowledgement.
    pub operation_timeout: f64,
    /// Seconds a connection attempt may take.
    pub connect_timeout: f64,
    /// `None` disables automatic reconnect.
    pub reconnect: Option<ReconnectOptions>,
    /// The offline queue.
    pub offline_queue: OfflineQueueOptions,
    /// Per-packet traffic log file.
    pub log_file: Option<PathBuf>,
    /// Most un-acknowledged QoS 1 publishes.
    pub inflight: i64,
    /// Cap on distinct filters held at the broker (`None`: 50 on AWS, none for plain MQTT).
    pub max_subscriptions: Option<i64>,
    /// `None` disables policy-violation loop detection.
    pub policy_violation: Option<PolicyCheckOptions>,
    /// HTTP CONNECT proxy: `http://[user:password@]host:port`, or `env` (`HTTPS_PROXY`,
    /// honouring `NO_PROXY`); `None`: direct.
    pub proxy: Option<Secret<String>>,
}

impl ClientOptions {
    /// The documented defaults for `endpoint`.
    #[must_use]
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            port: None,
            client_id: None,
            auth: AuthOptions::None,
            tls: true,
            ca_pem: None,
            alpn: None,
            username: None,
            password: None,
            keep_alive: 30.0,
            clean_session: true,
            will: None,
            limits: "aws".into(),
            operation_timeout: 30.0,
            connect_timeout: 10.0,
            reconnect: Some(ReconnectOptions::default()),
            offline_queue: OfflineQueueOptions::default(),
            log_file: None,
            inflight: 100,
            max_subscriptions: None,
            policy_violation: Some(PolicyCheckOptions::default()),
            proxy: None,
        }
    }

    /// Converts, derives the defaults, assembles the transport and validates everything.
    ///
    /// # Errors
    /// The first problem found, as [`Error::Config`] (or [`Error::Topic`] /
    /// [`Error::PayloadTooLarge`] for the will), naming the option and what is allowed, never
    /// a secret.
    pub fn build(self) -> Result<ClientConfig> {
        let limits = Limits::parse(&self.limits)?;
        self.auth.validate()?;
        if !self.tls {
            if let Some(what) = self.auth.name().or(self.ca_pem.as_ref().map(|_| "ca")) {
                return Err(Error::Config(format!(
                    "tls=False cannot be combined with {what}: certificates need TLS, and SigV4 \
                     signatures, session tokens and authorizer tokens must never travel in \
                     cleartext (plain TCP is for local brokers without auth)"
                )));
            }
        }
        let port = match self.port {
            Some(p) => narrow("port", p, &PORT_RANGE, "")?,
            None => self.auth.default_port(self.tls),
        };
        let alpn = match self.alpn {
            Some(alpn) => alpn,
            None => self.auth.default_alpn(port),
        };
        if alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
            return Err(Error::Config(
                "alpn must be a list of protocol names of 1 to 255 bytes, such as ['mqtt']".into(),
            ));
        }
        let (transport, auth) = transport(self.auth, self.tls, self.ca_pem, alpn)?;

        let mut cfg = ClientConfig::new(self.endpoint, port, transport);
        if let Some(id) = self.client_id {
            cfg.client_id = id;
            cfg.client_id_given = true;
        }
        let (username, password) = match auth.custom {
            None => (self.username, self.password),
            Some(custom) => (
                one_of("user name", self.username, custom.username)?,
                one_of("password", self.password, custom.password)?,
            ),
        };
        cfg.username =
            custom_auth::username_with_fields(username.as_deref(), &auth.username_fields);
        cfg.password = password.map(|p| Secret::new(p.expose().clone().into_bytes()));
        cfg.keep_alive = duration_from_secs("keep_alive", self.keep_alive)?;
        cfg.clean_session = self.clean_session;
        cfg.limits = limits;
        cfg.will = self.will.map(WillOptions::build).transpose()?;
        cfg.operation_timeout = duration_from_secs("operation_timeout", self.operation_timeout)?;
        cfg.connect_timeout = duration_from_secs("connect_timeout", self.connect_timeout)?;
        cfg.reconnect = self.reconnect.map(ReconnectOptions::build).transpose()?;
        cfg.offline_queue = OfflineQueueConfig {
            limit: narrow(
                "OfflineQueue.limit",
                self.offline_queue.limit,
                &(0..=i64::MAX),
                "",
            )?,
            qos0: self.offline_queue.qos0,
        };
        cfg.log_file = self.log_file;
        cfg.proxy = match &self.proxy {
            None => None,
            Some(p) if p.expose() == "env" => {
                Proxy::from_env(&cfg.endpoint, |name| std::env::var(name).ok())?
            }
            Some(p) => Some(Proxy::parse(p.expose())?),
        };
        let (range, note) = ClientConfig::inflight_range(limits);
        cfg.inflight = narrow("inflight", self.inflight, &range, note)?;
        let (range, note) = ClientConfig::max_subscriptions_range(limits);
        cfg.max_subscriptions = self
            .max_subscriptions
            .map(|n| narrow("max_subscriptions", n, &range, note))
            .transpose()?;
        cfg.policy_check = self
            .policy_violation
            .map(PolicyCheckOptions::build)
            .transpose()?;
        cfg.validate()?;
        Ok(cfg)
    }
}

impl WillOptions {
    fn build(self) -> Result<Will> {
        Ok(Will {
            topic: self.topic,
            payload: Bytes::from(self.payload),
            qos: QoS::from_u8(self.qos)?,
            retain: self.retain,
        })
    }
}

impl ReconnectOptions {
    fn build(self) -> Result<ReconnectConfig> {
        Ok(ReconnectConfig {
            min_delay: duration_from_secs("Reconnect.min_delay", self.min_delay)?,
            max_delay: duration_from_secs("Reconnect.max_delay", self.max_delay)?,
            jitter: self.jitter,
            max_attempts: narrow(
                "Reconnect.max_attempts",
                self.max_attempts,
                &(0..=i64::from(u32::MAX)),
                " (0 = unlimited)",
            )?,
            reset_after: duration_from_secs("Reconnect.reset_after", self.reset_after)?,
        })
    }
}

impl PolicyCheckOptions {
    fn build(self) -> Result<PolicyCheck> {
        Ok(PolicyCheck {
            count: narrow(
                "PolicyViolationCheck.count",
                self.count,
                &POLICY_COUNT_RANGE,
                "",
            )?,
            window: duration_from_secs("PolicyViolationCheck.window", self.window)?,
        })
    }
}

/// Converts an integer option to its type, refusing values outside `range` (which fits `T`).
fn narrow<T: TryFrom<i64>>(
    what: &str,
    value: i64,
    range: &RangeInclusive<i64>,
    note: &str,
) -> Result<T> {
    check_range(what, value, range, note)?;
    T::try_from(value).map_err(|_| Error::Config(format!("{what} is out of range: {value}")))
}

/// The value given in `Client` or in `CustomAuth`, refusing both.
fn one_of<T>(what: &str, client: Option<T>, custom: Option<T>) -> Result<Option<T>> {
    match (client, custom) {
        (Some(_), Some(_)) => Err(Error::Config(format!(
            "give the {what} either in CustomAuth or in Client, not both"
        ))),
        (client, custom) => Ok(client.or(custom)),
    }
}

/// What the transport leaves for the CONNECT packet.
#[derive(Default)]
struct ConnectAuth {
    /// The custom authorizer (for its user name and password).
    custom: Option<CustomAuth>,
    /// Authorizer fields that go in the user name.
    username_fields: custom_auth::AuthorizerFields,
}

/// TCP, TLS or WebSocket, with the TLS configuration (CA, client certificate, ALPN) and the
/// upgrade request (SigV4, custom-authorizer headers and query).
fn transport(
    auth: AuthOptions,
    tls: bool,
    ca_pem: Option<Vec<u8>>,
    alpn: Vec<String>,
) -> Result<(Transport, ConnectAuth)> {
    let websocket = auth.websocket();
    let client_auth = match &auth {
        AuthOptions::Mtls { cert_pem, key_pem } => Some(ClientIdentity {
            cert_pem: cert_pem.clone(),
            key_pem: key_pem.clone(),
        }),
        _ => None,
    };
    let tls = if tls {
        Some(tls::client_config(&TlsOptions {
            ca_pem,
            client_auth,
            alpn: alpn.into_iter().map(String::into_bytes).collect(),
        })?)
    } else {
        None
    };
    let mut ws = WebSocket::default();
    let mut connect = ConnectAuth::default();
    match auth {
        AuthOptions::None | AuthOptions::Mtls { .. } => {}
        AuthOptions::SigV4 {
            region,
            credentials,
        } => {
            ws.sigv4 = Some(SigV4 {
                region,
                credentials: Arc::new(credentials::Cached::new(credentials, CREDENTIALS_MARGIN)),
            });
        }
        AuthOptions::Custom(custom) => {
            let placed = custom.place()?;
            ws.headers = placed.headers;
            ws.query = placed.query;
            connect.username_fields = placed.username_fields;
            connect.custom = Some(custom);
        }
    }
    let transport = match (websocket, tls) {
        (true, tls) => Transport::WebSocket { tls, ws },
        (false, Some(tls)) => Transport::Tls(tls),
        (false, None) => Transport::Tcp,
    };
    Ok((transport, connect))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::auth::custom_auth::{NAME_KEY, SIGNATURE_KEY};
    use crate::core::auth::sigv4::AwsCredentials;

    const SECRET: &str = "S3NTINEL";

    /// Sets one option.
    type Edit = fn(&mut ClientOptions);

    fn plain() -> ClientOptions {
        let mut o = ClientOptions::new("localhost");
        o.tls = false;
        o.limits = "mqtt".into();
        o
    }

    fn err(o: ClientOptions) -> String {
        let e = o.build().unwrap_err().to_string();
        assert!(!e.contains(SECRET), "{e}");
        e
    }

    fn sigv4() -> AuthOptions {
        AuthOptions::SigV4 {
            region: "us-east-1".into(),
            credentials: Arc::new(credentials::Static(AwsCredentials {
                access_key_id: "AKID".into(),
                secret_access_key: Secret::new(SECRET.into()),
                session_token: None,
                expiry: None,
            })),
        }
    }

    fn custom() -> CustomAuth {
        CustomAuth {
            authorizer_name: Some("Auth".into()),
            signature: Some(Secret::new(format!("{SECRET}-sig"))),
            token_key_name: Some("tok".into()),
            token: Some(Secret::new(format!("{SECRET}-token"))),
            ..CustomAuth::default()
        }
    }

    #[test]
    fn the_defaults_build() {
        let c = ClientOptions::new("example-ats.iot.us-east-1.amazonaws.com")
            .build()
            .unwrap();
        assert_eq!(c.port, 8883);
        assert_eq!(c.inflight, 100);
        assert_eq!(c.keep_alive, Duration::from_secs(30));
        assert_eq!(c.reconnect, Some(ReconnectConfig::default()));
        assert_eq!(c.offline_queue, OfflineQueueConfig::default());
        assert_eq!(c.policy_check, Some(PolicyCheck::default()));
        assert!(matches!(c.transport, Transport::Tls(_)));
        assert!(c.client_id.starts_with("awsiot-rs-") && !c.client_id_given);
        let c = plain().build().unwrap();
        assert_eq!(c.port, 1883);
        assert!(matches!(c.transport, Transport::Tcp));
    }

    #[test]
    fn the_port_follows_the_auth_and_tls() {
        let mut o = ClientOptions::new("h");
        o.auth = sigv4();
        assert_eq!(o.clone().build().unwrap().port, 443);
        o.auth = AuthOptions::Custom(custom());
        assert_eq!(o.build().unwrap().port, 443);
        assert_eq!(AuthOptions::Custom(custom()).default_port(false), 80);
        assert_eq!(AuthOptions::None.default_port(true), 8883);
    }

    #[test]
    fn alpn_follows_auth_and_port() {
        let mtls = AuthOptions::Mtls {
            cert_pem: Vec::new(),
            key_pem: Secret::new(Vec::new()),
        };
        assert_eq!(mtls.default_alpn(443), ["x-amzn-mqtt-ca"]);
        assert!(mtls.default_alpn(8883).is_empty());
        assert_eq!(AuthOptions::Custom(custom()).default_alpn(443), ["mqtt"]);
        let ws = CustomAuth {
            websockets: true,
            ..custom()
        };
        assert!(AuthOptions::Custom(ws).default_alpn(443).is_empty());
        assert!(sigv4().default_alpn(443).is_empty());
        let mut o = ClientOptions::new("h");
        o.auth = AuthOptions::Custom(custom());
        let c = o.clone().build().unwrap();
        assert!(
            matches!(&c.transport, Transport::Tls(t) if t.alpn_protocols == [b"mqtt".to_vec()])
        );
        o.alpn = Some(vec![String::new()]);
        assert!(err(o).contains("alpn"));
    }

    #[test]
    fn tls_false_is_refused_with_any_auth_or_ca() {
        for auth in [sigv4(), AuthOptions::Custom(custom())] {
            let mut o = plain();
            o.auth = auth;
            let e = err(o);
            assert!(e.contains("tls=False") && e.contains("cleartext"), "{e}");
        }
        let mut o = plain();
        o.ca_pem = Some(b"-----BEGIN CERTIFICATE-----".to_vec());
        assert!(err(o).contains("tls=False cannot be combined with ca"));
    }

    #[test]
    fn every_integer_bound_names_the_option_and_the_range() {
        let cases: Vec<(Edit, &str)> = vec![
            (|o| o.port = Some(0), "port must be 1..=65535, not 0"),
            (
                |o| o.port = Some(70_000),
                "port must be 1..=65535, not 70000",
            ),
            (|o| o.inflight = 0, "inflight must be 1..=65535, not 0"),
            (
                |o| o.inflight = 65_536,
                "inflight must be 1..=65535, not 65536",
            ),
            (
                |o| o.max_subscriptions = Some(0),
                "max_subscriptions must be at least 1, not 0",
            ),
            (
                |o| o.offline_queue.limit = -1,
                "OfflineQueue.limit must be at least 0, not -1",
            ),
            (
                |o| {
                    o.reconnect = Some(ReconnectOptions {
                        max_attempts: -1,
                        ..Default::default()
                    })
                },
                "Reconnect.max_attempts must be 0..=4294967295 (0 = unlimited), not -1",
            ),
            (
                |o| {
                    o.policy_violation = Some(PolicyCheckOptions {
                        count: 0,
                        window: 2.0,
                    })
                },
                "PolicyViolationCheck.count must be 1..=4294967295, not 0",
            ),
            (
                |o| {
                    o.will = Some(WillOptions {
                        topic: "w".into(),
                        qos: 2,
                        ..Default::default()
                    })
                },
                "QoS 2",
            ),
            (
                |o| o.limits = "strict".into(),
                "limits must be \"aws\" or \"mqtt\"",
            ),
        ];
        for (set, expected) in cases {
            let mut o = plain();
            set(&mut o);
            let e = err(o);
            assert!(e.contains(expected), "{e:?} lacks {expected:?}");
        }
    }

    #[test]
    fn aws_bounds_apply_with_aws_limits() {
        let mut o = ClientOptions::new("h");
        o.inflight = 101;
        assert!(err(o.clone()).contains("inflight must be 1..=100 with limits=\"aws\""));
        o.inflight = 100;
        o.max_subscriptions = Some(51);
        assert!(err(o.clone()).contains("max_subscriptions must be 1..=50"));
        o.max_subscriptions = Some(50);
        o.keep_alive = 29.0;
        assert!(err(o).contains("30 to 1200"));
        let mut o = plain();
        o.inflight = 65_535;
        o.max_subscriptions = Some(1_000_000);
        o.keep_alive = 0.0;
        assert!(o.build().is_ok());
    }

    #[test]
    fn durations_are_converted_and_bounded() {
        let cases: Vec<(Edit, &str)> = vec![
            (
                |o| o.keep_alive = -1.0,
                "keep_alive must be a finite number of seconds >= 0",
            ),
            (|o| o.keep_alive = 1.5, "whole number"),
            (
                |o| o.operation_timeout = 0.0,
                "operation_timeout must be greater than 0",
            ),
            (
                |o| o.connect_timeout = f64::NAN,
                "connect_timeout must be a finite",
            ),
            (|o| o.connect_timeout = 1e19, "one year"),
            (
                |o| {
                    o.reconnect = Some(ReconnectOptions {
                        min_delay: 5.0,
                        max_delay: 1.0,
                        ..Default::default()
                    })
                },
                "max_delay",
            ),
            (
                |o| {
                    o.reconnect = Some(ReconnectOptions {
                        reset_after: f64::INFINITY,
                        ..Default::default()
                    })
                },
                "Reconnect.reset_after",
            ),
            (
                |o| {
                    o.policy_violation = Some(PolicyCheckOptions {
                        count: 3,
                        window: 0.0,
                    })
                },
                "PolicyViolationCheck.window must be greater than 0",
            ),
        ];
        for (set, expected) in cases {
            let mut o = plain();
            set(&mut o);
            let e = err(o);
            assert!(e.contains(expected), "{e:?} lacks {expected:?}");
        }
        let mut o = plain();
        o.reconnect = None;
        o.policy_violation = None;
        o.operation_timeout = 0.25;
        let c = o.build().unwrap();
        assert_eq!((c.reconnect, c.policy_check), (None, None));
        assert_eq!(c.operation_timeout, Duration::from_millis(250));
    }

    #[test]
    fn custom_authorizer_fields_go_in_the_user_name_over_mqtt() {
        let mut o = ClientOptions::new("h");
        o.auth = AuthOptions::Custom(CustomAuth {
            username: Some("alice".into()),
            password: Some(Secret::new(SECRET.into())),
            ..custom()
        });
        let c = o.build().unwrap();
        assert_eq!(
            c.username.as_deref(),
            Some(
                format!("alice?{NAME_KEY}=Auth&{SIGNATURE_KEY}=S3NTINEL-sig&tok=S3NTINEL-token")
                    .as_str()
            )
        );
        assert_eq!(c.password.unwrap().expose(), SECRET.as_bytes());
        assert!(matches!(c.transport, Transport::Tls(_)));
    }

    #[test]
    fn custom_authorizer_fields_go_where_credentials_in_says_over_websocket() {
        for (placement, in_headers, in_query, in_user) in [
            ("headers", true, false, false),
            ("query", false, true, false),
            ("username", false, false, true),
        ] {
            let mut o = ClientOptions::new("h");
            o.username = Some("bob".into());
            o.auth = AuthOptions::Custom(CustomAuth {
                websockets: true,
                credentials_in: placement.into(),
                headers: vec![("x-extra".into(), Secret::new("1".into()))],
                ..custom()
            });
            let c = o.build().unwrap();
            let Transport::WebSocket { tls, ws } = &c.transport else {
                panic!("{:?}", c.transport)
            };
            assert!(tls.is_some() && ws.sigv4.is_none());
            let has = |v: &[(String, Secret<String>)]| v.iter().any(|(k, _)| k == NAME_KEY);
            assert_eq!(has(&ws.headers), in_headers, "{placement}");
            assert_eq!(has(&ws.query), in_query, "{placement}");
            assert!(ws.headers.iter().any(|(k, _)| k == "x-extra"));
            let user = c.username.unwrap();
            assert_eq!(user.contains(NAME_KEY), in_user, "{placement}");
            assert!(user.starts_with("bob"));
        }
    }

    #[test]
    fn custom_authorizer_mistakes_are_refused_without_secrets() {
        let cases: Vec<(CustomAuth, &str)> = vec![
            (
                CustomAuth {
                    credentials_in: "body".into(),
                    ..custom()
                },
                "credentials_in must be \"headers\", \"query\" or \"username\", not \"body\"",
            ),
            (
                CustomAuth {
                    token_key_name: None,
                    ..custom()
                },
                "token and token_key_name go together",
            ),
            (
                CustomAuth {
                    query: vec![("q".into(), Secret::new("v".into()))],
                    ..custom()
                },
                "need websockets=True",
            ),
            (
                CustomAuth {
                    websockets: true,
                    headers: vec![("bad header".into(), Secret::new(SECRET.into()))],
                    ..custom()
                },
                "not a valid HTTP header name",
            ),
            (
                CustomAuth {
                    websockets: true,
                    token: Some(Secret::new(format!("{SECRET}\r\n"))),
                    ..custom()
                },
                "visible ASCII",
            ),
        ];
        for (auth, expected) in cases {
            let auth = AuthOptions::Custom(auth);
            let early = auth.validate().unwrap_err().to_string();
            let mut o = ClientOptions::new("h");
            o.auth = auth;
            let e = err(o);
            assert_eq!(e, early);
            assert!(e.contains(expected), "{e:?} lacks {expected:?}");
        }
    }

    #[test]
    fn the_user_name_and_password_come_from_one_place() {
        let mut o = ClientOptions::new("h");
        o.username = Some("a".into());
        o.auth = AuthOptions::Custom(CustomAuth {
            username: Some("b".into()),
            ..custom()
        });
        assert!(err(o).contains("user name either in CustomAuth or in Client"));
        let mut o = ClientOptions::new("h");
        o.password = Some(Secret::new(SECRET.into()));
        o.auth = AuthOptions::Custom(CustomAuth {
            password: Some(Secret::new(SECRET.into())),
            ..custom()
        });
        assert!(err(o).contains("password either in CustomAuth or in Client"));
    }

    #[test]
    fn sigv4_goes_over_websocket_and_checks_the_region() {
        let mut o = ClientOptions::new("h");
        o.auth = sigv4();
        let c = o.build().unwrap();
        assert!(
            matches!(&c.transport, Transport::WebSocket { ws, .. } if ws.sigv4.as_ref().is_some_and(|s| s.region == "us-east-1"))
        );
        for bad in ["", "US East", "us_east_1"] {
            let mut auth = sigv4();
            if let AuthOptions::SigV4 { region, .. } = &mut auth {
                *region = bad.into();
            }
            assert!(
                auth.validate().unwrap_err().to_string().contains("region"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_client_certificate_is_checked_when_built() {
        let mut o = ClientOptions::new("h");
        o.auth = AuthOptions::Mtls {
            cert_pem: b"garbage".to_vec(),
            key_pem: Secret::new(SECRET.as_bytes().to_vec()),
        };
        assert!(matches!(o.build(), Err(Error::Config(_))));
        let mut o = ClientOptions::new("h");
        o.ca_pem = Some(b"garbage".to_vec());
        assert!(err(o).contains("CA file"));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let mut o = ClientOptions::new("h");
        o.password = Some(Secret::new(SECRET.into()));
        o.auth = AuthOptions::Custom(CustomAuth {
            headers: vec![("h".into(), Secret::new(SECRET.into()))],
            ..custom()
        });
        let d = format!("{o:?}");
        assert!(!d.contains(SECRET) && d.contains("Auth"), "{d}");
    }
}
