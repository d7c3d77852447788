//! Correlated request/response over MQTT, the pattern of the AWS IoT services (Device Shadow,
//! fleet provisioning, jobs): publish a request, wait for the answer on `.../accepted` or
//! `.../rejected`.
//!
//! Guarantees: the response topics are subscribed (SUBACK received) **before** the first
//! request goes out, so the first answer cannot be missed; each request carries a unique
//! `clientToken` and only the answer with that token completes it (duplicates and other
//! clients' answers are ignored); services that echo no token (fleet provisioning) get one
//! request in flight per topic pair, answered in order; every request times out; the number of
//! requests in flight is bounded.
//!
//! Each pair of response topics (`accepted`, `rejected`) is a subscription of its own (own
//! queue, own id), so a refused, failed or timed-out SUBSCRIBE fails only the requests that
//! need that pair. A pair is held while requests use it and released (closed, which
//! UNSUBSCRIBEs at the broker unless the application subscribed the same topics) once it has
//! been idle for [`IDLE_RELEASE`]. At most [`MAX_PAIRS`] pairs are held at once, well below AWS
//! IoT's 50 subscriptions per connection: a new pair first replaces the least recently used
//! idle one; when every pair is busy, the request fails with [`Error::QueueFull`]. Held pairs
//! are restored by the driver after a lost session like every other subscription.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::core::client::Client;
use crate::core::config::QoS;
use crate::core::error::{Error, Result};
use crate::core::message::Message;
use crate::core::protocol::queue::{SubscriptionQueue, Wake};
use crate::core::services::cbor;
use crate::core::shared::Reply;

/// At most this many requests wait for answers per client.
pub const MAX_IN_FLIGHT: usize = 100;

/// At most this many response topic pairs (two filters each) are subscribed at once per
/// client: 40 filters, leaving room below AWS IoT's 50 per connection for the application's own.
pub const MAX_PAIRS: usize = 20;

/// A response topic pair with no request waiting on it is released after this long.
pub const IDLE_RELEASE: Duration = Duration::from_secs(30);

/// Capacity of one pair's answer queue (answers are drained as they come).
const PAIR_QUEUE_CAPACITY: usize = 1_000;

/// Answers taken from one pair's queue per round of the answer-routing task.
const BATCH: usize = 256;

/// The engine's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// Requests waiting for answers ([`MAX_IN_FLIGHT`]).
    pub max_in_flight: usize,
    /// Response topic pairs subscribed at once ([`MAX_PAIRS`], at least 1).
    pub max_pairs: usize,
    /// Idle time after which a pair is released ([`IDLE_RELEASE`]).
    pub idle_release: Duration,
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self {
            max_in_flight: MAX_IN_FLIGHT,
            max_pairs: MAX_PAIRS,
            idle_release: IDLE_RELEASE,
        }
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Topic to publish the request to.
    pub topic: String,
    /// JSON object payload (`None`: `{}`); `clientToken` is added when `use_token`.
    pub payload: Option<Value>,
    /// Where the service answers on success.
    pub accepted: String,
    /// Where the service answers on failure.
    pub rejected: String,
    /// Correlate by a generated `clientToken` (`false`: one request in flight per topic pair).
    pub use_token: bool,
    /// Send the payload as CBOR instead of JSON (answers are decoded either way).
    pub cbor: bool,
    /// How long to wait for the answer.
    pub timeout: Duration,
}

/// The answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// `true` for `/accepted`, `false` for `/rejected`.
    pub accepted: bool,
    /// The parsed JSON document.
    pub document: Value,
    /// The token the request carried (if any).
    pub client_token: Option<String>,
}

/// One response topic pair: one subscription.
struct Pair {
    /// The subscription's id (its queue's id).
    id: u64,
    accepted: String,
    rejected: String,
    queue: Arc<SubscriptionQueue>,
    /// SUBACK received: requests may go out.
    ready: bool,
    /// When a request last started or ended on this pair.
    last_used: Instant,
}

struct Pending {
    /// The id of the pair the answer comes on.
    pair: u64,
    request: Request,
    token: Option<String>,
    reply: Option<Reply<Response>>,
    deadline: Instant,
    sent: bool,
}

#[derive(Default)]
struct State {
    pairs: Vec<Pair>,
    /// Requests by id, in submission order.
    pending: VecDeque<(u64, Pending)>,
    next: u64,
}

impl State {
    fn find_pair(&self, accepted: &str, rejected: &str) -> Option<u64> {
        self.pairs
            .iter()
            .find(|p| p.accepted == accepted && p.rejected == rejected)
            .map(|p| p.id)
    }

    fn pair_mut(&mut self, id: u64) -> Option<&mut Pair> {
        self.pairs.iter_mut().find(|p| p.id == id)
    }

    /// Whether a request waits on the pair.
    fn is_busy(&self, pair: u64) -> bool {
        self.pending.iter().any(|(_, p)| p.pair == pair)
    }

    /// Forgets a pair; returns it (if it was held) and the requests that waited on it.
    fn remove_pair(&mut self, id: u64) -> (Option<Pair>, Vec<Pending>) {
        let pair = self
            .pairs
            .iter()
            .position(|p| p.id == id)
            .map(|pos| self.pairs.swap_remove(pos));
        let (gone, keep): (Vec<_>, Vec<_>) =
            self.pending.drain(..).partition(|(_, p)| p.pair == id);
        self.pending = keep.into_iter().collect();
        (pair, gone.into_iter().map(|(_, p)| p).collect())
    }

    /// Takes the requests waiting on pair `id`, keeping the pair itself.
    fn take_pending_of(&mut self, id: u64) -> Vec<Pending> {
        let (gone, keep): (Vec<_>, Vec<_>) =
            self.pending.drain(..).partition(|(_, p)| p.pair == id);
        self.pending = keep.into_iter().collect();
        gone.into_iter().map(|(_, p)| p).collect()
    }

    /// Forgets the pairs whose subscription the driver ended (queue closed); returns the
    /// requests that waited on them.
    fn take_closed(&mut self) -> Vec<Pending> {
        let closed: Vec<u64> = self
            .pairs
            .iter()
            .filter(|p| p.queue.is_closed())
            .map(|p| p.id)
            .collect();
        closed
            .into_iter()
            .flat_map(|id| self.remove_pair(id).1)
            .collect()
    }

    /// Makes room for one more pair: nothing to do below `max`; else the least recently used
    /// idle pair is taken out and returned (the caller closes its subscription).
    ///
    /// # Errors
    /// [`Error::QueueFull`] when `max` pairs are held and every one is busy.
    fn make_room(&mut self, max: usize) -> Result<Option<Pair>> {
        if self.pairs.len() < max.max(1) {
            return Ok(None);
        }
        let lru = self
            .pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| !self.is_busy(p.id))
            .min_by_key(|(_, p)| p.last_used)
            .map(|(pos, _)| pos);
        match lru {
            Some(pos) => Ok(Some(self.pairs.swap_remove(pos))),
            None => Err(Error::QueueFull(format!(
                "all {} response topic pairs the client may hold are busy (the limit keeps the \
                 connection below AWS IoT's 50 subscriptions); retry once a service request \
                 completes",
                self.pairs.len()
            ))),
        }
    }

    /// Takes out the pairs idle for `idle` or longer (the caller closes their subscriptions).
    fn expire_idle(&mut self, now: Instant, idle: Duration) -> Vec<Pair> {
        let expired: Vec<u64> = self
            .pairs
            .iter()
            .filter(|p| {
                p.last_used.checked_add(idle).is_some_and(|t| t <= now) && !self.is_busy(p.id)
            })
            .map(|p| p.id)
            .collect();
        expired
            .into_iter()
            .filter_map(|id| self.remove_pair(id).0)
            .collect()
    }

    /// When the next idle pair is due for release.
    fn next_release(&self, idle: Duration) -> Option<Instant> {
        self.pairs
            .iter()
            .filter(|p| !self.is_busy(p.id))
            .filter_map(|p| p.last_used.checked_add(idle))
            .min()
    }
}

struct Shared {
    client: Arc<Client>,
    state: Mutex<State>,
    /// Wakes the answer-routing task: an answer arrived in any pair's queue, or its timers
    /// changed.
    ready: Arc<Notify>,
    /// Set when the answer-routing task stopped.
    stopped: Arc<AtomicBool>,
    limits: EngineLimits,
    prefix: String,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Nobody drains the queues any more: end the subscriptions.
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in state.pairs.drain(..) {
            self.client.close_subscription(p.id, None);
        }
    }
}

/// The request/response engine of one client.
#[derive(Clone)]
pub struct Requests {
    shared: Arc<Shared>,
}

struct NotifyWake(Arc<Notify>);
impl Wake for NotifyWake {
    fn wake(&self, _source: u64) {
        self.0.notify_one();
    }
}

/// Marks the engine stopped when the answer-routing task ends (or is dropped with its runtime).
struct StopGuard(Arc<AtomicBool>);
impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

fn token_of(doc: &Value) -> Option<&str> {
    doc.get("clientToken").and_then(Value::as_str)
}

fn fail_all(failed: Vec<Pending>, err: &Error) {
    for mut p in failed {
        if let Some(r) = p.reply.take() {
            r(Err(err.clone()));
        }
    }
}

fn subscription_ended() -> Error {
    Error::Closed(
        "the client disconnected (or the response topics were unsubscribed) before the answer came"
            .into(),
    )
}

impl Requests {
    /// Starts the engine for `client` (its answer-routing task runs on `runtime`).
    #[must_use]
    pub fn new(client: Arc<Client>, runtime: &tokio::runtime::Handle) -> Self {
        Self::with_limits(client, runtime, EngineLimits::default())
    }

    /// [`Requests::new`] with other bounds.
    #[must_use]
    pub fn with_limits(
        client: Arc<Client>,
        runtime: &tokio::runtime::Handle,
        limits: EngineLimits,
    ) -> Self {
        let stopped = Arc::new(AtomicBool::new(false));
        let prefix = format!("awsiot-rs-{:08x}", rand::random::<u32>());
        let shared = Arc::new(Shared {
            client,
            state: Mutex::new(State::default()),
            ready: Arc::new(Notify::new()),
            stopped: Arc::clone(&stopped),
            limits,
            prefix,
        });
        runtime.spawn(route_answers(Arc::downgrade(&shared), StopGuard(stopped)));
        Self { shared }
    }

    /// Submits a request; `reply` gets the answer, [`Error::Timeout`], or the error of the
    /// publish or of the response topics' subscribe.
    ///
    /// # Errors
    /// [`Error::QueueFull`] when [`MAX_IN_FLIGHT`] requests already wait, or when the request
    /// needs a new response topic pair while [`MAX_PAIRS`] pairs are held and all are busy;
    /// [`Error::Config`] when the payload is not a JSON object; [`Error::Topic`] when a
    /// response topic is not a valid filter.
    pub fn request(&self, request: Request, reply: Reply<Response>) -> Result<()> {
        if let Some(p) = &request.payload {
            if !p.is_object() {
                return Err(Error::Config(
                    "a request payload must be a JSON object".into(),
                ));
            }
        }
        let filters = vec![request.accepted.clone(), request.rejected.clone()];
        self.shared.client.validate_filters(&filters)?;
        self.reap_closed();
        let limits = self.shared.limits;
        let (pair, new_pair) = {
            let mut s = self.lock();
            if s.pending.len() >= limits.max_in_flight {
                return Err(Error::QueueFull(format!(
                    "{} requests are already waiting for answers",
                    limits.max_in_flight
                )));
            }
            let now = Instant::now();
            let (pair, new_pair) = match s.find_pair(&request.accepted, &request.rejected) {
                Some(id) => (id, None),
                None => {
                    let evicted = s.make_room(limits.max_pairs)?;
                    let queue = SubscriptionQueue::new(
                        self.shared.client.new_id(),
                        PAIR_QUEUE_CAPACITY,
                        Arc::new(NotifyWake(Arc::clone(&self.shared.ready))),
                        self.shared.client.space_notifier(),
                    );
                    let id = queue.id();
                    s.pairs.push(Pair {
                        id,
                        accepted: request.accepted.clone(),
                        rejected: request.rejected.clone(),
                        queue: Arc::clone(&queue),
                        ready: false,
                        last_used: now,
                    });
                    (id, Some((queue, evicted)))
                }
            };
            if let Some(p) = s.pair_mut(pair) {
                p.last_used = now;
            }
            s.next += 1;
            let id = s.next;
            let token = request
                .use_token
                .then(|| format!("{}-{id}", self.shared.prefix));
            let deadline = now
                .checked_add(request.timeout)
                .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400));
            s.pending.push_back((
                id,
                Pending {
                    pair,
                    request,
                    token,
                    reply: Some(reply),
                    deadline,
                    sent: false,
                },
            ));
            (pair, new_pair)
        };
        self.shared.ready.notify_one(); // re-arm the timers
        if let Some((queue, evicted)) = new_pair {
            // Closed before the new SUBSCRIBE is submitted: the broker never holds both.
            if let Some(old) = evicted {
                self.shared.client.close_subscription(old.id, None);
            }
            self.subscribe(pair, filters, queue);
        }
        self.send_ready();
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    /// Fails the requests of pairs whose subscription the driver ended, so that a request
    /// never goes out on a pair that is no longer subscribed.
    fn reap_closed(&self) {
        let failed = self.lock().take_closed();
        fail_all(failed, &subscription_ended());
    }

    fn subscribe(&self, pair: u64, filters: Vec<String>, queue: Arc<SubscriptionQueue>) {
        let this = self.clone();
        let reply: Reply<Vec<u8>> = Box::new(move |r| this.subscribed(pair, r));
        if let Err(e) = self
            .shared
            .client
            .subscribe(filters, QoS::AtLeastOnce, queue, reply)
        {
            self.subscribed(pair, Err(e));
        }
    }

    /// The SUBACK (or failure) of one pair: only that pair's requests are affected.
    fn subscribed(&self, pair: u64, result: Result<Vec<u8>>) {
        match result {
            Ok(_) => {
                if let Some(p) = self.lock().pair_mut(pair) {
                    p.ready = true;
                }
                self.send_ready();
            }
            Err(e) => {
                let (held, failed) = self.lock().remove_pair(pair);
                if held.is_some() {
                    // The driver drops a refused subscription itself; make sure of it (a
                    // subscription kept for the next connection must not outlive the pair).
                    self.shared.client.close_subscription(pair, None);
                }
                fail_all(failed, &e);
                self.shared.ready.notify_one();
            }
        }
    }

    /// Publishes every request whose response topics are subscribed (one per topic pair for
    /// token-less requests).
    fn send_ready(&self) {
        let to_send: Vec<(u64, Request, Option<String>)> = {
            let mut s = self.lock();
            let ready: Vec<u64> = s
                .pairs
                .iter()
                .filter(|p| p.ready && !p.queue.is_closed())
                .map(|p| p.id)
                .collect();
            let mut busy_pairs: Vec<u64> = s
                .pending
                .iter()
                .filter(|(_, p)| p.sent && p.token.is_none())
                .map(|(_, p)| p.pair)
                .collect();
            let mut out = Vec::new();
            for (id, p) in &mut s.pending {
                if p.sent || !ready.contains(&p.pair) {
                    continue;
                }
                if p.token.is_none() {
                    if busy_pairs.contains(&p.pair) {
                        continue;
                    }
                    busy_pairs.push(p.pair);
                }
                p.sent = true;
                out.push((*id, p.request.clone(), p.token.clone()));
            }
            out
        };
        for (id, request, token) in to_send {
            let mut doc = request
                .payload
                .clone()
                .unwrap_or_else(|| Value::Object(Default::default()));
            if let (Some(t), Some(obj)) = (&token, doc.as_object_mut()) {
                obj.insert("clientToken".into(), Value::String(t.clone()));
            }
            let payload = if request.cbor {
                Bytes::from(cbor::encode(&doc))
            } else {
                Bytes::from(doc.to_string())
            };
            let this = self.clone();
            let published: Reply<()> = Box::new(move |r| {
                if let Err(e) = r {
                    this.finish(id, Err(e));
                }
            });
            if let Err(e) = self.shared.client.publish(
                request.topic.clone(),
                payload,
                QoS::AtLeastOnce,
                false,
                Some(published),
            ) {
                self.finish(id, Err(e));
            }
        }
    }

    fn finish(&self, id: u64, result: Result<Response>) {
        let done = {
            let mut s = self.lock();
            let done = s
                .pending
                .iter()
                .position(|(i, _)| *i == id)
                .and_then(|pos| s.pending.remove(pos));
            if let Some((_, p)) = &done {
                let pair = p.pair;
                if let Some(held) = s.pair_mut(pair) {
                    held.last_used = Instant::now();
                }
            }
            done
        };
        if let Some((_, mut p)) = done {
            if let Some(r) = p.reply.take() {
                r(result);
            }
            self.shared.ready.notify_one(); // re-arm the idle timer
        }
        self.send_ready();
    }

    /// One round of the answer-routing task: routes the answers queued in every pair's queue,
    /// forgets pairs whose subscription ended, times out requests and releases idle pairs.
    /// Returns whether answers are left over for another round.
    fn route_once(&self) -> bool {
        let queues: Vec<(u64, Arc<SubscriptionQueue>)> = self
            .lock()
            .pairs
            .iter()
            .map(|p| (p.id, Arc::clone(&p.queue)))
            .collect();
        let mut more = false;
        for (pair, queue) in queues {
            let batch = queue.pop_batch(BATCH);
            for m in batch.messages {
                let matched = match_answer(&mut self.lock(), pair, &m);
                if let Some((id, response)) = matched {
                    self.finish(id, Ok(response));
                }
            }
            if batch.closed {
                // The driver ended this subscription (disconnect, or the application
                // unsubscribed its topics): the next request subscribes anew.
                let (_, failed) = self.lock().remove_pair(pair);
                fail_all(failed, &subscription_ended());
            } else if batch.paused {
                // The application disconnected: the pair stays (re-subscribed at the next
                // connect), but nobody waits past disconnect() for an answer.
                let failed = self.lock().take_pending_of(pair);
                fail_all(failed, &subscription_ended());
            } else if !queue.is_empty() {
                more = true;
            }
        }
        let now = Instant::now();
        let expired: Vec<(u64, Duration)> = self
            .lock()
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, p)| (*id, p.request.timeout))
            .collect();
        for (id, after) in expired {
            self.finish(
                id,
                Err(Error::Timeout {
                    what: "the service's answer".into(),
                    after,
                }),
            );
        }
        let idle = self
            .lock()
            .expire_idle(Instant::now(), self.shared.limits.idle_release);
        for p in idle {
            self.shared.client.close_subscription(p.id, None);
        }
        more
    }

    /// When the answer-routing task must look again without being woken: the next request
    /// deadline or idle-pair release.
    fn next_wake(&self) -> Option<Instant> {
        let s = self.lock();
        let deadline = s.pending.iter().map(|(_, p)| p.deadline).min();
        let release = s.next_release(self.shared.limits.idle_release);
        match (deadline, release) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the engine stopped for good (its answer-routing task ended, for example with
    /// its runtime); a disconnect does not stop it.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }

    /// Number of requests waiting for answers.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.lock().pending.len()
    }

    /// Number of response topic pairs subscribed (or being subscribed) right now.
    #[must_use]
    pub fn held_pairs(&self) -> usize {
        self.lock().pairs.len()
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Parses an answer: JSON when it looks like JSON, else CBOR.
fn decode_answer(payload: &[u8]) -> Option<Value> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'{') => serde_json::from_slice(payload).ok(),
        Some(_) => cbor::decode(payload).ok(),
        None => None,
    }
}

/// Matches an answer that came on `pair` to its request: by token, or (no token) the oldest
/// sent request on that pair. Unknown, duplicate and foreign answers match nothing.
fn match_answer(s: &mut State, pair: u64, m: &Message) -> Option<(u64, Response)> {
    let doc = decode_answer(&m.payload)?;
    let topic: &str = &m.topic;
    let token = token_of(&doc).map(str::to_string);
    let pos = s.pending.iter().position(|(_, p)| {
        p.sent
            && p.pair == pair
            && (p.request.accepted == topic || p.request.rejected == topic)
            && match (&p.token, &token) {
                (Some(mine), Some(theirs)) => mine == theirs,
                (Some(_), None) => false,
                (None, _) => true,
            }
    })?;
    let (id, p) = s.pending.get(pos)?;
    let accepted = p.request.accepted == topic;
    let response = Response {
        accepted,
        document: doc,
        client_token: p.token.clone(),
    };
    Some((*id, response))
}

/// The engine's task: routes answers, enforces deadlines and releases idle pairs until the
/// engine is dropped.
async fn route_answers(weak: Weak<Shared>, _stop: StopGuard) {
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let ready = Arc::clone(&shared.ready);
        let engine = Requests { shared };
        let more = engine.route_once();
        let wake_at = engine.next_wake();
        drop(engine);
        if more {
            tokio::task::yield_now().await;
            continue;
        }
        let sleep = async {
            match wake_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = ready.notified() => {}
            () = sleep => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &str) -> Message {
        Message {
            topic: Arc::from(topic),
            payload: Bytes::from(payload.to_string()),
            qos: 1,
            retain: false,
            dup: false,
        }
    }

    fn pending(token: Option<&str>, sent: bool) -> Pending {
        Pending {
            pair: 1,
            request: Request {
                topic: "t/get".into(),
                payload: None,
                accepted: "t/get/accepted".into(),
                rejected: "t/get/rejected".into(),
                use_token: token.is_some(),
                cbor: false,
                timeout: Duration::from_secs(5),
            },
            token: token.map(str::to_string),
            reply: None,
            deadline: Instant::now(),
            sent,
        }
    }

    #[tokio::test]
    async fn answers_match_only_their_own_token() {
        let mut s = State::default();
        s.pending.push_back((1, pending(Some("a"), true)));
        s.pending.push_back((2, pending(Some("b"), true)));
        let m = |t, p| msg(t, p);
        assert!(
            match_answer(&mut s, 1, &m("t/get/accepted", r#"{"clientToken":"zzz"}"#)).is_none()
        );
        assert!(
            match_answer(&mut s, 1, &m("t/get/accepted", r#"{"state":{}}"#)).is_none(),
            "no token: not ours"
        );
        assert!(match_answer(&mut s, 1, &m("other/accepted", r#"{"clientToken":"b"}"#)).is_none());
        assert!(
            match_answer(&mut s, 2, &m("t/get/accepted", r#"{"clientToken":"b"}"#)).is_none(),
            "an answer counts only for the pair whose subscription received it"
        );
        let (id, r) = match_answer(
            &mut s,
            1,
            &m("t/get/rejected", r#"{"clientToken":"b","code":404}"#),
        )
        .unwrap();
        assert_eq!(id, 2);
        assert!(!r.accepted);
        assert!(match_answer(&mut s, 1, &m("t/get/accepted", "not json")).is_none());
    }

    #[test]
    fn cbor_answers_are_decoded() {
        let doc = serde_json::json!({"certificateId": "abc"});
        assert_eq!(decode_answer(&cbor::encode(&doc)), Some(doc));
        assert_eq!(
            decode_answer(b"  {\"a\":1}"),
            Some(serde_json::json!({"a": 1}))
        );
        assert_eq!(decode_answer(b""), None);
    }

    #[tokio::test]
    async fn token_less_answers_go_to_the_oldest_sent_request() {
        let mut s = State::default();
        s.pending.push_back((1, pending(None, false)));
        s.pending.push_back((2, pending(None, true)));
        let (id, r) = match_answer(
            &mut s,
            1,
            &msg("t/get/accepted", r#"{"certificateId":"x"}"#),
        )
        .unwrap();
        assert_eq!(id, 2, "an unsent request cannot be answered");
        assert!(r.accepted);
    }

    struct NoWake;
    impl Wake for NoWake {
        fn wake(&self, _: u64) {}
    }

    fn held(id: u64, name: &str, last_used: Instant) -> Pair {
        Pair {
            id,
            accepted: format!("{name}/accepted"),
            rejected: format!("{name}/rejected"),
            queue: SubscriptionQueue::new(id, 1, Arc::new(NoWake), Arc::new(Notify::new())),
            ready: true,
            last_used,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pair_bookkeeping_releases_idle_pairs_least_recently_used_first() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(30);
        let mut s = State::default();
        s.pairs.push(held(1, "a", t0 + Duration::from_secs(2)));
        s.pairs.push(held(2, "b", t0)); // least recently used, but busy
        s.pairs.push(held(3, "c", t0 + Duration::from_secs(1)));
        let mut busy = pending(Some("x"), true);
        busy.pair = 2;
        s.pending.push_back((1, busy));
        assert_eq!(s.find_pair("c/accepted", "c/rejected"), Some(3));
        assert_eq!(s.find_pair("c/accepted", "a/rejected"), None);
        assert!(s.make_room(4).unwrap().is_none(), "below the bound");
        assert_eq!(
            s.next_release(idle),
            Some(t0 + Duration::from_secs(31)),
            "busy pairs are never due"
        );
        assert!(s.expire_idle(t0 + Duration::from_secs(30), idle).is_empty());
        let evicted = s.make_room(3).unwrap().unwrap();
        assert_eq!(evicted.id, 3, "the least recently used idle pair");
        s.pairs.push(held(4, "d", t0 + Duration::from_secs(3)));
        let released = s.expire_idle(t0 + Duration::from_secs(32), idle);
        assert_eq!(released.iter().map(|p| p.id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(s.pairs.len(), 2);
        let mut busy = pending(Some("y"), true);
        busy.pair = 4;
        s.pending.push_back((2, busy));
        let err = s.make_room(2).err().unwrap();
        assert!(
            matches!(&err, Error::QueueFull(m) if m.contains("all 2 response topic pairs") && m.contains("busy")),
            "{err}"
        );
        let (pair, failed) = s.remove_pair(2);
        assert_eq!(pair.map(|p| p.id), Some(2));
        assert_eq!(failed.len(), 1, "its request goes with it");
        assert_eq!(s.pending.len(), 1, "the other pair's request stays");
        s.pairs.iter().find(|p| p.id == 4).unwrap().queue.close();
        assert_eq!(s.take_closed().len(), 1);
        assert!(s.pairs.is_empty() && s.pending.is_empty());
    }

    mod engine {
        //! The whole engine against an in-memory scripted broker, on paused time.

        use super::super::*;
        use crate::core::config::ClientConfig;
        use crate::core::net::stream::Connector;
        use crate::core::net::stream::{ConnectFuture, Stream};
        use crate::core::net::transport::Transport;
        use crate::core::protocol::topic::Limits;
        use crate::core::shared::{ClientEvent, EventSink};
        use bytes::BytesMut;
        use rumqttc::{
            ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode,
            UnsubAck,
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
        use tokio::sync::{mpsc, oneshot};

        struct Pipe(mpsc::UnboundedSender<DuplexStream>);
        impl Connector for Pipe {
            fn connect(&self) -> ConnectFuture {
                let (client, server) = tokio::io::duplex(1 << 20);
                let sent = self.0.send(server).is_ok();
                Box::pin(async move {
                    if !sent {
                        return Err(std::io::Error::other("no broker"));
                    }
                    Ok(Box::new(client) as Stream)
                })
            }
        }

        struct NoEvents;
        impl EventSink for NoEvents {
            fn event(&self, _: ClientEvent) {}
        }

        struct Broker {
            io: DuplexStream,
            buf: BytesMut,
        }

        impl Broker {
            async fn accept(rx: &mut mpsc::UnboundedReceiver<DuplexStream>) -> Self {
                let mut b = Self {
                    io: rx.recv().await.unwrap(),
                    buf: BytesMut::new(),
                };
                assert!(matches!(b.read().await, Some(Packet::Connect(_))));
                b.send(Packet::ConnAck(ConnAck::new(
                    ConnectReturnCode::Success,
                    false,
                )))
                .await;
                b
            }

            async fn read(&mut self) -> Option<Packet> {
                loop {
                    match Packet::read(&mut self.buf, 1 << 20) {
                        Ok(p) => return Some(p),
                        Err(rumqttc::Error::InsufficientBytes(_)) => {}
                        Err(e) => panic!("broker decode: {e}"),
                    }
                    if self.io.read_buf(&mut self.buf).await.ok()? == 0 {
                        return None;
                    }
                }
            }

            async fn send(&mut self, p: Packet) {
                let mut b = BytesMut::new();
                p.write(&mut b, usize::MAX).unwrap();
                self.io.write_all(&b).await.unwrap();
            }

            /// Expects a SUBSCRIBE (after UNSUBSCRIBEs, which it acknowledges: the client
            /// cleans up refused filters); returns its packet id and filters.
            async fn subscribe(&mut self) -> (u16, Vec<String>) {
                loop {
                    match self.read().await {
                        Some(Packet::Subscribe(s)) => {
                            return (s.pkid, s.filters.into_iter().map(|f| f.path).collect())
                        }
                        Some(Packet::Unsubscribe(u)) => {
                            self.send(Packet::UnsubAck(UnsubAck::new(u.pkid))).await;
                        }
                        other => panic!("expected SUBSCRIBE, got {other:?}"),
                    }
                }
            }

            async fn suback(&mut self, pkid: u16, n: usize, granted: bool) {
                let code = if granted {
                    SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)
                } else {
                    SubscribeReasonCode::Failure
                };
                self.send(Packet::SubAck(SubAck::new(pkid, vec![code; n])))
                    .await;
            }

            /// Expects a SUBSCRIBE and grants it; returns the filters.
            async fn grant(&mut self) -> Vec<String> {
                let (pkid, filters) = self.subscribe().await;
                self.suback(pkid, filters.len(), true).await;
                filters
            }

            /// Expects a request PUBLISH and acknowledges it.
            async fn request(&mut self) -> Publish {
                match self.read().await {
                    Some(Packet::Publish(p)) => {
                        self.send(Packet::PubAck(PubAck::new(p.pkid))).await;
                        p
                    }
                    other => panic!("expected PUBLISH, got {other:?}"),
                }
            }

            /// Expects an UNSUBSCRIBE and acknowledges it; returns the filters.
            async fn unsubscribe(&mut self) -> Vec<String> {
                match self.read().await {
                    Some(Packet::Unsubscribe(u)) => {
                        self.send(Packet::UnsubAck(UnsubAck::new(u.pkid))).await;
                        u.topics
                    }
                    other => panic!("expected UNSUBSCRIBE, got {other:?}"),
                }
            }

            /// Plays the service: answers `request` on its `/accepted` topic with its token.
            async fn answer(&mut self, request: &Publish) {
                let doc: Value = serde_json::from_slice(&request.payload).unwrap();
                let body = serde_json::json!({"clientToken": doc["clientToken"], "state": {}});
                let topic = format!("{}/accepted", request.topic);
                self.send(Packet::Publish(Publish::new(
                    topic,
                    rumqttc::QoS::AtMostOnce,
                    body.to_string(),
                )))
                .await;
            }
        }

        struct Setup {
            client: Arc<Client>,
            engine: Requests,
            broker: Broker,
            accepted: mpsc::UnboundedReceiver<DuplexStream>,
        }

        async fn setup(limits: EngineLimits) -> Setup {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let mut cfg =
                ClientConfig::new("broker.test", 1883, Transport::Custom(Arc::new(Pipe(tx))));
            cfg.limits = Limits::Mqtt;
            cfg.keep_alive = Duration::from_secs(3600);
            cfg.reconnect = None;
            cfg.operation_timeout = Duration::from_secs(5);
            let handle = tokio::runtime::Handle::current();
            let client = Arc::new(Client::new(cfg, handle.clone(), Arc::new(NoEvents)).unwrap());
            let (r, connected) = reply();
            client.connect(r);
            let broker = Broker::accept(&mut rx).await;
            connected.await.unwrap().unwrap();
            let engine = Requests::with_limits(Arc::clone(&client), &handle, limits);
            Setup {
                client,
                engine,
                broker,
                accepted: rx,
            }
        }

        type Answer<T> = oneshot::Receiver<Result<T>>;

        fn reply<T: Send + 'static>() -> (Reply<T>, Answer<T>) {
            let (tx, rx) = oneshot::channel();
            (
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
                rx,
            )
        }

        fn shadow_get(thing: &str, timeout: Duration) -> Request {
            let base = format!("$aws/things/{thing}/shadow/get");
            Request {
                topic: base.clone(),
                payload: None,
                accepted: format!("{base}/accepted"),
                rejected: format!("{base}/rejected"),
                use_token: true,
                cbor: false,
                timeout,
            }
        }

        fn ask(engine: &Requests, thing: &str) -> Answer<Response> {
            let (r, answer) = reply();
            engine
                .request(shadow_get(thing, Duration::from_secs(100)), r)
                .unwrap();
            answer
        }

        fn pair_of(thing: &str) -> Vec<String> {
            let base = format!("$aws/things/{thing}/shadow/get");
            vec![format!("{base}/accepted"), format!("{base}/rejected")]
        }

        /// Lets the engine and the driver run what is ready, without moving the clock.
        async fn settle() {
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
        }

        #[tokio::test(start_paused = true)]
        async fn a_refused_pair_fails_only_its_own_requests() {
            let Setup {
                engine, mut broker, ..
            } = setup(EngineLimits::default()).await;
            let mut ok = ask(&engine, "ok");
            assert_eq!(broker.grant().await, pair_of("ok"));
            let request = broker.request().await;
            let refused = [ask(&engine, "forbidden"), ask(&engine, "forbidden")];
            let (pkid, filters) = broker.subscribe().await;
            assert_eq!(filters, pair_of("forbidden"), "one SUBSCRIBE for the pair");
            broker.suback(pkid, 2, false).await;
            for r in refused {
                let err = r.await.unwrap().unwrap_err();
                assert!(matches!(err, Error::SubscribeRefused { .. }), "{err}");
            }
            settle().await;
            assert!(
                ok.try_recv().is_err(),
                "the other pair's request still waits"
            );
            broker.answer(&request).await;
            let answer = ok.await.unwrap().unwrap();
            assert!(answer.accepted);
            assert_eq!(engine.held_pairs(), 1);
            assert!(!engine.is_closed());
            // The refused pair is asked for again, not stuck.
            let again = ask(&engine, "forbidden");
            let (pkid, _) = broker.subscribe().await;
            broker.suback(pkid, 2, false).await;
            assert!(again.await.unwrap().is_err());
        }

        #[tokio::test(start_paused = true)]
        async fn a_timed_out_pair_subscribe_fails_only_its_own_requests() {
            let Setup {
                engine, mut broker, ..
            } = setup(EngineLimits::default()).await;
            let mut ok = ask(&engine, "ok");
            broker.grant().await;
            let request = broker.request().await;
            let silent = ask(&engine, "silent");
            let (_, filters) = broker.subscribe().await; // never acknowledged
            assert_eq!(filters, pair_of("silent"));
            let err = silent.await.unwrap().unwrap_err();
            assert!(matches!(err, Error::Timeout { .. }), "{err}");
            settle().await;
            assert!(
                ok.try_recv().is_err(),
                "the other pair's request still waits"
            );
            broker.answer(&request).await;
            assert!(ok.await.unwrap().unwrap().accepted);
        }

        #[tokio::test(start_paused = true)]
        async fn an_idle_pair_is_unsubscribed_after_the_idle_time_and_a_busy_one_never() {
            let Setup {
                engine, mut broker, ..
            } = setup(EngineLimits::default()).await;
            let answer = ask(&engine, "t");
            broker.grant().await;
            // Held while a request waits, however long.
            let request = broker.request().await;
            assert!(
                tokio::time::timeout(IDLE_RELEASE * 2, broker.read())
                    .await
                    .is_err(),
                "nothing released while busy"
            );
            broker.answer(&request).await;
            answer.await.unwrap().unwrap();
            let idle_from = Instant::now();
            assert!(
                tokio::time::timeout(IDLE_RELEASE - Duration::from_secs(1), broker.read())
                    .await
                    .is_err(),
                "not released before the idle time"
            );
            assert_eq!(broker.unsubscribe().await, pair_of("t"));
            assert_eq!(idle_from.elapsed().as_secs(), IDLE_RELEASE.as_secs());
            settle().await;
            assert_eq!(engine.held_pairs(), 0);
            // The next request subscribes again.
            let answer = ask(&engine, "t");
            assert_eq!(broker.grant().await, pair_of("t"));
            let request = broker.request().await;
            broker.answer(&request).await;
            assert!(answer.await.unwrap().unwrap().accepted);
        }

        #[tokio::test(start_paused = true)]
        async fn the_least_recently_used_idle_pair_makes_room_and_all_busy_refuses() {
            let limits = EngineLimits {
                max_pairs: 2,
                ..EngineLimits::default()
            };
            let Setup {
                engine, mut broker, ..
            } = setup(limits).await;
            // a, then b, then a again: b is the least recently used.
            for (thing, subscribes) in [("a", true), ("b", true), ("a", false)] {
                let answer = ask(&engine, thing);
                if subscribes {
                    assert_eq!(broker.grant().await, pair_of(thing));
                }
                let request = broker.request().await;
                broker.answer(&request).await;
                answer.await.unwrap().unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let c = ask(&engine, "c");
            assert_eq!(
                broker.unsubscribe().await,
                pair_of("b"),
                "released before the new pair is subscribed"
            );
            assert_eq!(broker.grant().await, pair_of("c"));
            let c_request = broker.request().await;
            let a = ask(&engine, "a");
            let a_request = broker.request().await;
            assert_eq!(engine.held_pairs(), 2);
            // Both pairs busy: a third pair is refused at once, naming the limit.
            let (r, _never) = reply::<Response>();
            let err = engine
                .request(shadow_get("d", Duration::from_secs(100)), r)
                .unwrap_err();
            assert!(
                matches!(&err, Error::QueueFull(m) if m.contains("all 2 response topic pairs")),
                "{err}"
            );
            // A held pair still takes more requests.
            let a2 = ask(&engine, "a");
            let a2_request = broker.request().await;
            for request in [&c_request, &a_request, &a2_request] {
                broker.answer(request).await;
            }
            for answer in [c, a, a2] {
                assert!(answer.await.unwrap().unwrap().accepted);
            }
            assert_eq!(engine.held_pairs(), 2);
        }

        #[tokio::test(start_paused = true)]
        async fn a_disconnect_fails_waiting_requests_and_the_engine_serves_the_next_connection() {
            let Setup {
                client,
                engine,
                mut broker,
                mut accepted,
            } = setup(EngineLimits::default()).await;
            let waiting = ask(&engine, "t");
            broker.grant().await;
            // The request is sent; the client disconnects before its PUBACK.
            assert!(matches!(broker.read().await, Some(Packet::Publish(_))));
            let (r, disconnected) = reply();
            client.disconnect(r);
            disconnected.await.unwrap().unwrap();
            let err = waiting.await.unwrap().unwrap_err();
            assert!(matches!(err, Error::Closed(_)), "{err}");
            assert!(!engine.is_closed(), "the engine outlives a disconnect");
            let (r, connected) = reply();
            client.connect(r);
            let mut broker = Broker::accept(&mut accepted).await;
            connected.await.unwrap().unwrap();
            let answer = ask(&engine, "t");
            // Subscribed anew by the engine or restored by the client: either way the request
            // goes out once the pair is subscribed.
            let mut subscribed = Vec::new();
            let request = loop {
                match broker.read().await {
                    Some(Packet::Subscribe(s)) => {
                        subscribed.extend(s.filters.iter().map(|f| f.path.clone()));
                        let n = s.filters.len();
                        broker.suback(s.pkid, n, true).await;
                    }
                    Some(Packet::Publish(p)) => {
                        broker.send(Packet::PubAck(PubAck::new(p.pkid))).await;
                        break p;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            };
            assert_eq!(subscribed, pair_of("t"));
            broker.answer(&request).await;
            assert!(answer.await.unwrap().unwrap().accepted);
        }
    }
}
