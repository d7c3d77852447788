//! The per-packet traffic log (`log_file=`): one line per packet sent or received with the time,
//! direction, packet type, topic, packet id and sizes. Never payload bytes, passwords, tokens or
//! signatures: CONNECT lines show only whether a user name and password were present.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::core::error::{Error, Result};

/// Packet direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to broker.
    Out,
    /// Broker to client.
    In,
}

/// What the log says about one packet.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// Packet type name (`PUBLISH`, `PUBACK`, ...).
    pub kind: &'static str,
    /// Topic or filters, when the packet has them.
    pub topic: Option<&'a str>,
    /// Packet id (0 when none).
    pub pkid: u16,
    /// QoS (PUBLISH only).
    pub qos: Option<u8>,
    /// Whole packet size in bytes.
    pub size: usize,
    /// Payload size in bytes (PUBLISH only).
    pub payload: Option<usize>,
    /// Free-form detail without secrets (for example `session_present=1` or return codes).
    pub detail: Option<&'a str>,
}

impl<'a> Entry<'a> {
    /// A packet with only a type, packet id and size (acks, pings).
    #[must_use]
    pub fn control(kind: &'static str, pkid: u16, size: usize) -> Self {
        Self {
            kind,
            topic: None,
            pkid,
            qos: None,
            size,
            payload: None,
            detail: None,
        }
    }
}

/// An open traffic log.
#[derive(Debug)]
pub struct TrafficLog {
    out: BufWriter<File>,
}

impl TrafficLog {
    /// Opens (appends to) the log file.
    ///
    /// # Errors
    /// [`Error::Config`] when the file cannot be opened for writing.
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                Error::Config(format!(
                    "log_file {} cannot be opened for writing: {e}",
                    path.display()
                ))
            })?;
        Ok(Self {
            out: BufWriter::new(file),
        })
    }

    /// Writes one line. I/O errors are logged once and otherwise ignored (the log is a
    /// diagnostic and must never break the connection).
    pub fn record(&mut self, direction: Direction, entry: &Entry<'_>) {
        let dir = match direction {
            Direction::Out => "OUT",
            Direction::In => "IN ",
        };
        let mut line = format!("{} {dir} {:<11}", timestamp(SystemTime::now()), entry.kind);
        if let Some(t) = entry.topic {
            line.push_str(&format!(" topic={t:?}"));
        }
        if entry.pkid != 0 {
            line.push_str(&format!(" pkid={}", entry.pkid));
        }
        if let Some(q) = entry.qos {
            line.push_str(&format!(" qos={q}"));
        }
        line.push_str(&format!(" size={}", entry.size));
        if let Some(p) = entry.payload {
            line.push_str(&format!(" payload={p}"));
        }
        if let Some(d) = entry.detail {
            line.push(' ');
            line.push_str(d);
        }
        line.push('\n');
        if let Err(e) = self.out.write_all(line.as_bytes()) {
            log::warn!("traffic log write failed: {e}");
        }
    }

    /// Flushes buffered lines to the file.
    pub fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            log::warn!("traffic log flush failed: {e}");
        }
    }
}

impl Drop for TrafficLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// RFC 3339 UTC timestamp with microseconds.
#[must_use]
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day) — H. Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_micros(1_704_164_645_000_123);
        assert_eq!(timestamp(t), "2024-01-02T03:04:05.000123Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn lines_carry_type_topic_pkid_and_sizes() {
        let dir = std::env::temp_dir().join(format!("awsiot-rs-tl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("traffic.log");
        {
            let mut log = TrafficLog::open(&path).unwrap();
            log.record(
                Direction::Out,
                &Entry {
                    kind: "PUBLISH",
                    topic: Some("a/b"),
                    pkid: 3,
                    qos: Some(1),
                    size: 42,
                    payload: Some(30),
                    detail: None,
                },
            );
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("OUT PUBLISH"), "{text}");
        assert!(
            text.contains("topic=\"a/b\" pkid=3 qos=1 size=42 payload=30"),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_paths_are_config_errors() {
        let err = TrafficLog::open(Path::new("/nonexistent-dir/x/traffic.log")).unwrap_err();
        assert!(matches!(err, Error::Config(_)));
    }
}
