//! `local`: an embedded stand-in for AWS IoT Core's data plane, for development and tests.
//!
//! It speaks AWS IoT's dialect of MQTT 3.1.1 on loopback listeners (mTLS, mTLS with ALPN
//! `x-amzn-mqtt-ca`, custom authorizers with ALPN `mqtt`, WebSocket with SigV4 or custom
//! authorizers) and runs the AWS services on reserved topics in-process (Device Shadow, fleet
//! provisioning, jobs, lifecycle events). No Python here: the binding lives in `crate::py`.

pub mod authorizers;
pub mod broker;
pub mod codec;
pub mod config;
pub mod connection;
pub mod error;
pub mod events;
pub mod lifecycle;
pub mod listener;
pub mod local_core;
pub mod registry;
pub mod reserved_topics;
pub mod service;
pub mod services;
pub mod shared;

pub use self::config::{LocalConfig, Qos2Policy};
pub use self::error::{LocalError, LocalResult};
pub use self::events::{CoreEvent, EventKind, EventLog};
pub use self::local_core::{LocalCore, Ports};
pub mod authorizer_request;
pub mod jobs;
pub mod pki;
pub mod provisioning;
pub mod shadow;
pub mod sigv4_verify;
pub mod tls_server;
pub mod wss;
