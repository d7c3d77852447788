//! Forwards the core's `log` records to the Python logger `awsiot_rs`.
//!
//! Records are queued (bounded: the oldest are dropped and counted) and the loop is woken
//! through the most recent notifier (registered as a `Wakeup`, so this module does not depend
//! on the notifier); the loop thread emits them with `logging`. No tokio thread
//! ever takes the GIL. The level follows the Python logger (`set_level` is called with its
//! effective level whenever a client is created or connects, and on every drain).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Weak};

use pyo3::prelude::*;
use pyo3::types::PyList;

const CAPACITY: usize = 10_000;

struct Record {
    level: u8,
    target: String,
    message: String,
}

static RECORDS: Mutex<VecDeque<Record>> = Mutex::new(VecDeque::new());
static WAKER: Mutex<Option<Weak<dyn Wakeup>>> = Mutex::new(None);
static DROPPED: AtomicU64 = AtomicU64::new(0);

fn records() -> MutexGuard<'static, VecDeque<Record>> {
    RECORDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Wakes an asyncio loop so that it drains the queued records (implemented by the notifier).
pub trait Wakeup: Send + Sync {
    /// Signals the loop (cheap when already signalled; never takes the GIL).
    fn wake_loop(&self);
}

/// The notifier that wakes the loop for new records (the most recently created one).
pub fn set_waker(w: Weak<dyn Wakeup>) {
    *WAKER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(w);
}

fn python_level(l: log::Level) -> u8 {
    match l {
        log::Level::Error => 40,
        log::Level::Warn => 30,
        log::Level::Info => 20,
        log::Level::Debug => 10,
        log::Level::Trace => 5,
    }
}

struct Bridge;

impl log::Log for Bridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // Our own records at the configured level; dependencies (rustls, ...) warnings only.
        metadata.level() <= log::max_level()
            && (metadata.target().starts_with("_native") || metadata.level() <= log::Level::Warn)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        {
            let mut q = records();
            if q.len() >= CAPACITY {
                q.pop_front();
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(Record {
                level: python_level(record.level()),
                target: record.target().to_string(),
                message: record.args().to_string(),
            });
        }
        let waker = WAKER
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .and_then(Weak::upgrade);
        if let Some(w) = waker {
            w.wake_loop();
        }
    }

    fn flush(&self) {}
}

static BRIDGE: Bridge = Bridge;

/// Installs the bridge (once per process).
pub fn install() {
    if log::set_logger(&BRIDGE).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

/// Sets the core's level from a Python logging level number.
#[pyfunction]
pub fn set_log_level(level: i32) {
    let filter = match level {
        l if l > 40 => log::LevelFilter::Error,
        l if l > 30 => log::LevelFilter::Error,
        l if l > 20 => log::LevelFilter::Warn,
        l if l > 10 => log::LevelFilter::Info,
        l if l > 5 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    log::set_max_level(filter);
}

/// Takes the queued records as `(level, target, message)` tuples.
#[pyfunction]
pub fn drain_logs(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let taken: Vec<Record> = records().drain(..).collect();
    let out = PyList::empty(py);
    for r in taken {
        out.append((r.level, r.target, r.message))?;
    }
    Ok(out)
}

/// How many records were dropped because the queue was full.
#[pyfunction]
pub fn dropped_logs() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}
