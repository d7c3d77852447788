//! `awsiot_rs.Message`: an immutable received message.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyString};

use crate::core::protocol::topic;

static JSON_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A message received from the broker. Immutable: setting an attribute raises
/// `AttributeError`.
#[pyclass(frozen, module = "awsiot_rs", name = "Message")]
pub struct PyMessage {
    /// Topic the message was published to.
    #[pyo3(get)]
    topic: Py<PyString>,
    /// Payload bytes.
    #[pyo3(get)]
    payload: Py<PyBytes>,
    /// QoS it was delivered with (0 or 1).
    #[pyo3(get)]
    qos: u8,
    /// Retained flag.
    #[pyo3(get)]
    retain: bool,
    /// DUP flag (the broker says this may be a redelivery).
    #[pyo3(get)]
    dup: bool,
}

impl PyMessage {
    /// Converts a core message (copies the payload into a Python `bytes` once).
    pub fn from_core(py: Python<'_>, m: &crate::core::Message) -> Self {
        Self {
            topic: PyString::new(py, &m.topic).unbind(),
            payload: PyBytes::new(py, &m.payload).unbind(),
            qos: m.qos,
            retain: m.retain,
            dup: m.dup,
        }
    }
}

#[pymethods]
impl PyMessage {
    #[new]
    #[pyo3(signature = (topic, payload=None, qos=0, retain=false, dup=false))]
    fn new(
        py: Python<'_>,
        topic: &str,
        payload: Option<&[u8]>,
        qos: u8,
        retain: bool,
        dup: bool,
    ) -> Self {
        Self {
            topic: PyString::new(py, topic).unbind(),
            payload: PyBytes::new(py, payload.unwrap_or_default()).unbind(),
            qos,
            retain,
            dup,
        }
    }

    /// The payload decoded as UTF-8 (raises `UnicodeDecodeError` if it is not).
    fn text<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.payload.bind(py).call_method1("decode", ("utf-8",))
    }

    /// The payload parsed as JSON (raises `json.JSONDecodeError` / `ValueError` if it is not).
    fn json<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let loads = JSON_LOADS.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            Ok(py.import("json")?.getattr("loads")?.unbind())
        })?;
        loads.bind(py).call1((self.payload.bind(py),))
    }

    /// Whether this message's topic matches `topic_filter` (MQTT wildcard rules).
    fn matches(&self, py: Python<'_>, topic_filter: &str) -> PyResult<bool> {
        Ok(topic::matches(topic_filter, self.topic.bind(py).to_str()?))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Message(topic={}, payload=<{} bytes>, qos={}, retain={}, dup={})",
            self.topic.bind(py).repr()?,
            self.payload.bind(py).as_bytes().len(),
            self.qos,
            if self.retain { "True" } else { "False" },
            if self.dup { "True" } else { "False" },
        ))
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(other) = other.cast::<PyMessage>() else {
            return Ok(false);
        };
        let o = other.get();
        Ok(self.topic.bind(py).to_str()? == o.topic.bind(py).to_str()?
            && self.payload.bind(py).as_bytes() == o.payload.bind(py).as_bytes()
            && self.qos == o.qos
            && self.retain == o.retain
            && self.dup == o.dup)
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        (self.topic.bind(py), self.payload.bind(py), self.qos)
            .into_pyobject(py)?
            .hash()
    }
}
