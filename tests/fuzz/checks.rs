//! The invariants checked by the fuzz targets (`tests/fuzz/fuzz_targets/*.rs`) and by the
//! corpus replay (`tests/fuzz_corpus.rs`). Both include this file with `#[path]`, so a corpus
//! file that passes here passes the fuzz target and the other way round. Every check panics on
//! a violated invariant: that is what libFuzzer and `cargo test` report.

use _native::core::protocol::topic::{
    matches, split_shared, subscription_matches, validate_filter, validate_topic,
    MQTT_MAX_STRING_BYTES,
};
use _native::core::Limits;
use bytes::BytesMut;
use rumqttc::Packet;

/// The largest incoming packet the client accepts with the default (AWS) limits:
/// `ClientConfig::max_incoming_packet()`, i.e. 128 KiB payload + the longest topic + headers.
pub const MAX_INCOMING_PACKET: usize = 128 * 1024 + 65_535 + 16;

/// How many levels of one topic the derived-filter checks look at (keeps each run linear).
const MAX_LEVELS_CHECKED: usize = 32;

// ---------------------------------------------------------------------------------------------
// topic
// ---------------------------------------------------------------------------------------------

/// Splits a fuzz input into (filter, topic) at the first NUL or newline; bytes that are not
/// UTF-8 become U+FFFD (the client only ever sees `&str`).
#[must_use]
pub fn split_topic_input(data: &[u8]) -> (String, String) {
    let (filter, topic) = match data.iter().position(|b| *b == 0 || *b == b'\n') {
        Some(i) => {
            let (f, rest) = data.split_at(i);
            (f, rest.get(1..).unwrap_or_default())
        }
        None => (data, &[][..]),
    };
    (
        String::from_utf8_lossy(filter).into_owned(),
        String::from_utf8_lossy(topic).into_owned(),
    )
}

/// Runs every topic check on one fuzz input.
pub fn check_topic_input(data: &[u8]) {
    let (filter, topic) = split_topic_input(data);
    check_topic_pair(&filter, &topic);
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['+', '#'])
}

/// The invariants between one filter and one topic, under both limits.
pub fn check_topic_pair(filter: &str, topic: &str) {
    for limits in [Limits::Aws, Limits::Mqtt] {
        // Every entry point on every string: no panic, whatever the input.
        let filter_ok = validate_filter(filter, limits).is_ok();
        let topic_ok = validate_topic(topic, limits).is_ok();
        let _ = validate_topic(filter, limits);
        let _ = validate_filter(topic, limits);

        if filter_ok && topic_ok && filter == topic {
            assert!(
                matches(filter, topic),
                "{limits:?}: valid filter {filter:?} does not match the identical valid topic"
            );
        }
        if topic_ok {
            assert!(
                !has_wildcard(topic),
                "{limits:?}: valid topic {topic:?} has a wildcard"
            );
            assert!(
                validate_filter(topic, Limits::Mqtt).is_ok() || topic.starts_with("$share/"),
                "{limits:?}: valid topic {topic:?} is not a valid MQTT filter"
            );
        }
    }

    // AWS limits only add rules to MQTT's.
    if validate_topic(topic, Limits::Aws).is_ok() {
        assert!(
            validate_topic(topic, Limits::Mqtt).is_ok(),
            "AWS-valid topic {topic:?} not MQTT-valid"
        );
    }
    if validate_filter(filter, Limits::Aws).is_ok() {
        assert!(
            validate_filter(filter, Limits::Mqtt).is_ok(),
            "AWS-valid filter {filter:?} not MQTT-valid"
        );
    }

    let m = matches(filter, topic);
    let sm = subscription_matches(filter, topic);

    // A filter without wildcards matches exactly itself.
    if !has_wildcard(filter) {
        assert_eq!(m, filter == topic, "matches({filter:?}, {topic:?})");
    }
    match split_shared(filter) {
        Some((_, inner)) => {
            assert_eq!(sm, matches(inner, topic), "shared {filter:?} vs {topic:?}");
            if !has_wildcard(inner) {
                assert_eq!(sm, inner == topic, "shared {filter:?} vs {topic:?}");
            }
        }
        None => assert_eq!(sm, m, "subscription_matches({filter:?}, {topic:?})"),
    }

    check_topic_alone(topic);
    check_topic_alone(filter);
}

/// Filters derived from a valid topic must match it: `#`, `<first k levels>/#`, and the topic
/// with one level replaced by `+` (except a leading wildcard against a `$` topic).
pub fn check_topic_alone(topic: &str) {
    if validate_topic(topic, Limits::Mqtt).is_err() {
        return;
    }
    let dollar = topic.starts_with('$');
    assert_eq!(matches("#", topic), !dollar, "matches(\"#\", {topic:?})");
    assert_eq!(
        subscription_matches("#", topic),
        !dollar,
        "subscription_matches(\"#\", {topic:?})"
    );
    assert_eq!(
        matches("+", topic),
        !dollar && !topic.contains('/'),
        "matches(\"+\", {topic:?})"
    );
    assert!(
        matches(topic, topic),
        "valid topic {topic:?} does not match itself"
    );

    // `a/b/#` matches `a/b/c` and also `a/b` (the parent).
    let mut cuts: Vec<usize> = topic
        .match_indices('/')
        .map(|(i, _)| i)
        .take(MAX_LEVELS_CHECKED)
        .collect();
    cuts.push(topic.len());
    for cut in cuts {
        let (prefix, _) = topic.split_at(cut);
        let filter = format!("{prefix}/#");
        assert!(
            matches(&filter, topic),
            "{filter:?} does not match {topic:?}"
        );
        if filter.len() <= MQTT_MAX_STRING_BYTES && !topic.starts_with("$share/") {
            assert!(
                validate_filter(&filter, Limits::Mqtt).is_ok(),
                "{filter:?}, built from valid topic {topic:?}, is not a valid filter"
            );
        }
    }

    // Replacing one level by `+` still matches, except a leading `+` against `$...`.
    let levels: Vec<&str> = topic.split('/').collect();
    for j in 0..levels.len().min(MAX_LEVELS_CHECKED) {
        let filter = levels
            .iter()
            .enumerate()
            .map(|(i, l)| if i == j { "+" } else { l })
            .collect::<Vec<_>>()
            .join("/");
        let expected = !(j == 0 && dollar);
        assert_eq!(
            matches(&filter, topic),
            expected,
            "matches({filter:?}, {topic:?})"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// packet
// ---------------------------------------------------------------------------------------------

/// What the client's read loop (`Driver::process_incoming`) makes of the bytes it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A packet and the number of bytes it took off the buffer.
    Packet(Packet, usize),
    /// A decode error other than `InsufficientBytes`: the client drops the connection here.
    /// `at` is the stream offset where that packet began.
    Error { at: usize, error: String },
}

/// A decoder fed like the client's socket reader: bytes are appended, then packets are read
/// until the buffer runs short (wait for more) or an error ends the connection.
pub struct Decoder {
    buf: BytesMut,
    max_size: usize,
    consumed: usize,
    pub out: Vec<Decoded>,
    pub failed: bool,
}

impl Decoder {
    #[must_use]
    pub fn new(max_size: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_size,
            consumed: 0,
            out: Vec::new(),
            failed: false,
        }
    }

    /// Appends bytes and decodes what can be decoded; after an error, ignores everything
    /// (the client has closed the connection).
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed {
            return;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            let before = self.buf.len();
            let result = Packet::read(&mut self.buf, self.max_size);
            let after = self.buf.len();
            assert!(
                after <= before,
                "Packet::read grew the buffer: {before} -> {after}"
            );
            match result {
                Ok(packet) => {
                    let size = before - after;
                    // Progress, or the client's loop would spin forever.
                    assert!(size >= 2, "{packet:?} decoded from {size} bytes");
                    assert!(
                        size <= self.max_size + 5,
                        "{size}-byte packet accepted with a {}-byte limit",
                        self.max_size
                    );
                    check_roundtrip(&packet);
                    self.out.push(Decoded::Packet(packet, size));
                    self.consumed += size;
                }
                Err(rumqttc::Error::InsufficientBytes(n)) => {
                    assert!(
                        after == before,
                        "InsufficientBytes consumed {} bytes",
                        before - after
                    );
                    assert!(n >= 1, "InsufficientBytes(0)");
                    return;
                }
                Err(e) => {
                    self.out.push(Decoded::Error {
                        at: self.consumed,
                        error: format!("{e:?}"),
                    });
                    self.failed = true;
                    return;
                }
            }
        }
    }

    /// Bytes still buffered (an incomplete packet), unless decoding failed.
    #[must_use]
    pub fn pending(&self) -> Option<usize> {
        (!self.failed).then_some(self.buf.len())
    }
}

/// A decoded packet encodes again and decodes to the same packet. CONNECT is left out: the
/// client never receives one, and rumqttc drops an empty user name on encode.
fn check_roundtrip(packet: &Packet) {
    if matches!(packet, Packet::Connect(_)) {
        return;
    }
    let mut buf = BytesMut::new();
    let written = match packet.write(&mut buf, usize::MAX) {
        Ok(n) => n,
        Err(e) => panic!("{packet:?} decoded but does not encode: {e:?}"),
    };
    assert_eq!(
        written,
        buf.len(),
        "{packet:?}: write() reported {written} bytes"
    );
    match Packet::read(&mut buf, usize::MAX) {
        Ok(again) => assert_eq!(&again, packet, "encode/decode changed the packet"),
        Err(e) => panic!("{packet:?} re-encoded as {buf:?} does not decode: {e:?}"),
    }
    assert!(
        buf.is_empty(),
        "{packet:?}: {} bytes left after re-decoding",
        buf.len()
    );
}

/// Decodes `data` in one piece.
#[must_use]
pub fn decode_one_shot(data: &[u8], max_size: usize) -> Decoder {
    let mut d = Decoder::new(max_size);
    d.feed(data);
    d
}

/// Decodes `data` fed in chunks whose sizes (each 1..=7) come from `sizes`, cycled.
#[must_use]
pub fn decode_chunked(data: &[u8], max_size: usize, sizes: &[usize]) -> Decoder {
    let mut d = Decoder::new(max_size);
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .clamp(1, 7);
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        d.feed(chunk);
        rest = tail;
        i += 1;
    }
    d
}

/// Runs every packet check on one fuzz input: the one-shot decode, then the same bytes in
/// chunks of 1..=7 bytes (fixed sizes and a data-driven mix) must give the same packets and
/// the same error at the same offset, and leave the same number of bytes pending.
///
/// The bytes are also decoded with a small limit ([`SMALL_LIMIT`]), which short inputs can
/// exceed: that decode must agree with the first one up to the packet it refuses.
pub fn check_packet_input(data: &[u8]) {
    let big = check_packet_input_with(data, MAX_INCOMING_PACKET);
    let small = check_packet_input_with(data, SMALL_LIMIT);
    let Some((last, before)) = small.out.split_last() else {
        assert!(big.out.is_empty(), "a larger limit decoded {:?}", big.out);
        return;
    };
    assert_eq!(
        big.out.get(..before.len()),
        Some(before),
        "the {SMALL_LIMIT}-byte limit changed the packets before its last one"
    );
    if big.out.get(before.len()) != Some(last) {
        assert!(
            matches!(last, Decoded::Error { error, .. } if error.starts_with("PayloadSizeLimitExceeded")),
            "with a {SMALL_LIMIT}-byte limit: {last:?}; without: {:?}",
            big.out.get(before.len())
        );
    }
}

/// A small packet size limit, to reach `PayloadSizeLimitExceeded` with short inputs.
pub const SMALL_LIMIT: usize = 64;

/// The one-shot/chunked equivalence of [`check_packet_input`] with one packet size limit;
/// returns the one-shot decode.
pub fn check_packet_input_with(data: &[u8], max_size: usize) -> Decoder {
    let whole = decode_one_shot(data, max_size);
    let mixed: Vec<usize> = data.iter().map(|b| usize::from(*b % 7) + 1).collect();
    let schedules: [&[usize]; 8] = [&[1], &[2], &[3], &[4], &[5], &[6], &[7], &mixed];
    for sizes in schedules {
        let chunked = decode_chunked(data, max_size, sizes);
        assert_eq!(
            chunked.out, whole.out,
            "chunks of {sizes:?} decode differently from one shot"
        );
        assert_eq!(chunked.pending(), whole.pending(), "chunks of {sizes:?}");
    }
    whole
}
