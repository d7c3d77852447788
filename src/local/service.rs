//! What the in-process services (shadow, provisioning, jobs) hand back to the broker.

/// A message a service publishes in answer to a request: the broker routes it to the
/// subscribers of `topic` exactly as if a client had published it at QoS 1 (never retained).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The response topic, for example `$aws/things/t1/shadow/update/accepted`.
    pub topic: String,
    /// The encoded payload (JSON, or CBOR on the `/cbor` provisioning topics).
    pub payload: Vec<u8>,
}

impl Outbound {
    /// A response on `topic` carrying `payload`.
    #[must_use]
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
        }
    }
}
