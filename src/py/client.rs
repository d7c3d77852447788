//! `_native.ClientRef`: converts Python arguments into the core configuration and forwards
//! calls to `core::Client`. No protocol logic here.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::core::auth::credentials::{self, CredentialsProvider};
use crate::core::auth::custom_auth::{self, AuthorizerFields};
use crate::core::auth::sigv4::AwsCredentials;
use crate::core::config::{ClientConfig, OfflineQueueConfig, QoS, ReconnectConfig, Will};
use crate::core::net::tls::{self, ClientIdentity, TlsOptions};
use crate::core::net::transport::Transport;
use crate::core::net::websocket::{SigV4, WebSocket};
use crate::core::secret::Secret;
use crate::core::services::request_response::{Request, Requests, Response};
use crate::core::{Client, ClientEvent, Error, EventSink, Limits, SubscriptionQueue};
use crate::py::credentials::{PyProvider, Target};

/// Custom-authorizer fields for the CONNECT user name: (name, signature, (token key, token)).
type AuthorizerArgs = (Option<String>, Option<String>, Option<(String, String)>);

/// Completes one reply when every part of a batch has completed. Each part accounts for
/// itself: a part whose submission failed (its reply dropped uncalled) still counts down, so a
/// batch fails only for a real error, and the error says which items failed.
struct Countdown {
    remaining: std::sync::atomic::AtomicUsize,
    /// The first error and the batch indexes of every failed item.
    failed: Mutex<(Option<Error>, Vec<usize>)>,
    reply: Mutex<Option<crate::core::Reply<()>>>,
    /// Index of this chunk's first item in the caller's whole batch.
    offset: usize,
}

/// One item's share of a [`Countdown`]: released exactly once, when its reply is called or
/// dropped uncalled.
struct Part {
    countdown: Arc<Countdown>,
    index: usize,
}

impl Part {
    fn done(self, result: crate::core::Result<()>) {
        if let Err(e) = result {
            self.countdown.fail(self.index, e);
        }
        // Drop releases.
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        self.countdown.release();
    }
}

impl Countdown {
    fn new(reply: crate::core::Reply<()>, offset: usize) -> Arc<Self> {
        Arc::new(Self {
            // One extra count for the submission itself, released by `done_submitting`.
            remaining: std::sync::atomic::AtomicUsize::new(1),
            failed: Mutex::new((None, Vec::new())),
            reply: Mutex::new(Some(reply)),
            offset,
        })
    }

    fn part(self: &Arc<Self>, index: usize) -> crate::core::Reply<()> {
        self.remaining
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let part = Part {
            countdown: Arc::clone(self),
            index,
        };
        Box::new(move |r: crate::core::Result<()>| part.done(r))
    }

    fn fail(&self, index: usize, e: Error) {
        let mut failed = self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failed.0.is_none() {
            failed.0 = Some(e);
        }
        failed.1.push(self.offset + index);
    }

    fn done_submitting(&self) {
        self.release();
    }

    fn release(&self) {
        if self
            .remaining
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            let reply = self
                .reply
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            let (error, mut indexes) = std::mem::take(
                &mut *self
                    .failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            indexes.sort_unstable();
            if let Some(r) = reply {
                r(error.map_or(Ok(()), |e| Err(batch_error(&e, &indexes))));
            }
        }
    }
}

/// The first error of a batch, its message extended with which items failed.
fn batch_error(first: &Error, indexes: &[usize]) -> Error {
    let shown: Vec<String> = indexes.iter().take(10).map(ToString::to_string).collect();
    let more = if indexes.len() > 10 { ", ..." } else { "" };
    let note = format!(
        " ({} message(s) of this publish_many failed, at index {}{more})",
        indexes.len(),
        shown.join(", ")
    );
    match first {
        Error::Timeout { what, after } => Error::Timeout {
            what: format!("{what}{note}"),
            after: *after,
        },
        Error::Disconnected(m) => Error::Disconnected(format!("{m}{note}")),
        Error::Closed(m) => Error::Closed(format!("{m}{note}")),
        Error::QueueFull(m) | Error::SubmissionFull(m) => Error::QueueFull(format!("{m}{note}")),
        Error::Protocol(m) => Error::Protocol(format!("{m}{note}")),
        other => other.clone(),
    }
}

/// Cached temporary credentials are refreshed this long before they expire.
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(300);
use crate::py::errors::IntoPyResult;
use crate::py::notifier::{self, Notifier, Output};
use crate::py::runtime::{self, check_pid};
use crate::py::subscription::SubscriptionRef;

/// Every live client, so the `atexit` hook can disconnect them.
pub static CLIENTS: Mutex<Vec<Weak<Client>>> = Mutex::new(Vec::new());

fn seconds(what: &str, v: f64) -> crate::core::Result<Duration> {
    crate::core::config::duration_from_secs(what, v)
}

/// Forwards lifecycle events to the notifier of the loop the client was last connected from.
#[derive(Default)]
struct SwitchSink {
    target: Target,
}

impl EventSink for SwitchSink {
    fn event(&self, event: ClientEvent) {
        let target = self
            .target
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some((inner, client)) = target {
            inner.push_event(client, event);
        }
    }
}

/// Native client handle (wrapped by `awsiot_rs.Client`).
#[pyclass(frozen, module = "awsiot_rs._native")]
pub struct ClientRef {
    client: Arc<Client>,
    requests: Mutex<Option<Requests>>,
    sink: Arc<SwitchSink>,
    notifier: Mutex<Option<Arc<notifier::Inner>>>,
    pid: u64,
}

#[pymethods]
impl ClientRef {
    #[new]
    #[pyo3(signature = (
        endpoint, port, *, client_id, tls, ca_pem, cert_pem, key_pem, alpn,
        username, password, keep_alive, clean_session, will, limits, operation_timeout,
        connect_timeout, reconnect, offline_limit, offline_qos0, log_file, inflight,
        websocket=false, ws_headers=Vec::new(), ws_query=Vec::new(), sigv4_region=None,
        sigv4_keys=None, sigv4_callable=false, authorizer=None, max_subscriptions=None,
        policy_check=Some((3, 2.0))
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        endpoint: String,
        port: u16,
        client_id: Option<String>,
        tls: bool,
        ca_pem: Option<Vec<u8>>,
        cert_pem: Option<Vec<u8>>,
        key_pem: Option<Vec<u8>>,
        alpn: Vec<String>,
        username: Option<String>,
        password: Option<String>,
        keep_alive: f64,
        clean_session: bool,
        will: Option<(String, Vec<u8>, i64, bool)>,
        limits: &str,
        operation_timeout: f64,
        connect_timeout: f64,
        reconnect: Option<(f64, f64, bool, u32, f64)>,
        offline_limit: usize,
        offline_qos0: bool,
        log_file: Option<PathBuf>,
        inflight: u16,
        websocket: bool,
        ws_headers: Vec<(String, String)>,
        ws_query: Vec<(String, String)>,
        sigv4_region: Option<String>,
        sigv4_keys: Option<(String, String, Option<String>)>,
        sigv4_callable: bool,
        authorizer: Option<AuthorizerArgs>,
        max_subscriptions: Option<usize>,
        policy_check: Option<(u32, f64)>,
    ) -> PyResult<Self> {
        let sink = Arc::new(SwitchSink::default());
        let build = || -> crate::core::Result<ClientConfig> {
            let limits = Limits::parse(limits)?;
            let secret_in_upgrade = !ws_headers.is_empty() || !ws_query.is_empty();
            if !tls && (sigv4_region.is_some() || authorizer.is_some() || secret_in_upgrade) {
                return Err(Error::Config(
                    "tls=False cannot be used with SigV4Auth or CustomAuth: their signature, session token or authorizer token would travel in cleartext (keep tls=True; plain TCP is only for local brokers without auth objects)".into(),
                ));
            }
            let tls_config = if tls {
                let client_auth = match (cert_pem, key_pem) {
                    (Some(cert_pem), Some(key_pem)) => Some(ClientIdentity {
                        cert_pem,
                        key_pem: Secret::new(key_pem),
                    }),
                    (None, None) => None,
                    _ => {
                        return Err(Error::Config(
                            "a client certificate needs both the certificate and the key".into(),
                        ))
                    }
                };
                Some(tls::client_config(&TlsOptions {
                    ca_pem,
                    client_auth,
                    alpn: alpn.into_iter().map(String::into_bytes).collect(),
                })?)
            } else {
                None
            };
            let transport = if websocket {
                for (name, value) in &ws_headers {
                    custom_auth::validate_header(name, value)?;
                }
                let sigv4 = match sigv4_region {
                    None => None,
                    Some(region) => {
                        let provider: Arc<dyn CredentialsProvider> =
                            match (sigv4_keys, sigv4_callable) {
                                (Some((akid, secret, token)), false) => {
                                    Arc::new(credentials::Static(AwsCredentials {
                                        access_key_id: akid,
                                        secret_access_key: Secret::new(secret),
                                        session_token: token.map(Secret::new),
                                        expiry: None,
                                    }))
                                }
                                (None, true) => Arc::new(PyProvider {
                                    target: Arc::clone(&sink.target),
                                }),
                                _ => {
                                    return Err(Error::Config(
                                        "SigV4 needs either keys or a credentials callable".into(),
                                    ))
                                }
                            };
                        Some(SigV4 {
                            region,
                            credentials: Arc::new(credentials::Cached::new(
                                provider,
                                CREDENTIALS_MARGIN,
                            )),
                        })
                    }
                };
                let secret_pairs = |v: Vec<(String, String)>| -> Vec<(String, Secret<String>)> {
                    v.into_iter().map(|(k, v)| (k, Secret::new(v))).collect()
                };
                Transport::WebSocket {
                    tls: tls_config,
                    ws: WebSocket {
                        headers: secret_pairs(ws_headers),
                        query: secret_pairs(ws_query),
                        sigv4,
                    },
                }
            } else {
                match tls_config {
                    Some(c) => Transport::Tls(c),
                    None => Transport::Tcp,
                }
            };
            let mut cfg = ClientConfig::new(endpoint, port, transport);
            if let Some(id) = client_id {
                cfg.client_id = id;
                cfg.client_id_given = true;
            }
            cfg.username = match authorizer {
                Some((authorizer_name, signature, token)) => custom_auth::username_with_fields(
                    username.as_deref(),
                    &AuthorizerFields {
                        authorizer_name,
                        signature,
                        token,
                    },
                ),
                None => username,
            };
            cfg.password = password.map(|p| Secret::new(p.into_bytes()));
            cfg.keep_alive = seconds("keep_alive", keep_alive)?;
            cfg.clean_session = clean_session;
            cfg.limits = limits;
            cfg.will = match will {
                Some((topic, payload, qos, retain)) => Some(Will {
                    topic,
                    payload: Bytes::from(payload),
                    qos: QoS::from_u8(qos)?,
                    retain,
                }),
                None => None,
            };
            cfg.operation_timeout = seconds("operation_timeout", operation_timeout)?;
            cfg.connect_timeout = seconds("connect_timeout", connect_timeout)?;
            cfg.reconnect = match reconnect {
                Some((min_delay, max_delay, jitter, max_attempts, reset_after)) => {
                    Some(ReconnectConfig {
                        min_delay: seconds("Reconnect.min_delay", min_delay)?,
                        max_delay: seconds("Reconnect.max_delay", max_delay)?,
                        jitter,
                        max_attempts,
                        reset_after: seconds("Reconnect.reset_after", reset_after)?,
                    })
                }
                None => None,
            };
            cfg.offline_queue = OfflineQueueConfig {
                limit: offline_limit,
                qos0: offline_qos0,
            };
            cfg.log_file = log_file;
            cfg.inflight = inflight;
            cfg.max_subscriptions = max_subscriptions;
            cfg.policy_check = match policy_check {
                Some((count, window)) => Some(crate::core::config::PolicyCheck {
                    count,
                    window: seconds("PolicyViolationCheck.window", window)?,
                }),
                None => None,
            };
            Ok(cfg)
        };
        let config = build().py(py)?;
        let handle = runtime::handle()?;
        let client =
            Arc::new(Client::new(config, handle, Arc::clone(&sink) as Arc<dyn EventSink>).py(py)?);
        {
            let mut all = CLIENTS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            all.retain(|w| w.strong_count() > 0);
            all.push(Arc::downgrade(&client));
        }
        Ok(Self {
            client,
            requests: Mutex::new(None),
            sink,
            notifier: Mutex::new(None),
            pid: runtime::generation(),
        })
    }

    /// Routes results and events through `notifier` (the current loop's); lifecycle events are
    /// tagged with `token`. Called by `connect()`.
    fn bind(&self, notifier: &Bound<'_, Notifier>, token: u64) -> PyResult<()> {
        check_pid(self.pid)?;
        let n = notifier.get();
        *self
            .sink
            .target
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((Arc::clone(&n.inner), token));
        *self
            .notifier
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(&n.inner));
        Ok(())
    }

    /// The MQTT client id.
    #[getter]
    fn client_id(&self) -> String {
        self.client.config().client_id.clone()
    }

    /// Whether a connection is up.
    #[getter]
    fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// The session-present flag of the last CONNACK.
    #[getter]
    fn session_present(&self) -> bool {
        self.client.session_present()
    }

    /// `closed`, `connecting`, `connected`, `reconnecting` or `closing`.
    #[getter]
    fn state(&self) -> &'static str {
        match self.client.state() {
            crate::core::State::Closed => "closed",
            crate::core::State::Connecting => "connecting",
            crate::core::State::Connected => "connected",
            crate::core::State::Reconnecting => "reconnecting",
            crate::core::State::Closing => "closing",
        }
    }

    /// Starts connecting; future `token` completes with `session_present`.
    fn connect(&self, py: Python<'_>, token: u64) -> PyResult<()> {
        check_pid(self.pid)?;
        let n = self.notifier(py)?;
        self.client
            .connect(notifier::reply(&n, token, Output::Connect));
        Ok(())
    }

    /// Disconnects; future `token` completes when done.
    fn disconnect(&self, py: Python<'_>, token: u64) -> PyResult<()> {
        check_pid(self.pid)?;
        let n = self.notifier(py)?;
        self.client
            .disconnect(notifier::reply(&n, token, |()| Output::Unit));
        Ok(())
    }

    /// Submits a PUBLISH. With `token`, that future completes at PUBACK (QoS 1) or when written
    /// (QoS 0); without, it is fire-and-forget.
    #[pyo3(signature = (topic, payload, qos, retain, token=None))]
    fn publish(
        &self,
        py: Python<'_>,
        topic: String,
        payload: &[u8],
        qos: i64,
        retain: bool,
        token: Option<u64>,
    ) -> PyResult<()> {
        check_pid(self.pid)?;
        let qos = QoS::from_u8(qos).py(py)?;
        // Before the first connect() there is no notifier: the core then refuses the publish
        // (after validating it) and the reply is never needed.
        let bound = self
            .notifier
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let reply = match (token, bound) {
            (Some(t), Some(n)) => Some(notifier::reply(&n, t, |()| Output::Unit)),
            _ => None,
        };
        self.client
            .publish(topic, Bytes::copy_from_slice(payload), qos, retain, reply)
            .py(py)
    }

    /// Submits many PUBLISHes in one call. `items` is a list of `(topic, payload)` tuples; all
    /// are validated before any is queued. Returns how many were queued: fewer than all only
    /// when the submission queue filled up (wait with `wait_writable`, then submit the rest).
    /// With `token`, that future completes when every queued publish completed (QoS 1: at its
    /// PUBACK), with the first error if one failed.
    #[pyo3(signature = (items, qos, retain, token=None, offset=0))]
    fn publish_many(
        &self,
        py: Python<'_>,
        items: Vec<(String, Vec<u8>)>,
        qos: i64,
        retain: bool,
        token: Option<u64>,
        offset: usize,
    ) -> PyResult<usize> {
        check_pid(self.pid)?;
        let qos = QoS::from_u8(qos).py(py)?;
        for (topic, payload) in &items {
            crate::core::protocol::topic::validate_topic(topic, self.client.config().limits)
                .py(py)?;
            self.client.config().check_payload(payload.len()).py(py)?;
        }
        let countdown = match token {
            Some(t) => Some(Countdown::new(
                notifier::reply(&self.notifier(py)?, t, |()| Output::Unit),
                offset,
            )),
            None => None,
        };
        let mut queued = 0;
        for (index, (topic, payload)) in items.into_iter().enumerate() {
            let reply = countdown.as_ref().map(|c| c.part(index));
            match self
                .client
                .publish(topic, Bytes::from(payload), qos, retain, reply)
            {
                Ok(()) => queued += 1,
                // The submission channel is full: report how many were queued; the caller
                // waits for room and submits the rest (even when that is all of them).
                Err(Error::SubmissionFull(_)) => break,
                Err(e) => {
                    if queued == 0 {
                        return Err(crate::py::errors::to_pyerr(py, &e));
                    }
                    if let Some(c) = &countdown {
                        c.fail(index, e);
                    }
                    break;
                }
            }
        }
        if let Some(c) = countdown {
            c.done_submitting();
        }
        Ok(queued)
    }

    /// Whether the submission queue is full (then `wait_writable` tells when it has room).
    fn busy(&self) -> bool {
        self.client.busy()
    }

    /// Future `token` completes when the submission queue has room again.
    fn wait_writable(&self, py: Python<'_>, token: u64) -> PyResult<()> {
        check_pid(self.pid)?;
        let n = self.notifier(py)?;
        self.client
            .wait_writable(notifier::reply(&n, token, |()| Output::Unit));
        Ok(())
    }

    /// Subscribes; future `token` completes with the granted QoS list at SUBACK.
    fn subscribe(
        &self,
        py: Python<'_>,
        filters: Vec<String>,
        qos: i64,
        queue_size: usize,
        token: u64,
    ) -> PyResult<SubscriptionRef> {
        check_pid(self.pid)?;
        let qos = QoS::from_u8(qos).py(py)?;
        if queue_size == 0 {
            return Err(Error::Config("queue_size must be at least 1".into())).py(py);
        }
        let n = self.notifier(py)?;
        let queue = self.new_queue(&n, queue_size);
        self.client
            .subscribe(
                filters,
                qos,
                Arc::clone(&queue),
                notifier::reply(&n, token, Output::Codes),
            )
            .py(py)?;
        Ok(self.subscription(n, queue))
    }

    /// A queue receiving every message the client gets (`Client.messages()`).
    fn messages(&self, py: Python<'_>, queue_size: usize) -> PyResult<SubscriptionRef> {
        check_pid(self.pid)?;
        let n = self.notifier(py)?;
        let queue = self.new_queue(&n, queue_size.max(1));
        self.client.subscribe_all(Arc::clone(&queue));
        Ok(self.subscription(n, queue))
    }

    /// Unsubscribes filters; future `token` completes at UNSUBACK.
    fn unsubscribe(&self, py: Python<'_>, filters: Vec<String>, token: u64) -> PyResult<()> {
        check_pid(self.pid)?;
        let n = self.notifier(py)?;
        self.client
            .unsubscribe(filters, notifier::reply(&n, token, |()| Output::Unit))
            .py(py)
    }

    /// Checks filters and QoS as `subscribe` would, without subscribing.
    fn validate_subscribe(&self, py: Python<'_>, filters: Vec<String>, qos: i64) -> PyResult<()> {
        QoS::from_u8(qos).py(py)?;
        self.client.validate_filters(&filters).py(py)
    }

    /// A service request (shadow, provisioning, jobs): publishes `payload` (a JSON object
    /// text, `clientToken` added when `use_token`) to `topic` once `accepted` and `rejected`
    /// are subscribed; future `token` completes with `(accepted, json_text, client_token)`.
    #[pyo3(signature = (topic, payload, accepted, rejected, use_token, timeout, token, cbor=false))]
    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        py: Python<'_>,
        topic: String,
        payload: Option<&str>,
        accepted: String,
        rejected: String,
        use_token: bool,
        timeout: f64,
        token: u64,
        cbor: bool,
    ) -> PyResult<()> {
        check_pid(self.pid)?;
        let n = self.notifier(py)?;
        let payload = match payload {
            Some(text) => Some(serde_json::from_str(text).map_err(|e| {
                crate::py::errors::to_pyerr(
                    py,
                    &Error::Config(format!("request payload is not JSON: {e}")),
                )
            })?),
            None => None,
        };
        let timeout = seconds("timeout", timeout).py(py)?;
        let engine = {
            let mut guard = self
                .requests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match guard.as_ref() {
                Some(e) if !e.is_closed() => e.clone(),
                _ => {
                    let e = Requests::new(Arc::clone(&self.client), &runtime::handle()?);
                    *guard = Some(e.clone());
                    e
                }
            }
        };
        let reply = notifier::reply(&n, token, |r: Response| {
            Output::Response(r.accepted, r.document.to_string(), r.client_token)
        });
        engine
            .request(
                Request {
                    topic,
                    payload,
                    accepted,
                    rejected,
                    use_token,
                    cbor,
                    timeout,
                },
                reply,
            )
            .py(py)
    }

    /// Counters.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.client.stats();
        let d = PyDict::new(py);
        d.set_item("messages_sent", s.messages_sent)?;
        d.set_item("messages_received", s.messages_received)?;
        d.set_item("bytes_sent", s.bytes_sent)?;
        d.set_item("bytes_received", s.bytes_received)?;
        d.set_item("inflight", s.inflight)?;
        d.set_item("queued", s.queued)?;
        d.set_item("dropped", s.dropped)?;
        d.set_item("reconnects", s.reconnects)?;
        d.set_item("unrouted", s.unrouted)?;
        Ok(d)
    }
}

impl ClientRef {
    /// The bound notifier; before the first `connect()` there is none and nothing can run.
    fn notifier(&self, py: Python<'_>) -> PyResult<Arc<notifier::Inner>> {
        self.notifier
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| {
                crate::py::errors::to_pyerr(
                    py,
                    &Error::Closed("the client is not connected: call connect() first".into()),
                )
            })
    }

    fn new_queue(&self, notifier: &Arc<notifier::Inner>, size: usize) -> Arc<SubscriptionQueue> {
        SubscriptionQueue::new(
            self.client.new_id(),
            size,
            Arc::clone(notifier) as Arc<dyn crate::core::Wake>,
            self.client.space_notifier(),
        )
    }

    fn subscription(
        &self,
        notifier: Arc<notifier::Inner>,
        queue: Arc<SubscriptionQueue>,
    ) -> SubscriptionRef {
        SubscriptionRef {
            queue,
            client: Arc::clone(&self.client),
            notifier,
            closed: AtomicBool::new(false),
            pid: self.pid,
        }
    }
}

/// Disconnects every live client and waits (without the GIL) up to `timeout` for them.
pub fn disconnect_all(py: Python<'_>, timeout: Duration) {
    let clients: Vec<Arc<Client>> = CLIENTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .drain(..)
        .filter_map(|w| w.upgrade())
        .filter(|c| c.state() != crate::core::State::Closed)
        .collect();
    if clients.is_empty() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    for c in &clients {
        let tx = tx.clone();
        c.disconnect(Box::new(move |_| {
            let _ = tx.send(());
        }));
    }
    drop(tx);
    let n = clients.len();
    py.detach(move || {
        let deadline = std::time::Instant::now() + timeout;
        for _ in 0..n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if rx.recv_timeout(left).is_err() {
                break;
            }
        }
    });
}
