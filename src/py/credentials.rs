//! SigV4 credentials from a Python callable. The driver asks (from a tokio thread) by pushing a
//! request through the notifier; the asyncio loop calls the provider (plain or async) and
//! answers with `provide_credentials` / `fail_credentials`. No tokio thread ever runs Python.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use pyo3::prelude::*;
use tokio::sync::oneshot;

use crate::core::auth::credentials::{CredentialsFuture, CredentialsProvider};
use crate::core::auth::sigv4::AwsCredentials;
use crate::core::secret::Secret;
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
        match target {
            Some((inner, client)) => ask(|request| inner.request_credentials(client, request)),
            None => Box::pin(async {
                Err(Error::Auth(
                    "the credentials provider cannot run: the client is not bound to an event loop"
                        .into(),
                ))
            }),
        }
    }
}

/// A request's entry in `WAITING`, removed when the waiting future goes away: answered, timed
/// out (the connection attempt gave up) or dropped before it was ever polled. A provider that
/// never answers thus leaves nothing behind.
struct Pending(u64);

impl Drop for Pending {
    fn drop(&mut self) {
        let tx = waiting().remove(&self.0);
        drop(tx); // outside the lock
    }
}

/// Registers a new request, hands its id to `send` (which asks the loop) and returns the future
/// of the answer.
fn ask(send: impl FnOnce(u64)) -> CredentialsFuture {
    let (tx, rx) = oneshot::channel();
    let request = NEXT.fetch_add(1, Ordering::Relaxed);
    waiting().insert(request, tx);
    let pending = Pending(request);
    send(request);
    Box::pin(async move {
        let _pending = pending;
        rx.await.unwrap_or_else(|_| {
            Err(Error::Auth(
                "the credentials provider gave no answer".into(),
            ))
        })
    })
}

fn answer(request: u64, result: Result<AwsCredentials>) {
    let tx = waiting().remove(&request);
    if let Some(tx) = tx {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn is_waiting(request: u64) -> bool {
        waiting().contains_key(&request)
    }

    fn ask_recording() -> (CredentialsFuture, u64) {
        let mut asked = None;
        let fut = ask(|r| asked = Some(r));
        (fut, asked.unwrap())
    }

    #[tokio::test]
    async fn a_request_that_times_out_leaves_no_entry_behind() {
        let (fut, request) = ask_recording();
        assert!(is_waiting(request));
        let r = tokio::time::timeout(Duration::from_millis(20), fut).await;
        assert!(r.is_err(), "the provider never answered");
        assert!(!is_waiting(request), "the abandoned request is forgotten");
        // A late answer finds nothing to complete and is ignored.
        fail_credentials(request, "late".into());
        assert!(!is_waiting(request));
    }

    #[tokio::test]
    async fn a_request_dropped_before_being_polled_leaves_no_entry_behind() {
        let (fut, request) = ask_recording();
        assert!(is_waiting(request));
        drop(fut);
        assert!(!is_waiting(request));
    }

    #[tokio::test]
    async fn answered_requests_complete_and_are_removed() {
        let (fut, request) = ask_recording();
        provide_credentials(request, "AKID".into(), "s".into(), None, Some(1e9));
        assert!(!is_waiting(request));
        let creds = fut.await.unwrap();
        assert_eq!(creds.access_key_id, "AKID");
        assert_eq!(
            creds.expiry,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000))
        );
        let (fut, request) = ask_recording();
        fail_credentials(request, "no credentials today".into());
        let err = fut.await.err().unwrap();
        assert!(matches!(err, Error::Auth(m) if m == "no credentials today"));
        assert!(!is_waiting(request));
    }
}
