//! The end of a loop thread: its I/O backend goes first, and if the backend could not prove that the kernel is
//! done with the memory of its operations (`IoStats::teardown_unclean`: an io_uring cancel that timed out or is
//! unsupported), the broadcast chunks those operations may still read — the logs, the topics, the pinned chunks,
//! the connections — are leaked rather than freed. Once, at the loop's end, bounded by what the loop held.

use std::sync::atomic::Ordering::Relaxed;

use super::Shard;
use crate::reactor::Reactor;

impl<R: Reactor> Drop for Shard<R> {
    fn drop(&mut self) {
        // SAFETY: `io` is dropped here only, once, and not used afterwards (`self` is being dropped).
        unsafe { std::mem::ManuallyDrop::drop(&mut self.io) };
        if self.shared.io[self.id].teardown_unclean.load(Relaxed) == 0 {
            return;
        }
        let held: u64 = self.streams.iter().map(|s| s.log.retained_bytes()).sum::<u64>() + self.topic_log_bytes;
        tracing::warn!(
            shard = self.id,
            leaked_bytes = held + self.pins.bytes(),
            "loop ended with I/O possibly in flight: its broadcast chunks are leaked rather than freed"
        );
        std::mem::forget(std::mem::take(&mut self.streams));
        std::mem::forget(std::mem::replace(&mut self.topics, crate::fanout::Topics::new(self.settings.topics)));
        std::mem::forget(std::mem::replace(&mut self.pins, crate::fanout::Pins::new(0)));
        std::mem::forget(std::mem::take(&mut self.conns));
    }
}
