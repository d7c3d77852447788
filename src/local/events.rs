//! What happened inside the core, for tests to inspect: every connect, disconnect (with its
//! reason), subscribe, unsubscribe and publish. A bounded log that readers follow with a cursor.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Kinds of [`CoreEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A client completed CONNECT.
    Connect,
    /// A client's connection ended; `reason` says why (AWS's lifecycle reason).
    Disconnect,
    /// A client subscribed; `topics` are the filters granted.
    Subscribe,
    /// A client unsubscribed.
    Unsubscribe,
    /// A client published (not `$aws/rules/...`).
    Publish,
    /// A client published to `$aws/rules/<rule>/...` (basic ingest: no subscriber receives it).
    Rule,
    /// A connection attempt was refused before it became a client (TLS, authentication, CONNECT).
    Refused,
}

impl EventKind {
    /// The lowercase name (`"connect"`, `"disconnect"`, ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Disconnect => "disconnect",
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::Publish => "publish",
            Self::Rule => "rule",
            Self::Refused => "refused",
        }
    }
}

/// One thing that happened in the core.
#[derive(Debug, Clone)]
pub struct CoreEvent {
    /// What happened.
    pub kind: EventKind,
    /// The client id (empty for a connection refused before CONNECT).
    pub client_id: String,
    /// The topic of a publish; empty otherwise.
    pub topic: String,
    /// The filters of a subscribe / unsubscribe.
    pub topics: Vec<String>,
    /// The disconnect or refusal reason (AWS's `disconnectReason` names), empty otherwise.
    pub reason: String,
    /// QoS of a publish.
    pub qos: u8,
    /// Payload size of a publish.
    pub payload_len: usize,
    /// The principal (certificate id, access key id or authorizer principal).
    pub principal: String,
    /// When, in milliseconds since the epoch.
    pub timestamp_ms: u64,
}

impl CoreEvent {
    /// An event of `kind` for `client_id`, stamped now; the other fields empty.
    #[must_use]
    pub fn new(kind: EventKind, client_id: &str) -> Self {
        Self {
            kind,
            client_id: client_id.to_owned(),
            topic: String::new(),
            topics: Vec::new(),
            reason: String::new(),
            qos: 0,
            payload_len: 0,
            principal: String::new(),
            timestamp_ms: now_ms(),
        }
    }

    /// The event as a JSON object (the shape the Python `CoreEvent` is built from).
    #[must_use]
    pub fn to_json(&self) -> Value {
        json!({
            "kind": self.kind.as_str(),
            "client_id": self.client_id,
            "topic": self.topic,
            "topics": self.topics,
            "reason": self.reason,
            "qos": self.qos,
            "payload_len": self.payload_len,
            "principal": self.principal,
            "timestamp_ms": self.timestamp_ms,
        })
    }
}

/// Milliseconds since the epoch.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How many events the log keeps; a reader further behind loses the oldest and is told how many.
pub const EVENT_LOG_CAPACITY: usize = 100_000;

#[derive(Debug, Default)]
struct Ring {
    events: VecDeque<CoreEvent>,
    /// Sequence number of `events[0]`.
    first_seq: u64,
    closed: bool,
}

/// A bounded, multi-reader event log. Writers never block on readers.
#[derive(Debug, Default)]
pub struct EventLog {
    ring: Mutex<Ring>,
    changed: Condvar,
    /// Readers that want publish events (they are skipped when nobody reads, to save work).
    publish_readers: AtomicUsize,
}

/// What one read returned.
#[derive(Debug, Default)]
pub struct EventBatch {
    /// The events, oldest first.
    pub events: Vec<CoreEvent>,
    /// The cursor to pass to the next read.
    pub next: u64,
    /// Events the reader missed because it fell further behind than the capacity.
    pub missed: u64,
    /// The log is closed (the core stopped) and everything was read.
    pub closed: bool,
}

impl EventLog {
    /// Appends an event and wakes the readers.
    pub fn push(&self, event: CoreEvent) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.closed {
            return;
        }
        if ring.events.len() >= EVENT_LOG_CAPACITY {
            ring.events.pop_front();
            ring.first_seq += 1;
        }
        ring.events.push_back(event);
        drop(ring);
        self.changed.notify_all();
    }

    /// Whether publish events are wanted now (some reader follows the log).
    #[must_use]
    pub fn wants_publishes(&self) -> bool {
        self.publish_readers.load(Ordering::Relaxed) > 0
    }

    /// A cursor at the end of the log: a reader starting here sees what happens from now on.
    /// Counts as a reader of publish events until [`EventLog::release`].
    #[must_use]
    pub fn follow(&self) -> u64 {
        self.publish_readers.fetch_add(1, Ordering::Relaxed);
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.first_seq + ring.events.len() as u64
    }

    /// Ends a [`EventLog::follow`].
    pub fn release(&self) {
        let _ = self
            .publish_readers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Events from `cursor` on, at most `max`; waits up to `timeout` for the first one.
    /// Blocks the calling thread (never call it on an async runtime thread).
    #[must_use]
    pub fn read(&self, cursor: u64, max: usize, timeout: Duration) -> EventBatch {
        let deadline = Instant::now() + timeout;
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let end = ring.first_seq + ring.events.len() as u64;
            if cursor < end || ring.closed {
                let start = cursor.max(ring.first_seq);
                let skip = usize::try_from(start - ring.first_seq).unwrap_or(usize::MAX);
                let events: Vec<CoreEvent> =
                    ring.events.iter().skip(skip).take(max).cloned().collect();
                let next = start + events.len() as u64;
                return EventBatch {
                    closed: ring.closed && next >= end,
                    missed: start.saturating_sub(cursor),
                    events,
                    next,
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return EventBatch {
                    next: cursor,
                    ..EventBatch::default()
                };
            }
            ring = self
                .changed
                .wait_timeout(ring, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Closes the log: readers get what is left, then `closed`.
    pub fn close(&self) {
        self.ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_sees_events_from_its_cursor_on_and_closing_ends_it() {
        let log = EventLog::default();
        log.push(CoreEvent::new(EventKind::Connect, "before"));
        let cursor = log.follow();
        assert!(log.wants_publishes());
        log.push(CoreEvent::new(EventKind::Connect, "a"));
        log.push(CoreEvent::new(EventKind::Disconnect, "a"));
        let batch = log.read(cursor, 10, Duration::from_millis(10));
        let ids: Vec<_> = batch.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(ids, ["connect", "disconnect"]);
        assert_eq!(batch.events[0].client_id, "a");
        let empty = log.read(batch.next, 10, Duration::from_millis(10));
        assert!(empty.events.is_empty() && !empty.closed);
        log.close();
        assert!(log.read(batch.next, 10, Duration::from_secs(5)).closed);
        log.release();
        assert!(!log.wants_publishes());
    }

    #[test]
    fn a_reader_behind_the_capacity_is_told_what_it_missed() {
        let log = EventLog::default();
        let cursor = log.follow();
        for _ in 0..EVENT_LOG_CAPACITY + 5 {
            log.push(CoreEvent::new(EventKind::Publish, "c"));
        }
        let batch = log.read(cursor, 1, Duration::ZERO);
        assert_eq!(batch.missed, 5);
        assert_eq!(batch.events.len(), 1);
    }

    #[test]
    fn a_waiting_reader_wakes_on_push() {
        let log = std::sync::Arc::new(EventLog::default());
        let cursor = log.follow();
        let writer = std::sync::Arc::clone(&log);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            writer.push(CoreEvent::new(EventKind::Subscribe, "w"));
        });
        let batch = log.read(cursor, 10, Duration::from_secs(10));
        assert_eq!(batch.events.len(), 1);
        t.join().unwrap();
    }
}
