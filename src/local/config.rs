//! How a local core is set up: listener addresses, the dialect's limits, session expiry.

use std::net::IpAddr;
use std::time::Duration;

use crate::core::protocol::topic::Limits;
use crate::local::error::{LocalError, LocalResult};

/// What the core does with a QoS 2 PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Qos2Policy {
    /// Close the connection (what AWS IoT Core does to an MQTT 3.1.1 client in practice).
    #[default]
    Disconnect,
    /// Drop the message and send no acknowledgement (AWS's documented "doesn't send a PUBACK").
    Ignore,
}

impl Qos2Policy {
    /// Parses `"disconnect"` or `"ignore"`.
    ///
    /// # Errors
    /// [`LocalError::Config`] naming the allowed values.
    pub fn parse(s: &str) -> LocalResult<Self> {
        match s {
            "disconnect" => Ok(Self::Disconnect),
            "ignore" => Ok(Self::Ignore),
            other => Err(LocalError::Config(format!(
                "qos2 must be \"disconnect\" or \"ignore\", not {other:?}"
            ))),
        }
    }
}

/// The longest persistent-session expiry AWS allows (7 days).
pub const MAX_SESSION_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Everything a [`crate::local::LocalCore`] is started with.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The address every listener binds (loopback by default).
    pub host: IpAddr,
    /// mTLS port (AWS's 8883); 0 picks a free one.
    pub mqtt_port: u16,
    /// mTLS port that also requires ALPN `x-amzn-mqtt-ca` (AWS's 443 for X.509); 0 picks one.
    pub alpn_port: u16,
    /// TLS port requiring ALPN `mqtt` and a custom-authorizer user name; 0 picks one.
    pub custom_auth_port: u16,
    /// WebSocket over TLS (`/mqtt`) with SigV4 or a custom authorizer; 0 picks one.
    pub wss_port: u16,
    /// `Aws` enforces AWS IoT's quotas and disconnects like AWS; `Mqtt` plain MQTT 3.1.1 rules.
    pub limits: Limits,
    /// What a QoS 2 PUBLISH does.
    pub qos2: Qos2Policy,
    /// How long a persistent session outlives its connection.
    pub persistent_session_expiry: Duration,
    /// Bound on each TLS / WebSocket handshake and on the wait for CONNECT.
    pub handshake_timeout: Duration,
    /// Bound on one custom-authorizer call (AWS's Lambda timeout is 5 s).
    pub authorizer_timeout: Duration,
    /// Undelivered QoS 1 messages kept per persistent session (the oldest go first beyond it),
    /// and the bound of a connected client's backlog.
    pub max_stored_messages: usize,
    /// Messages that may wait in a connection's queue before further ones go to its session's
    /// backlog.
    pub connection_queue: usize,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            mqtt_port: 0,
            alpn_port: 0,
            custom_auth_port: 0,
            wss_port: 0,
            limits: Limits::Aws,
            qos2: Qos2Policy::Disconnect,
            persistent_session_expiry: Duration::from_secs(3600),
            handshake_timeout: Duration::from_secs(10),
            authorizer_timeout: Duration::from_secs(5),
            max_stored_messages: 10_000,
            connection_queue: 4096,
        }
    }
}

impl LocalConfig {
    /// Checks the values a user may get wrong.
    ///
    /// # Errors
    /// [`LocalError::Config`] naming the field and what is allowed.
    pub fn validate(&self) -> LocalResult<()> {
        if self.persistent_session_expiry > MAX_SESSION_EXPIRY {
            return Err(LocalError::Config(format!(
                "persistent_session_expiry must be at most {} s (7 days, AWS's maximum)",
                MAX_SESSION_EXPIRY.as_secs()
            )));
        }
        if self.connection_queue == 0 || self.max_stored_messages == 0 {
            return Err(LocalError::Config(
                "connection_queue and max_stored_messages must be at least 1".into(),
            ));
        }
        if self.handshake_timeout.is_zero() || self.authorizer_timeout.is_zero() {
            return Err(LocalError::Config(
                "handshake and authorizer timeouts must be positive".into(),
            ));
        }
        let ports = [
            self.mqtt_port,
            self.alpn_port,
            self.custom_auth_port,
            self.wss_port,
        ];
        for (i, p) in ports.iter().enumerate() {
            if *p != 0 && ports.iter().skip(i + 1).any(|q| q == p) {
                return Err(LocalError::Config(format!(
                    "port {p} is given to two listeners; each listener needs its own port (or 0)"
                )));
            }
        }
        Ok(())
    }

    /// The keep-alive AWS applies to a CONNECT's value (30..=1200 s; 0 means 1200), or the
    /// client's own value under plain MQTT rules (`None` for 0: no keep-alive).
    #[must_use]
    pub fn effective_keep_alive(&self, requested: u16) -> Option<Duration> {
        match self.limits {
            Limits::Aws => {
                let secs = match requested {
                    0 => 1200,
                    s => s.clamp(30, 1200),
                };
                Some(Duration::from_secs(u64::from(secs)))
            }
            Limits::Mqtt if requested == 0 => None,
            Limits::Mqtt => Some(Duration::from_secs(u64::from(requested))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_keep_alive_is_clamped_to_30_through_1200() {
        let c = LocalConfig::default();
        assert_eq!(c.effective_keep_alive(0), Some(Duration::from_secs(1200)));
        assert_eq!(c.effective_keep_alive(5), Some(Duration::from_secs(30)));
        assert_eq!(c.effective_keep_alive(60), Some(Duration::from_secs(60)));
        assert_eq!(
            c.effective_keep_alive(5000),
            Some(Duration::from_secs(1200))
        );
        let m = LocalConfig {
            limits: Limits::Mqtt,
            ..LocalConfig::default()
        };
        assert_eq!(m.effective_keep_alive(0), None);
        assert_eq!(m.effective_keep_alive(5), Some(Duration::from_secs(5)));
    }

    #[test]
    fn a_port_given_twice_and_an_expiry_beyond_seven_days_are_refused() {
        let c = LocalConfig {
            mqtt_port: 4000,
            wss_port: 4000,
            ..LocalConfig::default()
        };
        assert!(c.validate().is_err());
        let c = LocalConfig {
            persistent_session_expiry: MAX_SESSION_EXPIRY + Duration::from_secs(1),
            ..LocalConfig::default()
        };
        assert!(c.validate().is_err());
        assert!(LocalConfig::default().validate().is_ok());
        assert!(Qos2Policy::parse("nope").is_err());
    }
}
