//! `local`: an embedded stand-in for AWS IoT Core's data plane, for development and tests.
//!
//! It speaks AWS IoT's dialect of MQTT 3.1.1 on loopback listeners (mTLS, mTLS with ALPN
//! `x-amzn-mqtt-ca`, custom authorizers with ALPN `mqtt`, WebSocket with SigV4 or custom
//! authorizers) and runs the AWS services on reserved topics in-process (Device Shadow, fleet
//! provisioning, jobs, lifecycle events). No Python here: the binding lives in `crate::py`.

pub mod service;
