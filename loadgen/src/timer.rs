//! A `timerfd` armed at absolute CLOCK_MONOTONIC deadlines, so the event loop wakes with nanosecond precision
//! (epoll's own timeout has millisecond granularity, which would add up to 1 ms of client-side lateness to every
//! scheduled echo send).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub struct TimerFd {
    fd: OwnedFd,
    armed_ns: u64,
}

impl TimerFd {
    pub fn new() -> io::Result<Self> {
        // SAFETY: timerfd_create takes no pointers.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(TimerFd { fd: unsafe { OwnedFd::from_raw_fd(fd) }, armed_ns: 0 })
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Fires once at CLOCK_MONOTONIC `deadline_ns` (at once if it has passed). No syscall if already armed there.
    pub fn arm_at(&mut self, deadline_ns: u64) -> io::Result<()> {
        let deadline_ns = deadline_ns.max(1);
        if deadline_ns == self.armed_ns {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: timerfd_settime reads one itimerspec we own; the old-value pointer may be null.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed_ns = deadline_ns;
        Ok(())
    }

    /// Clears the expiration count after the timer fired (edge-triggered registration).
    pub fn clear(&mut self) {
        let mut buf = [0u8; 8];
        // SAFETY: read writes at most 8 bytes into a live local buffer of 8 bytes.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        self.armed_ns = 0;
    }
}
