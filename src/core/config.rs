//! Client configuration and its validation. Everything a later layer would assert or panic on is
//! rejected here with [`Error::Config`] (or [`Error::Topic`] / [`Error::PayloadTooLarge`]),
//! before any network I/O.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

use crate::core::error::{Error, Result};
use crate::core::net::proxy::Proxy;
use crate::core::net::transport::Transport;
use crate::core::protocol::topic::{self, Limits};
use crate::core::secret::Secret;

/// AWS IoT: maximum payload of one PUBLISH (128 KiB).
pub const AWS_MAX_PAYLOAD: usize = 128 * 1024;
/// Plain MQTT mode: maximum payload we send or accept (16 MiB; the protocol allows 256 MiB).
pub const MQTT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// AWS IoT: maximum client id size in bytes.
pub const AWS_MAX_CLIENT_ID: usize = 128;
/// AWS IoT: maximum filters in one SUBSCRIBE.
pub const AWS_MAX_FILTERS_PER_SUBSCRIBE: usize = 8;
/// AWS IoT: allowed keep-alive range in seconds.
pub const AWS_KEEP_ALIVE_SECS: std::ops::RangeInclusive<u64> = 30..=1200;
/// AWS IoT: maximum subscriptions (distinct filters) per connection.
pub const AWS_MAX_SUBSCRIPTIONS: usize = 50;
/// AWS IoT: most un-acknowledged QoS 1 publishes per connection.
pub const AWS_MAX_INFLIGHT: u16 = 100;
/// Allowed ports.
pub const PORT_RANGE: RangeInclusive<i64> = 1..=65_535;
/// Allowed `PolicyViolationCheck.count` (drops in a row).
pub const POLICY_COUNT_RANGE: RangeInclusive<i64> = 1..=u32::MAX as i64;
/// MQTT 3.1.1 encodes the will message with a 16-bit length.
pub const MAX_WILL_PAYLOAD: usize = 65_535;
/// The longest duration accepted anywhere (timeouts, delays): one year. Longer values would
/// overflow clock arithmetic and mean "never" in practice.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// MQTT quality of service levels this client supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QoS {
    /// At most once.
    AtMostOnce = 0,
    /// At least once (acknowledged with PUBACK).
    AtLeastOnce = 1,
}

impl QoS {
    /// Converts 0 or 1; QoS 2 and anything else is refused with a reason.
    ///
    /// # Errors
    /// [`Error::Config`] for values other than 0 and 1.
    pub fn from_u8(value: i64) -> Result<Self> {
        match value {
            0 => Ok(Self::AtMostOnce),
            1 => Ok(Self::AtLeastOnce),
            2 => Err(Error::Config(
                "QoS 2 is not supported: AWS IoT Core never acknowledges QoS 2 (use qos=0 or qos=1)"
                    .into(),
            )),
            other => Err(Error::Config(format!("qos must be 0 or 1, not {other}"))),
        }
    }

    pub(crate) fn to_mqtt(self) -> rumqttc::QoS {
        match self {
            Self::AtMostOnce => rumqttc::QoS::AtMostOnce,
            Self::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        }
    }
}

/// The MQTT last will.
#[derive(Debug, Clone)]
pub struct Will {
    /// Topic the broker publishes the will to.
    pub topic: String,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Whether the will is retained.
    pub retain: bool,
}

/// Automatic reconnect settings (exponential backoff with full jitter).
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectConfig {
    /// First delay.
    pub min_delay: Duration,
    /// Largest delay.
    pub max_delay: Duration,
    /// Full jitter: each delay is uniform in `[min_delay, computed]`.
    pub jitter: bool,
    /// Attempts before giving up; 0 = unlimited.
    pub max_attempts: u32,
    /// The backoff resets only after staying connected this long.
    pub reset_after: Duration,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            jitter: true,
            max_attempts: 0,
            reset_after: Duration::from_secs(30),
        }
    }
}

/// What happens to operations submitted while the connection is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineQueueConfig {
    /// How many operations may wait; more raise `QueueFull`.
    pub limit: usize,
    /// Whether QoS 0 publishes wait too (otherwise they fail at once).
    pub qos0: bool,
}

/// Detection of AWS IoT's answer to an operation its policy forbids (over MQTT 3.1.1 it closes
/// the connection): when the connection drops within `window` after the same un-acknowledged
/// operation was sent, `count` times in a row, that operation is failed with
/// [`Error::PolicyViolationSuspected`] and no longer resent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyCheck {
    /// Drops in a row that condemn the operation (at least 1).
    pub count: u32,
    /// How soon after sending the drop must come.
    pub window: Duration,
}

impl Default for PolicyCheck {
    fn default() -> Self {
        Self {
            count: 3,
            window: Duration::from_secs(2),
        }
    }
}

/// Converts a number of seconds from a host language, refusing what is not a duration.
///
/// # Errors
/// [`Error::Config`] for NaN, infinities, negative values and values above [`MAX_DURATION`].
pub fn duration_from_secs(what: &str, secs: f64) -> Result<Duration> {
    let d = Duration::try_from_secs_f64(secs).map_err(|_| {
        Error::Config(format!(
            "{what} must be a finite number of seconds >= 0, not {secs}"
        ))
    })?;
    if d > MAX_DURATION {
        return Err(Error::Config(format!(
            "{what} is {secs} s; the maximum is {} s (one year)",
            MAX_DURATION.as_secs()
        )));
    }
    Ok(d)
}

/// The one phrasing of an integer bound: `what must be lo..=hi, not value` (`at least lo` when
/// there is no practical upper bound).
///
/// # Errors
/// [`Error::Config`] when `value` is outside `range`.
pub fn check_range(what: &str, value: i64, range: &RangeInclusive<i64>, note: &str) -> Result<()> {
    if range.contains(&value) {
        return Ok(());
    }
    let allowed = if *range.end() == i64::MAX {
        format!("at least {}", range.start())
    } else {
        format!("{}..={}", range.start(), range.end())
    };
    // A host language saturates integers beyond i64 (see the binding): say so.
    let beyond = match value {
        i64::MAX => " or more",
        i64::MIN => " or less",
        _ => "",
    };
    Err(Error::Config(format!(
        "{what} must be {allowed}{note}, not {value}{beyond}"
    )))
}

/// The size of one subscription's message queue (`queue_size`): at least 1.
///
/// # Errors
/// [`Error::Config`] below 1.
pub fn queue_size(value: i64) -> Result<usize> {
    check_range("queue_size", value, &(1..=i64::MAX), "")?;
    usize::try_from(value).map_err(|_| Error::Config(format!("queue_size {value} is too large")))
}

impl Default for OfflineQueueConfig {
    fn default() -> Self {
        Self {
            limit: 1000,
            qos0: false,
        }
    }
}

/// Everything a [`crate::core::Client`] needs. Build it, then [`ClientConfig::validate`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Broker host name (also the TLS server name).
    pub endpoint: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id (generated by [`ClientConfig::new`] when not set).
    pub client_id: String,
    /// Whether the application chose the client id.
    pub client_id_given: bool,
    /// Transport.
    pub transport: Transport,
    /// MQTT CONNECT user name.
    pub username: Option<String>,
    /// MQTT CONNECT password.
    pub password: Option<Secret<Vec<u8>>>,
    /// Keep-alive interval (0 disables pings; only with `Limits::Mqtt`).
    pub keep_alive: Duration,
    /// MQTT clean session flag.
    pub clean_session: bool,
    /// Last will.
    pub will: Option<Will>,
    /// Which limits apply.
    pub limits: Limits,
    /// How long an operation waits for its acknowledgement.
    pub operation_timeout: Duration,
    /// How long a connection attempt (TCP + TLS + CONNACK) may take.
    pub connect_timeout: Duration,
    /// Reconnect settings; `None` disables automatic reconnect.
    pub reconnect: Option<ReconnectConfig>,
    /// Offline queue settings.
    pub offline_queue: OfflineQueueConfig,
    /// Per-packet traffic log file.
    pub log_file: Option<PathBuf>,
    /// Maximum un-acknowledged outgoing packets (packet ids in use).
    pub inflight: u16,
    /// Most distinct filters the connection holds at the broker (`None`: the limits' default,
    /// [`AWS_MAX_SUBSCRIPTIONS`] on AWS, unbounded for plain MQTT).
    pub max_subscriptions: Option<usize>,
    /// Policy-violation loop detection (`None` disables it).
    pub policy_check: Option<PolicyCheck>,
    /// HTTP CONNECT proxy every connection goes through (`None`: direct).
    pub proxy: Option<Proxy>,
}

/// A client id like `awsiot-rs-3f9a0c1d2e4b`.
#[must_use]
pub fn generated_client_id() -> String {
    let n: u64 = rand::random();
    format!("awsiot-rs-{:012x}", n & 0xffff_ffff_ffff)
}

impl ClientConfig {
    /// A configuration with the documented defaults.
    #[must_use]
    pub fn new(endpoint: impl Into<String>, port: u16, transport: Transport) -> Self {
        Self {
            endpoint: endpoint.into(),
            port,
            client_id: generated_client_id(),
            client_id_given: false,
            transport,
            username: None,
            password: None,
            keep_alive: Duration::from_secs(30),
            clean_session: true,
            will: None,
            limits: Limits::Aws,
            operation_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            reconnect: Some(ReconnectConfig::default()),
            offline_queue: OfflineQueueConfig::default(),
            log_file: None,
            inflight: 100,
            max_subscriptions: None,
            policy_check: Some(PolicyCheck::default()),
            proxy: None,
        }
    }

    /// The cap on distinct filters held at the broker, if any.
    #[must_use]
    pub fn subscription_cap(&self) -> Option<usize> {
        match (self.max_subscriptions, self.limits) {
            (Some(n), _) => Some(n),
            (None, Limits::Aws) => Some(AWS_MAX_SUBSCRIPTIONS),
            (None, Limits::Mqtt) => None,
        }
    }

    /// Largest payload allowed by the limits.
    #[must_use]
    pub fn max_payload(&self) -> usize {
        match self.limits {
            Limits::Aws => AWS_MAX_PAYLOAD,
            Limits::Mqtt => MQTT_MAX_PAYLOAD,
        }
    }

    /// Largest incoming packet accepted (payload + the longest topic + headers).
    #[must_use]
    pub fn max_incoming_packet(&self) -> usize {
        self.max_payload() + 65_535 + 16
    }

    /// Checks every field. Call before connecting; the Python layer calls it at construction.
    ///
    /// # Errors
    /// The first problem found, as [`Error::Config`], [`Error::Topic`] or
    /// [`Error::PayloadTooLarge`].
    pub fn validate(&self) -> Result<()> {
        validate_endpoint(&self.endpoint)?;
        check_range("port", self.port.into(), &PORT_RANGE, "")?;
        self.validate_client_id()?;
        if let Some(user) = &self.username {
            if user.len() > 65_535 {
                return Err(Error::Config("username is longer than 65535 bytes".into()));
            }
        }
        if let Some(pw) = &self.password {
            if pw.expose().len() > 65_535 {
                return Err(Error::Config("password is longer than 65535 bytes".into()));
            }
        }
        self.validate_keep_alive()?;
        if let Some(will) = &self.will {
            topic::validate_topic(&will.topic, self.limits)
                .map_err(|e| Error::Topic(format!("will: {e}")))?;
            self.check_payload(will.payload.len())?;
            if will.payload.len() > MAX_WILL_PAYLOAD {
                return Err(Error::PayloadTooLarge {
                    size: will.payload.len(),
                    max: MAX_WILL_PAYLOAD,
                    limits: "MQTT 3.1.1 will message",
                });
            }
        }
        check_duration("operation_timeout", self.operation_timeout)?;
        check_duration("connect timeout", self.connect_timeout)?;
        if let Some(cap) = self.max_subscriptions {
            let (range, note) = Self::max_subscriptions_range(self.limits);
            check_range("max_subscriptions", saturating(cap), &range, note)?;
        }
        if let Some(p) = &self.policy_check {
            check_range(
                "PolicyViolationCheck.count",
                p.count.into(),
                &POLICY_COUNT_RANGE,
                "",
            )?;
            check_duration("PolicyViolationCheck.window", p.window)?;
        }
        if let Some(r) = &self.reconnect {
            check_duration("reconnect min_delay", r.min_delay)?;
            check_duration("reconnect max_delay", r.max_delay)?;
            if r.reset_after > MAX_DURATION {
                return Err(Error::Config(
                    "reconnect reset_after must be at most one year".into(),
                ));
            }
            if r.max_delay < r.min_delay {
                return Err(Error::Config(format!(
                    "reconnect max_delay ({:?}) must be at least min_delay ({:?})",
                    r.max_delay, r.min_delay
                )));
            }
        }
        let (range, note) = Self::inflight_range(self.limits);
        check_range("inflight", self.inflight.into(), &range, note)
    }

    /// Allowed `inflight` (un-acknowledged QoS 1 publishes) under `limits`, and the reason
    /// shown with a refusal: AWS IoT's quota, else the 16-bit packet id space.
    #[must_use]
    pub fn inflight_range(limits: Limits) -> (RangeInclusive<i64>, &'static str) {
        match limits {
            Limits::Aws => (
                1..=i64::from(AWS_MAX_INFLIGHT),
                " with limits=\"aws\" (AWS IoT's in-flight quota)",
            ),
            Limits::Mqtt => (1..=65_535, ""),
        }
    }

    /// Allowed `max_subscriptions` under `limits`, and the reason shown with a refusal.
    #[must_use]
    pub fn max_subscriptions_range(limits: Limits) -> (RangeInclusive<i64>, &'static str) {
        match limits {
            Limits::Aws => (
                1..=saturating(AWS_MAX_SUBSCRIPTIONS),
                " with limits=\"aws\" (AWS IoT's per-connection quota)",
            ),
            Limits::Mqtt => (1..=i64::MAX, ""),
        }
    }

    fn validate_client_id(&self) -> Result<()> {
        let id = &self.client_id;
        if !self.clean_session && (!self.client_id_given || id.is_empty()) {
            return Err(Error::Config(
                "clean_session=False (a persistent session) needs an explicit client_id".into(),
            ));
        }
        if id.is_empty() {
            return Err(Error::Config("client_id must not be empty".into()));
        }
        if id.contains('\0') {
            return Err(Error::Config("client_id must not contain NUL".into()));
        }
        match self.limits {
            Limits::Aws if id.len() > AWS_MAX_CLIENT_ID => Err(Error::Config(format!(
                "client_id is {} bytes; AWS IoT allows at most {AWS_MAX_CLIENT_ID} bytes",
                id.len()
            ))),
            Limits::Aws if id.starts_with('$') => Err(Error::Config(
                "client_id must not start with '$' (reserved by AWS IoT)".into(),
            )),
            Limits::Mqtt if id.len() > 65_535 => {
                Err(Error::Config("client_id is longer than 65535 bytes".into()))
            }
            _ => Ok(()),
        }
    }

    fn validate_keep_alive(&self) -> Result<()> {
        let ka = self.keep_alive;
        if ka.subsec_nanos() != 0 {
            return Err(Error::Config(format!(
                "keep_alive must be a whole number of seconds, not {}",
                ka.as_secs_f64()
            )));
        }
        let secs = ka.as_secs();
        match self.limits {
            Limits::Aws if !AWS_KEEP_ALIVE_SECS.contains(&secs) => Err(Error::Config(format!(
                "keep_alive is {secs} s; AWS IoT allows 30 to 1200 s (use limits=\"mqtt\" for other brokers)"
            ))),
            Limits::Mqtt if secs > 65_535 => Err(Error::Config(format!(
                "keep_alive is {secs} s; MQTT allows 0 to 65535 s"
            ))),
            _ => Ok(()),
        }
    }

    /// Checks a payload size against the limits.
    ///
    /// # Errors
    /// [`Error::PayloadTooLarge`].
    pub fn check_payload(&self, size: usize) -> Result<()> {
        let max = self.max_payload();
        if size > max {
            return Err(Error::PayloadTooLarge {
                size,
                max,
                limits: self.limits.as_str(),
            });
        }
        Ok(())
    }
}

/// A count as `i64` (for [`check_range`]), saturating.
fn saturating(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn check_duration(what: &str, d: Duration) -> Result<()> {
    if d.is_zero() {
        return Err(Error::Config(format!("{what} must be greater than 0")));
    }
    if d > MAX_DURATION {
        return Err(Error::Config(format!(
            "{what} is {} s; the maximum is {} s (one year)",
            d.as_secs(),
            MAX_DURATION.as_secs()
        )));
    }
    Ok(())
}

/// An endpoint is a host name or IP address, without scheme, port, path or spaces.
///
/// # Errors
/// [`Error::Config`].
pub fn validate_endpoint(endpoint: &str) -> Result<()> {
    if endpoint.is_empty() {
        return Err(Error::Config("endpoint must not be empty".into()));
    }
    if endpoint.contains("://") || endpoint.contains(['/', ' ', '?', '#', '@']) {
        return Err(Error::Config(format!(
            "endpoint {endpoint:?} must be a bare host name such as 'abc123-ats.iot.us-west-2.amazonaws.com' (no scheme, path or port)"
        )));
    }
    if rustls_pki_types::ServerName::try_from(endpoint).is_err() {
        return Err(Error::Config(format!(
            "endpoint {endpoint:?} is not a valid host name or IP address"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ClientConfig {
        let mut c = ClientConfig::new(
            "example-ats.iot.us-east-1.amazonaws.com",
            8883,
            Transport::Tcp,
        );
        c.client_id = "dev-1".into();
        c.client_id_given = true;
        c
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(base().validate(), Ok(()));
        let generated = ClientConfig::new("h", 1883, Transport::Tcp);
        assert!(generated.client_id.starts_with("awsiot-rs-"));
        assert_eq!(generated.validate(), Ok(()));
    }

    #[test]
    fn a_will_payload_longer_than_a_u16_length_is_refused() {
        let mut c = base();
        c.limits = Limits::Mqtt;
        c.will = Some(Will {
            topic: "w".into(),
            payload: Bytes::from(vec![0u8; 65_536]),
            qos: QoS::AtMostOnce,
            retain: false,
        });
        assert!(matches!(
            c.validate(),
            Err(Error::PayloadTooLarge { max: 65_535, .. })
        ));
        c.will = Some(Will {
            topic: "w".into(),
            payload: Bytes::from(vec![0u8; 65_535]),
            qos: QoS::AtMostOnce,
            retain: false,
        });
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn durations_beyond_a_year_are_refused_not_overflowed() {
        for bad in [1e19, f64::NAN, f64::INFINITY, -1.0, 4e7] {
            assert!(duration_from_secs("t", bad).is_err(), "{bad}");
        }
        assert_eq!(
            duration_from_secs("t", 1.5),
            Ok(Duration::from_millis(1500))
        );
        let mut c = base();
        c.operation_timeout = Duration::from_secs(u64::MAX / 4);
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_subscription_cap_follows_the_limits() {
        let mut c = base();
        assert_eq!(c.subscription_cap(), Some(AWS_MAX_SUBSCRIPTIONS));
        c.max_subscriptions = Some(51);
        assert!(c.validate().is_err());
        c.limits = Limits::Mqtt;
        assert_eq!(c.validate(), Ok(()));
        c.max_subscriptions = None;
        assert_eq!(c.subscription_cap(), None);
    }

    #[test]
    fn qos_2_is_refused_with_a_reason() {
        let err = QoS::from_u8(2).unwrap_err();
        assert!(err.to_string().contains("QoS 2 is not supported"));
        assert!(QoS::from_u8(-1).is_err());
        assert_eq!(QoS::from_u8(1), Ok(QoS::AtLeastOnce));
    }

    #[test]
    fn keep_alive_is_bounded_by_aws() {
        let mut c = base();
        c.keep_alive = Duration::from_secs(29);
        assert!(c.validate().unwrap_err().to_string().contains("30 to 1200"));
        c.keep_alive = Duration::from_secs(1201);
        assert!(c.validate().is_err());
        c.limits = Limits::Mqtt;
        assert!(c.validate().is_ok());
        c.keep_alive = Duration::from_millis(1500);
        assert!(c.validate().is_err());
        c.keep_alive = Duration::ZERO;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn client_id_rules() {
        let mut c = base();
        c.client_id = "x".repeat(129);
        assert!(c.validate().unwrap_err().to_string().contains("128"));
        c.limits = Limits::Mqtt;
        assert!(c.validate().is_ok());
        let mut c = ClientConfig::new("h", 1883, Transport::Tcp);
        c.clean_session = false;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("explicit client_id"));
    }

    #[test]
    fn endpoints_must_be_bare_hosts() {
        for bad in [
            "",
            "mqtts://h",
            "h/mqtt",
            "h:8883",
            "a b",
            "-bad-.example..com",
        ] {
            let mut c = base();
            c.endpoint = bad.into();
            assert!(c.validate().is_err(), "{bad}");
        }
        for good in [
            "localhost",
            "127.0.0.1",
            "a-ats.iot.eu-west-1.amazonaws.com",
        ] {
            assert!(validate_endpoint(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn payload_limits_follow_the_mode() {
        let mut c = base();
        assert!(c.check_payload(AWS_MAX_PAYLOAD).is_ok());
        assert!(matches!(
            c.check_payload(AWS_MAX_PAYLOAD + 1),
            Err(Error::PayloadTooLarge { .. })
        ));
        c.limits = Limits::Mqtt;
        assert!(c.check_payload(AWS_MAX_PAYLOAD + 1).is_ok());
    }

    #[test]
    fn will_is_validated() {
        let mut c = base();
        c.will = Some(Will {
            topic: "a/#".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
        });
        assert!(matches!(c.validate(), Err(Error::Topic(_))));
    }

    #[test]
    fn integer_bounds_have_one_phrasing() {
        let e = |v, r| check_range("n", v, &r, "").unwrap_err().to_string();
        assert_eq!(e(0, 1..=5), "n must be 1..=5, not 0");
        assert_eq!(e(-1, 0..=i64::MAX), "n must be at least 0, not -1");
        assert_eq!(
            e(i64::MAX, 1..=5),
            "n must be 1..=5, not 9223372036854775807 or more"
        );
        assert_eq!(
            e(i64::MIN, 1..=5),
            "n must be 1..=5, not -9223372036854775808 or less"
        );
        assert!(check_range("n", 5, &(1..=5), "").is_ok());
        assert_eq!(queue_size(1), Ok(1));
        assert!(queue_size(0)
            .unwrap_err()
            .to_string()
            .contains("queue_size must be at least 1"));
    }

    #[test]
    fn inflight_and_timeouts_are_checked() {
        let mut c = base();
        c.inflight = 0;
        assert!(c.validate().is_err());
        c.inflight = 101;
        assert!(c.validate().is_err());
        let mut c = base();
        c.operation_timeout = Duration::ZERO;
        assert!(c.validate().is_err());
    }
}
