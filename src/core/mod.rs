//! The pure-Rust client core. No Python here: `cargo test --no-default-features` builds and
//! tests it without an interpreter.
//!
//! Layers, from the bottom up:
//! - [`protocol`]: MQTT 3.1.1 as data, no I/O: packet framing and the CONNECT/CONNACK exchange,
//!   the session state machine ([`protocol::session`]: packet ids, in-flight, outbox, owed
//!   acknowledgements, keep-alive, session restore), topic rules, the subscription registry and
//!   its bounded queues, reconnect backoff.
//! - [`net`]: byte streams to the broker: TCP, TLS (rustls, ring), WebSocket.
//! - [`auth`]: what proves who we are: key formats, SigV4 presigning, credentials providers,
//!   custom-authorizer fields.
//! - [`services`]: AWS IoT services over MQTT: correlated request/response, CBOR.
//! - [`client`] (the handle the application holds) and [`driver`] (the one task per client that
//!   moves bytes and time into and out of the session state machine), sharing [`shared`].
//!
//! ```text
//! application ──▶ client::Client ──commands──▶ driver ──▶ protocol::session::Session
//!                       │                        │ ▲            (state, no I/O)
//!                       └── shared (config, registry, stats) ◀──┘
//!                                                │ bytes
//!                                          net (tcp / tls / websocket) ◀── auth
//! ```

pub mod auth;
pub mod client;
pub mod config;
mod driver;
pub mod error;
pub mod message;
pub mod net;
pub mod options;
pub mod protocol;
pub mod secret;
pub mod services;
pub mod shared;
pub mod traffic_log;

pub use client::Client;
pub use config::{ClientConfig, OfflineQueueConfig, QoS, ReconnectConfig, Will};
pub use error::{DisconnectReason, Error, Result};
pub use message::Message;
pub use net::stream::Connector;
pub use net::transport::Transport;
pub use protocol::queue::{Batch, SubscriptionQueue, Wake};
pub use protocol::topic::Limits;
pub use shared::{ClientEvent, ConnectInfo, EventSink, Reply, State, StatsSnapshot};
