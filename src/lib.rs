//! awsiot_rs: an AWS IoT Core MQTT client.
//!
//! [`core`] is the pure-Rust client (no Python anywhere); [`local`] is the embedded AWS IoT Core
//! stand-in (also pure Rust); `py` is the thin PyO3 binding that the
//! Python package `awsiot_rs` loads as `awsiot_rs._native`.

pub mod core;
pub mod local;

#[cfg(feature = "python")]
mod py;
