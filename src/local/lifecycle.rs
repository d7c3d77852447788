//! AWS IoT lifecycle events: the topics, JSON payloads and disconnect reasons AWS publishes when
//! a client connects, disconnects, subscribes or unsubscribes.

use serde_json::{json, Value};

/// Why a connection ended, with AWS's `disconnectReason` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client could not be authenticated.
    AuthError,
    /// The client sent DISCONNECT.
    ClientInitiatedDisconnect,
    /// The client broke a protocol rule or an AWS limit.
    ClientError,
    /// The socket closed or failed without DISCONNECT.
    ConnectionLost,
    /// Another connection took the client id over.
    DuplicateClientid,
    /// The client tried something it is not allowed to (a reserved topic, say).
    ForbiddenAccess,
    /// Nothing arrived within 1.5 × keep-alive.
    MqttKeepAliveTimeout,
    /// The core failed.
    ServerError,
    /// The core (or a test through it) closed the connection.
    ServerInitiatedDisconnect,
    /// Too many requests.
    Throttled,
    /// The custom authorizer's `disconnectAfterInSeconds` elapsed.
    CustomauthTtlExpiration,
    /// Closed through the DeleteConnection API.
    ApiInitiatedDisconnect,
}

impl DisconnectReason {
    /// AWS's spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthError => "AUTH_ERROR",
            Self::ClientInitiatedDisconnect => "CLIENT_INITIATED_DISCONNECT",
            Self::ClientError => "CLIENT_ERROR",
            Self::ConnectionLost => "CONNECTION_LOST",
            Self::DuplicateClientid => "DUPLICATE_CLIENTID",
            Self::ForbiddenAccess => "FORBIDDEN_ACCESS",
            Self::MqttKeepAliveTimeout => "MQTT_KEEP_ALIVE_TIMEOUT",
            Self::ServerError => "SERVER_ERROR",
            Self::ServerInitiatedDisconnect => "SERVER_INITIATED_DISCONNECT",
            Self::Throttled => "THROTTLED",
            Self::CustomauthTtlExpiration => "CUSTOMAUTH_TTL_EXPIRATION",
            Self::ApiInitiatedDisconnect => "API_INITIATED_DISCONNECT",
        }
    }

    /// Parses AWS's spelling (the reasons a test may inject with `disconnect()`).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::AuthError,
            Self::ClientInitiatedDisconnect,
            Self::ClientError,
            Self::ConnectionLost,
            Self::DuplicateClientid,
            Self::ForbiddenAccess,
            Self::MqttKeepAliveTimeout,
            Self::ServerError,
            Self::ServerInitiatedDisconnect,
            Self::Throttled,
            Self::CustomauthTtlExpiration,
            Self::ApiInitiatedDisconnect,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// Who a lifecycle event is about.
#[derive(Debug, Clone)]
pub struct Presence<'a> {
    /// The MQTT client id.
    pub client_id: &'a str,
    /// Unique per connection.
    pub session_identifier: &'a str,
    /// Certificate id, access key id or authorizer principal.
    pub principal: &'a str,
    /// Shared by a connect/disconnect pair; grows with every connection of the client id.
    pub version_number: u64,
    /// The peer's address.
    pub ip_address: &'a str,
}

/// Whether AWS publishes lifecycle events for this client id (not for ids with `#` or `+`).
#[must_use]
pub fn has_events(client_id: &str) -> bool {
    !client_id.contains(['#', '+'])
}

/// `$aws/events/presence/connected/<clientId>` and its payload.
#[must_use]
pub fn connected(p: &Presence<'_>, timestamp_ms: u64) -> (String, Value) {
    (
        format!("$aws/events/presence/connected/{}", p.client_id),
        json!({
            "clientId": p.client_id,
            "timestamp": timestamp_ms,
            "eventType": "connected",
            "sessionIdentifier": p.session_identifier,
            "principalIdentifier": p.principal,
            "ipAddress": p.ip_address,
            "versionNumber": p.version_number,
        }),
    )
}

/// `$aws/events/presence/disconnected/<clientId>` and its payload.
#[must_use]
pub fn disconnected(
    p: &Presence<'_>,
    reason: DisconnectReason,
    timestamp_ms: u64,
) -> (String, Value) {
    (
        format!("$aws/events/presence/disconnected/{}", p.client_id),
        json!({
            "clientId": p.client_id,
            "timestamp": timestamp_ms,
            "eventType": "disconnected",
            "sessionIdentifier": p.session_identifier,
            "principalIdentifier": p.principal,
            "clientInitiatedDisconnect": reason == DisconnectReason::ClientInitiatedDisconnect,
            "disconnectReason": reason.as_str(),
            "versionNumber": p.version_number,
        }),
    )
}

/// `$aws/events/subscriptions/subscribed|unsubscribed/<clientId>` and its payload.
#[must_use]
pub fn subscriptions(
    p: &Presence<'_>,
    subscribed: bool,
    topics: &[String],
    timestamp_ms: u64,
) -> (String, Value) {
    let event = if subscribed {
        "subscribed"
    } else {
        "unsubscribed"
    };
    (
        format!("$aws/events/subscriptions/{event}/{}", p.client_id),
        json!({
            "clientId": p.client_id,
            "timestamp": timestamp_ms,
            "eventType": event,
            "sessionIdentifier": p.session_identifier,
            "principalIdentifier": p.principal,
            "topics": topics,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Presence<'static> {
        Presence {
            client_id: "dev-1",
            session_identifier: "s-1",
            principal: "abc",
            version_number: 3,
            ip_address: "127.0.0.1",
        }
    }

    #[test]
    fn the_payloads_carry_awss_fields() {
        let (topic, c) = connected(&who(), 1_700_000_000_000);
        assert_eq!(topic, "$aws/events/presence/connected/dev-1");
        assert_eq!(c["eventType"], "connected");
        assert_eq!(c["versionNumber"], 3);
        assert_eq!(c["ipAddress"], "127.0.0.1");
        assert_eq!(c["timestamp"], 1_700_000_000_000_u64);
        let (topic, d) = disconnected(&who(), DisconnectReason::ClientInitiatedDisconnect, 1);
        assert_eq!(topic, "$aws/events/presence/disconnected/dev-1");
        assert_eq!(d["clientInitiatedDisconnect"], true);
        assert_eq!(d["disconnectReason"], "CLIENT_INITIATED_DISCONNECT");
        assert!(d.get("ipAddress").is_none());
        let (_, d) = disconnected(&who(), DisconnectReason::MqttKeepAliveTimeout, 1);
        assert_eq!(d["clientInitiatedDisconnect"], false);
        let (topic, s) = subscriptions(&who(), true, &["a/b".into()], 1);
        assert_eq!(topic, "$aws/events/subscriptions/subscribed/dev-1");
        assert_eq!(s["topics"][0], "a/b");
    }

    #[test]
    fn reasons_round_trip_and_wildcard_ids_get_no_events() {
        for r in [
            "DUPLICATE_CLIENTID",
            "SERVER_INITIATED_DISCONNECT",
            "API_INITIATED_DISCONNECT",
        ] {
            assert_eq!(
                DisconnectReason::parse(r).map(DisconnectReason::as_str),
                Some(r)
            );
        }
        assert_eq!(DisconnectReason::parse("nope"), None);
        assert!(!has_events("a#b") && !has_events("a+") && has_events("ok"));
    }
}
