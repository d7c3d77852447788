//! The one task per client that owns the connection and all protocol state: packet ids and the
//! in-flight table, the outbox (offline queue), operation deadlines, the subscription router,
//! inbound acknowledgements, keep-alive and reconnects.
//!
//! Every `select!` branch is cancel-safe: reads go into `rbuf` (`read_buf`), writes take bytes
//! from `wbuf` only once the socket accepted them (`write`), commands come from an mpsc
//! receiver, and timers are recreated each turn. Nothing is lost when another branch wins.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rumqttc::{
    Packet, PubAck, Publish, Subscribe, SubscribeFilter, SubscribeReasonCode, Unsubscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::core::config::{QoS, AWS_MAX_FILTERS_PER_SUBSCRIBE};
use crate::core::error::{DisconnectReason, Error, Result};
use crate::core::message::Message;
use crate::core::net::stream::{classify_io, Stream};
use crate::core::protocol::backoff::Backoff;
use crate::core::protocol::codec::packet_name;
use crate::core::protocol::handshake::{self, Opened};
use crate::core::protocol::inflight::Inflight;
use crate::core::protocol::queue::SubscriptionQueue;
use crate::core::protocol::router::Released;
use crate::core::protocol::topic::Limits;
use crate::core::shared::{
    add, ClientEvent, Command, ConnectInfo, OutPublish, Reply, Shared, State,
};
use crate::core::traffic_log::{Direction, Entry, TrafficLog};

/// Stop taking new commands while this many bytes wait to be written.
const WBUF_HIGH: usize = 1 << 20;
/// Stop taking new commands while this many operations wait for a packet id.
const OUTBOX_HIGH: usize = 65_536;
/// At most this many commands are taken per wake-up before writing.
const COMMAND_BURST: usize = 1024;
/// Initial read/write buffer size; buffers grow (doubling) only when traffic needs it, so
/// idle connections stay small.
const BUFFER_START: usize = 1024;
/// Time allowed for a graceful DISCONNECT to reach the socket.
const DISCONNECT_FLUSH: Duration = Duration::from_secs(2);
/// At most one "unrouted messages" warning per this interval.
const UNROUTED_WARN_EVERY: Duration = Duration::from_secs(10);

/// An operation's completion.
enum OpReply {
    None,
    Unit(Reply<()>),
    Codes(Reply<Vec<u8>>),
}

/// An operation that someone may be waiting for.
struct OpEntry {
    reply: OpReply,
    what: String,
    /// For SUBSCRIBE: the subscription to remove if it fails.
    sub: Option<u64>,
}

/// Work waiting for a packet id or for the connection. `op` 0 = internal (never expires).
enum Queued {
    Publish {
        publish: Publish,
        op: u64,
    },
    Subscribe {
        filters: Vec<(String, QoS)>,
        op: u64,
    },
    Unsubscribe {
        filters: Vec<String>,
        op: u64,
    },
}

impl Queued {
    fn op(&self) -> u64 {
        match self {
            Self::Publish { op, .. }
            | Self::Subscribe { op, .. }
            | Self::Unsubscribe { op, .. } => *op,
        }
    }

    fn needs_pkid(&self) -> bool {
        match self {
            Self::Publish { publish, .. } => publish.qos != rumqttc::QoS::AtMostOnce,
            _ => true,
        }
    }
}

/// An inbound QoS 1 acknowledgement waiting (in arrival order) for full queues to drain.
struct PendingAck {
    pkid: u16,
    waiting: Vec<Arc<SubscriptionQueue>>,
}

/// Why a connected session ended.
enum SessionEnd {
    /// The application disconnected (or dropped every handle).
    Closed,
    /// The connection failed.
    Lost(Error),
}

/// Where the keep-alive ping is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ping {
    /// No ping outstanding.
    Idle,
    /// PINGREQ encoded at `at`, waiting behind other writes: it leaves the buffer once
    /// `written` reaches `until` bytes.
    Queued { until: u64, at: Instant },
    /// PINGREQ written at this time; waiting for PINGRESP (or any inbound bytes).
    Written(Instant),
}

/// One live connection's buffers and timers.
struct Conn {
    rd: ReadHalf<Stream>,
    wr: WriteHalf<Stream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    needs_flush: bool,
    last_write: Instant,
    last_read: Instant,
    /// Bytes written to the socket on this connection.
    written: u64,
    ping: Ping,
}

/// The keep-alive rules, pure: when to ping, and when the link is dead.
///
/// A ping goes out after `keep_alive` with nothing written or nothing read (the second rule
/// finds a half-open link within 1.5 × keep-alive even while we keep writing). Its timeout runs
/// from when PINGREQ actually left the write buffer, not from when it was queued behind other
/// writes, and any inbound bytes count as a sign of life. While the PINGREQ still waits behind
/// other writes, the link is declared dead only if neither reads nor writes made progress for
/// the ping timeout.
fn keep_alive_deadline(
    conn: &Conn,
    keep_alive: Duration,
    ping_timeout: Duration,
) -> Option<Instant> {
    if keep_alive.is_zero() {
        return None;
    }
    Some(match conn.ping {
        Ping::Idle => conn.last_write.min(conn.last_read) + keep_alive,
        Ping::Queued { at, .. } => at.max(conn.last_write).max(conn.last_read) + ping_timeout,
        Ping::Written(at) => at.max(conn.last_read) + ping_timeout,
    })
}

/// The suspect of a policy-violation loop: which operation, and how many drops in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Suspect {
    operation: &'static str,
    topic: String,
    count: u32,
}

pub(crate) struct Driver {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    generation: u64,
    inflight: Inflight<Queued>,
    /// When each in-flight packet was last written (for the policy-violation check).
    sent_at: HashMap<u16, Instant>,
    suspect: Option<Suspect>,
    unrouted_warned: Option<Instant>,
    unrouted_since_warning: u64,
    outbox: VecDeque<Queued>,
    ops: HashMap<u64, OpEntry>,
    deadlines: VecDeque<(Instant, u64)>,
    next_op: u64,
    acks: VecDeque<PendingAck>,
    traffic: Option<TrafficLog>,
    rng: StdRng,
    max_packet: usize,
}

fn entry_for(q: &Queued) -> Entry<'_> {
    match q {
        Queued::Publish { publish, .. } => Entry {
            kind: "PUBLISH",
            topic: Some(&publish.topic),
            pkid: publish.pkid,
            qos: Some(publish.qos as u8),
            size: publish.size(),
            payload: Some(publish.payload.len()),
            detail: if publish.dup { Some("dup=1") } else { None },
        },
        Queued::Subscribe { filters, .. } => Entry {
            kind: "SUBSCRIBE",
            topic: filters.first().map(|(f, _)| f.as_str()),
            pkid: 0,
            qos: None,
            size: 0,
            payload: None,
            detail: None,
        },
        Queued::Unsubscribe { filters, .. } => Entry {
            kind: "UNSUBSCRIBE",
            topic: filters.first().map(String::as_str),
            pkid: 0,
            qos: None,
            size: 0,
            payload: None,
            detail: None,
        },
    }
}

impl Driver {
    pub(crate) fn new(shared: Arc<Shared>, rx: mpsc::Receiver<Command>, generation: u64) -> Self {
        let inflight = Inflight::new(shared.config.inflight);
        let max_packet = shared.config.max_incoming_packet();
        Self {
            shared,
            rx,
            generation,
            inflight,
            sent_at: HashMap::new(),
            suspect: None,
            unrouted_warned: None,
            unrouted_since_warning: 0,
            outbox: VecDeque::new(),
            ops: HashMap::new(),
            deadlines: VecDeque::new(),
            next_op: 1,
            acks: VecDeque::new(),
            traffic: None,
            rng: StdRng::from_os_rng(),
            max_packet,
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
    pub(crate) async fn run(mut self, connect_reply: Reply<ConnectInfo>) {
        if let Some(path) = self.cfg().log_file.clone() {
            match TrafficLog::open(&path) {
                Ok(log) => self.traffic = Some(log),
                Err(e) => log::warn!("{e}"),
            }
        }
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
                    match self.session(opened).await {
                        SessionEnd::Closed => break,
                        SessionEnd::Lost(e) => {
                            log::warn!("client {client_id}: connection lost: {e}");
                            if let Some(b) = backoff.as_mut() {
                                b.connection_ended(started.elapsed());
                            }
                            self.check_policy_violation(Instant::now());
                            self.connection_down(&e);
                            self.event(ClientEvent::Disconnected {
                                reason: e.disconnect_reason(),
                                error: Some(e.clone()),
                            });
                            if backoff.is_none() {
                                self.give_up(&e);
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    if let Some(reply) = connect_reply.take() {
                        log::info!("client {client_id}: connect failed: {e}");
                        self.give_up(&e);
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
                        self.give_up(&e);
                        break;
                    }
                }
            }
            // Back off before the next attempt, serving commands meanwhile.
            let Some(b) = backoff.as_mut() else { break };
            let mut delay = b.next_delay(&mut self.rng);
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
        if let Some(t) = self.traffic.as_mut() {
            t.flush();
        }
        log::debug!("client {client_id}: driver stopped");
    }

    /// One connection attempt, serving commands while it runs. `Err(())` = disconnect requested.
    async fn attempt(&mut self) -> std::result::Result<Result<Opened>, ()> {
        let cfg = self.shared.config.clone();
        let open = handshake::open(&cfg);
        tokio::pin!(open);
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                r = &mut open => return Ok(r),
                cmd = self.rx.recv() => {
                    if self.offline_command(cmd).is_err() {
                        return Err(());
                    }
                }
                () = sleep_until_opt(deadline) => self.expire(Instant::now()),
            }
        }
    }

    /// Serves commands while disconnected until `until`. `Err(())` = disconnect requested.
    async fn wait_offline(&mut self, until: Instant) -> std::result::Result<(), ()> {
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                () = tokio::time::sleep_until(until) => return Ok(()),
                cmd = self.rx.recv() => self.offline_command(cmd)?,
                () = sleep_until_opt(deadline) => self.expire(Instant::now()),
            }
        }
    }

    fn new_op(&mut self, reply: OpReply, what: String, sub: Option<u64>) -> u64 {
        let op = self.untimed_op(reply, what, sub);
        self.deadlines
            .push_back((Instant::now() + self.cfg().operation_timeout, op));
        op
    }

    /// An operation without a deadline (fire-and-forget QoS 1 publishes: kept until
    /// acknowledged, bounded by the queues they wait in).
    fn untimed_op(&mut self, reply: OpReply, what: String, sub: Option<u64>) -> u64 {
        let op = self.next_op;
        self.next_op += 1;
        self.ops.insert(op, OpEntry { reply, what, sub });
        op
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|(t, _)| *t)
    }

    /// Fails every operation whose deadline has passed with [`Error::Timeout`].
    fn expire(&mut self, now: Instant) {
        while let Some(&(t, op)) = self.deadlines.front() {
            if t > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(entry) = self.ops.remove(&op) {
                let err = Error::Timeout {
                    what: entry.what.clone(),
                    after: self.cfg().operation_timeout,
                };
                if let Some(sub) = entry.sub {
                    self.drop_subscription(sub);
                }
                if matches!(entry.reply, OpReply::None) {
                    self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                finish(entry.reply, Err(err));
            }
        }
    }

    fn complete(&mut self, op: u64, result: Result<Vec<u8>>) {
        if op == 0 {
            if let Err(e) = result {
                log::warn!("internal operation failed: {e}");
            }
            return;
        }
        if let Some(entry) = self.ops.remove(&op) {
            if result.is_err() {
                if let Some(sub) = entry.sub {
                    self.drop_subscription(sub);
                }
            }
            finish(entry.reply, result);
        }
    }

    fn drop_subscription(&mut self, sub: u64) {
        let released = self.shared.router().remove(sub);
        self.queue_release(released, None);
    }

    /// Tells the broker about released filters: UNSUBSCRIBE the unused (`reply` at UNSUBACK,
    /// or at once when there is none), re-SUBSCRIBE at a lower QoS those whose highest
    /// subscription went.
    fn queue_release(&mut self, released: Released, reply: Option<Reply<()>>) {
        let mut reply = reply;
        let chunks: Vec<Vec<(String, QoS)>> = released
            .downgrade
            .chunks(AWS_MAX_FILTERS_PER_SUBSCRIBE)
            .map(<[(String, QoS)]>::to_vec)
            .collect();
        let last = chunks.len().saturating_sub(1);
        for (i, filters) in chunks.into_iter().enumerate() {
            // With nothing to unsubscribe, the caller's reply waits for the lowering SUBACK,
            // so a message published after it returns arrives at the new QoS.
            let op = match reply.take() {
                Some(r) if i == last && released.unsubscribe.is_empty() => {
                    let what = format!("SUBSCRIBE to {filters:?} (lowering the QoS)");
                    self.new_op(OpReply::Unit(r), what, None)
                }
                other => {
                    reply = other;
                    0
                }
            };
            self.outbox.push_back(Queued::Subscribe { filters, op });
        }
        self.queue_unsubscribe(released.unsubscribe, reply);
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
                self.accept(cmd, false);
                self.publish_counts();
                Ok(())
            }
        }
    }

    /// Queues a command (connected or not), applying the offline policy when not connected.
    fn accept(&mut self, cmd: Command, connected: bool) {
        let offline = self.cfg().offline_queue;
        let over_limit = !connected && self.outbox.len() >= offline.limit;
        match cmd {
            Command::Publish(OutPublish {
                topic,
                payload,
                qos,
                retain,
                reply,
            }) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                let reply = reply.map_or(OpReply::None, OpReply::Unit);
                if !connected && qos == QoS::AtMostOnce && !offline.qos0 {
                    self.reject(
                        reply,
                        Error::Disconnected(
                            "the connection is down and QoS 0 publishes are not queued offline"
                                .into(),
                        ),
                    );
                    return;
                }
                if over_limit {
                    self.reject(reply, queue_full(offline.limit));
                    return;
                }
                let mut publish = Publish::from_bytes(topic, qos.to_mqtt(), payload);
                publish.retain = retain;
                let fire_and_forget = matches!(reply, OpReply::None);
                let op = if connected && qos == QoS::AtMostOnce && fire_and_forget {
                    0
                } else if fire_and_forget && qos == QoS::AtLeastOnce {
                    // publish_nowait QoS 1: nobody awaits it, so it never times out; it stays
                    // until acknowledged (or until disconnect(), which logs what it drops).
                    let what = format!("PUBLISH to {:?}", publish.topic);
                    self.untimed_op(reply, what, None)
                } else {
                    let what = format!("PUBLISH to {:?}", publish.topic);
                    self.new_op(reply, what, None)
                };
                self.outbox.push_back(Queued::Publish { publish, op });
            }
            Command::Subscribe {
                id,
                filters,
                queue,
                reply,
            } => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                if over_limit {
                    queue.close();
                    reply(Err(queue_full(offline.limit)));
                    return;
                }
                if let Some(cap) = self.cfg().subscription_cap() {
                    let after = self.shared.router().filters_after_adding(&filters);
                    if after > cap {
                        queue.close();
                        let filters: Vec<String> = filters.into_iter().map(|(f, _)| f).collect();
                        reply(Err(Error::SubscriptionLimit {
                            message: format!(
                                "subscribing to {filters:?} would make this connection hold {after} topic filters; the cap is {cap} (AWS IoT allows 50 per connection; Client(max_subscriptions=...) sets it): unsubscribe from some first"
                            ),
                            filters,
                        }));
                        return;
                    }
                }
                let to_send = self.shared.router().add(id, &filters, queue);
                let what = format!(
                    "SUBSCRIBE to {:?}",
                    filters.iter().map(|(f, _)| f).collect::<Vec<_>>()
                );
                let op = self.new_op(OpReply::Codes(reply), what, Some(id));
                self.outbox.push_back(Queued::Subscribe {
                    filters: to_send,
                    op,
                });
            }
            Command::CloseSubscription { id, reply } => {
                let released = self.shared.router().remove(id);
                self.queue_release(released, reply);
            }
            Command::Unsubscribe { filters, reply } => {
                let known = self.shared.router().remove_filters(&filters);
                // Unsubscribe at the broker even for filters we did not know (idempotent).
                let _ = known;
                self.queue_unsubscribe(filters, Some(reply));
            }
            Command::Disconnect { .. } => {}
        }
    }

    fn queue_unsubscribe(&mut self, filters: Vec<String>, reply: Option<Reply<()>>) {
        if filters.is_empty() {
            if let Some(r) = reply {
                r(Ok(()));
            }
            return;
        }
        let op = match reply {
            Some(r) => {
                let what = format!("UNSUBSCRIBE from {filters:?}");
                self.new_op(OpReply::Unit(r), what, None)
            }
            None => 0,
        };
        self.outbox.push_back(Queued::Unsubscribe { filters, op });
    }

    fn reject(&self, reply: OpReply, err: Error) {
        if matches!(reply, OpReply::None) {
            self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            log::debug!("fire-and-forget publish dropped: {err}");
        }
        finish(reply, Err(err));
    }

    /// After a connection ends: acknowledgements owed to the broker are void (it redelivers).
    fn connection_down(&mut self, _e: &Error) {
        self.acks.clear();
        self.sent_at.clear();
    }

    /// The connection just dropped. Over MQTT 3.1.1, AWS IoT answers a publish or subscribe its
    /// policy forbids by closing the connection; resending it after every reconnect would loop
    /// forever with everything else queued behind it. When the oldest un-acknowledged packet
    /// was sent within the window before the drop, it is the suspect; the same suspect
    /// `count` times in a row is failed with [`Error::PolicyViolationSuspected`] and dropped.
    fn check_policy_violation(&mut self, dropped_at: Instant) {
        let Some(check) = self.cfg().policy_check else {
            return;
        };
        let oldest = self.inflight.in_order().into_iter().next();
        let culprit = oldest.and_then(|pkid| {
            let sent = self.sent_at.get(&pkid)?;
            if dropped_at.saturating_duration_since(*sent) > check.window {
                return None;
            }
            let (operation, topic) = match self.inflight.get(pkid)? {
                Queued::Publish { publish, .. } => ("publish", publish.topic.clone()),
                Queued::Subscribe { filters, .. } => {
                    ("subscribe", filters.first().map(|(f, _)| f.clone())?)
                }
                Queued::Unsubscribe { .. } => return None,
            };
            Some((pkid, operation, topic))
        });
        let Some((pkid, operation, topic)) = culprit else {
            self.suspect = None;
            return;
        };
        let count = match &self.suspect {
            Some(s) if s.operation == operation && s.topic == topic => s.count + 1,
            _ => 1,
        };
        if count < check.count {
            log::debug!(
                "the connection dropped {:?} after sending {operation} {topic:?} ({count} of {} in a row)",
                check.window,
                check.count
            );
            self.suspect = Some(Suspect {
                operation,
                topic,
                count,
            });
            return;
        }
        self.suspect = None;
        let err = Error::PolicyViolationSuspected {
            topic: topic.clone(),
            operation,
            count,
            window: check.window,
        };
        log::error!("{err}");
        match self.inflight.remove(pkid) {
            Some(Queued::Subscribe { filters, op: 0 }) => {
                let refused: Vec<String> = filters.into_iter().map(|(f, _)| f).collect();
                let released = self.shared.router().fail_filters(&refused, &err);
                self.queue_release(released, None);
            }
            Some(q) => {
                let op = q.op();
                if op == 0 {
                    self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                } else if let Some(entry) = self.ops.get(&op) {
                    if matches!(entry.reply, OpReply::None) {
                        self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.complete(op, Err(err));
            }
            None => {}
        }
        self.publish_counts();
    }

    /// Fails everything still waiting and ends every subscription.
    fn give_up(&mut self, e: &Error) {
        let err = Error::Disconnected(format!(
            "the connection is down and will not be retried: {e}"
        ));
        self.fail_all(&err);
    }

    fn fail_all(&mut self, err: &Error) {
        let mut unsent = 0usize;
        let mut is_unsent_publish = |q: &Queued| {
            if matches!(q, Queued::Publish { op: 0, .. }) {
                unsent += 1;
            }
        };
        for q in &self.outbox {
            is_unsent_publish(q);
        }
        self.outbox.clear();
        for (_, q) in self.inflight.drain_in_order() {
            is_unsent_publish(&q);
        }
        self.sent_at.clear();
        self.deadlines.clear();
        let ops: Vec<OpEntry> = self.ops.drain().map(|(_, e)| e).collect();
        for entry in ops {
            if let Some(sub) = entry.sub {
                // Its subscribe() call fails: the subscription must not linger.
                self.shared.router().remove_offline(sub);
            }
            if matches!(entry.reply, OpReply::None) {
                unsent += 1;
            }
            finish(entry.reply, Err(err.clone()));
        }
        if unsent > 0 {
            add(&self.shared.stats.dropped, unsent);
            log::warn!(
                "{unsent} fire-and-forget publish(es) (publish_nowait) were not acknowledged before the client stopped and are dropped: {err}"
            );
        }
        // Subscriptions stay (re-subscribed at the next connect()); iterations end for now.
        self.shared.router().pause_all();
        self.acks.clear();
        self.publish_counts();
    }

    /// Completes every command still in the channel once the driver stops: none is dropped
    /// without an answer.
    fn drain_channel(&mut self) {
        self.rx.close();
        while let Ok(cmd) = self.rx.try_recv() {
            let err = || Error::Closed("the client is disconnected".into());
            match cmd {
                Command::Publish(p) => {
                    self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    if let Some(r) = p.reply {
                        r(Err(err()));
                    }
                }
                Command::Subscribe { reply, queue, .. } => {
                    self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    queue.close();
                    reply(Err(err()));
                }
                Command::CloseSubscription { id, reply } => {
                    self.shared.router().remove_offline(id);
                    if let Some(r) = reply {
                        r(Ok(()));
                    }
                }
                Command::Disconnect { reply } => {
                    if let Some(r) = reply {
                        r(Ok(()));
                    }
                }
                Command::Unsubscribe { reply, .. } => reply(Err(err())),
            }
        }
    }

    /// Application disconnect while no connection is up.
    fn shutdown(&mut self, reply: Option<Reply<()>>) {
        // The traffic log is complete when disconnect() returns.
        if let Some(t) = self.traffic.as_mut() {
            t.flush();
        }
        self.fail_all(&Error::Closed(
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
    async fn session(&mut self, opened: Opened) -> SessionEnd {
        let (rd, wr) = tokio::io::split(opened.stream);
        let mut conn = Conn {
            rd,
            wr,
            rbuf: opened.leftover,
            wbuf: BytesMut::new(),
            needs_flush: false,
            last_write: Instant::now(),
            last_read: Instant::now(),
            written: 0,
            ping: Ping::Idle,
        };
        if let Some(t) = self.traffic.as_mut() {
            t.record(
                Direction::Out,
                &Entry {
                    kind: "CONNECT",
                    topic: None,
                    pkid: 0,
                    qos: None,
                    size: opened.connect_size,
                    payload: None,
                    detail: None,
                },
            );
            let detail = if opened.session_present {
                "session_present=1"
            } else {
                "session_present=0"
            };
            t.record(
                Direction::In,
                &Entry {
                    kind: "CONNACK",
                    topic: None,
                    pkid: 0,
                    qos: None,
                    size: 4,
                    payload: None,
                    detail: Some(detail),
                },
            );
        }
        add(&self.shared.stats.bytes_sent, opened.connect_size);
        add(&self.shared.stats.bytes_received, 4);
        self.restore_session(&mut conn, opened.session_present);
        // Packets that arrived right behind the CONNACK.
        if let Err(e) = self.process_incoming(&mut conn) {
            return SessionEnd::Lost(e);
        }
        let keep_alive = self.cfg().keep_alive;
        let ping_timeout = (keep_alive / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
        let space = Arc::clone(&self.shared.space);
        loop {
            if let Err(e) = self.fill(&mut conn) {
                return SessionEnd::Lost(e);
            }
            let ka_deadline = keep_alive_deadline(&conn, keep_alive, ping_timeout);
            let deadline = self.next_deadline();
            let take_commands = conn.wbuf.len() < WBUF_HIGH && self.outbox.len() < OUTBOX_HIGH;
            let want_write = !conn.wbuf.is_empty() || conn.needs_flush;
            if conn.rbuf.capacity() - conn.rbuf.len() < BUFFER_START {
                let grow = conn.rbuf.capacity().max(BUFFER_START);
                conn.rbuf.reserve(grow);
            }
            tokio::select! {
                r = conn.rd.read_buf(&mut conn.rbuf) => {
                    match r {
                        Ok(0) => return SessionEnd::Lost(Error::Disconnected(format!(
                            "{}:{} closed the connection", self.cfg().endpoint, self.cfg().port))),
                        Ok(n) => {
                            conn.last_read = Instant::now();
                            add(&self.shared.stats.bytes_received, n);
                            if let Err(e) = self.process_incoming(&mut conn) {
                                return SessionEnd::Lost(e);
                            }
                        }
                        Err(e) => return SessionEnd::Lost(self.io_error(&e, "reading from")),
                    }
                }
                r = write_some(&mut conn.wr, &mut conn.wbuf, &mut conn.needs_flush), if want_write => {
                    match r {
                        Ok(n) => {
                            if n > 0 {
                                add(&self.shared.stats.bytes_sent, n);
                                conn.last_write = Instant::now();
                                conn.written += n as u64;
                                if let Ping::Queued { until, .. } = conn.ping {
                                    if conn.written >= until {
                                        conn.ping = Ping::Written(conn.last_write);
                                    }
                                }
                            }
                        }
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
                                self.graceful_disconnect(&mut conn, None).await;
                                return SessionEnd::Closed;
                            }
                            Some(Command::Disconnect { reply }) => {
                                self.graceful_disconnect(&mut conn, reply).await;
                                return SessionEnd::Closed;
                            }
                            Some(cmd) => self.accept(cmd, true),
                        }
                        taken += 1;
                        if taken >= COMMAND_BURST || self.outbox.len() >= OUTBOX_HIGH {
                            break;
                        }
                        match self.rx.try_recv() {
                            Ok(cmd) => next = Some(cmd),
                            Err(_) => break,
                        }
                    }
                }
                () = sleep_until_opt(ka_deadline) => {
                    match conn.ping {
                        Ping::Idle => {
                            self.write_packet(&mut conn, &Packet::PingReq);
                            conn.ping = Ping::Queued {
                                until: conn.written + conn.wbuf.len() as u64,
                                at: Instant::now(),
                            };
                        }
                        Ping::Queued { .. } => {
                            return SessionEnd::Lost(Error::Timeout {
                                what: "writing to the connection (a PINGREQ waits behind unwritten data and nothing was read or written)".into(),
                                after: ping_timeout,
                            });
                        }
                        Ping::Written(_) => {
                            return SessionEnd::Lost(Error::Timeout {
                                what: "PINGREQ (keep-alive): nothing was received".into(),
                                after: ping_timeout,
                            });
                        }
                    }
                }
                () = sleep_until_opt(deadline) => self.expire(Instant::now()),
                () = space.notified(), if !self.acks.is_empty() => {
                    self.release_acks(&mut conn);
                }
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

    /// Encodes a control packet into the write buffer and logs it.
    fn write_packet(&mut self, conn: &mut Conn, packet: &Packet) {
        match packet.write(&mut conn.wbuf, usize::MAX) {
            Ok(size) => {
                if let Some(t) = self.traffic.as_mut() {
                    let (pkid, topic) = match packet {
                        Packet::PubAck(a) => (a.pkid, None),
                        Packet::Subscribe(s) => {
                            (s.pkid, s.filters.first().map(|f| f.path.as_str()))
                        }
                        Packet::Unsubscribe(u) => (u.pkid, u.topics.first().map(String::as_str)),
                        _ => (0, None),
                    };
                    t.record(
                        Direction::Out,
                        &Entry {
                            kind: packet_name(packet),
                            topic,
                            pkid,
                            qos: None,
                            size,
                            payload: None,
                            detail: None,
                        },
                    );
                }
            }
            Err(e) => log::error!("cannot encode {}: {e}", packet_name(packet)),
        }
    }

    /// Encodes a queued operation under `pkid` (0 for QoS 0 publishes).
    fn write_queued(
        &mut self,
        conn: &mut Conn,
        q: &mut Queued,
        pkid: u16,
        dup: bool,
    ) -> Result<()> {
        let result = match q {
            Queued::Publish { publish, .. } => {
                publish.pkid = pkid;
                publish.dup = dup && publish.qos != rumqttc::QoS::AtMostOnce;
                publish.write(&mut conn.wbuf)
            }
            Queued::Subscribe { filters, .. } => {
                let packet = Subscribe {
                    pkid,
                    filters: filters
                        .iter()
                        .map(|(f, qos)| SubscribeFilter::new(f.clone(), qos.to_mqtt()))
                        .collect(),
                };
                packet.write(&mut conn.wbuf)
            }
            Queued::Unsubscribe { filters, .. } => {
                let packet = Unsubscribe {
                    pkid,
                    topics: filters.clone(),
                };
                packet.write(&mut conn.wbuf)
            }
        };
        let size = result.map_err(|e| Error::Protocol(format!("cannot encode a packet: {e}")))?;
        if let Some(t) = self.traffic.as_mut() {
            let mut entry = entry_for(q);
            entry.pkid = pkid;
            entry.size = size;
            t.record(Direction::Out, &entry);
        }
        Ok(())
    }

    /// Moves queued operations onto the wire while packet ids and buffer room allow.
    fn fill(&mut self, conn: &mut Conn) -> Result<()> {
        while conn.wbuf.len() < WBUF_HIGH {
            let Some(front) = self.outbox.front() else {
                break;
            };
            let pkid = if front.needs_pkid() {
                match self.inflight.free_pkid() {
                    Some(p) => p,
                    None => break,
                }
            } else {
                0
            };
            let Some(mut q) = self.outbox.pop_front() else {
                break;
            };
            let op = q.op();
            if op != 0 && !self.ops.contains_key(&op) {
                continue; // timed out while queued: the caller was told; do not send it late
            }
            self.write_queued(conn, &mut q, pkid, false)?;
            let is_publish = matches!(q, Queued::Publish { .. });
            if is_publish {
                self.shared
                    .stats
                    .messages_sent
                    .fetch_add(1, Ordering::Relaxed);
            }
            if pkid == 0 {
                self.complete(op, Ok(Vec::new()));
            } else {
                self.sent_at.insert(pkid, Instant::now());
                self.inflight.insert_at(pkid, q);
            }
        }
        self.publish_counts();
        Ok(())
    }

    fn publish_counts(&self) {
        let stats = &self.shared.stats;
        stats.inflight.store(
            u64::try_from(self.inflight.len()).unwrap_or(0),
            Ordering::Relaxed,
        );
        self.shared
            .outbox_len
            .store(self.outbox.len(), Ordering::Relaxed);
    }

    /// After CONNACK: resend what is in flight and restore subscriptions as the session needs.
    fn restore_session(&mut self, conn: &mut Conn, session_present: bool) {
        if session_present {
            // The broker kept our session: resend un-acknowledged packets first, in submission
            // order, same packet ids, DUP set on publishes.
            for pkid in self.inflight.in_order() {
                if let Some(mut q) = self.inflight.remove(pkid) {
                    if let Err(e) = self.write_queued(conn, &mut q, pkid, true) {
                        log::error!("{e}");
                    }
                    self.sent_at.insert(pkid, Instant::now());
                    self.inflight.insert_at(pkid, q);
                }
            }
            // Filters released while disconnected: the kept session still holds them.
            let stale = self.shared.router().take_released_offline();
            if !stale.is_empty() {
                self.queue_unsubscribe(stale, None);
            }
            return;
        }
        self.shared.router().take_released_offline();
        // New session: the broker knows no subscription and no packet of ours. Re-subscribe
        // first, then resend everything that was in flight (as new packets), then the outbox.
        let old: Vec<Queued> = self
            .inflight
            .drain_in_order()
            .into_iter()
            .map(|(_, q)| q)
            .filter(|q| q.op() != 0 || matches!(q, Queued::Publish { .. }))
            .collect();
        let mut front: VecDeque<Queued> = VecDeque::new();
        let filters = self.shared.router().broker_filters();
        for chunk in filters.chunks(AWS_MAX_FILTERS_PER_SUBSCRIBE) {
            front.push_back(Queued::Subscribe {
                filters: chunk.to_vec(),
                op: 0,
            });
        }
        front.extend(old);
        front.append(&mut self.outbox);
        self.outbox = front;
    }

    async fn graceful_disconnect(&mut self, conn: &mut Conn, reply: Option<Reply<()>>) {
        self.write_packet(conn, &Packet::Disconnect);
        let flush = async {
            while !conn.wbuf.is_empty() || conn.needs_flush {
                let n = write_some(&mut conn.wr, &mut conn.wbuf, &mut conn.needs_flush).await?;
                add(&self.shared.stats.bytes_sent, n);
            }
            conn.wr.shutdown().await
        };
        match tokio::time::timeout(DISCONNECT_FLUSH, flush).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::debug!("DISCONNECT not fully written: {e}"),
            Err(_) => log::debug!("DISCONNECT not written within {DISCONNECT_FLUSH:?}"),
        }
        log::info!("client {}: disconnected", self.cfg().client_id);
        self.shutdown(reply);
    }

    /// Decodes and handles every complete packet in the read buffer.
    fn process_incoming(&mut self, conn: &mut Conn) -> Result<()> {
        loop {
            let before = conn.rbuf.len();
            let packet = match Packet::read(&mut conn.rbuf, self.max_packet) {
                Ok(p) => p,
                Err(rumqttc::Error::InsufficientBytes(_)) => return Ok(()),
                Err(rumqttc::Error::PayloadSizeLimitExceeded(n)) => {
                    return Err(Error::Protocol(format!(
                        "the broker sent a {n}-byte packet; the limit is {} bytes",
                        self.max_packet
                    )))
                }
                Err(e) => {
                    return Err(Error::Protocol(format!(
                        "malformed packet from the broker: {e}"
                    )))
                }
            };
            let size = before - conn.rbuf.len();
            self.handle_packet(conn, packet, size)?;
        }
    }

    fn log_in(&mut self, entry: Entry<'_>) {
        if let Some(t) = self.traffic.as_mut() {
            t.record(Direction::In, &entry);
        }
    }

    fn handle_packet(&mut self, conn: &mut Conn, packet: Packet, size: usize) -> Result<()> {
        let name = packet_name(&packet);
        match packet {
            Packet::Publish(p) => {
                self.log_in(Entry {
                    kind: name,
                    topic: Some(&p.topic),
                    pkid: p.pkid,
                    qos: Some(p.qos as u8),
                    size,
                    payload: Some(p.payload.len()),
                    detail: if p.dup { Some("dup=1") } else { None },
                });
                self.inbound_publish(conn, p)
            }
            Packet::PubAck(a) => {
                self.log_in(Entry::control(name, a.pkid, size));
                if let Some(Queued::Publish { op, .. }) =
                    self.acknowledged(a.pkid, name, |q| matches!(q, Queued::Publish { .. }))
                {
                    self.complete(op, Ok(Vec::new()));
                }
                Ok(())
            }
            Packet::SubAck(s) => {
                let codes: Vec<u8> = s
                    .return_codes
                    .iter()
                    .map(|c| match c {
                        SubscribeReasonCode::Success(q) => *q as u8,
                        SubscribeReasonCode::Failure => 0x80,
                    })
                    .collect();
                let detail = format!("codes={codes:?}");
                self.log_in(Entry {
                    kind: name,
                    topic: None,
                    pkid: s.pkid,
                    qos: None,
                    size,
                    payload: None,
                    detail: Some(&detail),
                });
                if let Some(Queued::Subscribe { filters, op }) =
                    self.acknowledged(s.pkid, name, |q| matches!(q, Queued::Subscribe { .. }))
                {
                    if codes.len() != filters.len() {
                        self.complete(
                            op,
                            Err(Error::Protocol(format!(
                                "SUBACK has {} return codes for {} filters",
                                codes.len(),
                                filters.len()
                            ))),
                        );
                        return Ok(());
                    }
                    let refused: Vec<String> = filters
                        .iter()
                        .zip(&codes)
                        .filter(|(_, c)| **c == 0x80)
                        .map(|((f, _), _)| f.clone())
                        .collect();
                    if refused.is_empty() {
                        self.complete(op, Ok(codes));
                    } else if op == 0 {
                        // A re-SUBSCRIBE (session restore, QoS change) was refused: the
                        // subscriptions holding these filters would receive nothing. End them
                        // with the error instead.
                        log::error!(
                            "the broker refused the re-subscription to {refused:?}: those subscriptions end with SubscribeError"
                        );
                        let err = Error::SubscribeRefused {
                            filters: refused.clone(),
                        };
                        let released = self.shared.router().fail_filters(&refused, &err);
                        self.queue_release(released, None);
                    } else {
                        log::warn!("the broker refused the subscription to {refused:?}");
                        self.complete(op, Err(Error::SubscribeRefused { filters: refused }));
                    }
                }
                Ok(())
            }
            Packet::UnsubAck(u) => {
                self.log_in(Entry::control(name, u.pkid, size));
                if let Some(Queued::Unsubscribe { op, .. }) =
                    self.acknowledged(u.pkid, name, |q| matches!(q, Queued::Unsubscribe { .. }))
                {
                    self.complete(op, Ok(Vec::new()));
                }
                Ok(())
            }
            Packet::PingResp => {
                self.log_in(Entry::control(name, 0, size));
                conn.ping = Ping::Idle;
                Ok(())
            }
            other => {
                self.log_in(Entry::control(name, 0, size));
                Err(Error::Protocol(format!(
                    "the broker sent {name}, which a server never sends to an MQTT 3.1.1 client at this point",
                    name = packet_name(&other)
                )))
            }
        }
    }

    /// Takes the in-flight entry an acknowledgement (`ack`, e.g. `PUBACK`) resolves. An ack for
    /// an unknown packet id, or for an entry of another type, is logged and ignored.
    fn acknowledged(&mut self, pkid: u16, ack: &str, is: fn(&Queued) -> bool) -> Option<Queued> {
        match self.inflight.remove(pkid) {
            Some(q) if is(&q) => {
                self.sent_at.remove(&pkid);
                if self.suspect.is_some() {
                    // Something got through: the drops were not about this packet stream.
                    self.suspect = None;
                }
                Some(q)
            }
            Some(other) => {
                log::warn!("{ack} for packet id {pkid}, which is in flight as another packet type: ignored");
                self.inflight.insert_at(pkid, other);
                None
            }
            None => {
                log::warn!("unsolicited {ack} for packet id {pkid}: ignored");
                None
            }
        }
    }

    fn inbound_publish(&mut self, conn: &mut Conn, p: Publish) -> Result<()> {
        let qos = p.qos as u8;
        if qos > 1 {
            return Err(Error::Protocol(format!(
                "the broker sent a QoS {qos} PUBLISH; this client subscribes with QoS 0 or 1 only"
            )));
        }
        if qos == 1 && p.pkid == 0 {
            return Err(Error::Protocol("QoS 1 PUBLISH with packet id 0".into()));
        }
        if p.topic.is_empty() || p.topic.contains(['+', '#', '\0']) {
            // MQTT-3.3.2-2 / MQTT-1.5.3-2: a topic name never has wildcards or NUL.
            return Err(Error::Protocol(format!(
                "the broker sent a PUBLISH with an invalid topic name {:?} (empty, wildcard or NUL)",
                p.topic
            )));
        }
        self.shared
            .stats
            .messages_received
            .fetch_add(1, Ordering::Relaxed);
        let message = Message {
            topic: Arc::from(p.topic.as_str()),
            payload: p.payload,
            qos,
            retain: p.retain,
            dup: p.dup,
        };
        let routed = self.shared.router().route(&message);
        if routed.dropped > 0 {
            add(&self.shared.stats.dropped, routed.dropped);
        }
        if routed.matched == 0 {
            self.unrouted(&message.topic);
        }
        if qos == 1 {
            if routed.over.is_empty() && self.acks.is_empty() {
                self.write_packet(conn, &Packet::PubAck(PubAck::new(p.pkid)));
            } else {
                self.acks.push_back(PendingAck {
                    pkid: p.pkid,
                    waiting: routed.over,
                });
                self.release_acks(conn);
            }
        }
        Ok(())
    }

    /// Counts a message no subscription took, with a rate-limited WARNING.
    fn unrouted(&mut self, topic: &str) {
        self.shared.stats.unrouted.fetch_add(1, Ordering::Relaxed);
        self.unrouted_since_warning += 1;
        let now = Instant::now();
        if self
            .unrouted_warned
            .is_some_and(|t| now.duration_since(t) < UNROUTED_WARN_EVERY)
        {
            return;
        }
        log::warn!(
            "client {}: {} message(s) matched no subscription or messages() stream and were acknowledged unread (last on {topic:?}); stats()[\"unrouted\"] counts them. Open client.messages() before connect() to take a persistent session's stored messages",
            self.cfg().client_id,
            self.unrouted_since_warning
        );
        self.unrouted_warned = Some(now);
        self.unrouted_since_warning = 0;
    }

    /// Sends the owed PUBACKs, in arrival order, whose queues are back within capacity.
    fn release_acks(&mut self, conn: &mut Conn) {
        while let Some(front) = self.acks.front() {
            if front.waiting.iter().any(|q| q.is_over() && !q.is_closed()) {
                break;
            }
            if let Some(ack) = self.acks.pop_front() {
                self.write_packet(conn, &Packet::PubAck(PubAck::new(ack.pkid)));
            }
        }
    }
}

fn queue_full(limit: usize) -> Error {
    Error::QueueFull(format!(
        "the offline queue is full ({limit} operations wait for the connection; OfflineQueue(limit=...) sets the limit)"
    ))
}

fn finish(reply: OpReply, result: Result<Vec<u8>>) {
    match reply {
        OpReply::None => {}
        OpReply::Unit(r) => r(result.map(|_| ())),
        OpReply::Codes(r) => r(result),
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
