//! The pure-Rust client core. No Python here: `cargo test --no-default-features` builds and
//! tests it without an interpreter.

pub mod backoff;
pub mod cbor;
pub mod client;
pub mod config;
pub mod credentials;
pub mod custom_auth;
mod driver;
pub mod error;
pub mod inflight;
pub mod keys;
pub mod message;
pub mod queue;
pub mod request_response;
pub mod router;
pub mod secret;
pub mod sigv4;
pub mod tls;
pub mod topic;
pub mod traffic_log;
pub mod transport;
pub mod websocket;

pub use client::{Client, ClientEvent, ConnectInfo, EventSink, Reply, State, StatsSnapshot};
pub use config::{
    ClientConfig, Connector, OfflineQueueConfig, QoS, ReconnectConfig, Transport, Will,
};
pub use error::{DisconnectReason, Error, Result};
pub use message::Message;
pub use queue::{Batch, SubscriptionQueue, Wake};
pub use topic::Limits;
