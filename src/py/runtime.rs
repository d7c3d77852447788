//! The process-wide tokio runtime that runs every client's driver, the fork guard and the
//! shutdown used by the `atexit` hook. No tokio thread ever touches Python: results travel to
//! the asyncio loop through the notifier (see `notifier.rs`; in its threadsafe mode the GIL is
//! taken by a Python waiter thread, never by tokio), so the interpreter can finalize while
//! tokio threads still exist.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::runtime::{Handle, Runtime};

struct Owned {
    pid: u32,
    runtime: Option<Runtime>,
}

static RUNTIME: Mutex<Option<Owned>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<Owned>> {
    RUNTIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The message raised when an object created before `fork()` is used in the child.
pub const FORK_MESSAGE: &str = "this awsiot_rs object was created in another process: a client cannot be used across fork(); create clients in the child (multiprocessing 'spawn' or 'forkserver' start methods do this)";

/// Incremented in a forked child (`os.register_at_fork(after_in_child=...)`), so objects
/// created before the fork can tell, without a `getpid` system call per operation.
static FORK_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The current fork generation, recorded by objects at creation.
pub fn generation() -> u64 {
    FORK_GENERATION.load(std::sync::atomic::Ordering::Relaxed)
}

/// Called in the child after `fork()` (registered by `awsiot_rs/__init__.py`).
#[pyfunction]
pub fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Raises `RuntimeError` for an object created before a `fork()` and used in the child.
pub fn check_pid(created: u64) -> PyResult<()> {
    if generation() == created {
        Ok(())
    } else {
        Err(PyRuntimeError::new_err(FORK_MESSAGE))
    }
}

/// A handle to the runtime of this process, creating it on first use (and again in a forked
/// child, whose copy of the parent's runtime has no threads).
pub fn handle() -> PyResult<Handle> {
    let mut guard = lock();
    let pid = std::process::id();
    if let Some(owned) = guard.as_mut() {
        if owned.pid == pid {
            if let Some(rt) = &owned.runtime {
                return Ok(rt.handle().clone());
            }
            return Err(PyRuntimeError::new_err(
                "the awsiot_rs runtime has been shut down (the interpreter is exiting)",
            ));
        }
        // A forked child: the parent's runtime threads do not exist here. Never drop it (its
        // drop would wait for threads that are gone); build a fresh one.
        if let Some(stale) = owned.runtime.take() {
            std::mem::forget(stale);
        }
    }
    let workers = std::env::var("AWSIOT_RS_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4)));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("awsiot-rs")
        .enable_all()
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the tokio runtime: {e}")))?;
    let handle = runtime.handle().clone();
    *guard = Some(Owned {
        pid,
        runtime: Some(runtime),
    });
    Ok(handle)
}

/// Stops the runtime (called from `atexit` after clients were asked to disconnect).
pub fn shutdown(py: Python<'_>, timeout: Duration) {
    let runtime = {
        let mut guard = lock();
        match guard.as_mut() {
            Some(owned) if owned.pid == std::process::id() => owned.runtime.take(),
            _ => None,
        }
    };
    if let Some(rt) = runtime {
        py.detach(move || rt.shutdown_timeout(timeout));
    }
}
