//! The bounded queue between the driver (producer, tokio thread) and one subscription's consumer
//! (the host, for example the asyncio loop thread).
//!
//! Overflow policy: a QoS 0 message that finds the queue full is dropped and counted. A QoS 1
//! message is always queued (the broker's in-flight window bounds how far the queue can exceed
//! its capacity), but while the queue is over capacity the driver withholds the PUBACKs, so the
//! broker stops sending QoS 1 messages until the consumer catches up: backpressure, no loss.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::core::error::Error;
use crate::core::message::Message;

/// Tells the host that a source (subscription queue, client event queue) has something new.
/// Called from tokio threads; must not block.
pub trait Wake: Send + Sync {
    /// `source` is the id of the queue that became ready.
    fn wake(&self, source: u64);
}

/// What happened to a pushed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued within capacity.
    Queued,
    /// Queued, but the queue is over capacity: withhold the acknowledgement.
    Over,
    /// Dropped (QoS 0 and full, or the queue is closed).
    Dropped,
}

/// A batch taken by the consumer.
#[derive(Debug, Default)]
pub struct Batch {
    /// Messages in arrival order.
    pub messages: Vec<Message>,
    /// The queue is closed and empty: no more messages will come.
    pub closed: bool,
    /// The queue is paused (its client was disconnected by the application) and empty: an
    /// iteration in progress ends, but the subscription stays and resumes at the next connect.
    pub paused: bool,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Message>,
    closed: bool,
    paused: bool,
    notified: bool,
    /// Why the queue was closed, when it was not closed on purpose (for example the broker
    /// refused its filter while a session was restored).
    error: Option<Error>,
}

/// One subscription's bounded message queue.
pub struct SubscriptionQueue {
    id: u64,
    capacity: usize,
    state: Mutex<State>,
    wake: Arc<dyn Wake>,
    space: Arc<Notify>,
    dropped: AtomicU64,
    received: AtomicU64,
}

impl std::fmt::Debug for SubscriptionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionQueue")
            .field("id", &self.id)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl SubscriptionQueue {
    /// A queue that calls `wake.wake(id)` when it becomes non-empty (or closes). `space` is
    /// notified when a consumer brings an over-capacity queue back within capacity.
    #[must_use]
    pub fn new(id: u64, capacity: usize, wake: Arc<dyn Wake>, space: Arc<Notify>) -> Arc<Self> {
        Arc::new(Self {
            id,
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
            wake,
            space,
            dropped: AtomicU64::new(0),
            received: AtomicU64::new(0),
        })
    }

    /// The id given at creation.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the queue data itself stays consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a message (driver side).
    pub fn push(&self, message: Message) -> PushOutcome {
        let qos = message.qos;
        let (outcome, wake) = {
            let mut s = self.lock();
            if s.closed || (s.items.len() >= self.capacity && qos == 0) {
                (PushOutcome::Dropped, false)
            } else {
                s.items.push_back(message);
                let outcome = if s.items.len() > self.capacity {
                    PushOutcome::Over
                } else {
                    PushOutcome::Queued
                };
                let wake = !s.notified;
                s.notified = true;
                (outcome, wake)
            }
        };
        match outcome {
            PushOutcome::Dropped => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.received.fetch_add(1, Ordering::Relaxed);
            }
        }
        if wake {
            self.wake.wake(self.id);
        }
        outcome
    }

    /// Takes up to `max` messages (consumer side). When the batch leaves the queue empty, the
    /// next push wakes the host again.
    pub fn pop_batch(&self, max: usize) -> Batch {
        let mut s = self.lock();
        let was_over = s.items.len() > self.capacity;
        let n = max.min(s.items.len());
        let messages: Vec<Message> = s.items.drain(..n).collect();
        if s.items.is_empty() {
            s.notified = false;
        }
        let closed = s.closed && s.items.is_empty();
        let paused = s.paused && !s.closed && s.items.is_empty();
        let now_within = s.items.len() <= self.capacity;
        drop(s);
        if was_over && now_within {
            self.space.notify_one();
        }
        Batch {
            messages,
            closed,
            paused,
        }
    }

    /// Whether the queue holds more than its capacity (the driver withholds PUBACKs).
    #[must_use]
    pub fn is_over(&self) -> bool {
        self.lock().items.len() > self.capacity
    }

    /// Number of queued messages.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether no message is queued.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks the queue closed: queued messages can still be taken, then `Batch::closed` is set.
    pub fn close(&self) {
        self.close_inner(None);
    }

    /// Closes the queue because of `error` (the consumer sees it once the queue is drained).
    pub fn close_with(&self, error: Error) {
        self.close_inner(Some(error));
    }

    fn close_inner(&self, error: Option<Error>) {
        let wake = {
            let mut s = self.lock();
            if s.closed {
                false
            } else {
                s.closed = true;
                s.error = error;
                let wake = !s.notified;
                s.notified = true;
                wake
            }
        };
        if wake {
            self.wake.wake(self.id);
        }
        self.space.notify_one();
    }

    /// The error the queue was closed with, if any.
    #[must_use]
    pub fn error(&self) -> Option<Error> {
        self.lock().error.clone()
    }

    /// Pauses the queue (its client stopped): the consumer drains what is queued, then sees
    /// `Batch::paused` until [`SubscriptionQueue::resume`]. Messages are still accepted.
    pub fn pause(&self) {
        let wake = {
            let mut s = self.lock();
            if s.closed || s.paused {
                false
            } else {
                s.paused = true;
                let wake = !s.notified;
                s.notified = true;
                wake
            }
        };
        if wake {
            self.wake.wake(self.id);
        }
    }

    /// Ends a pause (the client connects again).
    pub fn resume(&self) {
        self.lock().paused = false;
    }

    /// Whether the queue is paused.
    #[must_use]
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Whether [`SubscriptionQueue::close`] was called.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Messages dropped because the queue was full (QoS 0) or closed.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Messages accepted into the queue.
    #[must_use]
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct CountingWake(AtomicUsize);
    impl Wake for CountingWake {
        fn wake(&self, _source: u64) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn msg(qos: u8, n: u8) -> Message {
        Message {
            topic: Arc::from("t"),
            payload: bytes::Bytes::from(vec![n]),
            qos,
            retain: false,
            dup: false,
        }
    }

    #[test]
    fn wakes_once_per_empty_to_ready_transition() {
        let wake = Arc::new(CountingWake::default());
        let q = SubscriptionQueue::new(7, 10, wake.clone(), Arc::new(Notify::new()));
        q.push(msg(0, 1));
        q.push(msg(0, 2));
        assert_eq!(wake.0.load(Ordering::SeqCst), 1);
        let b = q.pop_batch(1);
        assert_eq!(b.messages.len(), 1);
        q.push(msg(0, 3));
        assert_eq!(
            wake.0.load(Ordering::SeqCst),
            1,
            "still not drained: no new wake"
        );
        let b = q.pop_batch(100);
        assert_eq!(
            b.messages.iter().map(|m| m.payload[0]).collect::<Vec<_>>(),
            vec![2, 3]
        );
        q.push(msg(0, 4));
        assert_eq!(wake.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn qos0_overflow_drops_and_counts_qos1_overflow_queues_over_capacity() {
        let wake = Arc::new(CountingWake::default());
        let q = SubscriptionQueue::new(1, 2, wake, Arc::new(Notify::new()));
        assert_eq!(q.push(msg(0, 1)), PushOutcome::Queued);
        assert_eq!(q.push(msg(0, 2)), PushOutcome::Queued);
        assert_eq!(q.push(msg(0, 3)), PushOutcome::Dropped);
        assert_eq!(q.dropped(), 1);
        assert_eq!(q.push(msg(1, 4)), PushOutcome::Over);
        assert!(q.is_over());
        let b = q.pop_batch(1);
        assert_eq!(b.messages.len(), 1);
        assert!(!q.is_over());
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn close_lets_the_consumer_drain_then_reports_closed() {
        let wake = Arc::new(CountingWake::default());
        let q = SubscriptionQueue::new(1, 5, wake, Arc::new(Notify::new()));
        q.push(msg(1, 1));
        q.close();
        assert_eq!(q.push(msg(1, 2)), PushOutcome::Dropped);
        let b = q.pop_batch(10);
        assert_eq!(b.messages.len(), 1);
        assert!(b.closed);
    }

    #[test]
    fn a_paused_queue_keeps_messages_and_reports_the_pause_only_when_empty() {
        let wake = Arc::new(CountingWake::default());
        let q = SubscriptionQueue::new(1, 5, wake.clone(), Arc::new(Notify::new()));
        q.push(msg(1, 1));
        q.pause();
        let b = q.pop_batch(10);
        assert_eq!(b.messages.len(), 1);
        assert!(b.paused && !b.closed, "drained: the pause shows");
        assert_eq!(q.push(msg(1, 2)), PushOutcome::Queued, "still accepts");
        q.resume();
        let b = q.pop_batch(10);
        assert_eq!(b.messages.len(), 1);
        assert!(!b.paused && !b.closed);
        assert!(
            !q.pop_batch(10).paused,
            "resumed: an empty queue is just empty"
        );
    }

    #[test]
    fn pausing_an_idle_queue_wakes_its_consumer() {
        let wake = Arc::new(CountingWake::default());
        let q = SubscriptionQueue::new(1, 5, wake.clone(), Arc::new(Notify::new()));
        q.pause();
        assert_eq!(wake.0.load(Ordering::SeqCst), 1);
        assert!(q.pop_batch(1).paused);
    }

    #[test]
    fn a_queue_closed_with_an_error_keeps_it_for_the_consumer() {
        let q = SubscriptionQueue::new(
            1,
            5,
            Arc::new(CountingWake::default()),
            Arc::new(Notify::new()),
        );
        q.close_with(Error::SubscribeRefused {
            filters: vec!["a".into()],
        });
        assert!(q.pop_batch(1).closed);
        assert!(matches!(q.error(), Some(Error::SubscribeRefused { .. })));
    }
}
