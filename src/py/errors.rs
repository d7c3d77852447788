//! The one mapping from core errors to Python exceptions. The exception classes live in
//! `awsiot_rs/errors.py`; `_from_core(kind, message, extra)` builds the instance.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

use crate::core::Error;

static FROM_CORE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The exception kind name (a class in `awsiot_rs.errors`) for each core error.
fn kind(e: &Error) -> &'static str {
    match e {
        Error::Config(_) => "ConfigError",
        Error::Topic(_) => "TopicError",
        Error::PayloadTooLarge { .. } => "PayloadTooLarge",
        Error::Tls { .. } => "TlsError",
        Error::Auth(_) => "AuthError",
        Error::Refused { .. } | Error::Connect(_) => "ConnectError",
        Error::Disconnected(_) => "DisconnectedError",
        Error::Timeout { .. } => "OperationTimeout",
        Error::SubscribeRefused { .. } | Error::SubscriptionLimit { .. } => "SubscribeError",
        Error::PolicyViolationSuspected { .. } => "PolicyViolationSuspected",
        Error::QueueFull(_) | Error::SubmissionFull(_) => "QueueFullError",
        Error::Closed(_) => "ClientClosedError",
        Error::Protocol(_) => "ProtocolError",
        _ => "AwsIotError",
    }
}

/// Builds the Python exception instance for a core error.
pub fn exception<'py>(py: Python<'py>, e: &Error) -> Bound<'py, PyAny> {
    let build = || -> PyResult<Bound<'py, PyAny>> {
        let f = FROM_CORE.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            Ok(py
                .import("awsiot_rs.errors")?
                .getattr("_from_core")?
                .unbind())
        })?;
        let extra = PyDict::new(py);
        match e {
            Error::Refused { code, .. } => extra.set_item("return_code", code)?,
            Error::Auth(m) => {
                let code = if m.contains("return code 4") {
                    Some(4)
                } else if m.contains("return code 5") {
                    Some(5)
                } else {
                    None
                };
                extra.set_item("return_code", code)?;
            }
            Error::SubscribeRefused { filters } | Error::SubscriptionLimit { filters, .. } => {
                extra.set_item("filters", filters.clone())?;
            }
            Error::PolicyViolationSuspected {
                topic, operation, ..
            } => {
                extra.set_item("topic", topic)?;
                extra.set_item("operation", *operation)?;
            }
            Error::SubmissionFull(_) => extra.set_item("retry_when_writable", true)?,
            Error::PayloadTooLarge { size, max, .. } => {
                extra.set_item("size", size)?;
                extra.set_item("max", max)?;
            }
            _ => {}
        }
        f.bind(py).call1((kind(e), e.to_string(), extra))
    };
    match build() {
        Ok(exc) => exc,
        Err(err) => {
            // awsiot_rs.errors could not be imported: still raise something precise.
            let fallback = pyo3::exceptions::PyRuntimeError::new_err(format!(
                "{} (awsiot_rs.errors unavailable: {err})",
                e
            ));
            fallback.into_value(py).into_bound(py).into_any()
        }
    }
}

/// Converts a core error into a `PyErr` to raise.
pub fn to_pyerr(py: Python<'_>, e: &Error) -> PyErr {
    PyErr::from_value(exception(py, e))
}

/// `?`-friendly conversion for core results.
pub trait IntoPyResult<T> {
    /// Maps the error through [`to_pyerr`].
    fn py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for crate::core::Result<T> {
    fn py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_pyerr(py, &e))
    }
}
