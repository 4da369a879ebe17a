//! Whether a ring's teardown was clean: every operation that may read or write our memory has ended.
//!
//! Dropping the reactor first cancels everything still armed, synchronously (`IORING_REGISTER_SYNC_CANCEL`,
//! bounded). When that cannot be confirmed — the cancel timed out, or the kernel lacks it (before 6.0) — an
//! operation may still be in flight and the kernel may still read the memory it points to: then that memory is
//! leaked rather than freed (the send slots' private bytes and the scratch headers here; the broadcast chunks in
//! the loop, which checks `IoStats::teardown_unclean`). Leaking a loop's buffers once, at its end, is bounded;
//! a use-after-free by the kernel is not.

/// Whether the outcome of the synchronous cancel (`Ok`, or the OS error number) proves nothing is in flight.
pub fn clean(result: Result<(), Option<i32>>) -> bool {
    match result {
        Ok(()) => true,
        Err(Some(libc::ENOENT)) => true, // nothing was in flight
        // ETIME: some operation did not end within the timeout; EINVAL/EOPNOTSUPP: no synchronous cancel here;
        // anything else: unknown. None of these proves the kernel is done with our memory.
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_confirmed_cancel_is_clean() {
        assert!(clean(Ok(())));
        assert!(clean(Err(Some(libc::ENOENT))));
        for errno in [libc::ETIME, libc::EINVAL, libc::EOPNOTSUPP, libc::EINTR] {
            assert!(!clean(Err(Some(errno))), "{errno}");
        }
        assert!(!clean(Err(None)));
    }
}
