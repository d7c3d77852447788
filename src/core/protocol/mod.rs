//! MQTT 3.1.1 as data, without I/O: everything here is driven by the caller with bytes and the
//! current time, so it is unit-tested without sockets.
//!
//! - [`codec`]: packet names and framing helpers over rumqttc's `mqttbytes` codec (the place
//!   where the protocol version will be chosen when MQTT 5 arrives).
//! - [`handshake`]: the CONNECT packet and the CONNACK answer.
//! - [`session`]: the session state machine of one client (packet ids, in-flight, outbox,
//!   deadlines, owed acknowledgements, keep-alive, session restore, policy-violation check).
//! - [`inflight`]: packet ids in use, in submission order.
//! - [`router`] and [`queue`]: the subscription registry and each subscription's bounded queue.
//! - [`topic`]: topic names and filters (validation, matching, AWS's rules).
//! - [`backoff`]: reconnect delays (exponential, full jitter).

pub mod backoff;
pub mod codec;
pub mod handshake;
pub mod inflight;
pub mod queue;
pub mod router;
pub mod session;
pub mod topic;
