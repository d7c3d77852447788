//! An inbound application message.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// A PUBLISH received from the broker. Cheap to clone (shared topic and payload).
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic the message was published to.
    pub topic: Arc<str>,
    /// Payload bytes.
    pub payload: Bytes,
    /// QoS it was delivered with (0 or 1).
    pub qos: u8,
    /// Retained flag.
    pub retain: bool,
    /// DUP flag (a redelivery).
    pub dup: bool,
}

impl fmt::Debug for Message {
    /// Prints the topic and the payload size, never the payload.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("dup", &self.dup)
            .finish()
    }
}
