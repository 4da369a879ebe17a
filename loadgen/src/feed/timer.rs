//! A CLOCK_MONOTONIC timerfd armed at absolute times: nanosecond wake-ups inside the mio loop (epoll's own
//! timeout only has millisecond resolution, which would make a 1 ms tick wobble by a whole tick).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

#[derive(Debug)]
pub struct Timer {
    fd: OwnedFd,
}

impl Timer {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with constant arguments; the returned fd is checked before use.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Timer { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Fires once at CLOCK_MONOTONIC `at_ns` (at once if that has passed). Replaces any earlier arming.
    pub fn arm_at(&self, at_ns: u64) -> io::Result<()> {
        let at_ns = at_ns.max(1); // an all-zero it_value would disarm the timer
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec on our stack; a null old_value is allowed.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Consumes an expiry so that the next one is a fresh edge for epoll.
    pub fn clear(&self) {
        let mut expirations = 0u64;
        // SAFETY: reads at most 8 bytes into a u64 we own; EAGAIN (nothing expired) is fine to ignore.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&mut expirations as *mut u64).cast(), 8) };
    }
}

impl Source for Timer {
    fn register(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        SourceFd(&self.fd.as_raw_fd()).register(registry, token, interests)
    }

    fn reregister(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        SourceFd(&self.fd.as_raw_fd()).reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        SourceFd(&self.fd.as_raw_fd()).deregister(registry)
    }
}

/// Lets this thread's timers fire within `slack_ns` of their deadline (the default slack is 50 µs).
pub fn set_timer_slack(slack_ns: u64) {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches only this thread's scheduling state.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, slack_ns as libc::c_ulong, 0, 0, 0) };
}
