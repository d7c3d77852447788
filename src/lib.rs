//! awsiot_rs: an AWS IoT Core MQTT client.
//!
//! [`core`] is the pure-Rust client (no Python anywhere); `py` is the thin PyO3 binding that the
//! Python package `awsiot_rs` loads as `awsiot_rs._native`.

pub mod core;

#[cfg(feature = "python")]
mod py;
