//! The one task per client. It owns the socket and the clock and moves bytes, commands and
//! time into and out of the session state machine ([`Session`]), which holds all protocol
//! state. Here: connection attempts, reconnect backoff, the serving loop, the graceful
//! DISCONNECT, and the connection state and lifecycle events the application sees.
//!
//! Every `select!` branch is cancel-safe: reads go into the session's read buffer
//! (`read_buf`), writes take bytes from its write buffer only once the socket accepted them
//! (`write`), commands come from an mpsc receiver, and timers are recreated each turn. Nothing
//! is lost when another branch wins.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::core::error::{DisconnectReason, Error, Result};
use crate::core::net::stream::{classify_io, Stream};
use crate::core::protocol::backoff::Backoff;
use crate::core::protocol::handshake::{self, Opened};
use crate::core::protocol::session::Session;
use crate::core::protocol::topic::Limits;
use crate::core::shared::{ClientEvent, Command, ConnectInfo, Reply, Shared, State};
use crate::core::traffic_log::TrafficLog;

/// At most this many commands are taken per wake-up before writing.
const COMMAND_BURST: usize = 1024;
/// Time allowed for a graceful DISCONNECT to reach the socket.
const DISCONNECT_FLUSH: Duration = Duration::from_secs(2);

/// Why a connected session ended.
enum SessionEnd {
    /// The application disconnected (or dropped every handle).
    Closed,
    /// The connection failed.
    Lost(Error),
}

pub(crate) struct Driver {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    generation: u64,
    session: Session,
}

/// The driver task as spawned: waits for the previous driver (it may still be flushing its
/// DISCONNECT, and two drivers never share the registry or the client id), then runs.
pub(crate) async fn task(
    previous: Option<tokio::task::JoinHandle<()>>,
    driver: Box<Driver>,
    connect_reply: Reply<ConnectInfo>,
) {
    if let Some(previous) = previous {
        let _ = previous.await;
    }
    driver.run(connect_reply).await;
}

impl Driver {
    pub(crate) fn new(shared: Arc<Shared>, rx: mpsc::Receiver<Command>, generation: u64) -> Self {
        let traffic =
            shared
                .config
                .log_file
                .as_ref()
                .and_then(|path| match TrafficLog::open(path) {
                    Ok(log) => Some(log),
                    Err(e) => {
                        log::warn!("{e}");
                        None
                    }
                });
        let session = Session::new(Arc::clone(&shared), traffic);
        Self {
            shared,
            rx,
            generation,
            session,
        }
    }

    fn cfg(&self) -> &crate::core::config::ClientConfig {
        &self.shared.config
    }

    fn event(&self, event: ClientEvent) {
        self.shared.sink.event(event);
    }

    fn set_state(&self, state: State) {
        self.shared.set_state_for(self.generation, state);
    }

    /// The task body: connect, serve, reconnect, until disconnected or given up.
    ///
    /// Boxed: an `async fn` keeps a by-value `self` twice in its state (the argument and the
    /// moved local), and every idle client's task holds that state.
    pub(crate) async fn run(mut self: Box<Self>, connect_reply: Reply<ConnectInfo>) {
        let client_id = self.cfg().client_id.clone();
        log::debug!("client {client_id}: driver started");
        // Subscriptions kept from an earlier connection (or opened before connect()) resume.
        self.shared.router().resume_all();
        let mut connect_reply = Some(connect_reply);
        let mut backoff = self.cfg().reconnect.clone().map(Backoff::new);
        loop {
            let last_attempt = Instant::now();
            let attempt = match self.attempt().await {
                Ok(a) => a,
                Err(()) => break, // disconnect requested while connecting
            };
            match attempt {
                Ok(opened) => {
                    let reconnect = connect_reply.is_none();
                    let session_present = opened.session_present;
                    self.shared
                        .session_present
                        .store(session_present, Ordering::Release);
                    self.set_state(State::Connected);
                    if reconnect {
                        self.shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    log::info!(
                        "client {client_id}: connected to {}:{} (session_present={session_present})",
                        self.cfg().endpoint,
                        self.cfg().port
                    );
                    if let Some(reply) = connect_reply.take() {
                        reply(Ok(ConnectInfo { session_present }));
                    }
                    self.event(ClientEvent::Connected {
                        session_present,
                        reconnect,
                    });
                    let started = Instant::now();
                    match self.serve(opened).await {
                        SessionEnd::Closed => break,
                        SessionEnd::Lost(e) => {
                            log::warn!("client {client_id}: connection lost: {e}");
                            if let Some(b) = backoff.as_mut() {
                                b.connection_ended(started.elapsed());
                            }
                            self.session.connection_lost(&e, Instant::now());
                            // Before the event: its handlers must not see the client connected.
                            self.set_state(if backoff.is_some() {
                                State::Reconnecting
                            } else {
                                State::Closing
                            });
                            self.event(ClientEvent::Disconnected {
                                reason: e.disconnect_reason(),
                                error: Some(e.clone()),
                            });
                            if backoff.is_none() {
                                self.session.give_up(&e);
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    if let Some(reply) = connect_reply.take() {
                        log::info!("client {client_id}: connect failed: {e}");
                        self.session.give_up(&e);
                        // Stopped before answering, so connect() may be called again at once.
                        self.drain_channel();
                        self.set_state(State::Closed);
                        reply(Err(e));
                        break;
                    }
                    log::warn!("client {client_id}: reconnect attempt failed: {e}");
                    self.event(ClientEvent::Disconnected {
                        reason: e.disconnect_reason(),
                        error: Some(e.clone()),
                    });
                    if backoff.as_ref().is_some_and(Backoff::exhausted) {
                        self.session.give_up(&e);
                        break;
                    }
                }
            }
            // Back off before the next attempt, serving commands meanwhile.
            let Some(b) = backoff.as_mut() else { break };
            let mut delay = b.next_delay(&mut rand::rng());
            if self.cfg().limits == Limits::Aws {
                // AWS IoT allows one CONNECT per second per client id.
                let since = last_attempt.elapsed();
                delay = delay.max(Duration::from_secs(1).saturating_sub(since));
            }
            self.set_state(State::Reconnecting);
            log::debug!("client {client_id}: reconnecting in {delay:?}");
            if self.wait_offline(Instant::now() + delay).await.is_err() {
                break;
            }
        }
        self.drain_channel();
        self.shared.router().pause_all();
        self.set_state(State::Closed);
        self.session.flush_log();
        log::debug!("client {client_id}: driver stopped");
    }

    /// One connection attempt, serving commands while it runs. `Err(())` = disconnect requested.
    async fn attempt(&mut self) -> std::result::Result<Result<Opened>, ()> {
        let cfg = self.shared.config.clone();
        // Boxed: the handshake's future (TCP, TLS, WebSocket, proxy) is several KiB and lives
        // only while connecting; inline it would size every idle driver task.
        let mut open = Box::pin(handshake::open(&cfg));
        loop {
            let deadline = self.session.next_deadline();
            tokio::select! {
                r = &mut open => return Ok(r),
                cmd = self.rx.recv() => self.offline_command(cmd)?,
                () = sleep_until_opt(deadline) => self.session.expire(Instant::now()),
            }
        }
    }

    /// Serves commands while disconnected until `until`. `Err(())` = disconnect requested.
    async fn wait_offline(&mut self, until: Instant) -> std::result::Result<(), ()> {
        loop {
            let deadline = self.session.next_deadline();
            tokio::select! {
                () = tokio::time::sleep_until(until) => return Ok(()),
                cmd = self.rx.recv() => self.offline_command(cmd)?,
                () = sleep_until_opt(deadline) => self.session.expire(Instant::now()),
            }
        }
    }

    /// Applies a command while there is no connection. `Err(())` = stop the driver.
    fn offline_command(&mut self, cmd: Option<Command>) -> std::result::Result<(), ()> {
        match cmd {
            None => {
                self.shutdown(None);
                Err(())
            }
            Some(Command::Disconnect { reply }) => {
                self.shutdown(reply);
                Err(())
            }
            Some(cmd) => {
                self.session.accept(cmd, false);
                self.session.publish_counts();
                Ok(())
            }
        }
    }

    /// Completes every command still in the channel once the driver stops: none is dropped
    /// without an answer.
    fn drain_channel(&mut self) {
        self.rx.close();
        while let Ok(cmd) = self.rx.try_recv() {
            self.session.abandon(cmd);
        }
    }

    /// Application disconnect: fail what waits, report, answer.
    fn shutdown(&mut self, reply: Option<Reply<()>>) {
        // The traffic log is complete when disconnect() returns.
        self.session.flush_log();
        self.session.fail_all(&Error::Closed(
            "the client disconnected before the operation completed".into(),
        ));
        self.set_state(State::Closed);
        self.event(ClientEvent::Disconnected {
            reason: DisconnectReason::Client,
            error: None,
        });
        if let Some(r) = reply {
            r(Ok(()));
        }
    }

    /// Serves one connection until it ends.
    async fn serve(&mut self, opened: Opened) -> SessionEnd {
        let (mut rd, mut wr) = tokio::io::split(opened.stream);
        if let Err(e) = self.session.connected(
            opened.session_present,
            opened.leftover,
            opened.connect_size,
            Instant::now(),
        ) {
            return SessionEnd::Lost(e);
        }
        let space = Arc::clone(&self.shared.space);
        // One timer for the whole connection (the earlier of the keep-alive and the next
        // operation deadline), re-armed lazily (see `LazyDeadline`): the keep-alive deadline
        // moves later with every write, and making new timers on every turn cost timer-wheel
        // insertions and removals per turn.
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sleep);
        let mut timer = LazyDeadline { sleep, armed: None };
        loop {
            if let Err(e) = self.session.fill() {
                return SessionEnd::Lost(e);
            }
            let ka_deadline = self.session.keep_alive_deadline();
            timer.want(earliest(ka_deadline, self.session.next_deadline()));
            let take_commands = self.session.can_take_commands();
            let want_write = self.session.wants_write();
            let owes_acks = self.session.owes_acks();
            self.session.reserve_read();
            tokio::select! {
                r = rd.read_buf(&mut self.session.link.rbuf) => {
                    match r {
                        Ok(0) => return SessionEnd::Lost(Error::Disconnected(format!(
                            "{}:{} closed the connection", self.cfg().endpoint, self.cfg().port))),
                        Ok(n) => {
                            if let Err(e) = self.session.on_read(n, Instant::now()) {
                                return SessionEnd::Lost(e);
                            }
                        }
                        Err(e) => return SessionEnd::Lost(self.io_error(&e, "reading from")),
                    }
                }
                r = write_some(&mut wr, &mut self.session.link.wbuf, &mut self.session.link.needs_flush), if want_write => {
                    match r {
                        Ok(n) => self.session.on_written(n, Instant::now()),
                        Err(e) => return SessionEnd::Lost(self.io_error(&e, "writing to")),
                    }
                }
                cmd = self.rx.recv(), if take_commands => {
                    // Take everything already queued (bounded) before writing: one wake-up
                    // and one socket write serve a whole burst of operations.
                    let mut next = cmd;
                    let mut taken = 0;
                    loop {
                        match next {
                            None | Some(Command::Disconnect { reply: None }) => {
                                self.graceful_disconnect(&mut wr, None).await;
                                return SessionEnd::Closed;
                            }
                            Some(Command::Disconnect { reply }) => {
                                self.graceful_disconnect(&mut wr, reply).await;
                                return SessionEnd::Closed;
                            }
                            Some(cmd) => self.session.accept(cmd, true),
                        }
                        taken += 1;
                        if taken >= COMMAND_BURST || self.session.outbox_full() {
                            break;
                        }
                        match self.rx.try_recv() {
                            Ok(cmd) => next = Some(cmd),
                            Err(_) => break,
                        }
                    }
                }
                () = timer.fired() => {
                    // Armed for the earlier of two deadlines, perhaps one that has moved since:
                    // handle what is due, if anything.
                    let now = Instant::now();
                    if ka_deadline.is_some_and(|d| d <= now) {
                        if let Err(e) = self.session.on_keep_alive(now) {
                            return SessionEnd::Lost(e);
                        }
                    }
                    self.session.expire(now);
                }
                () = space.notified(), if owes_acks => self.session.release_acks(),
            }
        }
    }

    fn io_error(&self, e: &std::io::Error, during: &str) -> Error {
        let cfg = self.cfg();
        match classify_io(&cfg.endpoint, cfg.port, e, during) {
            Error::Connect(m) => Error::Disconnected(m),
            other => other,
        }
    }

    /// Writes DISCONNECT after what was submitted before it, then stops serving.
    async fn graceful_disconnect(&mut self, wr: &mut WriteHalf<Stream>, reply: Option<Reply<()>>) {
        // Commands taken in the same burst as the Disconnect are only in the outbox: write
        // them first, as the serving loop does before each turn (as if the Disconnect had come
        // in a wake-up of its own). Without this a QoS 0 publish submitted just before
        // disconnect() was dropped unsent (and unreported: nobody awaits it).
        match self.session.fill() {
            Ok(()) => {
                self.session.disconnect();
                let link = &mut self.session.link;
                let shared = &self.shared;
                let flush = async {
                    while !link.wbuf.is_empty() || link.needs_flush {
                        let n = write_some(wr, &mut link.wbuf, &mut link.needs_flush).await?;
                        crate::core::shared::add(&shared.stats.bytes_sent, n);
                    }
                    wr.shutdown().await
                };
                match tokio::time::timeout(DISCONNECT_FLUSH, flush).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => log::debug!("DISCONNECT not fully written: {e}"),
                    Err(_) => log::debug!("DISCONNECT not written within {DISCONNECT_FLUSH:?}"),
                }
            }
            // As in the serving loop, an encoding failure ends the connection as it is.
            Err(e) => log::warn!("closing without DISCONNECT: {e}"),
        }
        log::info!("client {}: disconnected", self.cfg().client_id);
        self.shutdown(reply);
    }
}

/// A deadline timer that is re-armed only when the wanted deadline comes earlier than the
/// armed one, or after it fired. A deadline that only moves later (the keep-alive, after
/// every write) costs no timer operation per turn: the timer fires at the old time, the
/// caller sees that nothing is due yet, and the next turn arms the new time. Callers must
/// therefore check what is due when it fires.
struct LazyDeadline<'a> {
    /// Not polled (so not registered with the timer) until `want` arms it.
    sleep: std::pin::Pin<&'a mut tokio::time::Sleep>,
    armed: Option<Instant>,
}

impl LazyDeadline<'_> {
    /// The deadline the caller wants now (`None`: none; an armed timer is left to fire early).
    fn want(&mut self, deadline: Option<Instant>) {
        if let Some(d) = deadline {
            if self.armed.is_none_or(|a| d < a) {
                self.sleep.as_mut().reset(d);
                self.armed = Some(d);
            }
        }
    }

    /// Completes when the armed time is reached (never while nothing is armed), disarming.
    async fn fired(&mut self) {
        if self.armed.is_none() {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.armed = None;
    }
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Writes some of `wbuf` (or flushes when it is empty). Cancel-safe: bytes leave `wbuf` only
/// after the socket took them.
async fn write_some(
    wr: &mut WriteHalf<Stream>,
    wbuf: &mut BytesMut,
    needs_flush: &mut bool,
) -> std::io::Result<usize> {
    if wbuf.is_empty() {
        wr.flush().await?;
        *needs_flush = false;
        return Ok(0);
    }
    let n = wr.write(wbuf).await?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "the connection accepts no more bytes",
        ));
    }
    wbuf.advance(n);
    *needs_flush = true;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::client::COMMAND_CAPACITY;
    use crate::core::config::ClientConfig;
    use crate::core::net::transport::Transport;

    struct NoEvents;
    impl crate::core::shared::EventSink for NoEvents {
        fn event(&self, _: ClientEvent) {}
    }

    /// An idle client's task stores its future inline (the task cell), so the future's size
    /// is memory per connection: the handshake (several KiB of TCP / TLS / WebSocket / proxy
    /// states) is boxed for the time it runs, and the driver is not kept twice.
    #[test]
    fn an_idle_driver_task_is_small() {
        let cfg = ClientConfig::new("broker.test", 1883, Transport::Tcp);
        let shared = Arc::new(Shared::new(cfg.clone(), Arc::new(NoEvents)));
        let (_tx, rx) = mpsc::channel::<Command>(COMMAND_CAPACITY);
        let mut driver = Box::new(Driver::new(shared, rx, 1));
        let (a, _b) = tokio::io::duplex(64);
        let opened = Opened {
            stream: Box::new(a),
            leftover: BytesMut::new(),
            session_present: false,
            connect_size: 0,
        };
        let serve = std::mem::size_of_val(&driver.serve(opened));
        let attempt = std::mem::size_of_val(&driver.attempt());
        let open = std::mem::size_of_val(&handshake::open(&cfg));
        let task = std::mem::size_of_val(&task(None, driver, Box::new(|_| {})));
        println!(
            "task {task} B (serve {serve} B, attempt {attempt} B; boxed handshake {open} B), \
             Driver {} B, Session {} B, Command {} B, Shared {} B",
            std::mem::size_of::<Driver>(),
            std::mem::size_of::<Session>(),
            std::mem::size_of::<Command>(),
            std::mem::size_of::<Shared>(),
        );
        assert!(task <= 2048, "the driver task is {task} B");
        // The command channel allocates 32 slots at once.
        assert!(std::mem::size_of::<Command>() <= 32);
    }
}
