//! The session state machine of one client, without I/O: packet ids and the in-flight table,
//! the outbox (offline queue), operation deadlines, owed acknowledgements (backpressure),
//! keep-alive, session restore after CONNACK and the policy-violation check.
//!
//! The driver feeds it commands, bytes read and written, and the current time; it answers with
//! bytes to write (in [`Link::wbuf`]), completions (the operations' replies) and counters. It
//! never touches a socket or a clock of its own, so its unit tests run packet by packet.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::{
    Packet, PubAck, Publish, Subscribe, SubscribeFilter, SubscribeReasonCode, Unsubscribe,
};
use tokio::time::Instant;

use crate::core::config::{QoS, AWS_MAX_FILTERS_PER_SUBSCRIBE};
use crate::core::error::{Error, Result};
use crate::core::message::Message;
use crate::core::protocol::codec::packet_name;
use crate::core::protocol::inflight::Inflight;
use crate::core::protocol::queue::SubscriptionQueue;
use crate::core::protocol::router::Released;
use crate::core::shared::{
    add, Command, OutPublish, Reply, Shared, SubscribeCommand, UnsubscribeCommand,
};
use crate::core::traffic_log::{Direction, Entry, TrafficLog};

/// Stop taking new commands while this many bytes wait to be written.
pub(crate) const WBUF_HIGH: usize = 1 << 20;
/// Stop taking new commands while this many operations wait for a packet id.
pub(crate) const OUTBOX_HIGH: usize = 65_536;
/// The least free room in the read buffer before a read. Below it the buffer doubles, so it
/// grows only when traffic needs it: an idle connection keeps the handshake's 512 B buffer
/// (the connection's largest idle allocation after the task itself).
const READ_ROOM: usize = 256;
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

/// One live connection's buffers and timers (the driver moves bytes between these buffers and
/// the socket).
pub(crate) struct Link {
    /// Bytes read and not yet decoded.
    pub(crate) rbuf: BytesMut,
    /// Encoded packets not yet written.
    pub(crate) wbuf: BytesMut,
    /// Bytes were written since the last flush.
    pub(crate) needs_flush: bool,
    last_write: Instant,
    last_read: Instant,
    /// Bytes written to the socket on this connection.
    written: u64,
    ping: Ping,
}

impl Link {
    fn new(rbuf: BytesMut, now: Instant) -> Self {
        Self {
            rbuf,
            wbuf: BytesMut::new(),
            needs_flush: false,
            last_write: now,
            last_read: now,
            written: 0,
            ping: Ping::Idle,
        }
    }
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
    conn: &Link,
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

/// The protocol state of one client, across its connections.
pub(crate) struct Session {
    shared: Arc<Shared>,
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
    max_packet: usize,
    /// The current connection's buffers and timers.
    pub(crate) link: Link,
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

impl Session {
    pub(crate) fn new(shared: Arc<Shared>, traffic: Option<TrafficLog>) -> Self {
        let inflight = Inflight::new(shared.config.inflight);
        let max_packet = shared.config.max_incoming_packet();
        Self {
            shared,
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
            traffic,
            max_packet,
            link: Link::new(BytesMut::new(), Instant::now()),
        }
    }

    fn cfg(&self) -> &crate::core::config::ClientConfig {
        &self.shared.config
    }

    /// A connection is up (CONNACK received, `leftover` read past it): resend or restore as
    /// the session needs, then handle what arrived right behind the CONNACK.
    ///
    /// # Errors
    /// A protocol error in the leftover bytes.
    pub(crate) fn connected(
        &mut self,
        session_present: bool,
        leftover: BytesMut,
        connect_size: usize,
        now: Instant,
    ) -> Result<()> {
        self.link = Link::new(leftover, now);
        if let Some(t) = self.traffic.as_mut() {
            t.record(
                Direction::Out,
                &Entry {
                    kind: "CONNECT",
                    topic: None,
                    pkid: 0,
                    qos: None,
                    size: connect_size,
                    payload: None,
                    detail: None,
                },
            );
            let detail = if session_present {
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
        add(&self.shared.stats.bytes_sent, connect_size);
        add(&self.shared.stats.bytes_received, 4);
        self.restore_session(session_present);
        self.process_incoming()
    }

    /// Bytes were read into [`Link::rbuf`]: decode and handle every complete packet.
    ///
    /// # Errors
    /// The broker broke the protocol (the connection must be dropped).
    pub(crate) fn on_read(&mut self, n: usize, now: Instant) -> Result<()> {
        self.link.last_read = now;
        add(&self.shared.stats.bytes_received, n);
        self.process_incoming()
    }

    /// `n` bytes of [`Link::wbuf`] reached the socket.
    pub(crate) fn on_written(&mut self, n: usize, now: Instant) {
        if n == 0 {
            return;
        }
        add(&self.shared.stats.bytes_sent, n);
        self.link.last_write = now;
        self.link.written += n as u64;
        if let Ping::Queued { until, .. } = self.link.ping {
            if self.link.written >= until {
                self.link.ping = Ping::Written(now);
            }
        }
    }

    /// When the keep-alive needs attention next (`None`: keep-alive disabled).
    pub(crate) fn keep_alive_deadline(&self) -> Option<Instant> {
        keep_alive_deadline(&self.link, self.cfg().keep_alive, self.ping_timeout())
    }

    fn ping_timeout(&self) -> Duration {
        (self.cfg().keep_alive / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// The keep-alive deadline passed: queue a PINGREQ, or declare the link dead.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the link is dead.
    pub(crate) fn on_keep_alive(&mut self, now: Instant) -> Result<()> {
        match self.link.ping {
            Ping::Idle => {
                self.write_packet(&Packet::PingReq);
                self.link.ping = Ping::Queued {
                    until: self.link.written + self.link.wbuf.len() as u64,
                    at: now,
                };
                Ok(())
            }
            Ping::Queued { .. } => Err(Error::Timeout {
                what: "writing to the connection (a PINGREQ waits behind unwritten data and nothing was read or written)".into(),
                after: self.ping_timeout(),
            }),
            Ping::Written(_) => Err(Error::Timeout {
                what: "PINGREQ (keep-alive): nothing was received".into(),
                after: self.ping_timeout(),
            }),
        }
    }

    /// Whether new commands may be taken (bounded write buffer and outbox).
    pub(crate) fn can_take_commands(&self) -> bool {
        self.link.wbuf.len() < WBUF_HIGH && self.outbox.len() < OUTBOX_HIGH
    }

    /// Whether the outbox is at its bound (stop taking commands in this burst).
    pub(crate) fn outbox_full(&self) -> bool {
        self.outbox.len() >= OUTBOX_HIGH
    }

    /// Whether bytes wait to be written or flushed.
    pub(crate) fn wants_write(&self) -> bool {
        !self.link.wbuf.is_empty() || self.link.needs_flush
    }

    /// Whether acknowledgements are held back for full queues.
    pub(crate) fn owes_acks(&self) -> bool {
        !self.acks.is_empty()
    }

    /// Makes room in the read buffer (doubling) before the next read.
    pub(crate) fn reserve_read(&mut self) {
        let rbuf = &mut self.link.rbuf;
        if rbuf.capacity() - rbuf.len() < READ_ROOM {
            let grow = rbuf.capacity().max(READ_ROOM);
            rbuf.reserve(grow);
        }
    }

    /// Encodes DISCONNECT (the last packet of a graceful close).
    pub(crate) fn disconnect(&mut self) {
        self.write_packet(&Packet::Disconnect);
    }

    /// Flushes the traffic log (complete when `disconnect()` returns).
    pub(crate) fn flush_log(&mut self) {
        if let Some(t) = self.traffic.as_mut() {
            t.flush();
        }
    }

    /// The connection dropped at `now`: check for a policy-violation loop, then forget what
    /// belonged to that connection.
    pub(crate) fn connection_lost(&mut self, err: &Error, now: Instant) {
        self.check_policy_violation(now);
        self.connection_down(err);
    }

    /// Answers a command that arrives after the client stopped: none is dropped unanswered.
    pub(crate) fn abandon(&mut self, cmd: Command) {
        let err = || Error::Closed("the client is disconnected".into());
        match cmd {
            Command::Publish(p) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                if let Some(r) = p.reply {
                    r(Err(err()));
                }
            }
            Command::Subscribe(sub) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                sub.queue.close();
                (sub.reply)(Err(err()));
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
            Command::Unsubscribe(unsub) => (unsub.reply)(Err(err())),
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

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|(t, _)| *t)
    }

    /// Fails every operation whose deadline has passed with [`Error::Timeout`].
    pub(crate) fn expire(&mut self, now: Instant) {
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

    /// Queues a command (connected or not), applying the offline policy when not connected.
    pub(crate) fn accept(&mut self, cmd: Command, connected: bool) {
        let offline = self.cfg().offline_queue;
        let over_limit = !connected && self.outbox.len() >= offline.limit;
        match cmd {
            Command::Publish(publish) => {
                let OutPublish {
                    topic,
                    payload,
                    qos,
                    retain,
                    reply,
                } = *publish;
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
            Command::Subscribe(sub) => {
                let SubscribeCommand {
                    id,
                    filters,
                    queue,
                    reply,
                } = *sub;
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
            Command::Unsubscribe(unsub) => {
                let UnsubscribeCommand { filters, reply } = *unsub;
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
    pub(crate) fn give_up(&mut self, e: &Error) {
        let err = Error::Disconnected(format!(
            "the connection is down and will not be retried: {e}"
        ));
        self.fail_all(&err);
    }

    pub(crate) fn fail_all(&mut self, err: &Error) {
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

    /// Encodes a control packet into the write buffer and logs it.
    fn write_packet(&mut self, packet: &Packet) {
        match packet.write(&mut self.link.wbuf, usize::MAX) {
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
    fn write_queued(&mut self, q: &mut Queued, pkid: u16, dup: bool) -> Result<()> {
        let result = match q {
            Queued::Publish { publish, .. } => {
                publish.pkid = pkid;
                publish.dup = dup && publish.qos != rumqttc::QoS::AtMostOnce;
                publish.write(&mut self.link.wbuf)
            }
            Queued::Subscribe { filters, .. } => {
                let packet = Subscribe {
                    pkid,
                    filters: filters
                        .iter()
                        .map(|(f, qos)| SubscribeFilter::new(f.clone(), qos.to_mqtt()))
                        .collect(),
                };
                packet.write(&mut self.link.wbuf)
            }
            Queued::Unsubscribe { filters, .. } => {
                let packet = Unsubscribe {
                    pkid,
                    topics: filters.clone(),
                };
                packet.write(&mut self.link.wbuf)
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
    pub(crate) fn fill(&mut self) -> Result<()> {
        while self.link.wbuf.len() < WBUF_HIGH {
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
            self.write_queued(&mut q, pkid, false)?;
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

    pub(crate) fn publish_counts(&self) {
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
    fn restore_session(&mut self, session_present: bool) {
        if session_present {
            // The broker kept our session: resend un-acknowledged packets first, in submission
            // order, same packet ids, DUP set on publishes.
            for pkid in self.inflight.in_order() {
                if let Some(mut q) = self.inflight.remove(pkid) {
                    if let Err(e) = self.write_queued(&mut q, pkid, true) {
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

    /// Decodes and handles every complete packet in the read buffer.
    fn process_incoming(&mut self) -> Result<()> {
        loop {
            let before = self.link.rbuf.len();
            let packet = match Packet::read(&mut self.link.rbuf, self.max_packet) {
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
            let size = before - self.link.rbuf.len();
            self.handle_packet(packet, size)?;
        }
    }

    fn log_in(&mut self, entry: Entry<'_>) {
        if let Some(t) = self.traffic.as_mut() {
            t.record(Direction::In, &entry);
        }
    }

    fn handle_packet(&mut self, packet: Packet, size: usize) -> Result<()> {
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
                self.inbound_publish(p)
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
                self.link.ping = Ping::Idle;
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

    fn inbound_publish(&mut self, p: Publish) -> Result<()> {
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
                self.write_packet(&Packet::PubAck(PubAck::new(p.pkid)));
            } else {
                self.acks.push_back(PendingAck {
                    pkid: p.pkid,
                    waiting: routed.over,
                });
                self.release_acks();
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
    pub(crate) fn release_acks(&mut self) {
        while let Some(front) = self.acks.front() {
            if front.waiting.iter().any(|q| q.is_over() && !q.is_closed()) {
                break;
            }
            if let Some(ack) = self.acks.pop_front() {
                self.write_packet(&Packet::PubAck(PubAck::new(ack.pkid)));
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    //! Packet-level tests of the state machine: commands and packets in, bytes out, with the
    //! clock passed explicitly. No socket, no driver task.

    use std::sync::Mutex as StdMutex;

    use bytes::Bytes;
    use rumqttc::SubAck;

    use super::*;
    use crate::core::config::{ClientConfig, PolicyCheck};
    use crate::core::net::transport::Transport;
    use crate::core::protocol::queue::Wake;
    use crate::core::protocol::topic::Limits;
    use crate::core::shared::{ClientEvent, EventSink};

    struct NoEvents;
    impl EventSink for NoEvents {
        fn event(&self, _: ClientEvent) {}
    }

    struct NoWake;
    impl Wake for NoWake {
        fn wake(&self, _: u64) {}
    }

    fn session(configure: impl FnOnce(&mut ClientConfig)) -> Session {
        let mut cfg = ClientConfig::new("broker.test", 1883, Transport::Tcp);
        cfg.limits = Limits::Mqtt;
        cfg.keep_alive = Duration::from_secs(10);
        configure(&mut cfg);
        Session::new(Arc::new(Shared::new(cfg, Arc::new(NoEvents))), None)
    }

    /// Everything the session wants written, decoded (and taken out of the buffer).
    fn written(s: &mut Session) -> Vec<Packet> {
        let mut out = Vec::new();
        while let Ok(p) = Packet::read(&mut s.link.wbuf, 1 << 20) {
            out.push(p);
        }
        assert!(s.link.wbuf.is_empty(), "only whole packets are written");
        out
    }

    /// Feeds one packet from the broker.
    fn receive(s: &mut Session, p: &Packet) -> Result<()> {
        let mut b = BytesMut::new();
        p.write(&mut b, usize::MAX).unwrap();
        let n = b.len();
        s.link.rbuf.extend_from_slice(&b);
        s.on_read(n, Instant::now())
    }

    type Outcome = Arc<StdMutex<Vec<Result<()>>>>;

    fn publish(s: &mut Session, topic: &str, qos: QoS, connected: bool) -> Outcome {
        let done: Outcome = Arc::default();
        let d = Arc::clone(&done);
        s.shared.queued.fetch_add(1, Ordering::Relaxed);
        s.accept(
            Command::Publish(Box::new(OutPublish {
                topic: topic.into(),
                payload: Bytes::from_static(b"x"),
                qos,
                retain: false,
                reply: Some(Box::new(move |r| d.lock().unwrap().push(r))),
            })),
            connected,
        );
        done
    }

    fn subscribe(s: &mut Session, filter: &str, capacity: usize) -> Arc<SubscriptionQueue> {
        let queue =
            SubscriptionQueue::new(7, capacity, Arc::new(NoWake), Arc::clone(&s.shared.space));
        s.shared.queued.fetch_add(1, Ordering::Relaxed);
        s.accept(
            Command::Subscribe(Box::new(SubscribeCommand {
                id: 7,
                filters: vec![(filter.into(), QoS::AtLeastOnce)],
                queue: Arc::clone(&queue),
                reply: Box::new(|_| {}),
            })),
            true,
        );
        queue
    }

    fn publishes(packets: &[Packet]) -> Vec<(String, u16, bool)> {
        packets
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some((p.topic.clone(), p.pkid, p.dup)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_kept_session_resends_unacknowledged_publishes_first_in_order_with_dup() {
        let mut s = session(|_| {});
        s.connected(false, BytesMut::new(), 20, Instant::now())
            .unwrap();
        for t in ["a", "b", "c"] {
            publish(&mut s, t, QoS::AtLeastOnce, true);
        }
        s.fill().unwrap();
        let first = publishes(&written(&mut s));
        assert_eq!(
            first
                .iter()
                .map(|(t, _, dup)| (t.as_str(), *dup))
                .collect::<Vec<_>>(),
            vec![("a", false), ("b", false), ("c", false)]
        );
        // "b" is acknowledged, then the connection drops; the broker kept the session.
        receive(&mut s, &Packet::PubAck(PubAck::new(first[1].1))).unwrap();
        s.connection_lost(&Error::Disconnected("cut".into()), Instant::now());
        s.connected(true, BytesMut::new(), 20, Instant::now())
            .unwrap();
        let resent = publishes(&written(&mut s));
        assert_eq!(
            resent,
            vec![
                ("a".to_string(), first[0].1, true),
                ("c".to_string(), first[2].1, true)
            ],
            "same packet ids, DUP set, submission order, nothing acknowledged resent"
        );
    }

    #[test]
    fn a_lost_session_resubscribes_first_then_resends_as_new_packets() {
        let mut s = session(|_| {});
        s.connected(false, BytesMut::new(), 20, Instant::now())
            .unwrap();
        let _queue = subscribe(&mut s, "room/+", 10);
        s.fill().unwrap();
        let sub = written(&mut s);
        let Packet::Subscribe(first_sub) = &sub[0] else {
            panic!("{sub:?}")
        };
        receive(
            &mut s,
            &Packet::SubAck(SubAck::new(
                first_sub.pkid,
                vec![SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)],
            )),
        )
        .unwrap();
        publish(&mut s, "t", QoS::AtLeastOnce, true);
        s.fill().unwrap();
        assert_eq!(publishes(&written(&mut s)).len(), 1);
        s.connection_lost(&Error::Disconnected("cut".into()), Instant::now());
        s.connected(false, BytesMut::new(), 20, Instant::now())
            .unwrap();
        s.fill().unwrap();
        let after = written(&mut s);
        assert!(
            matches!(&after[0], Packet::Subscribe(sub) if sub.filters[0].path == "room/+"),
            "re-subscribed before anything else: {after:?}"
        );
        assert!(
            matches!(&after[1], Packet::Publish(p) if p.topic == "t" && !p.dup),
            "then the in-flight publish as a new packet: {after:?}"
        );
    }

    #[test]
    fn qos1_acknowledgements_wait_while_the_queue_is_over_capacity_in_arrival_order() {
        let mut s = session(|_| {});
        s.connected(false, BytesMut::new(), 20, Instant::now())
            .unwrap();
        let queue = subscribe(&mut s, "t", 1);
        s.fill().unwrap();
        written(&mut s);
        let inbound = |pkid| {
            let mut p = Publish::new("t", rumqttc::QoS::AtLeastOnce, vec![1u8]);
            p.pkid = pkid;
            Packet::Publish(p)
        };
        receive(&mut s, &inbound(11)).unwrap();
        assert!(matches!(&written(&mut s)[..], [Packet::PubAck(a)] if a.pkid == 11));
        receive(&mut s, &inbound(12)).unwrap();
        receive(&mut s, &inbound(13)).unwrap();
        assert!(
            written(&mut s).is_empty(),
            "over capacity: PUBACKs withheld"
        );
        assert!(s.owes_acks());
        queue.pop_batch(2); // the consumer catches up
        s.release_acks();
        let acks: Vec<u16> = written(&mut s)
            .iter()
            .filter_map(|p| match p {
                Packet::PubAck(a) => Some(a.pkid),
                _ => None,
            })
            .collect();
        assert_eq!(acks, vec![12, 13], "released in arrival order");
    }

    #[test]
    fn the_ping_timeout_runs_from_the_write_and_inbound_bytes_are_liveness() {
        let mut s = session(|c| c.keep_alive = Duration::from_secs(10));
        let t0 = Instant::now();
        s.connected(false, BytesMut::new(), 20, t0).unwrap();
        assert_eq!(s.keep_alive_deadline(), Some(t0 + Duration::from_secs(10)));
        let t1 = t0 + Duration::from_secs(10);
        s.on_keep_alive(t1).unwrap();
        // Queued behind nothing else: the deadline is the ping timeout (5 s) from queueing.
        assert_eq!(s.keep_alive_deadline(), Some(t1 + Duration::from_secs(5)));
        let queued = s.link.wbuf.len();
        let t2 = t1 + Duration::from_secs(4);
        s.on_written(queued, t2);
        s.link.wbuf.clear();
        assert_eq!(
            s.keep_alive_deadline(),
            Some(t2 + Duration::from_secs(5)),
            "timed from the write"
        );
        let t3 = t2 + Duration::from_secs(3);
        s.link.last_read = t3; // bytes arrived: alive
        assert_eq!(s.keep_alive_deadline(), Some(t3 + Duration::from_secs(5)));
        assert!(matches!(
            s.on_keep_alive(t3 + Duration::from_secs(5)),
            Err(Error::Timeout { .. })
        ));
        receive(&mut s, &Packet::PingResp).unwrap();
        assert!(s.on_keep_alive(Instant::now()).is_ok(), "idle again: pings");
    }

    #[test]
    fn an_operation_past_its_deadline_fails_and_is_never_sent_late() {
        let mut s = session(|c| c.operation_timeout = Duration::from_secs(3));
        let t0 = Instant::now();
        let done = publish(&mut s, "late", QoS::AtLeastOnce, false); // offline: queued
        let deadline = s.next_deadline().expect("a deadline");
        assert!(
            deadline >= t0 + Duration::from_secs(3)
                && deadline <= Instant::now() + Duration::from_secs(3)
        );
        s.expire(Instant::now() + Duration::from_secs(4));
        assert!(matches!(
            &done.lock().unwrap()[..],
            [Err(Error::Timeout { .. })]
        ));
        s.connected(false, BytesMut::new(), 20, Instant::now())
            .unwrap();
        s.fill().unwrap();
        assert!(
            publishes(&written(&mut s)).is_empty(),
            "not sent after the caller was told"
        );
    }

    #[test]
    fn the_same_publish_dropping_the_connection_three_times_fails_as_a_policy_violation() {
        let mut s = session(|c| {
            c.policy_check = Some(PolicyCheck {
                count: 3,
                window: Duration::from_secs(2),
            });
        });
        s.connected(false, BytesMut::new(), 20, Instant::now())
            .unwrap();
        let done = publish(&mut s, "forbidden", QoS::AtLeastOnce, true);
        for round in 0..3 {
            s.fill().unwrap();
            assert_eq!(publishes(&written(&mut s)).len(), 1, "round {round}");
            s.connection_lost(&Error::Disconnected("closed".into()), Instant::now());
            s.connected(false, BytesMut::new(), 20, Instant::now())
                .unwrap();
        }
        assert!(matches!(
            &done.lock().unwrap()[..],
            [Err(Error::PolicyViolationSuspected { topic, operation: "publish", count: 3, .. })] if topic == "forbidden"
        ));
        s.fill().unwrap();
        assert!(
            publishes(&written(&mut s)).is_empty(),
            "not resent any more"
        );
    }

    #[test]
    fn a_drop_long_after_the_send_is_not_held_against_the_packet() {
        let mut s = session(|_| {});
        let t0 = Instant::now();
        s.connected(false, BytesMut::new(), 20, t0).unwrap();
        let done = publish(&mut s, "slow", QoS::AtLeastOnce, true);
        for _ in 0..5 {
            s.fill().unwrap();
            written(&mut s);
            s.connection_lost(
                &Error::Disconnected("closed".into()),
                Instant::now() + Duration::from_secs(10),
            );
            s.connected(false, BytesMut::new(), 20, Instant::now())
                .unwrap();
        }
        assert!(
            done.lock().unwrap().is_empty(),
            "still in flight, not condemned"
        );
    }

    #[test]
    fn an_idle_connection_keeps_its_small_read_buffer_and_traffic_doubles_it() {
        let mut s = session(|_| {});
        // As the handshake leaves it: 512 B, nothing pending.
        s.link.rbuf = BytesMut::with_capacity(512);
        s.reserve_read();
        assert_eq!(
            s.link.rbuf.capacity(),
            512,
            "an idle connection allocates nothing more"
        );
        // A read filled it but for less than the least room: the next read gets twice as much.
        s.link.rbuf.extend_from_slice(&[0u8; 400]);
        s.reserve_read();
        assert!(
            s.link.rbuf.capacity() - s.link.rbuf.len() >= 512,
            "capacity {} with {} pending",
            s.link.rbuf.capacity(),
            s.link.rbuf.len()
        );
    }
}
