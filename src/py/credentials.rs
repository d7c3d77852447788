//! SigV4 credentials from a Python callable. The driver asks (from a tokio thread) by pushing a
//! request through the notifier; the asyncio loop calls the provider (plain or async) and
//! answers with `provide_credentials` / `fail_credentials`. No tokio thread ever runs Python.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use pyo3::prelude::*;
use tokio::sync::oneshot;

use crate::core::credentials::{CredentialsFuture, CredentialsProvider};
use crate::core::secret::Secret;
use crate::core::sigv4::AwsCredentials;
use crate::core::{Error, Result};
use crate::py::notifier::Inner;

type Waiting = std::collections::BTreeMap<u64, oneshot::Sender<Result<AwsCredentials>>>;

static WAITING: Mutex<Waiting> = Mutex::new(std::collections::BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(1);

fn waiting() -> MutexGuard<'static, Waiting> {
    WAITING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where a client's requests go: the notifier of the loop it was last connected from.
pub type Target = Arc<Mutex<Option<(Arc<Inner>, u64)>>>;

/// A provider backed by the Python callable of one client.
pub struct PyProvider {
    pub target: Target,
}

impl CredentialsProvider for PyProvider {
    fn credentials(&self) -> CredentialsFuture {
        let target = self
            .target
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let (tx, rx) = oneshot::channel();
        let request = NEXT.fetch_add(1, Ordering::Relaxed);
        let asked = match target {
            Some((inner, client)) => {
                waiting().insert(request, tx);
                inner.request_credentials(client, request);
                true
            }
            None => false,
        };
        Box::pin(async move {
            if !asked {
                return Err(Error::Auth(
                    "the credentials provider cannot run: the client is not bound to an event loop"
                        .into(),
                ));
            }
            let answer = rx.await.unwrap_or_else(|_| {
                Err(Error::Auth(
                    "the credentials provider gave no answer".into(),
                ))
            });
            waiting().remove(&request);
            answer
        })
    }
}

fn answer(request: u64, result: Result<AwsCredentials>) {
    if let Some(tx) = waiting().remove(&request) {
        let _ = tx.send(result);
    }
}

/// Completes credentials request `request` (called on the loop thread).
#[pyfunction]
#[pyo3(signature = (request, access_key, secret_key, session_token=None, expiry=None))]
pub fn provide_credentials(
    request: u64,
    access_key: String,
    secret_key: String,
    session_token: Option<String>,
    expiry: Option<f64>,
) {
    let expiry = expiry
        .and_then(|e| Duration::try_from_secs_f64(e).ok())
        .map(|d| SystemTime::UNIX_EPOCH + d);
    answer(
        request,
        Ok(AwsCredentials {
            access_key_id: access_key,
            secret_access_key: Secret::new(secret_key),
            session_token: session_token.map(Secret::new),
            expiry,
        }),
    );
}

/// Fails credentials request `request`: the attempt fails with `AuthError(message)`.
#[pyfunction]
pub fn fail_credentials(request: u64, message: String) {
    answer(request, Err(Error::Auth(message)));
}
