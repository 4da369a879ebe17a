//! Can this process use the io_uring backend? Asked once at start (`--io auto|uring`), on a throw-away ring
//! built with the production flags.
//!
//! The opcode probe cannot tell multishot accept/receive apart from their one-shot forms (same opcode, a flag
//! in `ioprio`), so those, and the provided-buffer ring, are checked by using them on a loopback connection.

use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, IoUring, Probe};

use super::{build_ring, BufRing, UringConfig};

/// Environment variable that makes the probe fail with its value as the reason (for tests of the fallback).
pub const FORCE_FALLBACK_ENV: &str = "WSGATE_IO_FORCE_FALLBACK";

/// `Ok` when the kernel and the process's limits allow the backend with `cfg`; otherwise why not, in words.
pub fn probe(cfg: &UringConfig) -> Result<(), String> {
    if let Ok(reason) = std::env::var(FORCE_FALLBACK_ENV) {
        return Err(format!("{reason} ({FORCE_FALLBACK_ENV} is set)"));
    }
    let mut ring = build_ring(cfg, 8).map_err(|e| setup_error(&e))?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| format!("opcode probe failed: {e}"))?;
    let needed = [
        (opcode::Accept::CODE, "ACCEPT"),
        (opcode::Recv::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::Read::CODE, "READ"),
    ];
    if let Some((_, name)) = needed.iter().find(|(code, _)| !probe.is_supported(*code)) {
        return Err(format!("the kernel lacks IORING_OP_{name}"));
    }
    let bufs = BufRing::register(&ring.submitter(), 2, 64, 0)
        .map_err(|e| format!("provided-buffer rings unavailable (kernel 5.19+ needed): {e}"))?;
    functional_check(&mut ring, bufs).map_err(|e| format!("multishot accept/receive unavailable: {e}"))
}

fn functional_check(ring: &mut IoUring, _bufs: BufRing) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let accept = opcode::AcceptMulti::new(Fd(listener.as_raw_fd())).build().user_data(1);
    // SAFETY: a multishot accept points at no memory; the listener outlives the ring's use below (the ring is
    // dropped, which cancels the accept, before this function's locals).
    unsafe { ring.submission().push(&accept) }.map_err(|_| io::Error::other("submission queue full"))?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let accepted = wait_one(ring)?;
    if accepted.result() < 0 || !cqueue::more(accepted.flags()) {
        return Err(io::Error::other(format!("accept completed with {} and no MORE flag", accepted.result())));
    }
    let fd = accepted.result();
    client.write_all(b"x")?;
    let recv = opcode::RecvMulti::new(Fd(fd), 0).build().user_data(2);
    // SAFETY: the receive writes only into the registered buffer ring, which stays mapped for the process's life.
    unsafe { ring.submission().push(&recv) }.map_err(|_| io::Error::other("submission queue full"))?;
    let received = wait_one(ring)?;
    let ok =
        received.result() == 1 && cqueue::buffer_select(received.flags()).is_some() && cqueue::more(received.flags());
    // The accepted descriptor is closed with the ring gone (dropping the ring cancels the receive first).
    drop(std::mem::replace(ring, IoUring::new(2)?));
    // SAFETY: `fd` came from the accept completion above, is owned by nothing else, and no operation uses it now.
    unsafe { libc::close(fd) };
    if !ok {
        return Err(io::Error::other(format!(
            "receive completed with {} and flags {:#x}",
            received.result(),
            received.flags()
        )));
    }
    Ok(())
}

fn wait_one(ring: &mut IoUring) -> io::Result<cqueue::Entry> {
    let ts = Timespec::new().sec(2);
    match ring.submitter().submit_with_args(1, &SubmitArgs::new().timespec(&ts)) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
        Err(e) => return Err(e),
    }
    ring.completion().next().ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))
}

fn setup_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        // A kernel built without io_uring, or a seccomp filter whose answer is ENOSYS (podman's default profile
        // answers every syscall it does not list so, io_uring's among them).
        Some(libc::ENOSYS) => {
            "io_uring_setup is not implemented (a kernel without io_uring, or a seccomp filter that says so)".into()
        }
        Some(libc::EPERM) => {
            let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").unwrap_or_default();
            format!("io_uring is not permitted (kernel.io_uring_disabled = {}, or a seccomp filter)", disabled.trim())
        }
        Some(libc::EINVAL) => {
            "the kernel refuses the ring flags SINGLE_ISSUER|DEFER_TASKRUN (kernel 6.1+ needed)".into()
        }
        Some(libc::ENOMEM) => "not enough locked memory for the ring (ulimit -l)".into(),
        _ => format!("ring setup failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_fallback_names_the_reason() {
        // The variable is read only by the probe; setting it here affects no other test in this binary.
        let err = probe_with_env("unit test");
        assert!(err.contains("unit test"), "{err}");
    }

    fn probe_with_env(reason: &str) -> String {
        // SAFETY: test binaries run tests in threads, but no other test reads or writes this variable.
        unsafe { std::env::set_var(FORCE_FALLBACK_ENV, reason) };
        let result = probe(&UringConfig::default());
        // SAFETY: as above.
        unsafe { std::env::remove_var(FORCE_FALLBACK_ENV) };
        result.unwrap_err()
    }
}
