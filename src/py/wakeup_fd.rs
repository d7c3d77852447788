//! The file descriptor that wakes an asyncio loop in the notifier's reader mode (Unix): the
//! loop watches it with `loop.add_reader`; producers make it readable, the loop's drain makes
//! it unreadable again.
//!
//! On Linux it is an `eventfd` (a kernel counter: an 8-byte write to wake, an 8-byte read to
//! reset), elsewhere a non-blocking socketpair (one byte written, every byte read back). Both
//! behave the same for the notifier; the eventfd is cheaper on both sides (no socket buffer to
//! allocate and free per wake-up), which matters because a quiet loop pays one wake-up per
//! result.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

/// A readable-when-woken file descriptor (see the module documentation).
pub struct WakeupFd {
    #[cfg(target_os = "linux")]
    counter: std::fs::File,
    #[cfg(not(target_os = "linux"))]
    reader: std::os::unix::net::UnixStream,
    #[cfg(not(target_os = "linux"))]
    writer: std::os::unix::net::UnixStream,
}

impl WakeupFd {
    /// A new, unwoken descriptor (non-blocking, close-on-exec).
    #[cfg(target_os = "linux")]
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            counter: new_eventfd()?,
        })
    }

    /// A new, unwoken descriptor (non-blocking, close-on-exec).
    #[cfg(not(target_os = "linux"))]
    pub fn new() -> io::Result<Self> {
        let (reader, writer) = std::os::unix::net::UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        Ok(Self { reader, writer })
    }

    /// Makes the descriptor readable. Never blocks: if it cannot be written (an eventfd
    /// counter at its maximum, a full socket buffer), a wake-up is pending already.
    pub fn wake(&self) {
        #[cfg(target_os = "linux")]
        let _ = (&self.counter).write(&1u64.to_ne_bytes());
        #[cfg(not(target_os = "linux"))]
        let _ = (&self.writer).write(&[1]);
    }

    /// Takes every pending wake-up, so that the descriptor is no longer readable.
    pub fn consume(&self) {
        #[cfg(target_os = "linux")]
        {
            // One read resets the counter (not in semaphore mode); none pending = EAGAIN.
            let mut value = [0u8; 8];
            let _ = (&self.counter).read(&mut value);
        }
        #[cfg(not(target_os = "linux"))]
        {
            let mut sink = [0u8; 512];
            while let Ok(n) = (&self.reader).read(&mut sink) {
                if n < sink.len() {
                    break;
                }
            }
        }
    }

    /// The descriptor to watch for readability.
    pub fn fd(&self) -> RawFd {
        #[cfg(target_os = "linux")]
        return self.counter.as_raw_fd();
        #[cfg(not(target_os = "linux"))]
        return self.reader.as_raw_fd();
    }
}

/// A non-blocking, close-on-exec eventfd with a zero counter.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn new_eventfd() -> io::Result<std::fs::File> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: eventfd(2) takes no pointers and has no preconditions; it returns a new file
    // descriptor or -1 with errno set.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd(2): open, and owned by nothing else.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::WakeupFd;

    /// Whether the eventfd's counter is non-zero, i.e. the loop would see it readable (read
    /// from `/proc/self/fdinfo`, which unlike a read does not consume it).
    fn readable(w: &WakeupFd) -> bool {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", w.fd())).unwrap();
        // An eventfd reports its counter there (in hexadecimal on some kernels).
        let count = info
            .lines()
            .find_map(|l| l.strip_prefix("eventfd-count:"))
            .unwrap()
            .trim();
        u64::from_str_radix(count, 16).unwrap() != 0
    }

    #[test]
    fn wakes_coalesce_and_one_consume_clears_them_all() {
        let w = WakeupFd::new().unwrap();
        assert!(!readable(&w), "a new descriptor is not woken");
        for _ in 0..1000 {
            w.wake();
        }
        assert!(readable(&w));
        w.consume();
        assert!(!readable(&w), "one consume takes every pending wake-up");
        w.consume(); // nothing pending: must not block
        assert!(!readable(&w));
        w.wake();
        assert!(readable(&w));
    }

    #[test]
    fn on_linux_it_is_an_eventfd() {
        let w = WakeupFd::new().unwrap();
        let target = std::fs::read_link(format!("/proc/self/fd/{}", w.fd())).unwrap();
        assert_eq!(target.to_string_lossy(), "anon_inode:[eventfd]");
    }
}
