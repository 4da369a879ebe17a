//! Backend counters, shown in `/healthz`. Written by one loop thread (relaxed), read by anyone.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Aligned to 128 bytes so two loop threads never share a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct IoStats {
    /// `epoll_wait` / `io_uring_enter` calls made to wait (one per loop pass).
    pub waits: AtomicU64,
    /// Extra `io_uring_enter` calls made mid-pass: every `uring_submit_batch` sends, or a full submission queue.
    pub midpass_submits: AtomicU64,
    /// Multishot receives that ended because the provided-buffer ring ran dry (re-armed, no data lost).
    pub recv_enobufs: AtomicU64,
    /// Sends put off to the next pass for lack of send slots or queue room.
    pub sends_deferred: AtomicU64,
    /// 1 once the backend was dropped without proof that the kernel is done with the memory of its operations
    /// (io_uring: the synchronous cancel timed out or is unsupported); that memory was leaked, not freed.
    pub teardown_unclean: AtomicU64,
}

impl IoStats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}
