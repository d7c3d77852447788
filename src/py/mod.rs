//! The PyO3 binding (`awsiot_rs._native`): type conversion and asyncio bridging only.

mod client;
mod credentials;
mod errors;
mod local;
mod logging;
mod message;
mod notifier;
mod runtime;
mod subscription;
#[cfg(unix)]
mod wakeup_fd;

use std::time::Duration;

use pyo3::prelude::*;

use crate::core::net::tls;
use crate::core::protocol::topic;
use crate::core::Limits;
use crate::py::errors::IntoPyResult;

/// `awsiot_rs.topics.matches`.
#[pyfunction]
fn matches(topic_filter: &str, topic_name: &str) -> bool {
    topic::matches(topic_filter, topic_name)
}

/// `awsiot_rs.topics.validate_topic`.
#[pyfunction]
#[pyo3(signature = (topic_name, limits="aws"))]
fn validate_topic(py: Python<'_>, topic_name: &str, limits: &str) -> PyResult<()> {
    let limits = Limits::parse(limits).py(py)?;
    topic::validate_topic(topic_name, limits).py(py)
}

/// `awsiot_rs.topics.validate_filter`.
#[pyfunction]
#[pyo3(signature = (topic_filter, limits="aws"))]
fn validate_filter(py: Python<'_>, topic_filter: &str, limits: &str) -> PyResult<()> {
    let limits = Limits::parse(limits).py(py)?;
    topic::validate_filter(topic_filter, limits).py(py)
}

/// Checks a client certificate and key (PEM bytes): both parse and belong together.
#[pyfunction]
fn check_identity(py: Python<'_>, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> PyResult<()> {
    let identity = tls::ClientIdentity {
        cert_pem,
        key_pem: crate::core::secret::Secret::new(key_pem),
    };
    tls::check_identity(&identity).map(|_| ()).py(py)
}

/// Checks CA certificates (PEM bytes).
#[pyfunction]
fn check_ca(py: Python<'_>, ca_pem: &[u8]) -> PyResult<usize> {
    tls::parse_certificates(ca_pem, "the CA file")
        .map(|c| c.len())
        .py(py)
}

/// Decrypts an encrypted PKCS#8 PEM key (unencrypted keys are returned unchanged).
#[pyfunction]
fn decrypt_key<'py>(
    py: Python<'py>,
    key_pem: &[u8],
    password: &[u8],
) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
    let key = crate::core::auth::keys::decrypt_private_key_pem(key_pem, password).py(py)?;
    Ok(pyo3::types::PyBytes::new(py, key.expose()))
}

/// Reads a PKCS#12 bundle: `(certificate chain PEM, private key PEM)`.
#[pyfunction]
#[pyo3(signature = (der, password=None))]
fn load_pkcs12<'py>(
    py: Python<'py>,
    der: &[u8],
    password: Option<&[u8]>,
) -> PyResult<(
    Bound<'py, pyo3::types::PyBytes>,
    Bound<'py, pyo3::types::PyBytes>,
)> {
    let id = crate::core::auth::keys::identity_from_pkcs12(der, password).py(py)?;
    Ok((
        pyo3::types::PyBytes::new(py, &id.cert_pem),
        pyo3::types::PyBytes::new(py, id.key_pem.expose()),
    ))
}

/// A SigV4-presigned `wss://` URL for AWS IoT (for tools and tests; the client presigns itself).
#[pyfunction]
#[pyo3(signature = (host, port, region, access_key, secret_key, session_token=None, time=None, expires=300.0))]
#[allow(clippy::too_many_arguments)]
fn presign_url(
    py: Python<'_>,
    host: &str,
    port: u16,
    region: &str,
    access_key: String,
    secret_key: String,
    session_token: Option<String>,
    time: Option<f64>,
    expires: f64,
) -> PyResult<String> {
    use crate::core::secret::Secret;
    let creds = crate::core::auth::sigv4::AwsCredentials {
        access_key_id: access_key,
        secret_access_key: Secret::new(secret_key),
        session_token: session_token.map(Secret::new),
        expiry: None,
    };
    let at = match time {
        Some(t) => {
            std::time::SystemTime::UNIX_EPOCH + Duration::try_from_secs_f64(t).unwrap_or_default()
        }
        None => std::time::SystemTime::now(),
    };
    let expires = Duration::try_from_secs_f64(expires).unwrap_or(Duration::from_secs(300));
    crate::core::auth::sigv4::presign_url(host, port, region, &creds, at, expires).py(py)
}

/// Disconnects every client and stops the runtime (the `atexit` hook). Both waits release the
/// GIL, and neither waits for Python: the results they produce reach the loops through the
/// notifiers (a threadsafe-mode waiter thread woken now takes the GIL in turn, see
/// `notifier.rs`), and tokio threads never take the GIL, so nothing here can deadlock.
#[pyfunction]
#[pyo3(signature = (timeout=1.0))]
fn shutdown(py: Python<'_>, timeout: f64) {
    let t = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::from_secs(1));
    client::disconnect_all(py, t);
    runtime::shutdown(py, Duration::from_millis(500));
}

/// The native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    logging::install();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<notifier::Notifier>()?;
    m.add_class::<client::ClientRef>()?;
    m.add_class::<subscription::SubscriptionRef>()?;
    m.add_class::<message::PyMessage>()?;
    m.add_class::<local::LocalCoreRef>()?;
    m.add_function(wrap_pyfunction!(matches, m)?)?;
    m.add_function(wrap_pyfunction!(validate_topic, m)?)?;
    m.add_function(wrap_pyfunction!(validate_filter, m)?)?;
    m.add_function(wrap_pyfunction!(check_identity, m)?)?;
    m.add_function(wrap_pyfunction!(check_ca, m)?)?;
    m.add_function(wrap_pyfunction!(shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(credentials::provide_credentials, m)?)?;
    m.add_function(wrap_pyfunction!(credentials::fail_credentials, m)?)?;
    m.add_function(wrap_pyfunction!(decrypt_key, m)?)?;
    m.add_function(wrap_pyfunction!(load_pkcs12, m)?)?;
    m.add_function(wrap_pyfunction!(presign_url, m)?)?;
    m.add_function(wrap_pyfunction!(logging::set_log_level, m)?)?;
    m.add_function(wrap_pyfunction!(logging::drain_logs, m)?)?;
    m.add_function(wrap_pyfunction!(logging::dropped_logs, m)?)?;
    Ok(())
}
