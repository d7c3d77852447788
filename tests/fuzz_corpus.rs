//! Replays the committed fuzz corpus (`tests/fuzz/corpus/{topic,packet}/`) through the same
//! checks as the fuzz targets (`tests/fuzz/checks.rs`), on stable Rust and without libFuzzer,
//! plus a few hand-written cases that pin what the seeds are meant to cover.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "fuzz/checks.rs"]
mod checks;

use std::fs;
use std::path::{Path, PathBuf};

use _native::core::{ClientConfig, Limits, Transport};
use checks::Decoded;
use rumqttc::Packet;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
        .into_iter()
        .map(|p| {
            let data = fs::read(&p).unwrap();
            (p, data)
        })
        .collect()
}

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let files = corpus(target);
    for (path, data) in &files {
        let result = std::panic::catch_unwind(|| check(data));
        assert!(
            result.is_ok(),
            "{} fails the {target} checks (replay: cd tests/fuzz && cargo fuzz run {target} {})",
            path.display(),
            path.display()
        );
    }
    files.len()
}

#[test]
fn topic_corpus_passes_the_topic_checks() {
    let n = replay("topic", checks::check_topic_input);
    assert!(n >= 5, "only {n} topic seeds");
}

#[test]
fn packet_corpus_passes_the_packet_checks() {
    let n = replay("packet", checks::check_packet_input);
    assert!(n >= 5, "only {n} packet seeds");
}

#[test]
fn the_packet_limit_is_the_clients() {
    let cfg = ClientConfig::new("example.com", 8883, Transport::Tcp);
    assert_eq!(cfg.limits, Limits::Aws);
    assert_eq!(cfg.max_incoming_packet(), checks::MAX_INCOMING_PACKET);
}

fn decode(data: &[u8]) -> Vec<Decoded> {
    checks::check_packet_input(data);
    checks::decode_one_shot(data, checks::MAX_INCOMING_PACKET).out
}

#[test]
fn valid_packets_decode_in_one_shot_and_in_chunks() {
    // CONNACK, PUBLISH QoS 0 and 1, PUBACK, SUBACK (0x01, 0x80), UNSUBACK, PINGRESP.
    let mut stream = vec![0x20, 0x02, 0x00, 0x00];
    stream.extend([0x30, 0x05, 0x00, 0x01, b't', b'h', b'i']);
    stream.extend([0x32, 0x07, 0x00, 0x01, b't', 0x00, 0x07, b'h', b'i']);
    stream.extend([0x40, 0x02, 0x00, 0x07]);
    stream.extend([0x90, 0x04, 0x00, 0x08, 0x01, 0x80]);
    stream.extend([0xB0, 0x02, 0x00, 0x09]);
    stream.extend([0xD0, 0x00]);
    let out = decode(&stream);
    let sizes: Vec<usize> = out
        .iter()
        .map(|d| match d {
            Decoded::Packet(_, n) => *n,
            Decoded::Error { .. } => panic!("{d:?}"),
        })
        .collect();
    assert_eq!(sizes, [4, 7, 9, 4, 6, 4, 2]);
    assert!(matches!(out[6], Decoded::Packet(Packet::PingResp, 2)));
}

#[test]
fn malformed_packets_end_the_stream_at_the_right_offset() {
    let ping = [0xD0, 0x00];
    // Reserved types 0 and 15, a 5-byte remaining length, a huge remaining length.
    for (bad, what) in [
        (&[0x00, 0x00][..], "InvalidPacketType(0)"),
        (&[0xF0, 0x00][..], "InvalidPacketType(15)"),
        (
            &[0x30, 0x80, 0x80, 0x80, 0x80, 0x01][..],
            "MalformedRemainingLength",
        ),
        (
            &[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..],
            "PayloadSizeLimitExceeded(268435455)",
        ),
    ] {
        let mut stream = ping.to_vec();
        stream.extend_from_slice(bad);
        stream.extend_from_slice(&ping);
        let out = decode(&stream);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(
            out[1],
            Decoded::Error {
                at: 2,
                error: what.to_string()
            }
        );
    }
}

#[test]
fn an_incomplete_packet_waits_for_more() {
    let d = checks::decode_one_shot(&[0x30, 0x0A, 0x00, 0x01], checks::MAX_INCOMING_PACKET);
    assert!(d.out.is_empty());
    assert_eq!(d.pending(), Some(4));
}

#[test]
fn topic_pairs_split_at_the_first_nul_or_newline() {
    assert_eq!(
        checks::split_topic_input(b"a/+\na/b\0c"),
        ("a/+".to_string(), "a/b\0c".to_string())
    );
    assert_eq!(
        checks::split_topic_input(b"#"),
        ("#".to_string(), String::new())
    );
    for pair in [
        ("a/b", "a/b"),
        ("#", "a/b"),
        ("+/+", "/a"),
        ("$share/g/a/+", "a/b"),
        ("$aws/things/+/shadow/#", "$aws/things/t/shadow/update"),
        ("#", "$SYS/x"),
    ] {
        checks::check_topic_pair(pair.0, pair.1);
    }
}

/// A PUBLISH whose remaining length is exactly the client's limit decodes; one byte more is
/// refused before its body arrives. (Too big for a corpus file, so built here.)
#[test]
fn the_limit_is_inclusive() {
    fn publish(remaining: usize) -> Vec<u8> {
        let mut v = vec![0x30];
        let mut n = remaining;
        loop {
            let byte = u8::try_from(n % 128).unwrap();
            n /= 128;
            v.push(if n > 0 { byte | 0x80 } else { byte });
            if n == 0 {
                break;
            }
        }
        v.extend([0x00, 0x01, b't']);
        v.resize(v.len() + remaining - 3, b'x');
        v
    }
    let at = publish(checks::MAX_INCOMING_PACKET);
    let out = decode(&at);
    assert!(
        matches!(&out[..], [Decoded::Packet(Packet::Publish(p), n)]
            if p.payload.len() == checks::MAX_INCOMING_PACKET - 3 && *n == at.len()),
        "{} results, the first {:?}",
        out.len(),
        out.first().map(|d| match d {
            Decoded::Packet(p, n) => format!("{} bytes: {:?}", n, p.size()),
            Decoded::Error { error, .. } => error.clone(),
        })
    );
    let over = publish(checks::MAX_INCOMING_PACKET + 1);
    let d = checks::decode_one_shot(&over[..4], checks::MAX_INCOMING_PACKET);
    assert_eq!(
        d.out,
        [Decoded::Error {
            at: 0,
            error: format!(
                "PayloadSizeLimitExceeded({})",
                checks::MAX_INCOMING_PACKET + 1
            )
        }]
    );
}
