//! `local`: an embedded stand-in for AWS IoT Core's data plane, for development and tests.
//!
//! It speaks AWS IoT's dialect of MQTT 3.1.1 on loopback listeners (mTLS, mTLS with ALPN
//! `x-amzn-mqtt-ca`, custom authorizers with ALPN `mqtt`, WebSocket with SigV4 or custom
//! authorizers) and runs the AWS services on reserved topics in-process (Device Shadow, fleet
//! provisioning, jobs, lifecycle events). No Python here: the binding lives in `crate::py`.
//!
//! Layers, from the bottom up:
//! - Transport and identity: [`pki`] (the CA, device certificates, CSR signing),
//!   [`tls_server`] (rustls server configs, the verifier that asks the [`registry`] whether a
//!   certificate is ACTIVE), [`wss`] (the WebSocket upgrade), [`sigv4_verify`] (presigned URLs),
//!   [`authorizer_request`] and [`authorizers`] (custom authorizers).
//! - The broker: [`codec`] (framing, version-aware CONNECT), [`broker`] (sessions,
//!   subscriptions, retained messages, routing with the client's own topic rules from
//!   `crate::core::protocol::topic`), [`reserved_topics`], [`lifecycle`].
//! - Services, sans-IO: [`shadow`], [`provisioning`], [`jobs`], behind [`services`]; each
//!   returns the [`service::Outbound`] responses the broker routes.
//! - Running it: [`listener`] (accept loops, handshakes off the accept loop, bounded in time),
//!   [`connection`] (one task per client), [`shared`] (what they share), [`events`] (the log
//!   tests read), [`local_core`] ([`LocalCore`]: start, stop and the API).
//!
//! ```text
//! listener ──TLS/WSS + auth──▶ connection ──▶ broker ──▶ other connections
//!                                  │            ▲
//!                                  └─▶ services ┘ (shadow, provisioning, jobs: Outbound)
//! ```

pub mod authorizer_request;
pub mod authorizers;
pub mod broker;
pub mod codec;
pub mod config;
pub mod connection;
pub mod error;
pub mod events;
pub mod jobs;
pub mod lifecycle;
pub mod listener;
pub mod local_core;
pub mod pki;
pub mod provisioning;
pub mod registry;
pub mod reserved_topics;
pub mod service;
pub mod services;
pub mod shadow;
pub mod shared;
pub mod sigv4_verify;
pub mod tls_server;
pub mod wss;

pub use self::config::{LocalConfig, Qos2Policy};
pub use self::error::{LocalError, LocalResult};
pub use self::events::{CoreEvent, EventKind, EventLog};
pub use self::local_core::{LocalCore, Ports};
