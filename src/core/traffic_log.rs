//! The per-packet traffic log (`log_file=`): one line per packet sent or received with the time,
//! direction, packet type, topic, packet id and sizes. Never payload bytes, passwords, tokens or
//! signatures: CONNECT lines show only whether a user name and password were present.
//!
//! The file is created readable by its owner only (0600 on Unix; an existing file keeps its
//! mode) and rotated by size: past [`MAX_BYTES`] it becomes `<name>.1` (older ones shift to
//! `.2`, ..., [`KEEP`] are kept) and a new file is started. Lines are never split across files.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::core::error::{Error, Result};

/// Size past which the log is rotated (10 MiB).
pub const MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Rotated files kept (`<name>.1` .. `<name>.3`).
pub const KEEP: usize = 3;

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
    path: PathBuf,
    /// Bytes in the current file, buffered ones included.
    size: u64,
    max_bytes: u64,
    keep: usize,
}

/// Opens `path` for appending, creating it owner-only (an existing file keeps its mode).
fn create(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// `<path>.<n>`.
fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    name.into()
}

/// Renames `from` to `to`; a missing `from` is not an error.
fn shift(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl TrafficLog {
    /// Opens (appends to) the log file, with the default rotation limits ([`MAX_BYTES`],
    /// [`KEEP`]).
    ///
    /// # Errors
    /// [`Error::Config`] when the file cannot be opened for writing.
    pub fn open(path: &Path) -> Result<Self> {
        Self::with_limits(path, MAX_BYTES, KEEP)
    }

    /// Opens (appends to) the log file, rotating it past `max_bytes` and keeping `keep` old
    /// files (0: the full file is simply started afresh).
    ///
    /// # Errors
    /// [`Error::Config`] when the file cannot be opened for writing.
    pub fn with_limits(path: &Path, max_bytes: u64, keep: usize) -> Result<Self> {
        let file = create(path).map_err(|e| {
            Error::Config(format!(
                "log_file {} cannot be opened for writing: {e}",
                path.display()
            ))
        })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            out: BufWriter::new(file),
            path: path.to_path_buf(),
            size,
            max_bytes,
            keep,
        })
    }

    /// Moves the full file aside (`.1`, shifting older ones) and starts a new one. On failure
    /// the current file goes on (the log must never break the connection) and the next try
    /// is after another `max_bytes`.
    fn rotate(&mut self) {
        self.flush();
        let moved = if self.keep == 0 {
            std::fs::remove_file(&self.path)
        } else {
            (1..self.keep)
                .rev()
                .try_for_each(|n| shift(&rotated(&self.path, n), &rotated(&self.path, n + 1)))
                .and_then(|()| shift(&self.path, &rotated(&self.path, 1)))
        };
        self.size = 0;
        if let Err(e) = moved {
            log::warn!("traffic log rotation failed: {e}");
            return;
        }
        match create(&self.path) {
            Ok(file) => self.out = BufWriter::new(file),
            // Lines go on to the moved (or, with keep = 0, removed) file meanwhile.
            Err(e) => log::warn!("traffic log: cannot start a new file after rotation: {e}"),
        }
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
        let len = u64::try_from(line.len()).unwrap_or(u64::MAX);
        if self.size > 0 && self.size.saturating_add(len) > self.max_bytes {
            self.rotate();
        }
        match self.out.write_all(line.as_bytes()) {
            Ok(()) => self.size = self.size.saturating_add(len),
            Err(e) => log::warn!("traffic log write failed: {e}"),
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

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("awsiot-rs-tl-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[cfg(unix)]
    #[test]
    fn new_log_files_are_owner_only_and_existing_modes_are_left_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("mode");
        let path = dir.join("traffic.log");
        drop(TrafficLog::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
        let existing = dir.join("existing.log");
        std::fs::write(&existing, "").unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut log = TrafficLog::open(&existing).unwrap();
        log.record(Direction::In, &Entry::control("PINGRESP", 0, 2));
        drop(log);
        assert_eq!(mode(&existing), 0o640, "an existing file keeps its mode");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn publish(log: &mut TrafficLog, i: usize) {
        let topic = format!("t/{i}");
        log.record(
            Direction::Out,
            &Entry {
                kind: "PUBLISH",
                topic: Some(&topic),
                pkid: 1,
                qos: Some(1),
                size: 10,
                payload: Some(5),
                detail: None,
            },
        );
    }

    fn rotated_path(path: &Path, n: usize) -> std::path::PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        name.into()
    }

    /// The `t/<i>` numbers of the lines of a file, checking every line is whole.
    fn topics_in(path: &Path) -> Vec<usize> {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
        text.lines()
            .map(|line| {
                assert!(
                    line.starts_with("20") && line.contains(" OUT PUBLISH"),
                    "{line:?}"
                );
                assert!(line.ends_with(" size=10 payload=5"), "split line {line:?}");
                let rest = line.split("topic=\"t/").nth(1).unwrap();
                rest.split('"').next().unwrap().parse().unwrap()
            })
            .collect()
    }

    #[test]
    fn rotation_keeps_the_configured_number_of_old_files_and_never_splits_lines() {
        let dir = scratch("rotate");
        let path = dir.join("traffic.log");
        let line_len = {
            let mut log = TrafficLog::with_limits(&path, 1 << 20, 2).unwrap();
            publish(&mut log, 0);
            drop(log);
            let n = std::fs::metadata(&path).unwrap().len();
            std::fs::remove_file(&path).unwrap();
            n
        };
        // Room for 3.5 lines per file: a line that does not fit starts the next file.
        let limit = line_len * 7 / 2;
        {
            let mut log = TrafficLog::with_limits(&path, limit, 2).unwrap();
            for i in 0..40 {
                publish(&mut log, i);
            }
        }
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["traffic.log", "traffic.log.1", "traffic.log.2"]);
        let (old2, old1, current) = (
            topics_in(&rotated_path(&path, 2)),
            topics_in(&rotated_path(&path, 1)),
            topics_in(&path),
        );
        assert_eq!(old2.len(), 3);
        assert_eq!(old1.len(), 3);
        let all: Vec<usize> = [old2, old1, current].concat();
        let first = all[0];
        assert_eq!(
            all,
            (first..40).collect::<Vec<_>>(),
            "newest lines, in order, none lost between files"
        );
        for p in [path.clone(), rotated_path(&path, 1), rotated_path(&path, 2)] {
            assert!(std::fs::metadata(&p).unwrap().len() <= limit);
            #[cfg(unix)]
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_existing_file_counts_towards_the_limit() {
        let dir = scratch("existing");
        let path = dir.join("traffic.log");
        std::fs::write(&path, "x".repeat(990) + "\n").unwrap();
        {
            let mut log = TrafficLog::with_limits(&path, 1000, 3).unwrap();
            publish(&mut log, 7);
        }
        assert_eq!(
            std::fs::read_to_string(rotated_path(&path, 1))
                .unwrap()
                .len(),
            991
        );
        assert_eq!(topics_in(&path), [7]);
        assert!(!rotated_path(&path, 2).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_line_longer_than_the_limit_is_written_whole_to_a_file_of_its_own() {
        let dir = scratch("long");
        let path = dir.join("traffic.log");
        {
            let mut log = TrafficLog::with_limits(&path, 10, 3).unwrap();
            for i in 0..3 {
                publish(&mut log, i);
            }
        }
        assert_eq!(topics_in(&rotated_path(&path, 2)), [0]);
        assert_eq!(topics_in(&rotated_path(&path, 1)), [1]);
        assert_eq!(topics_in(&path), [2]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keeping_no_old_files_starts_afresh() {
        let dir = scratch("keep0");
        let path = dir.join("traffic.log");
        let mut log = TrafficLog::with_limits(&path, 10, 0).unwrap();
        for i in 0..3 {
            publish(&mut log, i);
        }
        drop(log);
        assert_eq!(topics_in(&path), [2]);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_paths_are_config_errors() {
        let err = TrafficLog::open(Path::new("/nonexistent-dir/x/traffic.log")).unwrap_err();
        assert!(matches!(err, Error::Config(_)));
    }
}
