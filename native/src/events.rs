//! What the core tells Python, queued and drained in batches. An eventfd becomes readable
//! when the queue goes from empty to non-empty: asyncio watches it (`loop.add_reader`) and
//! drains everything at once, so Python runs once per batch, never once per stream message.
//! Per-stream facts that only need their latest value (synced to a revision, an ACK that
//! changed the record) are coalesced per stream.

use crate::stream::Nack;
use bytes::Bytes;
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::Mutex;

#[derive(Debug)]
pub enum Ev {
    /// A stream asks to be admitted (its first request's node, as raw bytes).
    Open {
        sid: u64,
        protocol: &'static str,
        only_type: Option<String>,
        node: Bytes,
        peer: String,
        cert: Option<Vec<u8>>,
    },
    /// A stream ended, with the status it ended with (0: the client went away).
    Close {
        sid: u64,
        code: i32,
        message: String,
    },
    Nacked {
        sid: u64,
        type_url: String,
        nack: Nack,
    },
    Names {
        sid: u64,
        type_url: String,
        names: Vec<String>,
        wildcard: bool,
    },
    /// A fleet was asked for that Python has not published yet.
    Want { fleet: String },
}

#[derive(Default)]
pub struct Batch {
    pub events: Vec<Ev>,
    /// Streams whose state changed: the latest revision each is synced to (0: none anew),
    /// when (CLOCK_MONOTONIC seconds, as Python's time.monotonic()), and the types it ACKed
    /// (bit i: `types::ORDER[i]`; bit 31: any other type).
    pub changed: HashMap<u64, (u64, f64, u32)>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.changed.is_empty()
    }
}

pub struct EventQueue {
    batch: Mutex<Batch>,
    fd: RawFd,
}

impl EventQueue {
    pub fn new() -> std::io::Result<EventQueue> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(EventQueue {
            batch: Mutex::new(Batch::default()),
            fd,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    fn with(&self, f: impl FnOnce(&mut Batch)) {
        let was_empty = {
            let mut b = self.batch.lock().expect("event queue");
            let was = b.is_empty();
            f(&mut b);
            was
        };
        if was_empty {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
            unsafe { libc::write(self.fd, (&one as *const u64).cast(), 8) };
        }
    }

    pub fn push(&self, ev: Ev) {
        self.with(|b| b.events.push(ev));
    }

    /// Stream `sid` changed; `synced`: the revision it is now synced to (0: not synced anew);
    /// `acked`: the types it ACKed (a bit mask).
    pub fn changed(&self, sid: u64, synced: u64, acked: u32) {
        let at = if synced != 0 { monotonic() } else { 0.0 };
        self.with(|b| {
            let r = b.changed.entry(sid).or_insert((0, 0.0, 0));
            if synced > r.0 {
                (r.0, r.1) = (synced, at);
            }
            r.2 |= acked;
        });
    }

    pub fn drain(&self) -> Batch {
        let mut buf = 0u64;
        // SAFETY: reads at most 8 bytes into a live u64 (resets the counter; EAGAIN is fine).
        unsafe { libc::read(self.fd, (&mut buf as *mut u64).cast(), 8) };
        std::mem::take(&mut *self.batch.lock().expect("event queue"))
    }
}

impl Drop for EventQueue {
    fn drop(&mut self) {
        // SAFETY: closes the eventfd this queue owns, once.
        unsafe { libc::close(self.fd) };
    }
}

/// CLOCK_MONOTONIC in seconds: the clock of Python's time.monotonic().
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
