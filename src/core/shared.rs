//! What the client handle and its driver share: the command vocabulary between them, the
//! completion callbacks, lifecycle events, counters and the state both read. Defined here, below
//! both, so neither imports the other's internals.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::core::config::{ClientConfig, QoS};
use crate::core::error::{DisconnectReason, Error, Result};
use crate::core::protocol::queue::SubscriptionQueue;
use crate::core::protocol::router::Router;

/// Completion callback of an operation. Called exactly once, from a tokio thread, unless the
/// submitting call itself returned an error (then it is dropped uncalled).
pub type Reply<T> = Box<dyn FnOnce(Result<T>) + Send + 'static>;

/// Connection lifecycle events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A connection was established.
    Connected {
        /// CONNACK session-present flag.
        session_present: bool,
        /// Whether this was an automatic reconnect.
        reconnect: bool,
    },
    /// A connection ended or a reconnect attempt failed.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
        /// The error, if it was not the application's own `disconnect()`.
        error: Option<Error>,
    },
}

/// Receives lifecycle events (from tokio threads; must not block).
pub trait EventSink: Send + Sync {
    /// One event.
    fn event(&self, event: ClientEvent);
}

/// Result of a successful `connect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectInfo {
    /// CONNACK session-present flag.
    pub session_present: bool,
}

/// Counters, readable at any time.
#[derive(Debug, Default)]
pub struct Stats {
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub inflight: AtomicU64,
    pub dropped: AtomicU64,
    pub reconnects: AtomicU64,
    pub unrouted: AtomicU64,
}

/// A copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// PUBLISH packets sent (first transmissions).
    pub messages_sent: u64,
    /// PUBLISH packets received.
    pub messages_received: u64,
    /// Bytes written to the connection.
    pub bytes_sent: u64,
    /// Bytes read from the connection.
    pub bytes_received: u64,
    /// Packets waiting for their acknowledgement.
    pub inflight: u64,
    /// Operations waiting to be sent.
    pub queued: u64,
    /// Messages dropped (full QoS 0 queues, expired fire-and-forget publishes).
    pub dropped: u64,
    /// Successful automatic reconnects.
    pub reconnects: u64,
    /// Messages received that no subscription or catch-all stream took.
    pub unrouted: u64,
}

pub fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

/// Connection state as seen by the handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Not connected by the application (never, or after `disconnect()`).
    Closed = 0,
    /// First connection attempt under way.
    Connecting = 1,
    /// Connected.
    Connected = 2,
    /// Connection lost; reconnecting.
    Reconnecting = 3,
    /// `disconnect()` under way, or a lost connection that will not be retried winding down.
    Closing = 4,
}

impl State {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Connecting,
            2 => Self::Connected,
            3 => Self::Reconnecting,
            4 => Self::Closing,
            _ => Self::Closed,
        }
    }
}

/// A PUBLISH submitted by the application.
pub struct OutPublish {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub reply: Option<Reply<()>>,
}

/// A SUBSCRIBE submitted by the application.
pub struct SubscribeCommand {
    pub id: u64,
    pub filters: Vec<(String, QoS)>,
    pub queue: Arc<SubscriptionQueue>,
    pub reply: Reply<Vec<u8>>,
}

/// An UNSUBSCRIBE submitted by the application.
pub struct UnsubscribeCommand {
    pub filters: Vec<String>,
    pub reply: Reply<()>,
}

/// Work for the driver. Kept small (the payloads are boxed): the command channel allocates
/// its slots 32 at a time up front, so every idle client holds 32 × `size_of::<Command>()`.
pub enum Command {
    Publish(Box<OutPublish>),
    Subscribe(Box<SubscribeCommand>),
    CloseSubscription { id: u64, reply: Option<Reply<()>> },
    Unsubscribe(Box<UnsubscribeCommand>),
    Disconnect { reply: Option<Reply<()>> },
}

/// State shared by the handle and the driver. It holds no channel sender, so dropping every
/// handle closes the command channel and stops the driver.
pub struct Shared {
    pub config: ClientConfig,
    pub state: AtomicU8,
    pub session_present: AtomicBool,
    pub stats: Stats,
    pub sink: Arc<dyn EventSink>,
    /// Notified when a consumer brings an over-capacity queue back within capacity.
    pub space: Arc<Notify>,
    /// Operations in the command channel (submitted, not yet taken by the driver).
    pub queued: AtomicUsize,
    /// Operations in the driver's outbox (waiting for the connection or a packet id).
    pub outbox_len: AtomicUsize,
    /// The subscription registry. It belongs to the client, not to one driver, so
    /// subscriptions outlive `disconnect()` + `connect()`. Locked briefly by the driver (per
    /// inbound PUBLISH) and by the handle (catch-alls, closes while no driver runs).
    pub router: Mutex<Router>,
    /// Incremented by each `connect()`: a driver only changes the shared state while it is
    /// the current one, so a previous driver still flushing its DISCONNECT cannot overwrite a
    /// new connection's state.
    pub generation: AtomicU64,
}

impl Shared {
    /// The shared state of a new, unconnected client.
    pub fn new(config: ClientConfig, sink: Arc<dyn EventSink>) -> Self {
        let router = Router::new(config.limits);
        Self {
            router: Mutex::new(router),
            generation: AtomicU64::new(0),
            config,
            state: AtomicU8::new(State::Closed as u8),
            session_present: AtomicBool::new(false),
            stats: Stats::default(),
            sink,
            space: Arc::new(Notify::new()),
            queued: AtomicUsize::new(0),
            outbox_len: AtomicUsize::new(0),
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Release);
    }

    /// Sets the state only if driver `generation` is still the current one.
    pub fn set_state_for(&self, generation: u64, s: State) {
        if self.generation.load(Ordering::Acquire) == generation {
            self.set_state(s);
        }
    }

    pub fn router(&self) -> MutexGuard<'_, Router> {
        self.router
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
