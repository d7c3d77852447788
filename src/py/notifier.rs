//! How results reach the asyncio loop without any tokio thread touching Python.
//!
//! Each asyncio event loop gets one `Notifier`: a queue of plain-Rust items (operation results,
//! "subscription N has messages", lifecycle events) and a `signalled` flag. Producers (tokio
//! threads) push an item and wake the loop only when the notifier goes from idle to signalled;
//! the loop drains everything in one synchronous call on the loop thread, and only an empty
//! drain makes the notifier idle again. One wake-up serves any number of results: delivery is
//! batched across the boundary, and cancelling an awaiter can never lose an item (items are
//! only taken synchronously on the loop thread).
//!
//! The wake-up itself comes in two kinds, fixed when the notifier is made:
//!
//! - **reader** (Unix, the default): a file descriptor made readable (an eventfd on Linux, a
//!   socketpair elsewhere: `wakeup_fd.rs`); the loop watches it with `loop.add_reader`.
//!   Nothing but the loop thread ever takes the GIL.
//! - **threadsafe** (`Notifier(threadsafe=True)`; the only kind off Unix): for loops that cannot
//!   watch a file descriptor (Windows' Proactor loop, any loop whose `add_reader` raises
//!   `NotImplementedError`). The wake-up sets a "pending" flag under a small mutex and signals a
//!   condvar. A Python thread owned by the loop's dispatcher (the *waiter*, see
//!   `python/awsiot_rs/_dispatch.py`) blocks in `wait()` with the GIL released, and for each
//!   pending wake-up calls `loop.call_soon_threadsafe(...)`, which schedules the same drain.
//!
//! Why the waiter thread, and not `Python::attach` + `call_soon_threadsafe` on the tokio
//! thread that makes the notifier signalled: that would be one GIL acquisition per idle→ready
//! transition too, but on a tokio worker, and (1) the worker would block for as long as the
//! loop thread keeps the GIL (up to the 5 ms switch interval, more under contention), stalling
//! every connection scheduled on it; (2) `signal()` is reached from core code that may hold its
//! own locks (log records are forwarded from anywhere, see `logging.rs`): waiting for the GIL
//! there while the loop thread holds the GIL and waits for that lock is a deadlock; (3) tokio
//! threads have no Python thread state, so near interpreter exit they would go through
//! `PyGILState_Ensure`, which with the abi3 build cannot tell that the interpreter is finalizing.
//! The waiter is a regular Python daemon thread: tokio threads only lock a leaf mutex and signal
//! a condvar (no GIL, ever, as in reader mode); the waiter takes the GIL once per idle→signalled
//! transition (never per item: a busy loop stays signalled and drains batch after batch without
//! any wake-up), holding no Rust lock while it waits for it.
//!
//! Interpreter exit: the `atexit` hook (`shutdown` in `mod.rs`) only waits for the core with
//! the GIL released and never waits for the waiter; a waiter woken meanwhile takes the GIL in
//! turn, schedules a harmless drain (or finds the loop closed and ends). The dispatcher's
//! `weakref.finalize` closes the notifier at exit (or when the loop goes away), which ends the
//! waiter. A waiter still blocked when finalization starts is a daemon thread: if it is ever
//! woken after that, PyO3 parks it when it re-attaches (instead of CPython's `pthread_exit`
//! unwinding across Rust frames), and the process exits around it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

#[cfg(unix)]
use pyo3::exceptions::PyOSError;
use pyo3::exceptions::{PyNotImplementedError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::core::{ClientEvent, ConnectInfo, Error, Reply, Wake};
use crate::py::errors;
use crate::py::logging;
#[cfg(unix)]
use crate::py::wakeup_fd::WakeupFd;

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

/// How an idle→signalled transition reaches the loop.
enum WakeUp {
    /// Reader mode: a descriptor the loop watches (`add_reader`), made readable to wake it.
    #[cfg(unix)]
    Fd(WakeupFd),
    /// Threadsafe mode: the dispatcher's waiter thread blocks on this (`wait()`).
    Waiter(Waiter),
}

/// A wake-up flag for one waiting thread. Its mutex is a leaf lock: held only to flip the
/// flags, never while waiting for anything else (the GIL included).
#[derive(Default)]
struct Waiter {
    state: Mutex<WaiterState>,
    changed: Condvar,
}

#[derive(Default)]
struct WaiterState {
    /// An idle→signalled transition that the waiter has not taken yet.
    pending: bool,
    /// `close()` was called: `wait()` returns `false` from now on.
    closed: bool,
}

impl Waiter {
    fn lock(&self) -> MutexGuard<'_, WaiterState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a wake-up (producer side; no GIL).
    fn wake(&self) {
        self.lock().pending = true;
        self.changed.notify_one();
    }

    /// Blocks until a wake-up is pending (takes it: `true`) or the waiter is closed (`false`).
    fn wait(&self) -> bool {
        let mut state = self.lock();
        loop {
            if state.closed {
                return false;
            }
            if state.pending {
                state.pending = false;
                return true;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }
}

/// Shared between the Python object and every producer.
pub struct Inner {
    wakeup: WakeUp,
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

    /// Wakes the loop (if not already signalled). Never takes the GIL, in either mode.
    pub fn signal(&self) {
        if !self.signalled.swap(true, Ordering::AcqRel) {
            match &self.wakeup {
                #[cfg(unix)]
                WakeUp::Fd(fd) => fd.wake(),
                WakeUp::Waiter(waiter) => waiter.wake(),
            }
        }
    }

    /// The waiter of a threadsafe notifier (`None` in reader mode).
    fn waiter(&self) -> Option<&Waiter> {
        match &self.wakeup {
            WakeUp::Waiter(waiter) => Some(waiter),
            #[cfg(unix)]
            WakeUp::Fd(_) => None,
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

/// The wake-up of a new notifier: a file descriptor unless `threadsafe` is asked for.
#[cfg(unix)]
fn new_wakeup(threadsafe: bool) -> PyResult<WakeUp> {
    if threadsafe {
        return Ok(WakeUp::Waiter(Waiter::default()));
    }
    let fd = WakeupFd::new().map_err(|e| {
        PyOSError::new_err(format!("cannot create the loop's wake-up descriptor: {e}"))
    })?;
    Ok(WakeUp::Fd(fd))
}

/// The wake-up of a new notifier: off Unix there is no file descriptor, always the waiter.
#[cfg(not(unix))]
#[allow(clippy::unnecessary_wraps)]
fn new_wakeup(_threadsafe: bool) -> PyResult<WakeUp> {
    Ok(WakeUp::Waiter(Waiter::default()))
}

/// At most this many tokens in one `("ops", [...])` item of `drain()`: a run of completions is
/// handled in one go by the dispatcher (no user code runs), so it is bounded like a batch.
const OPS_PER_ITEM: usize = 256;

impl Notifier {
    /// Reader mode: takes the pending wake-up, if any, so that the loop stops seeing the
    /// descriptor readable. Nothing to do in threadsafe mode (`wait()` takes its wake-up).
    fn consume_wakeup(&self) {
        #[cfg(unix)]
        if let WakeUp::Fd(fd) = &self.inner.wakeup {
            fd.consume();
        }
    }
}

#[pymethods]
impl Notifier {
    /// `Notifier()` wakes its loop through a file descriptor (`fileno()`, Unix only: elsewhere
    /// it is a threadsafe notifier); `Notifier(threadsafe=True)` through `wait()`.
    #[new]
    #[pyo3(signature = (threadsafe=false))]
    fn new(threadsafe: bool) -> PyResult<Self> {
        let inner = Arc::new(Inner {
            wakeup: new_wakeup(threadsafe)?,
            signalled: AtomicBool::new(false),
            items: Mutex::new(Vec::new()),
        });
        logging::set_waker(Arc::downgrade(&inner) as Weak<dyn logging::Wakeup>);
        Ok(Self { inner })
    }

    /// Whether this notifier wakes its loop through `wait()` (no file descriptor).
    #[getter]
    fn threadsafe(&self) -> bool {
        matches!(self.inner.wakeup, WakeUp::Waiter(_))
    }

    /// The file descriptor to watch with `loop.add_reader`. Raises `NotImplementedError` for a
    /// threadsafe notifier (which has none).
    fn fileno(&self) -> PyResult<i32> {
        match &self.inner.wakeup {
            #[cfg(unix)]
            WakeUp::Fd(fd) => Ok(fd.fd()),
            WakeUp::Waiter(_) => Err(PyNotImplementedError::new_err(
                "a threadsafe notifier has no file descriptor: use wait()",
            )),
        }
    }

    /// Threadsafe notifiers: blocks, with the GIL released, until the notifier goes from idle
    /// to signalled (returns `True`, once per transition) or is closed (returns `False`).
    /// For the dispatcher's waiter thread only. Raises `RuntimeError` on a reader notifier.
    fn wait(&self, py: Python<'_>) -> PyResult<bool> {
        // Checked before blocking, so that a misuse fails instead of hanging.
        if self.inner.waiter().is_none() {
            return Err(PyRuntimeError::new_err(
                "this notifier wakes its loop through a file descriptor (add_reader): it has no waiter",
            ));
        }
        let inner = Arc::clone(&self.inner);
        // The waiter's mutex guard lives and dies inside the closure: nothing Rust-side is held
        // while this thread waits for the GIL again.
        Ok(py.detach(move || inner.waiter().is_some_and(Waiter::wait)))
    }

    /// Threadsafe notifiers: makes `wait()` return `False` now and from now on (ends the
    /// waiter thread). Items still go to the queue. Does nothing on a reader notifier.
    fn close(&self) {
        if let Some(waiter) = self.inner.waiter() {
            waiter.close();
        }
    }

    /// Takes everything pending (call until it returns an empty list). Returns a list of tuples:
    /// `("ops", [token, ...])` (operations completed with `None`, in order),
    /// `("op", token, ok, value)` (any other result or error), `("ready", source)`,
    /// `("connected", client, session_present, reconnect)`, `("credentials", client, request)`,
    /// `("disconnected", client, reason, exception_or_None)`. Plain tuples (the cheapest thing to
    /// build per message); `Dispatcher._dispatch` unpacks them into names in one place.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        // Stay signalled while there is work: producers skip the wake-up meanwhile, so a busy
        // loop drains many batches per wake-up. Only an empty drain re-arms the wake-up, and
        // checks once more afterwards so nothing pushed in between is missed.
        let mut items = std::mem::take(&mut *self.inner.lock());
        if items.is_empty() {
            // The wake-up is consumed here, on re-arming, and nowhere else: while the notifier
            // stays signalled no producer writes, so a drain that finds items needs no read
            // (one syscall less per wake-up). Read before `signalled` is cleared: a wake-up
            // written after the store belongs to the next round and must stay.
            self.consume_wakeup();
            self.inner.signalled.store(false, Ordering::Release);
            items = std::mem::take(&mut *self.inner.lock());
        }
        let out = PyList::empty(py);
        // The tokens of consecutive successful `Unit` operations (QoS 1 publishes, mostly) go in
        // one `("ops", [token, ...])` item, in order: no tuple per operation, one dispatch per run.
        let mut run: Option<(Bound<'py, PyList>, usize)> = None;
        for item in items {
            if let Item::Op {
                token,
                result: Ok(Output::Unit),
            } = item
            {
                match &mut run {
                    Some((tokens, len)) if *len < OPS_PER_ITEM => {
                        tokens.append(token)?;
                        *len += 1;
                    }
                    _ => {
                        let tokens = PyList::new(py, [token])?;
                        out.append(("ops", &tokens))?;
                        run = Some((tokens, 1));
                    }
                }
                continue;
            }
            run = None;
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
