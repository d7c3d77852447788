//! Topic validation and matching on arbitrary (filter, topic) pairs: the input is split at the
//! first NUL or newline. Invariants: see `../checks.rs` and `../README.md`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

fuzz_target!(|data: &[u8]| {
    checks::check_topic_input(data);
});
