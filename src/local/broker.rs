//! The message broker: sessions by client id (clean and persistent), the subscription index,
//! retained messages and routing with AWS IoT's topic rules. Connections (`connection.rs`) call
//! in; the broker hands them messages through bounded channels and never blocks on one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use tokio::sync::{mpsc, watch};

use crate::core::protocol::topic::{delivered, Limits};
use crate::local::config::LocalConfig;
use crate::local::lifecycle::DisconnectReason;

/// A message as the broker routes it: shared by every subscriber it goes to.
#[derive(Debug)]
pub struct Message {
    /// The topic it was published on.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
}

/// What the broker sends a connection.
#[derive(Debug)]
pub enum ToConnection {
    /// Deliver `message` at `qos`; `retain` is set only for a retained message sent to a new
    /// subscription.
    Publish {
        /// The message.
        message: Arc<Message>,
        /// The QoS of this delivery (the lower of the publish's and the subscription's).
        qos: QoS,
        /// The RETAIN flag of this delivery.
        retain: bool,
    },
}

/// A connection's end of the broker: where messages for it go.
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    /// Unique per connection, so a late detach of a taken-over connection changes nothing.
    pub id: u64,
    /// Bounded queue to the connection's writer.
    pub tx: mpsc::Sender<ToConnection>,
    /// Why the connection must close (takeover, `disconnect()`), set once. Apart from the
    /// queue so that a client whose queue is full (one that does not read) is still closed.
    pub close: Arc<watch::Sender<Option<DisconnectReason>>>,
    /// Set while messages wait in the session's backlog because the queue was full; the
    /// connection then takes them with [`Broker::take_backlog`] once its queue is empty.
    pub backlogged: Arc<AtomicBool>,
}

impl ConnectionHandle {
    /// Tells the connection to close for `reason` (the first reason given wins); whether it
    /// was still running.
    pub fn close_for(&self, reason: DisconnectReason) -> bool {
        // Read before signalling: once signalled, the connection may end (and close its queue)
        // on another thread before this returns.
        let running = !self.tx.is_closed();
        let mut first = false;
        self.close.send_if_modified(|r| {
            first = r.is_none();
            if first {
                *r = Some(reason);
            }
            first
        });
        running
    }
}

#[derive(Debug)]
struct Session {
    /// Unique per session (a resumed session keeps its id; a clean start gets a new one).
    id: u64,
    clean: bool,
    subscriptions: HashMap<String, QoS>,
    connection: Option<ConnectionHandle>,
    /// QoS 1 messages for a persistent session while offline.
    stored: VecDeque<Arc<Message>>,
    /// Deliveries for the connected client that did not fit its queue, in order; later ones
    /// queue behind them until the connection has taken them all.
    backlog: VecDeque<(Arc<Message>, QoS)>,
    offline_since: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<String, Session>,
    /// filter → (client id → QoS), filters without wildcards (looked up by topic).
    exact: HashMap<String, HashMap<String, QoS>>,
    /// filter → (client id → QoS), filters with `+` or `#` (matched one by one).
    wildcard: HashMap<String, HashMap<String, QoS>>,
    retained: HashMap<String, Arc<Message>>,
    /// Lifecycle `versionNumber` per client id.
    /// Lifecycle `versionNumber` per client id, and since when the client id has had no
    /// connection (the entry is forgotten after the session expiry, as AWS resets the number
    /// after about an hour offline; without that, every client id ever seen stays).
    versions: HashMap<String, (u64, Option<Instant>)>,
}

/// Counters for tests and benchmarks.
#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Messages routed (one per publish, whatever the number of subscribers).
    pub routed: AtomicU64,
    /// Deliveries dropped because a connection's queue was full or a clean session was offline.
    pub dropped: AtomicU64,
}

/// What attaching a connection to its session gave.
#[derive(Debug)]
pub struct Attached {
    /// Whether a persistent session was resumed (CONNACK's session present).
    pub session_present: bool,
    /// Messages stored for the session, to send right after CONNACK.
    pub stored: Vec<Arc<Message>>,
    /// The lifecycle version number of this connection.
    pub version_number: u64,
    /// The id of the session the connection is attached to (given back to [`Broker::detach`]).
    pub session: u64,
}

/// The broker. One per local core.
#[derive(Debug)]
pub struct Broker {
    config: LocalConfig,
    state: Mutex<State>,
    next_connection: AtomicU64,
    /// Counters.
    pub stats: BrokerStats,
}

fn max_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) >= (b as u8) {
        a
    } else {
        b
    }
}

fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) {
        a
    } else {
        b
    }
}

fn is_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

impl Broker {
    /// A broker with no sessions.
    #[must_use]
    pub fn new(config: LocalConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
            next_connection: AtomicU64::new(1),
            stats: BrokerStats::default(),
        }
    }

    /// The configuration the core was started with.
    #[must_use]
    pub fn config(&self) -> &LocalConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new connection id and its queue.
    #[must_use]
    pub fn new_connection(&self) -> (ConnectionHandle, mpsc::Receiver<ToConnection>) {
        let (tx, rx) = mpsc::channel(self.config.connection_queue.max(1));
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        (
            ConnectionHandle {
                id,
                tx,
                close: Arc::new(watch::channel(None).0),
                backlogged: Arc::new(AtomicBool::new(false)),
            },
            rx,
        )
    }

    /// Attaches a connection to the session of `client_id`: a connection already attached is
    /// told to close (`DUPLICATE_CLIENTID`); a clean start drops any previous session; a
    /// persistent one resumes unless it expired.
    pub fn attach(&self, client_id: &str, clean: bool, handle: ConnectionHandle) -> Attached {
        let expiry = self.config.persistent_session_expiry;
        let mut st = self.lock();
        let version_number = {
            let v = st.versions.entry(client_id.to_owned()).or_insert((0, None));
            v.0 += 1;
            v.1 = None;
            v.0
        };
        if let Some(old) = st.sessions.get_mut(client_id) {
            if let Some(conn) = old.connection.take() {
                conn.close_for(DisconnectReason::DuplicateClientid);
            }
        }
        let resumable = st.sessions.get(client_id).is_some_and(|s| {
            !s.clean && !clean && s.offline_since.is_none_or(|t| t.elapsed() <= expiry)
        });
        if resumable {
            let mut session = 0;
            let stored = st.sessions.get_mut(client_id).map_or_else(Vec::new, |s| {
                session = s.id;
                s.connection = Some(handle);
                s.offline_since = None;
                // What the taken-over connection had not taken yet comes first.
                let backlog = s
                    .backlog
                    .drain(..)
                    .filter(|(_, q)| *q == QoS::AtLeastOnce)
                    .map(|(m, _)| m);
                backlog.chain(s.stored.drain(..)).collect()
            });
            return Attached {
                session_present: true,
                stored,
                version_number,
                session,
            };
        }
        Self::remove_session(&mut st, client_id);
        let session = self.next_connection.fetch_add(1, Ordering::Relaxed);
        st.sessions.insert(
            client_id.to_owned(),
            Session {
                id: session,
                clean,
                subscriptions: HashMap::new(),
                connection: Some(handle),
                stored: VecDeque::new(),
                backlog: VecDeque::new(),
                offline_since: None,
            },
        );
        Attached {
            session_present: false,
            stored: Vec::new(),
            version_number,
            session,
        }
    }

    fn remove_session(st: &mut State, client_id: &str) {
        if let Some(old) = st.sessions.remove(client_id) {
            for filter in old.subscriptions.keys() {
                Self::unindex(st, filter, client_id);
            }
        }
    }

    fn unindex(st: &mut State, filter: &str, client_id: &str) {
        let index = if is_wildcard(filter) {
            &mut st.wildcard
        } else {
            &mut st.exact
        };
        if let Some(clients) = index.get_mut(filter) {
            clients.remove(client_id);
            if clients.is_empty() {
                index.remove(filter);
            }
        }
    }

    /// Detaches connection `id` from its session `session` (if it is still the attached one): a
    /// clean session ends; a persistent one keeps its subscriptions and gets `unacked` back
    /// first. A connection taken over hands `unacked` to its successor only if the session
    /// was resumed (a clean start discards them).
    pub fn detach(&self, client_id: &str, id: u64, session: u64, unacked: Vec<Arc<Message>>) {
        let session_id = session;
        let max_stored = self.config.max_stored_messages;
        let mut st = self.lock();
        let Some(session) = st.sessions.get_mut(client_id) else {
            return;
        };
        let attached = session.connection.as_ref().is_some_and(|c| c.id == id);
        if attached {
            if let Some(v) = st.versions.get_mut(client_id) {
                v.1 = Some(Instant::now());
            }
        }
        let Some(session) = st.sessions.get_mut(client_id) else {
            return;
        };
        if attached && session.clean {
            Self::remove_session(&mut st, client_id);
            return;
        }
        if session.clean || session.id != session_id {
            // Taken over by a clean start: what the old connection held is gone with its
            // session.
            return;
        }
        if attached {
            session.connection = None;
            session.offline_since = Some(Instant::now());
            let backlog: Vec<Arc<Message>> = session
                .backlog
                .drain(..)
                .filter(|(_, q)| *q == QoS::AtLeastOnce)
                .map(|(m, _)| m)
                .collect();
            for m in unacked.into_iter().chain(backlog).rev() {
                session.stored.push_front(m);
            }
        } else {
            // Taken over and resumed: redeliver on the new connection (through its backlog
            // when its queue is full), or keep them if it is gone already.
            for message in unacked {
                self.hand_over(session, &message, QoS::AtLeastOnce, max_stored);
            }
        }
        while session.stored.len() > max_stored {
            session.stored.pop_front();
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops persistent sessions offline for longer than the expiry.
    pub fn expire_sessions(&self) {
        let expiry = self.config.persistent_session_expiry;
        let mut st = self.lock();
        let expired: Vec<String> = st
            .sessions
            .iter()
            .filter(|(_, s)| s.offline_since.is_some_and(|t| t.elapsed() > expiry))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            Self::remove_session(&mut st, &id);
        }
        st.versions
            .retain(|_, (_, offline)| offline.is_none_or(|t| t.elapsed() <= expiry));
    }

    /// How many client ids the broker keeps a lifecycle version number for.
    #[must_use]
    pub fn known_client_ids(&self) -> usize {
        self.lock().versions.len()
    }

    /// How many distinct filters the session of `client_id` holds.
    #[must_use]
    pub fn subscription_count(&self, client_id: &str) -> usize {
        self.lock()
            .sessions
            .get(client_id)
            .map_or(0, |s| s.subscriptions.len())
    }

    /// Whether the session of `client_id` holds `filter`.
    #[must_use]
    pub fn has_subscription(&self, client_id: &str, filter: &str) -> bool {
        self.lock()
            .sessions
            .get(client_id)
            .is_some_and(|s| s.subscriptions.contains_key(filter))
    }

    /// Adds (or re-grants) a subscription for connection `id` (nothing if it is no longer the
    /// session's connection); returns the retained messages to send: under AWS rules only the
    /// one on exactly `filter` (AWS delivers none to wildcard filters), under MQTT rules every
    /// match.
    pub fn subscribe(&self, client_id: &str, id: u64, filter: &str, qos: QoS) -> Vec<Arc<Message>> {
        let mut st = self.lock();
        let Some(session) = st
            .sessions
            .get_mut(client_id)
            .filter(|s| s.connection.as_ref().is_some_and(|c| c.id == id))
        else {
            return Vec::new();
        };
        session.subscriptions.insert(filter.to_owned(), qos);
        let index = if is_wildcard(filter) {
            &mut st.wildcard
        } else {
            &mut st.exact
        };
        index
            .entry(filter.to_owned())
            .or_default()
            .insert(client_id.to_owned(), qos);
        match self.config.limits {
            Limits::Aws if is_wildcard(filter) => Vec::new(),
            Limits::Aws => st.retained.get(filter).cloned().into_iter().collect(),
            Limits::Mqtt => st
                .retained
                .iter()
                .filter(|(t, _)| delivered(filter, t, Limits::Mqtt))
                .map(|(_, m)| Arc::clone(m))
                .collect(),
        }
    }

    /// Removes a subscription of connection `id`'s session; whether it existed.
    pub fn unsubscribe(&self, client_id: &str, id: u64, filter: &str) -> bool {
        let mut st = self.lock();
        let existed = st
            .sessions
            .get_mut(client_id)
            .filter(|s| s.connection.as_ref().is_some_and(|c| c.id == id))
            .is_some_and(|s| s.subscriptions.remove(filter).is_some());
        if existed {
            Self::unindex(&mut st, filter, client_id);
        }
        existed
    }

    /// Stores (or, with an empty payload, clears) the retained message of `topic`.
    pub fn retain(&self, topic: &str, payload: &Bytes) {
        let mut st = self.lock();
        if payload.is_empty() {
            st.retained.remove(topic);
        } else {
            st.retained.insert(
                topic.to_owned(),
                Arc::new(Message {
                    topic: topic.to_owned(),
                    payload: payload.clone(),
                }),
            );
        }
    }

    /// Routes a message to every matching subscription: once per session, at the highest QoS
    /// of its matching filters, capped by `qos`. Returns how many sessions it went to.
    pub fn route(&self, topic: &str, payload: Bytes, qos: QoS) -> usize {
        self.stats.routed.fetch_add(1, Ordering::Relaxed);
        let limits = self.config.limits;
        let max_stored = self.config.max_stored_messages;
        let message = Arc::new(Message {
            topic: topic.to_owned(),
            payload,
        });
        let mut st = self.lock();
        let mut targets: HashMap<String, QoS> = HashMap::new();
        if let Some(clients) = st.exact.get(topic) {
            for (c, q) in clients {
                targets.insert(c.clone(), *q);
            }
        }
        for (filter, clients) in &st.wildcard {
            if delivered(filter, topic, limits) {
                for (c, q) in clients {
                    let e = targets.entry(c.clone()).or_insert(*q);
                    *e = max_qos(*e, *q);
                }
            }
        }
        let n = targets.len();
        for (client, sub_qos) in targets {
            if let Some(session) = st.sessions.get_mut(&client) {
                self.hand_over(session, &message, min_qos(qos, sub_qos), max_stored);
            }
        }
        n
    }

    /// Delivers a message to the session of `client_id` alone, if one of its filters matches
    /// (at the highest matching QoS, capped by `qos`): AWS answers fleet-provisioning requests
    /// on the requesting connection only. Whether it was delivered.
    pub fn route_to(&self, client_id: &str, topic: &str, payload: Bytes, qos: QoS) -> bool {
        self.stats.routed.fetch_add(1, Ordering::Relaxed);
        let limits = self.config.limits;
        let max_stored = self.config.max_stored_messages;
        let mut st = self.lock();
        let Some(session) = st.sessions.get_mut(client_id) else {
            return false;
        };
        let sub_qos = session
            .subscriptions
            .iter()
            .filter(|(f, _)| {
                if is_wildcard(f) {
                    delivered(f, topic, limits)
                } else {
                    f.as_str() == topic
                }
            })
            .map(|(_, q)| *q)
            .reduce(max_qos);
        let Some(sub_qos) = sub_qos else {
            return false;
        };
        let message = Arc::new(Message {
            topic: topic.to_owned(),
            payload,
        });
        self.hand_over(session, &message, min_qos(qos, sub_qos), max_stored);
        true
    }

    /// Gives one delivery to a session: its connection's queue, else its backlog (in order),
    /// else (offline) its stored messages.
    fn hand_over(
        &self,
        session: &mut Session,
        message: &Arc<Message>,
        qos: QoS,
        max_stored: usize,
    ) {
        let Some(conn) = &session.connection else {
            Self::store(session, message, qos, max_stored, &self.stats);
            return;
        };
        if session.backlog.is_empty() {
            match conn.tx.try_send(ToConnection::Publish {
                message: Arc::clone(message),
                qos,
                retain: false,
            }) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {}
                // The connection is ending: its session keeps what it may.
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    Self::store(session, message, qos, max_stored, &self.stats);
                    return;
                }
            }
        }
        // The connection's queue is full: keep the delivery, in order, for it to take.
        session.backlog.push_back((Arc::clone(message), qos));
        conn.backlogged.store(true, Ordering::Release);
        if session.backlog.len() > max_stored {
            session.backlog.pop_front();
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a delivery a connection had to drop.
    pub fn count_dropped(&self) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn store(
        session: &mut Session,
        message: &Arc<Message>,
        qos: QoS,
        max_stored: usize,
        stats: &BrokerStats,
    ) {
        if qos == QoS::AtLeastOnce && !session.clean {
            session.stored.push_back(Arc::clone(message));
            if session.stored.len() > max_stored {
                session.stored.pop_front();
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Up to `max` deliveries from the backlog of connection `id` (oldest first); clears its
    /// `backlogged` flag once the backlog is empty.
    pub fn take_backlog(
        &self,
        client_id: &str,
        id: u64,
        backlogged: &AtomicBool,
        max: usize,
    ) -> Vec<(Arc<Message>, QoS)> {
        let mut st = self.lock();
        let Some(session) = st
            .sessions
            .get_mut(client_id)
            .filter(|s| s.connection.as_ref().is_some_and(|c| c.id == id))
        else {
            backlogged.store(false, Ordering::Release);
            return Vec::new();
        };
        let n = max.min(session.backlog.len());
        let taken: Vec<(Arc<Message>, QoS)> = session.backlog.drain(..n).collect();
        if session.backlog.is_empty() {
            backlogged.store(false, Ordering::Release);
        }
        taken
    }

    /// Tells the connection of `client_id` to close; whether one was connected.
    pub fn kick(&self, client_id: &str, reason: DisconnectReason) -> bool {
        let st = self.lock();
        st.sessions
            .get(client_id)
            .and_then(|s| s.connection.as_ref())
            .is_some_and(|c| c.close_for(reason))
    }

    /// Tells every connection to close.
    pub fn kick_all(&self, reason: DisconnectReason) {
        let st = self.lock();
        for s in st.sessions.values() {
            if let Some(c) = &s.connection {
                c.close_for(reason);
            }
        }
    }

    /// The client ids with a connection attached, sorted.
    #[must_use]
    pub fn connected_clients(&self) -> Vec<String> {
        let st = self.lock();
        let mut ids: Vec<String> = st
            .sessions
            .iter()
            .filter(|(_, s)| s.connection.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn broker() -> Broker {
        Broker::new(LocalConfig::default())
    }

    fn next(rx: &mut mpsc::Receiver<ToConnection>) -> Option<(String, QoS, bool)> {
        match rx.try_recv().ok()? {
            ToConnection::Publish {
                message,
                qos,
                retain,
            } => Some((message.topic.clone(), qos, retain)),
        }
    }

    #[test]
    fn a_message_goes_once_per_session_at_the_highest_matching_qos() {
        let b = broker();
        let (h, mut rx) = b.new_connection();
        let id = h.id;
        b.attach("c", true, h);
        b.subscribe("c", id, "a/+", QoS::AtMostOnce);
        b.subscribe("c", id, "a/b", QoS::AtLeastOnce);
        assert_eq!(
            b.route("a/b", Bytes::from_static(b"x"), QoS::AtLeastOnce),
            1
        );
        assert_eq!(next(&mut rx), Some(("a/b".into(), QoS::AtLeastOnce, false)));
        assert_eq!(next(&mut rx), None);
        // Capped by the publish's QoS.
        b.route("a/b", Bytes::from_static(b"x"), QoS::AtMostOnce);
        assert_eq!(next(&mut rx), Some(("a/b".into(), QoS::AtMostOnce, false)));
    }

    #[test]
    fn route_to_reaches_one_client_and_only_through_a_matching_filter() {
        let b = broker();
        let (h1, mut rx1) = b.new_connection();
        let (h2, mut rx2) = b.new_connection();
        let (id1, id2) = (h1.id, h2.id);
        b.attach("a", true, h1);
        b.attach("b", true, h2);
        b.subscribe(
            "a",
            id1,
            "$aws/certificates/create/+/accepted",
            QoS::AtLeastOnce,
        );
        b.subscribe(
            "b",
            id2,
            "$aws/certificates/create/json/accepted",
            QoS::AtLeastOnce,
        );
        let topic = "$aws/certificates/create/json/accepted";
        assert!(b.route_to("a", topic, Bytes::new(), QoS::AtLeastOnce));
        assert_eq!(
            next(&mut rx1),
            Some((topic.into(), QoS::AtLeastOnce, false))
        );
        assert_eq!(next(&mut rx2), None);
        assert!(!b.route_to("a", "other", Bytes::new(), QoS::AtLeastOnce));
        assert!(!b.route_to("nobody", topic, Bytes::new(), QoS::AtLeastOnce));
    }

    #[test]
    fn aws_rules_wildcards_skip_dollar_topics_and_the_parent_level() {
        let b = broker();
        let (h, mut rx) = b.new_connection();
        let id = h.id;
        b.attach("c", true, h);
        b.subscribe("c", id, "#", QoS::AtMostOnce);
        b.subscribe("c", id, "Sensor/#", QoS::AtMostOnce);
        assert_eq!(
            b.route("$aws/things/t/shadow/update", Bytes::new(), QoS::AtMostOnce),
            0
        );
        b.route("Sensor", Bytes::new(), QoS::AtMostOnce);
        // Delivered through "#" only, once.
        assert_eq!(next(&mut rx).map(|m| m.0), Some("Sensor".into()));
        assert_eq!(next(&mut rx), None);
    }

    #[test]
    fn retained_messages_reach_exact_filters_only_and_an_empty_payload_clears() {
        let b = broker();
        let (h, _rx) = b.new_connection();
        let id = h.id;
        b.attach("c", true, h);
        b.retain("r/1", &Bytes::from_static(b"v"));
        assert!(b.subscribe("c", id, "r/+", QoS::AtLeastOnce).is_empty());
        let got: Vec<Bytes> = b
            .subscribe("c", id, "r/1", QoS::AtLeastOnce)
            .iter()
            .map(|m| m.payload.clone())
            .collect();
        assert_eq!(got, [Bytes::from_static(b"v")]);
        b.retain("r/1", &Bytes::new());
        assert!(b.subscribe("c", id, "r/1", QoS::AtLeastOnce).is_empty());
    }

    #[test]
    fn a_persistent_session_keeps_subscriptions_and_qos1_messages_while_offline() {
        let b = broker();
        let (h, _rx) = b.new_connection();
        let id = h.id;
        let a = b.attach("p", false, h);
        assert!(!a.session_present);
        b.subscribe("p", id, "t", QoS::AtLeastOnce);
        b.detach("p", id, a.session, Vec::new());
        assert!(b.connected_clients().is_empty());
        b.route("t", Bytes::from_static(b"1"), QoS::AtLeastOnce);
        b.route("t", Bytes::from_static(b"0"), QoS::AtMostOnce);
        let (h2, _rx2) = b.new_connection();
        let a = b.attach("p", false, h2);
        assert!(a.session_present);
        assert_eq!(a.stored.len(), 1);
        assert_eq!(a.stored[0].payload, Bytes::from_static(b"1"));
        assert_eq!(a.version_number, 2);
        // A clean start drops it.
        let (h3, _rx3) = b.new_connection();
        assert!(!b.attach("p", true, h3).session_present);
        assert_eq!(b.subscription_count("p"), 0);
    }

    #[test]
    fn an_expired_persistent_session_is_not_resumed() {
        let b = Broker::new(LocalConfig {
            persistent_session_expiry: Duration::from_millis(1),
            ..LocalConfig::default()
        });
        let (h, _rx) = b.new_connection();
        let id = h.id;
        let a = b.attach("p", false, h);
        b.subscribe("p", id, "t", QoS::AtLeastOnce);
        b.detach("p", id, a.session, Vec::new());
        std::thread::sleep(Duration::from_millis(5));
        b.expire_sessions();
        let (h2, _rx2) = b.new_connection();
        assert!(!b.attach("p", false, h2).session_present);
    }

    #[test]
    fn what_a_clean_session_held_is_not_handed_to_the_persistent_one_that_replaced_it() {
        let b = broker();
        let (h1, _rx1) = b.new_connection();
        let id1 = h1.id;
        let a1 = b.attach("x", true, h1);
        b.subscribe("x", id1, "t", QoS::AtLeastOnce);
        let m = Arc::new(Message {
            topic: "t".into(),
            payload: Bytes::from_static(b"old"),
        });
        let (h2, mut rx2) = b.new_connection();
        let a2 = b.attach("x", false, h2);
        assert!(!a2.session_present);
        b.detach("x", id1, a1.session, vec![m]);
        assert_eq!(next(&mut rx2), None, "a clean session's message leaked");
    }

    #[test]
    fn a_takeover_redelivers_the_old_connections_messages_even_when_the_queue_is_full() {
        let b = Broker::new(LocalConfig {
            connection_queue: 1,
            ..LocalConfig::default()
        });
        let (h1, _rx1) = b.new_connection();
        let id1 = h1.id;
        let a1 = b.attach("p", false, h1);
        b.subscribe("p", id1, "t", QoS::AtLeastOnce);
        let (h2, mut rx2) = b.new_connection();
        let (id2, backlogged) = (h2.id, Arc::clone(&h2.backlogged));
        assert!(b.attach("p", false, h2).session_present);
        let unacked: Vec<Arc<Message>> = (0..3)
            .map(|i| {
                Arc::new(Message {
                    topic: "t".into(),
                    payload: Bytes::from(format!("{i}")),
                })
            })
            .collect();
        b.detach("p", id1, a1.session, unacked);
        let mut got = Vec::new();
        while let Some((topic, _, _)) = next(&mut rx2) {
            got.push(topic);
        }
        got.extend(
            b.take_backlog("p", id2, &backlogged, 10)
                .into_iter()
                .map(|(m, _)| m.topic.clone()),
        );
        assert_eq!(got.len(), 3, "lost on a full queue: {got:?}");
    }

    #[test]
    fn a_taken_over_connection_can_no_longer_change_the_session() {
        let b = broker();
        let (h1, _rx1) = b.new_connection();
        let id1 = h1.id;
        b.attach("z", false, h1);
        b.subscribe("z", id1, "keep", QoS::AtLeastOnce);
        let (h2, _rx2) = b.new_connection();
        let id2 = h2.id;
        b.attach("z", false, h2);
        // The old connection's late SUBSCRIBE and UNSUBSCRIBE change nothing.
        b.subscribe("z", id1, "zombie", QoS::AtLeastOnce);
        assert!(!b.unsubscribe("z", id1, "keep"));
        assert!(!b.has_subscription("z", "zombie"));
        assert!(b.has_subscription("z", "keep"));
        assert!(b.unsubscribe("z", id2, "keep"));
    }

    #[test]
    fn under_plain_mqtt_rules_a_wildcard_gets_every_matching_retained_message() {
        let b = Broker::new(LocalConfig {
            limits: Limits::Mqtt,
            ..LocalConfig::default()
        });
        let (h, _rx) = b.new_connection();
        let id = h.id;
        b.attach("c", true, h);
        for t in ["r/1", "r/2", "s/1"] {
            b.retain(t, &Bytes::from_static(b"v"));
        }
        let mut topics: Vec<String> = b
            .subscribe("c", id, "r/+", QoS::AtLeastOnce)
            .iter()
            .map(|m| m.topic.clone())
            .collect();
        topics.sort();
        assert_eq!(topics, ["r/1", "r/2"]);
    }

    #[test]
    fn client_ids_long_gone_are_forgotten_and_connected_ones_kept() {
        let b = Broker::new(LocalConfig {
            persistent_session_expiry: Duration::from_millis(1),
            ..LocalConfig::default()
        });
        for i in 0..100 {
            let (h, _rx) = b.new_connection();
            let id = h.id;
            let a = b.attach(&format!("flap-{i}"), true, h);
            b.detach(&format!("flap-{i}"), id, a.session, Vec::new());
        }
        let (h, _rx) = b.new_connection();
        b.attach("online", true, h);
        std::thread::sleep(Duration::from_millis(5));
        b.expire_sessions();
        assert_eq!(b.known_client_ids(), 1);
        // A client id seen again within the expiry keeps counting.
        let (h2, _rx2) = b.new_connection();
        assert_eq!(b.attach("online", true, h2).version_number, 2);
    }

    #[test]
    fn a_second_connection_with_the_same_id_closes_the_first() {
        let b = broker();
        let (h1, mut rx1) = b.new_connection();
        let id1 = h1.id;
        let close1 = h1.close.subscribe();
        let a1 = b.attach("dup", true, h1);
        let (h2, _rx2) = b.new_connection();
        b.attach("dup", true, h2);
        assert_eq!(*close1.borrow(), Some(DisconnectReason::DuplicateClientid));
        assert_eq!(next(&mut rx1), None);
        // The late detach of the first leaves the second attached.
        b.detach("dup", id1, a1.session, Vec::new());
        assert_eq!(b.connected_clients(), ["dup"]);
    }
}
