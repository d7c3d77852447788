//! The client's MQTT decode loop (`Driver::process_incoming`: `rumqttc::Packet::read` until
//! `InsufficientBytes`) on arbitrary bytes, in one shot and in chunks of 1..=7 bytes.
//! Invariants: see `../checks.rs` and `../README.md`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

fuzz_target!(|data: &[u8]| {
    checks::check_packet_input(data);
});
