//! The client handle: validates every call, then hands work to the client's one driver task over
//! a bounded channel. Cheap to share; all protocol state lives in the driver.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, Notify};

use crate::core::config::{ClientConfig, QoS, AWS_MAX_FILTERS_PER_SUBSCRIBE};
use crate::core::driver::Driver;
use crate::core::error::{Error, Result};
use crate::core::protocol::queue::SubscriptionQueue;
use crate::core::protocol::topic::{self, Limits};
use crate::core::shared::{
    Command, ConnectInfo, EventSink, OutPublish, Reply, Shared, State, StatsSnapshot,
    SubscribeCommand, UnsubscribeCommand,
};
use crate::core::traffic_log::TrafficLog;

static NEXT_QUEUE_ID: AtomicU64 = AtomicU64::new(1);

/// Capacity of the command channel between handle and driver.
pub const COMMAND_CAPACITY: usize = 65_536;

/// An MQTT client for AWS IoT Core (or any MQTT 3.1.1 broker).
pub struct Client {
    shared: Arc<Shared>,
    runtime: Handle,
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    /// The last driver task: a new one starts only after it has finished.
    driver: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.shared.config.endpoint)
            .field("port", &self.shared.config.port)
            .field("client_id", &self.shared.config.client_id)
            .field("state", &self.shared.state())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Validates the configuration (including that `log_file` can be written) and creates a
    /// client that is not connected yet. The driver runs on `runtime`.
    ///
    /// # Errors
    /// Any configuration problem.
    pub fn new(config: ClientConfig, runtime: Handle, sink: Arc<dyn EventSink>) -> Result<Self> {
        config.validate()?;
        if let Some(path) = &config.log_file {
            TrafficLog::open(path)?;
        }
        Ok(Self {
            shared: Arc::new(Shared::new(config, sink)),
            runtime,
            commands: Mutex::new(None),
            driver: Mutex::new(None),
        })
    }

    fn commands(&self) -> MutexGuard<'_, Option<mpsc::Sender<Command>>> {
        self.commands
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &ClientConfig {
        &self.shared.config
    }

    /// A fresh id for a subscription queue, unique in the process (hosts that serve many
    /// clients from one place, like one asyncio loop, key their wake-ups by it).
    pub fn new_id(&self) -> u64 {
        NEXT_QUEUE_ID.fetch_add(1, Ordering::Relaxed)
    }

    /// The connection state.
    #[must_use]
    pub fn state(&self) -> State {
        self.shared.state()
    }

    /// Whether a connection is up right now.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.state() == State::Connected
    }

    /// The session-present flag of the last CONNACK.
    #[must_use]
    pub fn session_present(&self) -> bool {
        self.shared.session_present.load(Ordering::Acquire)
    }

    /// The space notifier to give to subscription queues of this client.
    #[must_use]
    pub fn space_notifier(&self) -> Arc<Notify> {
        Arc::clone(&self.shared.space)
    }

    /// A snapshot of the counters.
    #[must_use]
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.shared.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            messages_sent: get(&s.messages_sent),
            messages_received: get(&s.messages_received),
            bytes_sent: get(&s.bytes_sent),
            bytes_received: get(&s.bytes_received),
            inflight: get(&s.inflight),
            queued: u64::try_from(self.waiting()).unwrap_or(u64::MAX),
            dropped: get(&s.dropped),
            reconnects: get(&s.reconnects),
            unrouted: get(&s.unrouted),
        }
    }

    /// Starts the driver and the first connection attempt; `reply` gets the CONNACK result.
    /// Automatic reconnect applies only once a connection has been established.
    pub fn connect(&self, reply: Reply<ConnectInfo>) {
        let mut commands = self.commands();
        let driver_running = commands.as_ref().is_some_and(|tx| !tx.is_closed());
        if driver_running {
            drop(commands);
            reply(Err(Error::InvalidState(
                "the client is already connected or connecting; call disconnect() first".into(),
            )));
            return;
        }
        let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
        *commands = Some(tx);
        let generation = self.shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.shared.set_state(State::Connecting);
        self.shared.session_present.store(false, Ordering::Release);
        let driver = Box::new(Driver::new(Arc::clone(&self.shared), rx, generation));
        let mut slot = self
            .driver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = slot.take();
        *slot = Some(
            self.runtime
                .spawn(crate::core::driver::task(previous, driver, reply)),
        );
    }

    /// Operations submitted and not yet sent.
    fn waiting(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed) + self.shared.outbox_len.load(Ordering::Relaxed)
    }

    fn check_open(&self) -> Result<()> {
        match self.state() {
            State::Closed | State::Closing => Err(Error::Closed(
                "the client is not connected: call connect() (or use 'async with client') first"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    fn offline_checks(&self, qos0_publish: bool) -> Result<()> {
        if self.state() == State::Connected {
            return Ok(());
        }
        let q = self.shared.config.offline_queue;
        if qos0_publish && !q.qos0 {
            return Err(Error::Disconnected(
                "the connection is down and QoS 0 publishes are not queued offline (OfflineQueue(qos0=True) queues them)".into(),
            ));
        }
        if self.waiting() >= q.limit {
            return Err(Error::QueueFull(format!(
                "the offline queue is full ({} operations wait for the connection; OfflineQueue(limit=...) sets the limit)",
                q.limit
            )));
        }
        Ok(())
    }

    /// Sends a command that the driver counts out of `queued` when it takes it.
    fn send_counted(&self, command: Command) -> Result<()> {
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        let r = self.send(command);
        if r.is_err() {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
        }
        r
    }

    fn send(&self, command: Command) -> Result<()> {
        let guard = self.commands();
        let Some(tx) = guard.as_ref() else {
            return Err(Error::Closed("the client is not connected".into()));
        };
        match tx.try_send(command) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Error::SubmissionFull(format!(
                "{COMMAND_CAPACITY} operations are waiting to be sent; await publishes (or slow down) to let the connection catch up"
            ))),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(Error::Closed("the client has been disconnected".into()))
            }
        }
    }

    /// Whether the submission channel is full (a caller may wait with [`Client::wait_writable`]
    /// instead of failing).
    #[must_use]
    pub fn busy(&self) -> bool {
        self.commands()
            .as_ref()
            .is_some_and(|tx| tx.capacity() == 0 && !tx.is_closed())
    }

    /// Completes `reply` once the submission channel has room again (at once if it has).
    pub fn wait_writable(&self, reply: Reply<()>) {
        let tx = self.commands().clone();
        match tx {
            Some(tx) => {
                self.runtime.spawn(async move {
                    let r = match tx.reserve().await {
                        Ok(_permit) => Ok(()),
                        Err(_) => Err(Error::Closed("the client has been disconnected".into())),
                    };
                    reply(r);
                });
            }
            None => reply(Err(Error::Closed("the client is not connected".into()))),
        }
    }

    /// Validates and submits a PUBLISH. QoS 1 completes `reply` at its PUBACK; QoS 0 when
    /// written. Without `reply` it is fire-and-forget (QoS 1 is still retried).
    ///
    /// # Errors
    /// Validation ([`Error::Topic`], [`Error::PayloadTooLarge`]), state ([`Error::Closed`],
    /// [`Error::Disconnected`]) and bounds ([`Error::QueueFull`]), before anything is queued.
    pub fn publish(
        &self,
        topic: String,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        reply: Option<Reply<()>>,
    ) -> Result<()> {
        let cfg = &self.shared.config;
        topic::validate_topic(&topic, cfg.limits)?;
        cfg.check_payload(payload.len())?;
        self.check_open()?;
        self.offline_checks(qos == QoS::AtMostOnce)?;
        self.send_counted(Command::Publish(Box::new(OutPublish {
            topic,
            payload,
            qos,
            retain,
            reply,
        })))
    }

    /// Validates filters the way `subscribe` does.
    ///
    /// # Errors
    /// [`Error::Topic`] / [`Error::Config`].
    pub fn validate_filters(&self, filters: &[String]) -> Result<()> {
        let limits = self.shared.config.limits;
        if filters.is_empty() {
            return Err(Error::Config(
                "subscribe needs at least one topic filter".into(),
            ));
        }
        if limits == Limits::Aws && filters.len() > AWS_MAX_FILTERS_PER_SUBSCRIBE {
            return Err(Error::Config(format!(
                "{} filters in one subscribe; AWS IoT allows at most {AWS_MAX_FILTERS_PER_SUBSCRIBE} per SUBSCRIBE (subscribe in several calls)",
                filters.len()
            )));
        }
        for f in filters {
            topic::validate_filter(f, limits)?;
        }
        Ok(())
    }

    /// Registers `queue` for `filters` and sends SUBSCRIBE; `reply` gets the granted QoS per
    /// filter at SUBACK, or [`Error::SubscribeRefused`].
    ///
    /// # Errors
    /// Validation, state and bounds errors before anything is sent.
    pub fn subscribe(
        &self,
        filters: Vec<String>,
        qos: QoS,
        queue: Arc<SubscriptionQueue>,
        reply: Reply<Vec<u8>>,
    ) -> Result<()> {
        self.validate_filters(&filters)?;
        self.check_open()?;
        self.offline_checks(false)?;
        self.send_counted(Command::Subscribe(Box::new(SubscribeCommand {
            id: queue.id(),
            filters: filters.into_iter().map(|f| (f, qos)).collect(),
            queue,
            reply,
        })))
    }

    /// Registers a queue that receives every message, whatever the filter. Allowed before
    /// `connect()` (a persistent session's stored messages then have a taker) and kept across
    /// `disconnect()` + `connect()`.
    pub fn subscribe_all(&self, queue: Arc<SubscriptionQueue>) {
        self.shared.router().add_catch_all(queue.id(), queue);
    }

    /// Ends one subscription (its queue closes); filters no other subscription uses are
    /// unsubscribed at the broker, and `reply` completes at UNSUBACK. Never fails: while no
    /// connection runs the registry forgets it at once and `reply` completes.
    pub fn close_subscription(&self, id: u64, reply: Option<Reply<()>>) {
        let command = Command::CloseSubscription { id, reply };
        let guard = self.commands();
        let unsent = match guard.as_ref() {
            Some(tx) => match tx.try_send(command) {
                Ok(()) => None,
                Err(mpsc::error::TrySendError::Full(command)) => {
                    // Never lose a close (its queue would hold back acknowledgements): wait
                    // for room in the background.
                    let tx = tx.clone();
                    let shared = Arc::clone(&self.shared);
                    self.runtime.spawn(async move {
                        if let Err(mpsc::error::SendError(command)) = tx.send(command).await {
                            complete_unsent(&shared, command);
                        }
                    });
                    None
                }
                Err(mpsc::error::TrySendError::Closed(command)) => Some(command),
            },
            None => Some(command),
        };
        drop(guard);
        if let Some(command) = unsent {
            complete_unsent(&self.shared, command);
        }
    }

    /// Unsubscribes filters at the broker and removes them from every subscription
    /// (subscriptions left without filters end). `reply` completes at UNSUBACK.
    ///
    /// # Errors
    /// Validation and state errors.
    pub fn unsubscribe(&self, filters: Vec<String>, reply: Reply<()>) -> Result<()> {
        let limits = self.shared.config.limits;
        if filters.is_empty() {
            return Err(Error::Config(
                "unsubscribe needs at least one topic filter".into(),
            ));
        }
        for f in &filters {
            topic::validate_filter(f, limits)?;
        }
        self.check_open()?;
        self.send(Command::Unsubscribe(Box::new(UnsubscribeCommand {
            filters,
            reply,
        })))
    }

    /// Sends DISCONNECT, fails queued operations with [`Error::Closed`], ends every
    /// subscription and stops the driver. Completes at once when not connected.
    pub fn disconnect(&self, reply: Reply<()>) {
        let tx = self.commands().take();
        let Some(tx) = tx else {
            reply(Ok(()));
            return;
        };
        if self.state() != State::Closed {
            self.shared.set_state(State::Closing);
        }
        let shared = Arc::clone(&self.shared);
        self.runtime.spawn(async move {
            if let Err(mpsc::error::SendError(Command::Disconnect { reply: Some(r) })) =
                tx.send(Command::Disconnect { reply: Some(reply) }).await
            {
                // The driver already stopped (first connect failed or reconnect gave up).
                shared.set_state(State::Closed);
                r(Ok(()));
            }
        });
    }
}

/// Completes a close that never reached a driver (none runs): the registry is updated
/// directly; a persistent session's filters are unsubscribed after the next CONNACK.
fn complete_unsent(shared: &Shared, command: Command) {
    if let Command::CloseSubscription { id, reply } = command {
        shared.router().remove_offline(id);
        if let Some(r) = reply {
            r(Ok(()));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Dropping the sender closes the channel; the driver then disconnects cleanly.
        self.commands().take();
    }
}
