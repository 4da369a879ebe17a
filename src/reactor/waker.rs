//! Wakes a loop thread from another thread (the feed thread, shutdown): an `eventfd` that both backends watch.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An `eventfd` counter. Waking adds 1; the loop's backend sees it readable (epoll, edge-triggered, never
/// drained) or completes a read of it (io_uring, which resets it).
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    /// `nonblocking` must match how the backend reads it: io_uring reads a blocking eventfd (a read of an
    /// `O_NONBLOCK` one would fail with `EAGAIN` instead of waiting).
    pub fn new(nonblocking: bool) -> io::Result<Self> {
        let flags = libc::EFD_CLOEXEC | if nonblocking { libc::EFD_NONBLOCK } else { 0 };
        // SAFETY: eventfd takes no pointers; a non-negative return is a new descriptor nobody else owns.
        let fd = unsafe { libc::eventfd(0, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    pub fn wake(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local; the descriptor is open for as long as `self`.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if n == 8 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        // EAGAIN: the counter is at its maximum, so a wake-up is pending anyway.
        if err.kind() == io::ErrorKind::WouldBlock {
            return Ok(());
        }
        Err(err)
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_makes_the_counter_readable() {
        let waker = Waker::new(true).unwrap();
        waker.wake().unwrap();
        waker.wake().unwrap();
        let mut value = 0u64;
        // SAFETY: reads 8 bytes into a live local.
        let n = unsafe { libc::read(waker.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
        assert_eq!((n, value), (8, 2));
    }
}
