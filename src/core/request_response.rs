//! Correlated request/response over MQTT, the pattern of the AWS IoT services (Device Shadow,
//! fleet provisioning, jobs): publish a request, wait for the answer on `.../accepted` or
//! `.../rejected`.
//!
//! Guarantees: the response topics are subscribed (SUBACK received) **before** the first
//! request goes out, so the first answer cannot be missed; each request carries a unique
//! `clientToken` and only the answer with that token completes it (duplicates and other
//! clients' answers are ignored); services that echo no token (fleet provisioning) get one
//! request in flight per topic pair, answered in order; every request times out; the number of
//! requests in flight is bounded. Response subscriptions stay for the client's lifetime and are
//! restored by the driver after a lost session like every other subscription.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::core::cbor;
use crate::core::client::{Client, Reply};
use crate::core::config::QoS;
use crate::core::error::{Error, Result};
use crate::core::message::Message;
use crate::core::queue::{SubscriptionQueue, Wake};

/// At most this many requests wait for answers per client.
pub const MAX_IN_FLIGHT: usize = 100;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    Subscribing,
    Ready,
}

struct Pending {
    request: Request,
    token: Option<String>,
    reply: Option<Reply<Response>>,
    deadline: Instant,
    sent: bool,
}

#[derive(Default)]
struct State {
    subs: HashMap<String, SubState>,
    /// Requests by id, in submission order.
    pending: VecDeque<(u64, Pending)>,
    next: u64,
}

struct Shared {
    client: Arc<Client>,
    state: Mutex<State>,
    queue: Arc<SubscriptionQueue>,
    ready: Arc<Notify>,
    prefix: String,
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

fn token_of(doc: &Value) -> Option<&str> {
    doc.get("clientToken").and_then(Value::as_str)
}

impl Requests {
    /// Starts the engine for `client` (its answer-routing task runs on `runtime`).
    #[must_use]
    pub fn new(client: Arc<Client>, runtime: &tokio::runtime::Handle) -> Self {
        let ready = Arc::new(Notify::new());
        let queue = SubscriptionQueue::new(
            client.new_id(),
            10_000,
            Arc::new(NotifyWake(Arc::clone(&ready))),
            client.space_notifier(),
        );
        let prefix = format!("awsiot-rs-{:08x}", rand::random::<u32>());
        let shared = Arc::new(Shared {
            client,
            state: Mutex::new(State::default()),
            queue,
            ready,
            prefix,
        });
        runtime.spawn(route_answers(Arc::downgrade(&shared)));
        Self { shared }
    }

    /// Submits a request; `reply` gets the answer, [`Error::Timeout`] or the publish error.
    ///
    /// # Errors
    /// [`Error::QueueFull`] when [`MAX_IN_FLIGHT`] requests already wait; [`Error::Config`] when
    /// the payload is not a JSON object.
    pub fn request(&self, request: Request, reply: Reply<Response>) -> Result<()> {
        if let Some(p) = &request.payload {
            if !p.is_object() {
                return Err(Error::Config(
                    "a request payload must be a JSON object".into(),
                ));
            }
        }
        let to_subscribe = {
            let mut s = self.lock();
            if s.pending.len() >= MAX_IN_FLIGHT {
                return Err(Error::QueueFull(format!(
                    "{MAX_IN_FLIGHT} requests are already waiting for answers"
                )));
            }
            s.next += 1;
            let id = s.next;
            let token = request
                .use_token
                .then(|| format!("{}-{id}", self.shared.prefix));
            let mut to_subscribe = Vec::new();
            for t in [&request.accepted, &request.rejected] {
                if !s.subs.contains_key(t) {
                    s.subs.insert(t.clone(), SubState::Subscribing);
                    to_subscribe.push(t.clone());
                }
            }
            let deadline = Instant::now() + request.timeout;
            s.pending.push_back((
                id,
                Pending {
                    request,
                    token,
                    reply: Some(reply),
                    deadline,
                    sent: false,
                },
            ));
            to_subscribe
        };
        self.shared.ready.notify_one(); // re-arm the deadline timer
        if !to_subscribe.is_empty() {
            self.subscribe(to_subscribe);
        }
        self.send_ready();
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    fn subscribe(&self, filters: Vec<String>) {
        let this = self.clone();
        let done_filters = filters.clone();
        let reply: Reply<Vec<u8>> = Box::new(move |r| this.subscribed(&done_filters, r));
        if let Err(e) = self.shared.client.subscribe(
            filters.clone(),
            QoS::AtLeastOnce,
            Arc::clone(&self.shared.queue),
            reply,
        ) {
            self.subscribed(&filters, Err(e));
        }
    }

    fn subscribed(&self, filters: &[String], result: Result<Vec<u8>>) {
        let failed = {
            let mut s = self.lock();
            match &result {
                Ok(_) => {
                    for f in filters {
                        s.subs.insert(f.clone(), SubState::Ready);
                    }
                    Vec::new()
                }
                Err(_) => {
                    for f in filters {
                        s.subs.remove(f);
                    }
                    // Fail every request that needed one of these topics.
                    let (bad, keep): (Vec<_>, Vec<_>) = s.pending.drain(..).partition(|(_, p)| {
                        filters.contains(&p.request.accepted)
                            || filters.contains(&p.request.rejected)
                    });
                    s.pending = keep.into_iter().collect();
                    bad
                }
            }
        };
        if let Err(e) = result {
            for (_, mut p) in failed {
                if let Some(r) = p.reply.take() {
                    r(Err(e.clone()));
                }
            }
        }
        self.send_ready();
    }

    /// Publishes every request whose response topics are subscribed (one per topic pair for
    /// token-less requests).
    fn send_ready(&self) {
        let to_send: Vec<(u64, Request, Option<String>)> = {
            let mut s = self.lock();
            let ready = |t: &String, subs: &HashMap<String, SubState>| {
                subs.get(t) == Some(&SubState::Ready)
            };
            let mut busy_pairs: Vec<(String, String)> = s
                .pending
                .iter()
                .filter(|(_, p)| p.sent && p.token.is_none())
                .map(|(_, p)| (p.request.accepted.clone(), p.request.rejected.clone()))
                .collect();
            let subs = s.subs.clone();
            let mut out = Vec::new();
            for (id, p) in &mut s.pending {
                if p.sent
                    || !ready(&p.request.accepted, &subs)
                    || !ready(&p.request.rejected, &subs)
                {
                    continue;
                }
                if p.token.is_none() {
                    let pair = (p.request.accepted.clone(), p.request.rejected.clone());
                    if busy_pairs.contains(&pair) {
                        continue;
                    }
                    busy_pairs.push(pair);
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
            s.pending
                .iter()
                .position(|(i, _)| *i == id)
                .and_then(|pos| s.pending.remove(pos))
        };
        if let Some((_, mut p)) = done {
            if let Some(r) = p.reply.take() {
                r(result);
            }
        }
        self.send_ready();
    }

    /// Whether the engine stopped (its client disconnected); make a new one after reconnecting.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.shared.queue.is_closed()
    }

    /// Number of requests waiting for answers.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.lock().pending.len()
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

/// Matches an answer to its request: by token, or (no token) the oldest sent request on that
/// topic pair. Unknown, duplicate and foreign answers match nothing.
fn match_answer(s: &mut State, m: &Message) -> Option<(u64, Response)> {
    let doc = decode_answer(&m.payload)?;
    let topic: &str = &m.topic;
    let token = token_of(&doc).map(str::to_string);
    let pos = s.pending.iter().position(|(_, p)| {
        p.sent
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

/// The engine's task: routes answers and enforces deadlines until the engine is dropped.
async fn route_answers(weak: std::sync::Weak<Shared>) {
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let next_deadline = lock(&shared).pending.iter().map(|(_, p)| p.deadline).min();
        let ready = Arc::clone(&shared.ready);
        let engine = Requests { shared };
        // Drain what is there, then wait for more or for the next deadline.
        let batch = engine.shared.queue.pop_batch(256);
        let closed = batch.closed;
        for m in batch.messages {
            let matched = match_answer(&mut engine.lock(), &m);
            if let Some((id, response)) = matched {
                engine.finish(id, Ok(response));
            }
        }
        let now = Instant::now();
        let expired: Vec<(u64, Duration)> = engine
            .lock()
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, p)| (*id, p.request.timeout))
            .collect();
        for (id, after) in expired {
            engine.finish(
                id,
                Err(Error::Timeout {
                    what: "the service's answer".into(),
                    after,
                }),
            );
        }
        if closed {
            // The client disconnected: its subscriptions are gone.
            let pending: Vec<_> = engine.lock().pending.drain(..).collect();
            engine.lock().subs.clear();
            for (_, mut p) in pending {
                if let Some(r) = p.reply.take() {
                    r(Err(Error::Closed("the client disconnected".into())));
                }
            }
            return;
        }
        let more = !engine.shared.queue.is_empty();
        drop(engine);
        if more {
            continue;
        }
        let sleep = async {
            match next_deadline {
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
        assert!(match_answer(&mut s, &msg("t/get/accepted", r#"{"clientToken":"zzz"}"#)).is_none());
        assert!(
            match_answer(&mut s, &msg("t/get/accepted", r#"{"state":{}}"#)).is_none(),
            "no token: not ours"
        );
        assert!(match_answer(&mut s, &msg("other/accepted", r#"{"clientToken":"b"}"#)).is_none());
        let (id, r) = match_answer(
            &mut s,
            &msg("t/get/rejected", r#"{"clientToken":"b","code":404}"#),
        )
        .unwrap();
        assert_eq!(id, 2);
        assert!(!r.accepted);
        assert!(match_answer(&mut s, &msg("t/get/accepted", "not json")).is_none());
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
        let (id, r) =
            match_answer(&mut s, &msg("t/get/accepted", r#"{"certificateId":"x"}"#)).unwrap();
        assert_eq!(id, 2, "an unsent request cannot be answered");
        assert!(r.accepted);
    }
}
