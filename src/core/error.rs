//! The one error type of the core. Every failure a user can see is one of these variants; the
//! Python binding maps each variant to one exception class in one place (`src/py/errors.rs`).
//! Messages say what was wrong and what is allowed, and never contain secrets.

use std::time::Duration;

/// Why a connection ended or could not be made, as reported to `on_disconnect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The application called `disconnect()`.
    Client,
    /// The socket failed or was closed by the peer.
    Network,
    /// No PINGRESP (or any packet) arrived within the keep-alive bound.
    KeepAlive,
    /// The broker refused the credentials (CONNACK 4/5, HTTP 401/403).
    Auth,
    /// The TLS handshake failed.
    Tls,
    /// The broker sent something that is not valid MQTT 3.1.1.
    Protocol,
    /// The broker refused the connection for another reason or closed it deliberately.
    Server,
}

impl DisconnectReason {
    /// The lowercase name used by the public API (`DisconnectEvent.reason`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Network => "network",
            Self::KeepAlive => "keepalive",
            Self::Auth => "auth",
            Self::Tls => "tls",
            Self::Protocol => "protocol",
            Self::Server => "server",
        }
    }
}

/// Every error the core reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value, file or argument is invalid (nothing was sent).
    #[error("{0}")]
    Config(String),
    /// A topic name or filter is invalid for the configured limits (nothing was sent).
    #[error("{0}")]
    Topic(String),
    /// A payload exceeds the configured maximum (nothing was sent).
    #[error("payload is {size} bytes; the maximum is {max} bytes ({limits} limits)")]
    PayloadTooLarge {
        /// Size of the rejected payload.
        size: usize,
        /// The maximum allowed.
        max: usize,
        /// Which limits applied (`aws` or `mqtt`).
        limits: &'static str,
    },
    /// The TLS handshake failed (certificate not trusted, wrong host name, expired, ...).
    #[error("TLS handshake with {endpoint} failed: {message}")]
    Tls {
        /// The endpoint we tried to reach.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// The broker refused our credentials.
    #[error("{0}")]
    Auth(String),
    /// The broker refused the connection with an MQTT CONNACK return code other than 4/5.
    #[error("connection refused by the broker: {message} (CONNACK return code {code})")]
    Refused {
        /// CONNACK return code (1..=5 in MQTT 3.1.1).
        code: u8,
        /// Its meaning.
        message: String,
    },
    /// A network-level connection failure (DNS, TCP, timeout before CONNACK).
    #[error("{0}")]
    Connect(String),
    /// The connection was lost (or is not up) and the operation cannot proceed.
    #[error("{0}")]
    Disconnected(String),
    /// An operation was not acknowledged in time.
    #[error("{what} was not acknowledged within {after:?}")]
    Timeout {
        /// The operation (`PUBLISH to 'a/b'`, `SUBSCRIBE`, `CONNECT`).
        what: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The broker refused one or more filters of a SUBSCRIBE (SUBACK return code 0x80).
    #[error("the broker refused the subscription to {filters:?} (SUBACK failure 0x80)")]
    SubscribeRefused {
        /// The refused filters.
        filters: Vec<String>,
    },
    /// A SUBSCRIBE would make the connection hold more distinct filters than its cap
    /// (`max_subscriptions`; AWS IoT allows 50 per connection).
    #[error("{message}")]
    SubscriptionLimit {
        /// What was asked and what is allowed.
        message: String,
        /// The filters of the refused subscribe.
        filters: Vec<String>,
    },
    /// The connection dropped right after the same operation was sent, several times in a row:
    /// over MQTT 3.1.1 that is how AWS IoT answers an operation its policy forbids. The
    /// operation is failed and no longer resent.
    #[error("the connection was closed right after each of the last {count} attempts to {operation} {topic:?} (within {window:?} of sending it): the broker's policy probably forbids it; it will not be resent")]
    PolicyViolationSuspected {
        /// The topic (publish) or filter (subscribe).
        topic: String,
        /// `publish` or `subscribe`.
        operation: &'static str,
        /// How many connections in a row dropped.
        count: u32,
        /// The window after sending.
        window: Duration,
    },
    /// A bounded queue is full.
    #[error("{0}")]
    QueueFull(String),
    /// The submission channel between the handle and the driver is momentarily full: waiting
    /// for room (see `Client::wait_writable`) and retrying succeeds.
    #[error("{0}")]
    SubmissionFull(String),
    /// The client is not connected by the application (before `connect()` or after `disconnect()`).
    #[error("{0}")]
    Closed(String),
    /// The call does not fit the client's state (for example `connect()` while connected).
    #[error("{0}")]
    InvalidState(String),
    /// The broker violated MQTT 3.1.1.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// The disconnect reason this error stands for when it ends a connection.
    #[must_use]
    pub fn disconnect_reason(&self) -> DisconnectReason {
        match self {
            Self::Tls { .. } => DisconnectReason::Tls,
            Self::Auth(_) => DisconnectReason::Auth,
            Self::Refused { .. } => DisconnectReason::Server,
            Self::Protocol(_) => DisconnectReason::Protocol,
            Self::Closed(_) => DisconnectReason::Client,
            Self::Timeout { .. } => DisconnectReason::KeepAlive,
            _ => DisconnectReason::Network,
        }
    }

    /// Whether retrying the same thing later could succeed (network trouble) as opposed to a
    /// permanent problem (bad configuration, rejected credentials or certificates).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Connect(_) | Self::Disconnected(_) | Self::Timeout { .. } | Self::Protocol(_)
        ) || matches!(self, Self::Refused { code: 3, .. })
    }
}

/// Shorthand for results of the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
