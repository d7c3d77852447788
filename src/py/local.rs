//! `LocalCoreRef`: the binding of the embedded AWS IoT Core (`crate::local`). Converts types
//! only; every blocking call releases the GIL, and no tokio thread ever takes it: custom
//! authorizer requests wait in a queue that a Python thread drains
//! (`next_authorizer_request`), and the answer comes back through `answer_authorizer`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyKeyError, PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use tokio::sync::oneshot;

use crate::core::protocol::topic::Limits;
use crate::core::Error;
use crate::local::authorizer_request::{AuthProtocol, AuthorizerRequest, AuthorizerSpec};
use crate::local::authorizers::{AuthorizerHook, AuthorizerVerdict, VerdictFuture};
use crate::local::pki::IssuedCertificate;
use crate::local::{LocalConfig, LocalCore, LocalError, Qos2Policy};
use crate::py::errors::to_pyerr;
use crate::py::runtime;

fn local_err(py: Python<'_>, e: LocalError) -> PyErr {
    match e {
        LocalError::Config(m) | LocalError::Pki(m) => to_pyerr(py, &Error::Config(m)),
        LocalError::Io(m) => PyOSError::new_err(m),
        LocalError::NotFound(m) => PyKeyError::new_err(m),
        LocalError::NotRunning => PyRuntimeError::new_err(LocalError::NotRunning.to_string()),
    }
}

fn config_err(py: Python<'_>, m: String) -> PyErr {
    to_pyerr(py, &Error::Config(m))
}

type Answer = oneshot::Sender<Result<AuthorizerVerdict, String>>;

#[derive(Default)]
struct AuthInner {
    next_id: u64,
    queue: VecDeque<(u64, AuthorizerRequest)>,
    pending: HashMap<u64, Answer>,
    closed: bool,
}

/// Authorizer requests waiting for Python, and the answers Python owes.
#[derive(Default)]
struct AuthQueue {
    inner: Mutex<AuthInner>,
    changed: Condvar,
}

impl std::fmt::Debug for AuthQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthQueue")
    }
}

impl AuthQueue {
    fn lock(&self) -> MutexGuard<'_, AuthInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.queue.clear();
        inner.pending.clear();
        drop(inner);
        self.changed.notify_all();
    }
}

/// Removes a request from the queue when the core stops waiting for it (answered, timed out
/// or the connection went away).
struct Forget {
    queue: Arc<AuthQueue>,
    id: u64,
}

impl Drop for Forget {
    fn drop(&mut self) {
        let mut inner = self.queue.lock();
        inner.pending.remove(&self.id);
        inner.queue.retain(|(id, _)| *id != self.id);
    }
}

#[derive(Debug)]
struct PythonHook {
    queue: Arc<AuthQueue>,
}

impl AuthorizerHook for PythonHook {
    fn authorize(&self, request: AuthorizerRequest) -> VerdictFuture {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut inner = self.queue.lock();
            if inner.closed {
                return Box::pin(async { Err("the core is stopping".to_owned()) });
            }
            inner.next_id += 1;
            let id = inner.next_id;
            inner.queue.push_back((id, request));
            inner.pending.insert(id, tx);
            id
        };
        self.queue.changed.notify_all();
        let forget = Forget {
            queue: Arc::clone(&self.queue),
            id,
        };
        Box::pin(async move {
            let _forget = forget;
            rx.await
                .map_err(|_| "the authorizer was not called".to_owned())
                .and_then(|r| r)
        })
    }
}

fn secs(py: Python<'_>, name: &str, v: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| {
        config_err(
            py,
            format!("{name} must be a finite number of seconds >= 0, not {v}"),
        )
    })
}

fn certificate_tuple<'py>(
    py: Python<'py>,
    c: &IssuedCertificate,
) -> (Bound<'py, PyBytes>, Bound<'py, PyBytes>, String) {
    (
        PyBytes::new(py, c.certificate_pem.as_bytes()),
        PyBytes::new(
            py,
            c.private_key_pem.as_deref().unwrap_or_default().as_bytes(),
        ),
        c.certificate_id.clone(),
    )
}

fn json_map(
    py: Python<'_>,
    what: &str,
    text: Option<&str>,
) -> PyResult<serde_json::Map<String, serde_json::Value>> {
    match text {
        None => Ok(serde_json::Map::new()),
        Some(t) => match serde_json::from_str(t) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            _ => Err(config_err(py, format!("{what} must be a JSON object"))),
        },
    }
}

fn json_value(py: Python<'_>, what: &str, text: &str) -> PyResult<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| config_err(py, format!("{what} is not valid JSON: {e}")))
}

/// A running embedded AWS IoT Core (the native half of `awsiot_rs.local.LocalIoTCore`).
#[pyclass(frozen, module = "awsiot_rs._native")]
pub struct LocalCoreRef {
    core: Arc<LocalCore>,
    auth: Arc<AuthQueue>,
    handle: tokio::runtime::Handle,
}

#[pymethods]
impl LocalCoreRef {
    /// Starts a core (blocking for a few milliseconds, without the GIL).
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (host, mqtt_port, alpn_port, custom_auth_port, wss_port, limits, qos2, persistent_session_expiry))]
    fn start(
        py: Python<'_>,
        host: &str,
        mqtt_port: u16,
        alpn_port: u16,
        custom_auth_port: u16,
        wss_port: u16,
        limits: &str,
        qos2: &str,
        persistent_session_expiry: f64,
    ) -> PyResult<Self> {
        let host = host
            .parse()
            .or_else(|_| {
                if host == "localhost" {
                    Ok("127.0.0.1".parse())
                } else {
                    Err(())
                }
                .and_then(|r| r.map_err(|_| ()))
            })
            .map_err(|()| {
                config_err(
                    py,
                    format!("host must be an IP address (e.g. 127.0.0.1), not {host:?}"),
                )
            })?;
        let config = LocalConfig {
            host,
            mqtt_port,
            alpn_port,
            custom_auth_port,
            wss_port,
            limits: Limits::parse(limits).map_err(|e| to_pyerr(py, &e))?,
            qos2: Qos2Policy::parse(qos2).map_err(|e| local_err(py, e))?,
            persistent_session_expiry: secs(
                py,
                "persistent_session_expiry",
                persistent_session_expiry,
            )?,
            ..LocalConfig::default()
        };
        let handle = runtime::handle()?;
        let rt = handle.clone();
        let core = py
            .detach(move || rt.block_on(LocalCore::start(config)))
            .map_err(|e| local_err(py, e))?;
        Ok(Self {
            core: Arc::new(core),
            auth: Arc::new(AuthQueue::default()),
            handle,
        })
    }

    /// Closes every connection and frees every port (blocking, without the GIL). Idempotent.
    fn stop(&self, py: Python<'_>) {
        self.auth.close();
        let core = Arc::clone(&self.core);
        let rt = self.handle.clone();
        py.detach(move || rt.block_on(async move { core.stop().await }));
    }

    /// The real ports: `{"mqtt", "alpn", "custom_auth", "wss"}`.
    #[getter]
    fn ports<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let p = self.core.ports();
        let d = PyDict::new(py);
        d.set_item("mqtt", p.mqtt)?;
        d.set_item("alpn", p.alpn)?;
        d.set_item("custom_auth", p.custom_auth)?;
        d.set_item("wss", p.wss)?;
        Ok(d)
    }

    /// The CA certificate, PEM.
    #[getter]
    fn ca_pem<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.core.ca_pem().as_bytes())
    }

    /// Registers a thing; returns (certificate PEM, key PEM, certificate id).
    #[pyo3(signature = (thing_name, attributes_json=None))]
    fn register_thing<'py>(
        &self,
        py: Python<'py>,
        thing_name: &str,
        attributes_json: Option<&str>,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>, String)> {
        let attributes = json_map(py, "attributes", attributes_json)?;
        let issued = self
            .core
            .register_thing(thing_name, attributes)
            .map_err(|e| local_err(py, e))?;
        Ok(certificate_tuple(py, &issued))
    }

    /// Sets a certificate's status.
    fn certificate_status(
        &self,
        py: Python<'_>,
        certificate_id: &str,
        status: &str,
    ) -> PyResult<()> {
        self.core
            .certificate_status(certificate_id, status)
            .map_err(|e| local_err(py, e))
    }

    /// Adds IAM credentials for SigV4.
    #[pyo3(signature = (access_key, secret_key, session_token=None))]
    fn add_credentials(
        &self,
        py: Python<'_>,
        access_key: &str,
        secret_key: &str,
        session_token: Option<&str>,
    ) -> PyResult<()> {
        self.core
            .add_credentials(access_key, secret_key, session_token)
            .map_err(|e| local_err(py, e))
    }

    /// Registers a custom authorizer whose decisions Python makes.
    #[pyo3(signature = (name, token_key_name=None, signing=false))]
    fn add_authorizer(
        &self,
        py: Python<'_>,
        name: &str,
        token_key_name: Option<String>,
        signing: bool,
    ) -> PyResult<()> {
        let spec = AuthorizerSpec {
            name: name.to_owned(),
            token_key_name,
            signing,
        };
        let hook = Arc::new(PythonHook {
            queue: Arc::clone(&self.auth),
        });
        self.core
            .add_authorizer(spec, hook)
            .map_err(|e| local_err(py, e))
    }

    /// The next authorizer request `(id, fields)`, waiting up to `timeout` without the GIL;
    /// `None` on timeout or once stopped.
    fn next_authorizer_request<'py>(
        &self,
        py: Python<'py>,
        timeout: f64,
    ) -> PyResult<Option<(u64, Bound<'py, PyDict>)>> {
        let wait = secs(py, "timeout", timeout)?;
        let queue = Arc::clone(&self.auth);
        let next = py.detach(move || {
            let deadline = Instant::now() + wait;
            let mut inner = queue.lock();
            loop {
                if inner.closed {
                    return None;
                }
                if let Some(item) = inner.queue.pop_front() {
                    return Some(item);
                }
                let now = Instant::now();
                if now >= deadline {
                    return None;
                }
                inner = queue
                    .changed
                    .wait_timeout(inner, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        });
        let Some((id, r)) = next else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("authorizer", &r.authorizer)?;
        d.set_item("token", &r.token)?;
        d.set_item("signature", &r.signature)?;
        d.set_item("username", &r.username)?;
        d.set_item(
            "password",
            r.password.as_deref().map(|p| PyBytes::new(py, p)),
        )?;
        d.set_item("client_id", &r.client_id)?;
        d.set_item("headers", r.headers.clone())?;
        d.set_item("query", r.query.clone())?;
        d.set_item(
            "protocol",
            match r.protocol {
                AuthProtocol::Mqtt => "mqtt",
                AuthProtocol::Wss => "wss",
            },
        )?;
        Ok(Some((id, d)))
    }

    /// Answers an authorizer request (ignored if the core stopped waiting for it).
    #[pyo3(signature = (request_id, allow, principal_id=None, disconnect_after=None, error=None))]
    fn answer_authorizer(
        &self,
        py: Python<'_>,
        request_id: u64,
        allow: bool,
        principal_id: Option<String>,
        disconnect_after: Option<f64>,
        error: Option<String>,
    ) -> PyResult<()> {
        let disconnect_after = disconnect_after
            .map(|s| secs(py, "disconnect_after", s))
            .transpose()?;
        let Some(tx) = self.auth.lock().pending.remove(&request_id) else {
            return Ok(());
        };
        let answer = match error {
            Some(e) => Err(e),
            None => Ok(AuthorizerVerdict {
                allow,
                principal_id: principal_id.unwrap_or_else(|| "authorizer".to_owned()),
                disconnect_after,
            }),
        };
        let _ = tx.send(answer);
        Ok(())
    }

    /// Adds a provisioning template; returns the claim (certificate, key, id).
    #[pyo3(signature = (name, body_json, claim_thing=None))]
    fn add_provisioning_template<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        body_json: &str,
        claim_thing: Option<&str>,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>, String)> {
        let body = json_value(py, "the template body", body_json)?;
        let claim = self
            .core
            .add_provisioning_template(name, body, claim_thing)
            .map_err(|e| local_err(py, e))?;
        Ok(certificate_tuple(py, &claim))
    }

    /// Queues a job for a thing.
    fn add_job(
        &self,
        py: Python<'_>,
        thing_name: &str,
        job_id: &str,
        document_json: &str,
    ) -> PyResult<()> {
        let document = json_value(py, "the job document", document_json)?;
        self.core
            .add_job(thing_name, job_id, document)
            .map_err(|e| local_err(py, e))
    }

    /// The shadow document (JSON text) or None.
    #[pyo3(signature = (thing_name, shadow_name=None))]
    fn shadow_document(&self, thing_name: &str, shadow_name: Option<&str>) -> Option<String> {
        self.core
            .shadow_document(thing_name, shadow_name)
            .map(|v| v.to_string())
    }

    /// A job execution (JSON text) or None.
    fn job_execution(&self, thing_name: &str, job_id: &str) -> Option<String> {
        self.core
            .job_execution(thing_name, job_id)
            .map(|v| v.to_string())
    }

    /// A cursor at the end of the event log.
    fn events_follow(&self) -> u64 {
        self.core.events().follow()
    }

    /// Ends one `events_follow`.
    fn events_release(&self) {
        self.core.events().release();
    }

    /// Events from `cursor` (JSON texts), the next cursor, how many were missed, and whether
    /// the log is closed; waits up to `timeout` without the GIL.
    #[pyo3(signature = (cursor, max, timeout))]
    fn events_read(
        &self,
        py: Python<'_>,
        cursor: u64,
        max: usize,
        timeout: f64,
    ) -> PyResult<(Vec<String>, u64, u64, bool)> {
        let wait = secs(py, "timeout", timeout)?;
        let core = Arc::clone(&self.core);
        let batch = py.detach(move || core.events().read(cursor, max.max(1), wait));
        let events = batch
            .events
            .iter()
            .map(|e| e.to_json().to_string())
            .collect();
        Ok((events, batch.next, batch.missed, batch.closed))
    }

    /// Closes a client's connection with an AWS disconnect reason.
    fn disconnect(&self, py: Python<'_>, client_id: &str, reason: &str) -> PyResult<bool> {
        self.core
            .disconnect(client_id, reason)
            .map_err(|e| local_err(py, e))
    }

    /// The connected client ids.
    fn connected_clients(&self) -> Vec<String> {
        self.core.connected_clients()
    }

    /// Publishes as the core.
    #[pyo3(signature = (topic, payload, qos=0, retain=false))]
    fn publish(&self, topic: &str, payload: &[u8], qos: u8, retain: bool) {
        self.core.publish(topic, payload, qos, retain);
    }

    /// (messages routed, deliveries dropped).
    fn counters(&self) -> (u64, u64) {
        self.core.counters()
    }
}

impl Drop for LocalCoreRef {
    fn drop(&mut self) {
        self.auth.close();
    }
}
