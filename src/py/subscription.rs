//! `_native.SubscriptionRef`: the consumer side of one subscription queue. The Python
//! `Subscription` drains it synchronously on the loop thread when the notifier reports it ready.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::core::{Client, SubscriptionQueue};
use crate::py::message::PyMessage;
use crate::py::notifier::{self, Inner, Output};
use crate::py::runtime::check_pid;

/// Native handle of one subscription (or of `messages()`).
#[pyclass(frozen, module = "awsiot_rs._native")]
pub struct SubscriptionRef {
    pub(crate) queue: Arc<SubscriptionQueue>,
    pub(crate) client: Arc<Client>,
    pub(crate) notifier: Arc<Inner>,
    pub(crate) closed: AtomicBool,
    pub(crate) pid: u64,
}

#[pymethods]
impl SubscriptionRef {
    /// The id the notifier reports with `("ready", id)`.
    #[getter]
    fn id(&self) -> u64 {
        self.queue.id()
    }

    /// Messages dropped from this subscription's queue (QoS 0 overflow).
    #[getter]
    fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    /// Messages waiting in the queue.
    fn __len__(&self) -> usize {
        self.queue.len()
    }

    /// Takes up to `max` messages: `(messages, state)`. `state` is 0 while open, 1 when the
    /// queue is empty and paused (the client was disconnected: an iteration ends, the
    /// subscription stays and resumes at the next connect), 2 when it is closed and empty (no
    /// more messages will come; `error` tells why if it was not closed on purpose).
    fn pop_batch<'py>(&self, py: Python<'py>, max: usize) -> PyResult<(Bound<'py, PyList>, u8)> {
        check_pid(self.pid)?;
        let batch = self.queue.pop_batch(max);
        let list = PyList::empty(py);
        for m in &batch.messages {
            list.append(PyMessage::from_core(py, m))?;
        }
        let state = if batch.closed {
            2
        } else {
            u8::from(batch.paused)
        };
        Ok((list, state))
    }

    /// The exception the subscription ended with (a refused re-subscription, a suspected
    /// policy violation), or None.
    #[getter]
    fn error<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.queue
            .error()
            .map(|e| crate::py::errors::exception(py, &e))
    }

    /// Ends the subscription; future `token` (if given) completes at UNSUBACK.
    #[pyo3(signature = (token=None))]
    fn close(&self, token: Option<u64>) -> PyResult<()> {
        check_pid(self.pid)?;
        self.closed.store(true, Ordering::Release);
        let reply = token.map(|t| notifier::reply(&self.notifier, t, |()| Output::Unit));
        self.client.close_subscription(self.queue.id(), reply);
        Ok(())
    }
}

impl Drop for SubscriptionRef {
    fn drop(&mut self) {
        // A subscription nobody reads must not hold back acknowledgements forever.
        if !self.closed.load(Ordering::Acquire) && crate::py::runtime::generation() == self.pid {
            self.client.close_subscription(self.queue.id(), None);
        }
    }
}
