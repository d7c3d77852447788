//! How results reach the asyncio loop without any tokio thread touching Python.
//!
//! Each asyncio event loop gets one `Notifier`: a queue of plain-Rust items (operation results,
//! "subscription N has messages", lifecycle events) plus a socketpair. Producers (tokio threads)
//! push an item and write one byte only when the notifier goes from idle to signalled; the loop
//! watches the read end with `loop.add_reader` and drains everything in one synchronous call on
//! the loop thread. One wake-up serves any number of results: delivery is batched across the
//! boundary, the GIL is only ever taken by the loop thread, and cancelling an awaiter can never
//! lose an item (items are only taken synchronously on the loop thread).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::core::{ClientEvent, ConnectInfo, Error, Reply, Wake};
use crate::py::errors;
use crate::py::logging;

/// The value an operation completes with.
pub enum Output {
    /// Nothing (publish, unsubscribe, disconnect).
    Unit,
    /// `connect()`.
    Connect(ConnectInfo),
    /// `subscribe()`: granted QoS per filter.
    Codes(Vec<u8>),
    /// A service answer: (accepted, JSON text, client token).
    Response(bool, String, Option<String>),
}

/// One thing for the loop to handle.
enum Item {
    Op {
        token: u64,
        result: crate::core::Result<Output>,
    },
    Ready {
        source: u64,
    },
    Event {
        client: u64,
        event: ClientEvent,
    },
    Credentials {
        client: u64,
        request: u64,
    },
}

/// Shared between the Python object and every producer.
pub struct Inner {
    reader: UnixStream,
    writer: UnixStream,
    signalled: AtomicBool,
    items: Mutex<Vec<Item>>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Vec<Item>> {
        self.items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, item: Item) {
        self.lock().push(item);
        self.signal();
    }

    /// Delivers a lifecycle event of client `client`.
    pub fn push_event(&self, client: u64, event: ClientEvent) {
        self.push(Item::Event { client, event });
    }

    /// Asks the loop to call client `client`'s credentials provider for request `request`.
    pub fn request_credentials(&self, client: u64, request: u64) {
        self.push(Item::Credentials { client, request });
    }

    /// Wakes the loop (if not already signalled).
    pub fn signal(&self) {
        if !self.signalled.swap(true, Ordering::AcqRel) {
            // A full socket buffer means a wake-up is already pending: nothing to do.
            let _ = (&self.writer).write(&[1]);
        }
    }
}

impl Wake for Inner {
    fn wake(&self, source: u64) {
        self.push(Item::Ready { source });
    }
}

impl logging::Wakeup for Inner {
    fn wake_loop(&self) {
        self.signal();
    }
}

/// Completes an operation exactly once: with its result, or, if the core drops it unanswered,
/// with `ClientClosedError` (so no Python future can hang).
struct Pending {
    inner: Arc<Inner>,
    token: u64,
    done: bool,
}

impl Pending {
    fn finish(mut self, result: crate::core::Result<Output>) {
        self.done = true;
        self.inner.push(Item::Op {
            token: self.token,
            result,
        });
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            self.inner.push(Item::Op {
                token: self.token,
                result: Err(Error::Closed(
                    "the operation was abandoned because the client stopped".into(),
                )),
            });
        }
    }
}

/// The Python-visible notifier (`_native.Notifier`), one per asyncio loop.
#[pyclass(frozen, module = "awsiot_rs._native")]
pub struct Notifier {
    pub(crate) inner: Arc<Inner>,
}

/// A core `Reply` that completes Python future `token` with `map(value)`.
pub fn reply<T: Send + 'static>(inner: &Arc<Inner>, token: u64, map: fn(T) -> Output) -> Reply<T> {
    let pending = Pending {
        inner: Arc::clone(inner),
        token,
        done: false,
    };
    Box::new(move |result: crate::core::Result<T>| pending.finish(result.map(map)))
}

#[pymethods]
impl Notifier {
    #[new]
    fn new() -> PyResult<Self> {
        let (reader, writer) =
            UnixStream::pair().map_err(|e| PyOSError::new_err(format!("socketpair: {e}")))?;
        reader
            .set_nonblocking(true)
            .and_then(|()| writer.set_nonblocking(true))
            .map_err(|e| PyOSError::new_err(format!("socketpair: {e}")))?;
        let inner = Arc::new(Inner {
            reader,
            writer,
            signalled: AtomicBool::new(false),
            items: Mutex::new(Vec::new()),
        });
        logging::set_waker(Arc::downgrade(&inner) as Weak<dyn logging::Wakeup>);
        Ok(Self { inner })
    }

    /// The file descriptor to watch with `loop.add_reader`.
    fn fileno(&self) -> i32 {
        self.inner.reader.as_raw_fd()
    }

    /// Takes everything pending (call until it returns an empty list). Returns a list of tuples:
    /// `("op", token, ok, value)`, `("ready", source)`,
    /// `("connected", client, session_present, reconnect)`, `("credentials", client, request)`,
    /// `("disconnected", client, reason, exception_or_None)`. Plain tuples (the cheapest thing to
    /// build per message); `Dispatcher._dispatch` unpacks them into names in one place.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut sink = [0u8; 512];
        while let Ok(n) = (&self.inner.reader).read(&mut sink) {
            if n < sink.len() {
                break;
            }
        }
        // Stay signalled while there is work: producers skip the socket write meanwhile, so a
        // busy loop drains many batches per wake-up. Only an empty drain re-arms the wake-up,
        // and checks once more afterwards so nothing pushed in between is missed.
        let mut items = std::mem::take(&mut *self.inner.lock());
        if items.is_empty() {
            self.inner.signalled.store(false, Ordering::Release);
            items = std::mem::take(&mut *self.inner.lock());
        }
        let out = PyList::empty(py);
        for item in items {
            let tuple: Bound<'py, PyTuple> = match item {
                Item::Op { token, result } => match result {
                    Ok(Output::Unit) => ("op", token, true, py.None()).into_pyobject(py)?,
                    Ok(Output::Connect(info)) => {
                        ("op", token, true, info.session_present.into_py_any(py)?)
                            .into_pyobject(py)?
                    }
                    Ok(Output::Codes(codes)) => {
                        ("op", token, true, codes.into_py_any(py)?).into_pyobject(py)?
                    }
                    Ok(Output::Response(accepted, json, client_token)) => (
                        "op",
                        token,
                        true,
                        (accepted, json, client_token).into_py_any(py)?,
                    )
                        .into_pyobject(py)?,
                    Err(e) => ("op", token, false, errors::exception(py, &e)).into_pyobject(py)?,
                },
                Item::Ready { source } => ("ready", source).into_pyobject(py)?,
                Item::Credentials { client, request } => {
                    ("credentials", client, request).into_pyobject(py)?
                }
                Item::Event { client, event } => match event {
                    ClientEvent::Connected {
                        session_present,
                        reconnect,
                    } => ("connected", client, session_present, reconnect).into_pyobject(py)?,
                    ClientEvent::Disconnected { reason, error } => {
                        let exc = match error {
                            Some(e) => errors::exception(py, &e).unbind(),
                            None => py.None(),
                        };
                        ("disconnected", client, reason.as_str(), exc).into_pyobject(py)?
                    }
                },
            };
            out.append(tuple)?;
        }
        Ok(out)
    }
}
