//! One client connection, after its transport is up (TLS, or WebSocket over TLS): the CONNECT
//! exchange (with a custom authorizer when the credentials are in CONNECT), then the packet
//! loop with AWS IoT's rules, keep-alive × 1.5, takeover and the lifecycle events.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, PubAck, Publish, SubAck, Subscribe,
    SubscribeReasonCode, UnsubAck, Unsubscribe,
};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, timeout, Instant};

use crate::core::protocol::topic::{validate_filter, validate_topic, Limits};
use crate::local::authorizer_request::AuthProtocol;
use crate::local::broker::{ConnectionHandle, Message, ToConnection};
use crate::local::codec::{self, FrameError, MQTT_3_1_1};
use crate::local::config::Qos2Policy;
use crate::local::events::{now_ms, CoreEvent, EventKind};
use crate::local::lifecycle::{self, DisconnectReason, Presence};
use crate::local::reserved_topics::{self, PublishKind};
use crate::local::shared::{stopped, CoreShared, Principal};

/// AWS IoT: client ids are at most 128 bytes.
pub const AWS_MAX_CLIENT_ID: usize = 128;
/// AWS IoT: at most 8 filters per SUBSCRIBE.
pub const AWS_MAX_FILTERS_PER_SUBSCRIBE: usize = 8;
/// AWS IoT: at most 50 subscriptions per connection.
pub const AWS_MAX_SUBSCRIPTIONS: usize = 50;
/// AWS IoT: at most 100 unacknowledged QoS 1 messages in flight to a client.
pub const AWS_MAX_INFLIGHT: usize = 100;
/// AWS IoT: payloads up to 128 KiB.
pub const AWS_MAX_PAYLOAD: usize = 128 * 1024;
/// Remaining length allowed under AWS limits: the payload plus a topic and packet id.
const AWS_MAX_REMAINING: usize = AWS_MAX_PAYLOAD + 2 + 65_535 + 2;
/// Remaining length allowed under plain MQTT limits (a test-scale bound below the 256 MiB max).
const MQTT_MAX_REMAINING: usize = 16 * 1024 * 1024;
/// How long a write may stall (a client that stops reading) before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages taken from the broker's queue per turn, written in one go.
const WRITE_BATCH: usize = 256;

/// How the transport authenticated the peer, before CONNECT.
#[derive(Debug, Clone)]
pub enum Admission {
    /// Authenticated by the transport (certificate, SigV4, authorizer on the upgrade request).
    Admitted {
        /// Who it is.
        principal: Principal,
        /// When the authorizer's `disconnectAfterInSeconds` ends the connection.
        expires: Option<Instant>,
    },
    /// The credentials are in CONNECT's user name and password (custom authorizer).
    AtConnect {
        /// `mqtt` (TLS with ALPN `mqtt`) or `wss`.
        protocol: AuthProtocol,
        /// The upgrade request's headers (WSS).
        headers: Vec<(String, String)>,
        /// The upgrade request's query parameters (WSS).
        query: Vec<(String, String)>,
    },
}

/// Why the packet loop ended.
struct Ended {
    reason: DisconnectReason,
    /// Publish the will (the connection ended without DISCONNECT).
    will: bool,
}

impl Ended {
    fn because(reason: DisconnectReason) -> Self {
        Self {
            reason,
            will: reason != DisconnectReason::ClientInitiatedDisconnect,
        }
    }
}

struct Session {
    shared: Arc<CoreShared>,
    client_id: String,
    principal: Principal,
    session_identifier: String,
    version_number: u64,
    ip: String,
    handle_id: u64,
    /// The broker's id of the session this connection is attached to.
    session_id: u64,
    /// Set by the broker while deliveries wait in the session's backlog.
    backlogged: Arc<std::sync::atomic::AtomicBool>,
    keep_alive: Option<Duration>,
    will: Option<LastWill>,
    expires: Option<Instant>,
    /// QoS 1 messages written and not yet acknowledged, by packet id.
    inflight: HashMap<u16, Arc<Message>>,
    /// QoS 1 messages waiting for room in `inflight`, with their RETAIN flag.
    waiting: VecDeque<(Arc<Message>, bool)>,
    next_pkid: u16,
    out: BytesMut,
}

fn max_remaining(limits: Limits) -> usize {
    match limits {
        Limits::Aws => AWS_MAX_REMAINING,
        Limits::Mqtt => MQTT_MAX_REMAINING,
    }
}

/// Serves one connection to its end. Never panics on anything the peer sends.
pub async fn serve<S>(
    mut stream: S,
    peer: SocketAddr,
    admission: Admission,
    shared: Arc<CoreShared>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut buf = BytesMut::with_capacity(4096);
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let mut stop = shared.shutdown_signal();
    let first = tokio::select! {
        r = timeout_at(deadline, read_connect(&mut stream, &mut buf)) => r,
        () = stopped(&mut stop) => return,
    };
    let connect = match first {
        Some(Ok(c)) => c,
        Some(Err(refusal)) => {
            if let Some(code) = refusal.code {
                let _ = write_now(&mut stream, &Packet::ConnAck(ConnAck::new(code, false))).await;
            }
            refused(&shared, "", refusal.reason, &refusal.message);
            return;
        }
        None => {
            refused(
                &shared,
                "",
                DisconnectReason::ClientError,
                "no CONNECT in time",
            );
            return;
        }
    };
    let client_id = connect.client_id.clone();
    // A stop does not wait for an authorizer that is slow to answer.
    let admitted = tokio::select! {
        r = admit(&shared, admission, &connect) => r,
        () = stopped(&mut stop) => return,
    };
    let (principal, expires) = match admitted {
        Ok(p) => p,
        Err(code) => {
            let _ = write_now(&mut stream, &Packet::ConnAck(ConnAck::new(code, false))).await;
            refused(
                &shared,
                &client_id,
                DisconnectReason::AuthError,
                "not authorized",
            );
            return;
        }
    };
    if let Err(code) = check_connect(&shared, &connect, &principal) {
        let _ = write_now(&mut stream, &Packet::ConnAck(ConnAck::new(code, false))).await;
        refused(
            &shared,
            &client_id,
            DisconnectReason::ClientError,
            "CONNECT refused",
        );
        return;
    }
    let (handle, mut rx): (ConnectionHandle, mpsc::Receiver<ToConnection>) =
        shared.broker.new_connection();
    let handle_id = handle.id;
    let backlogged = Arc::clone(&handle.backlogged);
    let mut close = handle.close.subscribe();
    let attached = shared
        .broker
        .attach(&client_id, connect.clean_session, handle);
    let mut s = Session {
        session_identifier: format!("{:032x}", rand::random::<u128>()),
        version_number: attached.version_number,
        ip: peer.ip().to_string(),
        handle_id,
        session_id: attached.session,
        backlogged,
        keep_alive: shared.config.effective_keep_alive(connect.keep_alive),
        will: connect.last_will.clone(),
        expires,
        inflight: HashMap::new(),
        waiting: VecDeque::new(),
        next_pkid: 0,
        out: BytesMut::with_capacity(4096),
        client_id,
        principal,
        shared,
    };
    s.push(&Packet::ConnAck(ConnAck::new(
        ConnectReturnCode::Success,
        attached.session_present,
    )));
    for message in attached.stored {
        s.deliver(message, QoS::AtLeastOnce, false);
    }
    s.connected_event();
    let ended = s.run(&mut stream, &mut rx, &mut close, buf).await;
    // Close the transport (TLS close_notify, WebSocket close) before telling the world.
    let _ = timeout(Duration::from_secs(1), stream.shutdown()).await;
    s.finish(ended, &mut rx);
}

/// Resolves with the reason once the broker tells the connection to close.
async fn closed(close: &mut watch::Receiver<Option<DisconnectReason>>) -> DisconnectReason {
    if close.wait_for(Option::is_some).await.is_err() {
        // The broker dropped the handle (a takeover does, right after giving the reason):
        // the reason is still there; without one, the session is gone and so is the client.
        return close.borrow().unwrap_or(DisconnectReason::ServerError);
    }
    close.borrow().unwrap_or(DisconnectReason::ServerError)
}

async fn timeout_at<F: std::future::Future>(deadline: Instant, f: F) -> Option<F::Output> {
    tokio::time::timeout_at(deadline, f).await.ok()
}

struct Refusal {
    code: Option<ConnectReturnCode>,
    reason: DisconnectReason,
    message: String,
}

fn refused(shared: &CoreShared, client_id: &str, reason: DisconnectReason, message: &str) {
    log::debug!("local core: connection refused ({client_id}): {message}");
    let mut e = CoreEvent::new(EventKind::Refused, client_id);
    e.reason = reason.as_str().to_owned();
    e.topic = message.to_owned();
    shared.events.push(e);
}

async fn write_now<S: AsyncWrite + Unpin>(stream: &mut S, packet: &Packet) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    codec::write_packet(packet, &mut out).map_err(|e| std::io::Error::other(e.to_string()))?;
    stream.write_all(&out).await?;
    stream.flush().await
}

async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Connect, Refusal> {
    let malformed = |m: String| Refusal {
        code: None,
        reason: DisconnectReason::ClientError,
        message: m,
    };
    loop {
        match codec::connect_protocol_level(buf) {
            Some(Ok(MQTT_3_1_1)) => match codec::read_packet(buf, MQTT_MAX_REMAINING) {
                Ok(Some(Packet::Connect(c))) => return Ok(c),
                Ok(Some(_)) => return Err(malformed("first packet is not CONNECT".into())),
                Ok(None) => {}
                Err(e) => return Err(malformed(e.to_string())),
            },
            Some(Ok(level)) => {
                return Err(Refusal {
                    code: Some(ConnectReturnCode::RefusedProtocolVersion),
                    reason: DisconnectReason::ClientError,
                    message: format!(
                        "protocol level {level} (only MQTT 3.1.1, level 4, is served)"
                    ),
                })
            }
            Some(Err(e)) => return Err(malformed(e.to_string())),
            None => {}
        }
        if buf.len() > MQTT_MAX_REMAINING {
            return Err(malformed("CONNECT too large".into()));
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => {
                return Err(Refusal {
                    code: None,
                    reason: DisconnectReason::ConnectionLost,
                    message: "closed before CONNECT".into(),
                })
            }
            Ok(_) => {}
        }
    }
}

async fn admit(
    shared: &CoreShared,
    admission: Admission,
    connect: &Connect,
) -> Result<(Principal, Option<Instant>), ConnectReturnCode> {
    match admission {
        Admission::Admitted { principal, expires } => Ok((principal, expires)),
        Admission::AtConnect {
            protocol,
            headers,
            query,
        } => {
            let login = connect.login.as_ref();
            let verdict = shared
                .authorize_connect(
                    protocol,
                    login.map(|l| l.username.as_str()),
                    login.map(|l| l.password.as_bytes()),
                    &connect.client_id,
                    headers,
                    query,
                )
                .await;
            match verdict {
                Some(v) => Ok((
                    Principal::Authorizer(v.principal_id),
                    v.disconnect_after.map(|d| Instant::now() + d),
                )),
                None => Err(ConnectReturnCode::NotAuthorized),
            }
        }
    }
}

fn check_connect(
    shared: &CoreShared,
    connect: &Connect,
    principal: &Principal,
) -> Result<(), ConnectReturnCode> {
    let id = &connect.client_id;
    if id.is_empty() {
        // AWS IoT requires a client id; MQTT allows an empty one only with a clean session.
        if shared.config.limits == Limits::Aws || !connect.clean_session {
            return Err(ConnectReturnCode::BadClientId);
        }
    }
    if shared.config.limits == Limits::Aws && (id.len() > AWS_MAX_CLIENT_ID || id.starts_with('$'))
    {
        return Err(ConnectReturnCode::BadClientId);
    }
    // The will is a PUBLISH made later on the client's behalf: the same rules apply (a
    // claim certificate's topics, no retained message on a reserved topic).
    if let Some(will) = &connect.last_will {
        if validate_topic(&will.topic, shared.config.limits).is_err()
            || (shared.config.limits == Limits::Aws && will.message.len() > AWS_MAX_PAYLOAD)
            || reserved_topics::publish_kind(&will.topic) == PublishKind::Forbidden
            || !principal.may_use(&will.topic)
            || (will.retain && will.topic.starts_with('$'))
        {
            return Err(ConnectReturnCode::NotAuthorized);
        }
    }
    Ok(())
}

impl Session {
    fn presence(&self) -> Presence<'_> {
        Presence {
            client_id: &self.client_id,
            session_identifier: &self.session_identifier,
            principal: self.principal.identifier(),
            version_number: self.version_number,
            ip_address: &self.ip,
        }
    }

    fn connected_event(&self) {
        let mut e = CoreEvent::new(EventKind::Connect, &self.client_id);
        e.principal = self.principal.identifier().to_owned();
        self.shared.events.push(e);
        if lifecycle::has_events(&self.client_id) {
            let (topic, payload) = lifecycle::connected(&self.presence(), now_ms());
            self.shared.publish_json(&topic, &payload);
        }
    }

    fn push(&mut self, packet: &Packet) {
        if let Err(e) = codec::write_packet(packet, &mut self.out) {
            log::warn!(
                "local core: cannot encode a packet for {}: {e}",
                self.client_id
            );
        }
    }

    fn alloc_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    fn deliver(&mut self, message: Arc<Message>, qos: QoS, retain: bool) {
        if qos == QoS::AtMostOnce {
            let mut p = Publish::from_bytes(
                message.topic.clone(),
                QoS::AtMostOnce,
                message.payload.clone(),
            );
            p.retain = retain;
            self.push(&Packet::Publish(p));
            return;
        }
        if self.inflight.len() >= AWS_MAX_INFLIGHT {
            // A client that reads but never acknowledges: keep a bounded backlog.
            if self.waiting.len() >= self.shared.config.max_stored_messages {
                self.waiting.pop_front();
                self.shared.broker.count_dropped();
            }
            self.waiting.push_back((message, retain));
            return;
        }
        let pkid = self.alloc_pkid();
        let mut p = Publish::from_bytes(
            message.topic.clone(),
            QoS::AtLeastOnce,
            message.payload.clone(),
        );
        p.pkid = pkid;
        p.retain = retain;
        self.push(&Packet::Publish(p));
        self.inflight.insert(pkid, message);
    }

    async fn run<S>(
        &mut self,
        stream: &mut S,
        rx: &mut mpsc::Receiver<ToConnection>,
        close: &mut watch::Receiver<Option<DisconnectReason>>,
        mut buf: BytesMut,
    ) -> Ended
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let max = max_remaining(self.shared.config.limits);
        let mut shutdown = self.shared.shutdown_signal();
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let mut alive_until = self
            .keep_alive
            .map_or(far, |k| Instant::now() + k.mul_f64(1.5));
        let expires = self.expires.unwrap_or(far);
        // Packets pipelined behind CONNECT.
        if let Some(ended) = self.drain_input(&mut buf, max) {
            return ended;
        }
        loop {
            // Deliveries that did not fit the queue: take them once it is empty and the
            // in-flight window has room, so their order is kept and nothing is dropped.
            let mut more_backlog = false;
            if self.backlogged.load(std::sync::atomic::Ordering::Acquire)
                && rx.is_empty()
                && self.waiting.is_empty()
            {
                let taken = self.shared.broker.take_backlog(
                    &self.client_id,
                    self.handle_id,
                    &self.backlogged,
                    WRITE_BATCH,
                );
                for (m, q) in taken {
                    self.deliver(m, q, false);
                }
                more_backlog = self.backlogged.load(std::sync::atomic::Ordering::Acquire)
                    && self.waiting.is_empty();
            }
            if !self.out.is_empty() {
                let out = self.out.split();
                let write = timeout(WRITE_TIMEOUT, async {
                    stream.write_all(&out).await?;
                    stream.flush().await
                });
                // A client that does not read stalls this write: a takeover, `disconnect()`
                // or stop still ends it at once.
                tokio::select! {
                    written = write => match written {
                        Ok(Ok(())) => {}
                        _ => return Ended::because(DisconnectReason::ConnectionLost),
                    },
                    reason = closed(close) => return Ended::because(reason),
                    () = stopped(&mut shutdown) => {
                        return Ended::because(DisconnectReason::ServerInitiatedDisconnect);
                    }
                }
            }
            if more_backlog {
                // Still room in flight and more waiting: go on without parking.
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                read = stream.read_buf(&mut buf) => {
                    match read {
                        Ok(0) | Err(_) => return Ended::because(DisconnectReason::ConnectionLost),
                        Ok(_) => {
                            if let Some(k) = self.keep_alive {
                                alive_until = Instant::now() + k.mul_f64(1.5);
                            }
                            if let Some(ended) = self.drain_input(&mut buf, max) {
                                return ended;
                            }
                        }
                    }
                }
                msg = rx.recv() => {
                    let Some(first) = msg else {
                        // The broker dropped this connection's handle: it said why first.
                        let reason = close.borrow().unwrap_or(DisconnectReason::ServerError);
                        return Ended::because(reason);
                    };
                    if let Some(ended) = self.outgoing(first) {
                        return ended;
                    }
                    for _ in 0..WRITE_BATCH {
                        match rx.try_recv() {
                            Ok(m) => if let Some(ended) = self.outgoing(m) { return ended; },
                            Err(_) => break,
                        }
                    }
                }
                reason = closed(close) => return Ended::because(reason),
                () = sleep_until(alive_until) => {
                    return Ended::because(DisconnectReason::MqttKeepAliveTimeout);
                }
                () = sleep_until(expires) => {
                    return Ended::because(DisconnectReason::CustomauthTtlExpiration);
                }
                () = stopped(&mut shutdown) => {
                    return Ended::because(DisconnectReason::ServerInitiatedDisconnect);
                }
            }
        }
    }

    fn outgoing(&mut self, m: ToConnection) -> Option<Ended> {
        match m {
            ToConnection::Publish {
                message,
                qos,
                retain,
            } => {
                self.deliver(message, qos, retain);
                None
            }
        }
    }

    fn drain_input(&mut self, buf: &mut BytesMut, max: usize) -> Option<Ended> {
        loop {
            match codec::read_packet(buf, max) {
                Ok(None) => return None,
                Ok(Some(packet)) => {
                    if let Some(ended) = self.incoming(packet) {
                        return Some(ended);
                    }
                }
                Err(FrameError::TooLarge { announced, max }) => {
                    log::info!(
                        "local core: {} sent a packet of {announced} bytes (max {max}): closed",
                        self.client_id
                    );
                    return Some(Ended::because(DisconnectReason::ClientError));
                }
                Err(e) => {
                    log::info!("local core: {}: {e}: closed", self.client_id);
                    return Some(Ended::because(DisconnectReason::ClientError));
                }
            }
        }
    }

    fn incoming(&mut self, packet: Packet) -> Option<Ended> {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(ack) => {
                if self.inflight.remove(&ack.pkid).is_some() {
                    if let Some((next, retain)) = self.waiting.pop_front() {
                        self.deliver(next, QoS::AtLeastOnce, retain);
                    }
                }
                None
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(u);
                None
            }
            Packet::PingReq => {
                self.push(&Packet::PingResp);
                None
            }
            Packet::Disconnect => Some(Ended::because(DisconnectReason::ClientInitiatedDisconnect)),
            // A second CONNECT, QoS 2 flow packets, or server-to-client packets.
            _ => Some(Ended::because(DisconnectReason::ClientError)),
        }
    }

    fn on_publish(&mut self, p: Publish) -> Option<Ended> {
        let limits = self.shared.config.limits;
        if p.qos == QoS::ExactlyOnce {
            return match self.shared.config.qos2 {
                Qos2Policy::Disconnect => Some(Ended::because(DisconnectReason::ClientError)),
                Qos2Policy::Ignore => None,
            };
        }
        if validate_topic(&p.topic, limits).is_err()
            || (limits == Limits::Aws && p.payload.len() > AWS_MAX_PAYLOAD)
        {
            return Some(Ended::because(DisconnectReason::ClientError));
        }
        let kind = reserved_topics::publish_kind(&p.topic);
        let allowed = kind != PublishKind::Forbidden
            && self.principal.may_use(&p.topic)
            && !(p.retain && p.topic.starts_with('$'));
        if !allowed {
            return Some(Ended::because(DisconnectReason::ForbiddenAccess));
        }
        let events = &self.shared.events;
        if kind == PublishKind::BasicIngest || events.wants_publishes() {
            let k = if kind == PublishKind::BasicIngest {
                EventKind::Rule
            } else {
                EventKind::Publish
            };
            let mut e = CoreEvent::new(k, &self.client_id);
            e.topic.clone_from(&p.topic);
            e.qos = p.qos as u8;
            e.payload_len = p.payload.len();
            e.principal = self.principal.identifier().to_owned();
            events.push(e);
        }
        if kind == PublishKind::Routed {
            if p.retain {
                self.shared.broker.retain(&p.topic, &p.payload);
            }
            self.shared.publish(&p.topic, p.payload.clone(), p.qos);
            self.shared
                .run_services(&self.client_id, &p.topic, &p.payload);
        }
        if p.qos == QoS::AtLeastOnce {
            self.push(&Packet::PubAck(PubAck::new(p.pkid)));
        }
        None
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Option<Ended> {
        let limits = self.shared.config.limits;
        if limits == Limits::Aws && s.filters.len() > AWS_MAX_FILTERS_PER_SUBSCRIBE {
            return Some(Ended::because(DisconnectReason::ClientError));
        }
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut granted_filters = Vec::new();
        let mut retained = Vec::new();
        for f in &s.filters {
            let refused = validate_filter(&f.path, limits).is_err()
                || reserved_topics::subscribe_refusal(&f.path).is_some()
                || !self.principal.may_use(&f.path)
                || (limits == Limits::Aws
                    && self.shared.broker.subscription_count(&self.client_id)
                        >= AWS_MAX_SUBSCRIPTIONS
                    && !self
                        .shared
                        .broker
                        .has_subscription(&self.client_id, &f.path));
            if refused {
                codes.push(SubscribeReasonCode::Failure);
                continue;
            }
            let qos = if f.qos == QoS::ExactlyOnce {
                QoS::AtLeastOnce
            } else {
                f.qos
            };
            for m in self
                .shared
                .broker
                .subscribe(&self.client_id, self.handle_id, &f.path, qos)
            {
                retained.push((m, qos));
            }
            codes.push(SubscribeReasonCode::Success(qos));
            granted_filters.push(f.path.clone());
        }
        self.push(&Packet::SubAck(SubAck::new(s.pkid, codes)));
        for (m, qos) in retained {
            self.deliver(m, qos, true);
        }
        if !granted_filters.is_empty() {
            self.subscription_event(true, granted_filters);
        }
        None
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let mut removed = Vec::new();
        for f in &u.topics {
            if self
                .shared
                .broker
                .unsubscribe(&self.client_id, self.handle_id, f)
            {
                removed.push(f.clone());
            }
        }
        self.push(&Packet::UnsubAck(UnsubAck::new(u.pkid)));
        if !removed.is_empty() {
            self.subscription_event(false, removed);
        }
    }

    fn subscription_event(&self, subscribed: bool, topics: Vec<String>) {
        if lifecycle::has_events(&self.client_id) {
            let (topic, payload) =
                lifecycle::subscriptions(&self.presence(), subscribed, &topics, now_ms());
            self.shared.publish_json(&topic, &payload);
        }
        let kind = if subscribed {
            EventKind::Subscribe
        } else {
            EventKind::Unsubscribe
        };
        let mut e = CoreEvent::new(kind, &self.client_id);
        e.topics = topics;
        e.principal = self.principal.identifier().to_owned();
        self.shared.events.push(e);
    }

    fn finish(mut self, ended: Ended, rx: &mut mpsc::Receiver<ToConnection>) {
        // Whatever the broker queued for this connection goes back to the session.
        rx.close();
        let mut unacked: Vec<Arc<Message>> = {
            let mut v: Vec<(u16, Arc<Message>)> = self.inflight.drain().collect();
            v.sort_by_key(|(id, _)| *id);
            v.into_iter().map(|(_, m)| m).collect()
        };
        unacked.extend(self.waiting.drain(..).map(|(m, _)| m));
        while let Ok(m) = rx.try_recv() {
            if let ToConnection::Publish {
                message,
                qos: QoS::AtLeastOnce,
                ..
            } = m
            {
                unacked.push(message);
            }
        }
        self.shared
            .broker
            .detach(&self.client_id, self.handle_id, self.session_id, unacked);
        if ended.will {
            if let Some(will) = self.will.take() {
                if will.retain {
                    self.shared.broker.retain(&will.topic, &will.message);
                }
                self.shared
                    .publish(&will.topic, will.message.clone(), will.qos);
            }
        }
        let mut e = CoreEvent::new(EventKind::Disconnect, &self.client_id);
        e.reason = ended.reason.as_str().to_owned();
        e.principal = self.principal.identifier().to_owned();
        self.shared.events.push(e);
        if lifecycle::has_events(&self.client_id) {
            let (topic, payload) =
                lifecycle::disconnected(&self.presence(), ended.reason, now_ms());
            self.shared.publish_json(&topic, &payload);
        }
    }
}

/// Payload bytes of a JSON value.
#[must_use]
pub fn json_bytes(v: &serde_json::Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}
