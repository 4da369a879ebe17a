//! Backend counters, shown in `/healthz`. Written by one loop thread (relaxed), read by anyone.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::metrics::declare_stats;

declare_stats! {
    prefix "wsgate_io_";
    /// One loop thread's backend counters (exported as `wsgate_io_*`). Aligned to 128 bytes so two loop threads
    /// never share a cache line.
    #[derive(Debug, Default)]
    #[repr(align(128))]
    pub struct IoStats {
        /// `epoll_wait` / `io_uring_enter` calls made to wait (one per loop pass).
        pub counter waits: AtomicU64,
        /// Extra `io_uring_enter` calls made mid-pass: every `uring_submit_batch` sends, or a full submission
        /// queue.
        pub counter midpass_submits: AtomicU64,
        /// Multishot receives that ended because the provided-buffer ring ran dry (re-armed, no data lost).
        pub counter recv_enobufs: AtomicU64,
        /// Sends put off to the next pass for lack of send slots or queue room.
        pub counter sends_deferred: AtomicU64,
        /// Bytes read from client sockets.
        pub counter received_bytes: AtomicU64,
        /// Bytes written to client sockets.
        pub counter sent_bytes: AtomicU64,
        /// 1 once the backend was dropped without proof that the kernel is done with the memory of its
        /// operations (io_uring: the synchronous cancel timed out or is unsupported); that memory was leaked, not
        /// freed.
        pub gauge teardown_unclean: AtomicU64,
    }
}

impl IoStats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Adds `n` (byte counts, on every send and receive): a relaxed load and store, no locked instruction.
    /// INVARIANT: only the loop thread that owns the backend writes its `IoStats`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}
