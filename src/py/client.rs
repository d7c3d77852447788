//! `_native.ClientRef`: converts Python arguments into the core configuration and forwards
//! calls to `core::Client`. No protocol logic here.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use pyo3::conversion::FromPyObjectOwned;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt};

use crate::core::auth::credentials::{self, CredentialsProvider};
use crate::core::auth::custom_auth::CustomAuth;
use crate::core::auth::sigv4::AwsCredentials;
use crate::core::config::QoS;
use crate::core::options::{
    AuthOptions, ClientOptions, OfflineQueueOptions, PolicyCheckOptions, ReconnectOptions,
    WillOptions,
};
use crate::core::secret::Secret;
use crate::core::services::request_response::{Request, Requests, Response};
use crate::core::{Client, ClientEvent, Error, EventSink, SubscriptionQueue};
use crate::py::credentials::{PyProvider, Target};

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
    /// `endpoint` and `Client(...)`'s keyword arguments, converted by [`set_option`] into the
    /// core's `ClientOptions`, which builds and validates the configuration.
    #[new]
    #[pyo3(signature = (endpoint, **options))]
    fn new(
        py: Python<'_>,
        endpoint: &Bound<'_, PyAny>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let sink = Arc::new(SwitchSink::default());
        let mut o = ClientOptions::new(value::<String>("endpoint", endpoint, "a host name (str)")?);
        for (key, v) in options.into_iter().flatten() {
            set_option(&mut o, &key.extract::<String>()?, &v, &sink.target)?;
        }
        let config = o.build().py(py)?;
        let events = Arc::clone(&sink) as Arc<dyn EventSink>;
        let client = Arc::new(Client::new(config, runtime::handle()?, events).py(py)?);
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

    /// Checks auth options (`mtls=`, `sigv4=` or `custom_auth=`, as `ClientRef(...)` takes
    /// them) on their own: `SigV4Auth` and `CustomAuth` call this so a mistake raises where the
    /// auth object is built.
    #[staticmethod]
    #[pyo3(signature = (**auth))]
    fn check_auth(py: Python<'_>, auth: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        auth_options(auth)?.validate().py(py)
    }

    /// The ALPN protocols offered on `port` with these auth options when `alpn` is not given.
    #[staticmethod]
    #[pyo3(signature = (port, **auth))]
    fn default_alpn(port: u16, auth: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<String>> {
        Ok(auth_options(auth)?.default_alpn(port))
    }

    /// The port (given, or derived from the auth and `tls`).
    #[getter]
    fn port(&self) -> u16 {
        self.client.config().port
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
        queue_size: i64,
        token: u64,
    ) -> PyResult<SubscriptionRef> {
        check_pid(self.pid)?;
        let qos = QoS::from_u8(qos).py(py)?;
        let queue_size = crate::core::config::queue_size(queue_size).py(py)?;
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
    fn messages(&self, py: Python<'_>, queue_size: i64) -> PyResult<SubscriptionRef> {
        check_pid(self.pid)?;
        let queue_size = crate::core::config::queue_size(queue_size).py(py)?;
        let n = self.notifier(py)?;
        let queue = self.new_queue(&n, queue_size);
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

// -- Python arguments → core::options::ClientOptions ------------------------------------------
// Only types are checked here (a wrong type raises ConfigError naming the argument and what it
// accepts); every bound is checked once, by `ClientOptions::build`.

/// One keyword argument of `ClientRef(...)` (named as `Client(...)`'s parameter) into its field.
fn set_option(
    o: &mut ClientOptions,
    key: &str,
    v: &Bound<'_, PyAny>,
    target: &Target,
) -> PyResult<()> {
    match key {
        "port" => o.port = opt(v, |v| int(key, v))?,
        "client_id" => o.client_id = value(key, v, "a str or None")?,
        "tls" => o.tls = v.is_truthy()?,
        "ca_pem" => o.ca_pem = value(key, v, "PEM bytes or None")?,
        "alpn" => o.alpn = value(key, v, "a list of protocol names such as ['mqtt'], or None")?,
        "username" => o.username = value(key, v, "a str or None")?,
        "password" => {
            o.password = value::<Option<String>>(key, v, "a str or None")?.map(Secret::new)
        }
        "keep_alive" => o.keep_alive = secs(key, v)?,
        "clean_session" => o.clean_session = v.is_truthy()?,
        "will" => o.will = opt(v, will)?,
        "limits" => o.limits = value(key, v, "\"aws\" or \"mqtt\"")?,
        "operation_timeout" => o.operation_timeout = secs(key, v)?,
        "connect_timeout" => o.connect_timeout = secs(key, v)?,
        "reconnect" => o.reconnect = opt(v, reconnect)?,
        "offline_queue" => o.offline_queue = offline_queue(v)?,
        "log_file" => o.log_file = value(key, v, "a path or None")?,
        "proxy" => {
            o.proxy = value::<Option<String>>(
                key,
                v,
                "\"http://[user:password@]host:port\", \"env\" or None",
            )?
            .map(Secret::new);
        }
        "inflight" => o.inflight = int(key, v)?,
        "max_subscriptions" => o.max_subscriptions = opt(v, |v| int(key, v))?,
        "policy_violation" => o.policy_violation = opt(v, policy_violation)?,
        "mtls" | "sigv4" | "custom_auth" => o.auth = auth(key, v, target)?,
        other => {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "ClientRef() got an unexpected keyword argument {other:?}"
            )))
        }
    }
    Ok(())
}

/// `Will(topic, payload, qos, retain)`, its payload already bytes.
fn will(v: &Bound<'_, PyAny>) -> PyResult<WillOptions> {
    let f = Fields(v, "Will");
    Ok(WillOptions {
        topic: f.value("topic", "a str")?,
        payload: f.value("payload", "bytes")?,
        qos: f.int("qos")?,
        retain: f.get("retain")?.is_truthy()?,
    })
}

/// `Reconnect(min_delay, max_delay, jitter, max_attempts, reset_after)`.
fn reconnect(v: &Bound<'_, PyAny>) -> PyResult<ReconnectOptions> {
    let f = Fields(v, "Reconnect");
    Ok(ReconnectOptions {
        min_delay: f.secs("min_delay")?,
        max_delay: f.secs("max_delay")?,
        jitter: f.get("jitter")?.is_truthy()?,
        max_attempts: f.int("max_attempts")?,
        reset_after: f.secs("reset_after")?,
    })
}

/// `OfflineQueue(limit, qos0)`.
fn offline_queue(v: &Bound<'_, PyAny>) -> PyResult<OfflineQueueOptions> {
    let f = Fields(v, "OfflineQueue");
    Ok(OfflineQueueOptions {
        limit: f.int("limit")?,
        qos0: f.get("qos0")?.is_truthy()?,
    })
}

/// `PolicyViolationCheck(count, window)`.
fn policy_violation(v: &Bound<'_, PyAny>) -> PyResult<PolicyCheckOptions> {
    let f = Fields(v, "PolicyViolationCheck");
    Ok(PolicyCheckOptions {
        count: f.int("count")?,
        window: f.secs("window")?,
    })
}

/// The auth keyword arguments alone (for the static methods).
fn auth_options(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<AuthOptions> {
    let mut o = ClientOptions::new("");
    for (key, v) in kwargs.into_iter().flatten() {
        set_option(&mut o, &key.extract::<String>()?, &v, &Target::default())?;
    }
    Ok(o.auth)
}

/// `mtls=(cert_pem, key_pem)`, `sigv4=(region, (access_key, secret_key, session_token) or None
/// for the client's credentials callable)` or `custom_auth={...}` (what `CustomAuth` holds).
fn auth(key: &str, v: &Bound<'_, PyAny>, target: &Target) -> PyResult<AuthOptions> {
    Ok(match key {
        "mtls" => {
            let (cert_pem, key_pem): (Vec<u8>, Vec<u8>) = value(key, v, "(cert_pem, key_pem)")?;
            AuthOptions::Mtls {
                cert_pem,
                key_pem: Secret::new(key_pem),
            }
        }
        "sigv4" => {
            type Keys = Option<(String, String, Option<String>)>;
            let (region, keys): (Bound<'_, PyAny>, Keys) = value(key, v, "(region, keys or None)")?;
            let credentials: Arc<dyn CredentialsProvider> = match keys {
                Some((access_key_id, secret, token)) => {
                    Arc::new(credentials::Static(AwsCredentials {
                        access_key_id,
                        secret_access_key: Secret::new(secret),
                        session_token: token.map(Secret::new),
                        expiry: None,
                    }))
                }
                None => Arc::new(PyProvider {
                    target: Arc::clone(target),
                }),
            };
            AuthOptions::SigV4 {
                region: value("region", &region, "a str such as 'us-east-1'")?,
                credentials,
            }
        }
        _ => {
            let f = Fields(v, "CustomAuth");
            let secret = |name| {
                Ok::<_, PyErr>(
                    f.value::<Option<String>>(name, "a str or None")?
                        .map(Secret::new),
                )
            };
            let pairs = |name| -> PyResult<Vec<(String, Secret<String>)>> {
                let v: Vec<(String, String)> = f.value(name, "a mapping of str to str")?;
                Ok(v.into_iter().map(|(k, v)| (k, Secret::new(v))).collect())
            };
            AuthOptions::Custom(CustomAuth {
                authorizer_name: f.value("authorizer_name", "a str or None")?,
                signature: secret("signature")?,
                token_key_name: f.value("token_key_name", "a str or None")?,
                token: secret("token")?,
                username: f.value("username", "a str or None")?,
                password: secret("password")?,
                headers: pairs("headers")?,
                query: pairs("query")?,
                websockets: f.get("websockets")?.is_truthy()?,
                credentials_in: f
                    .value("credentials_in", "\"headers\", \"query\" or \"username\"")?,
            })
        }
    })
}

/// The fields of a configuration object (`Reconnect`, `Will`, ... or a dict), read by name;
/// errors name `Class.field`.
struct Fields<'a, 'py>(&'a Bound<'py, PyAny>, &'static str);

impl<'py> Fields<'_, 'py> {
    fn name(&self, field: &str) -> String {
        format!("{}.{field}", self.1)
    }

    fn get(&self, field: &str) -> PyResult<Bound<'py, PyAny>> {
        match self.0.cast::<PyDict>() {
            Ok(d) => d.as_any().get_item(field),
            Err(_) => self.0.getattr(field),
        }
    }

    fn int(&self, field: &str) -> PyResult<i64> {
        int(&self.name(field), &self.get(field)?)
    }

    fn secs(&self, field: &str) -> PyResult<f64> {
        secs(&self.name(field), &self.get(field)?)
    }

    fn value<T: FromPyObjectOwned<'py>>(&self, field: &str, allowed: &str) -> PyResult<T> {
        value(&self.name(field), &self.get(field)?, allowed)
    }
}

/// `None` as `None`, anything else through `f`.
fn opt<'py, T>(
    v: &Bound<'py, PyAny>,
    f: impl FnOnce(&Bound<'py, PyAny>) -> PyResult<T>,
) -> PyResult<Option<T>> {
    if v.is_none() {
        Ok(None)
    } else {
        f(v).map(Some)
    }
}

/// `ConfigError("<what> must be <allowed>, not <type>")`.
fn wrong_type(v: &Bound<'_, PyAny>, what: &str, allowed: &str) -> PyErr {
    let type_name = v
        .get_type()
        .name()
        .map_or_else(|_| "?".to_string(), |n| n.to_string());
    crate::py::errors::to_pyerr(
        v.py(),
        &Error::Config(format!("{what} must be {allowed}, not {type_name}")),
    )
}

/// Any value `T` converts from, else `wrong_type`.
fn value<'py, T: FromPyObjectOwned<'py>>(
    what: &str,
    v: &Bound<'py, PyAny>,
    allowed: &str,
) -> PyResult<T> {
    v.extract::<T>().map_err(|_| wrong_type(v, what, allowed))
}

/// An `int` (not a `bool`); one beyond `i64` saturates, for the core's bound to refuse.
fn int(what: &str, v: &Bound<'_, PyAny>) -> PyResult<i64> {
    if v.is_instance_of::<PyBool>() || !v.is_instance_of::<PyInt>() {
        return Err(wrong_type(v, what, "an integer"));
    }
    match v.extract::<i64>() {
        Ok(n) => Ok(n),
        Err(_) if v.gt(0)? => Ok(i64::MAX),
        Err(_) => Ok(i64::MIN),
    }
}

/// A number of seconds (`int` or `float`, not `bool`); one beyond `f64` becomes infinite, for
/// the core to refuse.
fn secs(what: &str, v: &Bound<'_, PyAny>) -> PyResult<f64> {
    let number = v.is_instance_of::<PyInt>() || v.is_instance_of::<PyFloat>();
    if v.is_instance_of::<PyBool>() || !number {
        return Err(wrong_type(v, what, "a number of seconds"));
    }
    match v.extract::<f64>() {
        Ok(x) => Ok(x),
        Err(_) if v.gt(0)? => Ok(f64::INFINITY),
        Err(_) => Ok(f64::NEG_INFINITY),
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
