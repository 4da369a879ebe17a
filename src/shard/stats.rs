//! Counters. Each loop thread writes only its own [`ShardStats`] (relaxed atomics, one cache line apart);
//! readers sum them. Nothing here is on a lock.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::Arc;
use std::time::Instant;

use crate::reactor::IoStats;
use crate::upstream::{Dropped, FeedStats, PublishInbox};

/// One loop thread's counters. Aligned to 128 bytes so two threads never share a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ShardStats {
    /// Connections currently held (any phase).
    pub connections: AtomicU64,
    /// Connections upgraded to WebSocket or opened as event streams (`/sse`), ever.
    pub upgraded: AtomicU64,
    /// HTTP requests refused (4xx/5xx), ever.
    pub rejected: AtomicU64,
    /// Connections failed for a protocol violation, ever.
    pub protocol_errors: AtomicU64,
    /// Connections closed as slow consumers, ever.
    pub slow_consumers: AtomicU64,
    /// Feed messages received by this thread.
    pub feed_messages: AtomicU64,
    /// Feed batches dropped because this thread's queue was full (written by the feed thread).
    pub feed_batches_dropped: AtomicU64,
    /// Batches and bytes in this thread's queue from the feed thread (the feed thread adds, this thread takes).
    pub feed_queue_batches: AtomicU64,
    pub feed_queue_bytes: AtomicU64,
    /// This thread no longer takes batches (it ended): its queue does not hold the feed back.
    pub feed_queue_closed: AtomicBool,
    /// Bytes of the broadcast log this thread retains (set after each trim).
    pub log_bytes: AtomicU64,
    /// Bytes of topic logs this thread retains (history and what subscribers have yet to receive), the history
    /// part of it, and its topics (set after each trim).
    pub topic_log_bytes: AtomicU64,
    pub history_bytes: AtomicU64,
    pub loop_topics: AtomicU64,
    /// Bytes of broadcast batches kept by closing connections for the rest of a frame (see `conn::Pinned`).
    pub pinned_bytes: AtomicU64,
    /// Sends cancelled because their connection fell more than `max_lag_bytes` behind (io_uring), ever.
    pub lagging_sends_cancelled: AtomicU64,
    /// Closing connections cut without their close frame, because the loop already kept `max_lag_bytes` of
    /// batches for other closing connections, ever.
    pub closing_cut: AtomicU64,
    /// Connections closed by a shutdown (1001) or restart (1012) drain, with a reconnect hint, ever.
    pub drain_closes: AtomicU64,
}

impl ShardStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Relaxed);
    }
}

/// What the loop threads and the control thread share: read-mostly, never on the per-message path.
pub struct Shared {
    /// Set once, when the gateway starts draining (shutdown or restart): loops stop accepting and close their
    /// clients; `/healthz` says so. `stop_mode` says which drain it is.
    pub shutdown: AtomicBool,
    /// Why it drains: a `StopMode` as `StopMode::to_u8` (0 until set). Written before `shutdown`, with release
    /// ordering on `shutdown`, so a loop that sees `shutdown` (acquire) sees the mode.
    pub stop_mode: AtomicU8,
    pub shards: Arc<[ShardStats]>,
    pub feed: Option<Arc<FeedStats>>,
    /// Where client-published messages go to be sequenced with the feed (none without a feed).
    pub publish: Option<Arc<PublishInbox>>,
    pub started: Instant,
    /// The I/O backend the loop threads run on (`epoll` or `uring`).
    pub io_backend: &'static str,
    /// Each loop thread's backend counters.
    pub io: Box<[Arc<IoStats>]>,
}

impl Shared {
    /// Starts draining for `mode`, unless a drain already started (the first one wins: a SIGTERM during a
    /// restart drain does not turn its 1012 closes into 1001).
    pub fn begin_stop(&self, mode: super::drain::StopMode) {
        let _ = self.stop_mode.compare_exchange(0, mode.to_u8(), Relaxed, Relaxed);
        self.shutdown.store(true, Release);
    }

    /// The drain under way, if any.
    pub fn stopping(&self) -> Option<super::drain::StopMode> {
        if !self.shutdown.load(Acquire) {
            return None;
        }
        // A `shutdown` set without a mode (by older code paths) is a plain shutdown.
        Some(super::drain::StopMode::from_u8(self.stop_mode.load(Relaxed)).unwrap_or(super::drain::StopMode::Shutdown))
    }

    /// Sum of one counter over all loop threads.
    pub fn total(&self, pick: impl Fn(&ShardStats) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| pick(s).load(Relaxed)).sum()
    }

    /// Sum of one backend counter over all loop threads.
    pub fn io_total(&self, pick: impl Fn(&IoStats) -> &AtomicU64) -> u64 {
        self.io.iter().map(|s| pick(s).load(Relaxed)).sum()
    }

    /// The `/healthz` body.
    pub fn health_json(&self) -> String {
        let upstream = self.feed.as_ref().map_or("disabled", |f| f.upstream_state().as_str());
        let published = self.feed.as_ref().map_or(0, |f| f.messages_published());
        let pauses = self.feed.as_ref().map_or(0, |f| f.backpressure_pauses());
        let (epoch, feed_seq, (topics, topics_expired)) =
            self.feed.as_ref().map_or((0, 0, (0, 0)), |f| (f.epoch(), f.last_seq(), f.topics()));
        let dropped: Vec<String> = Dropped::ALL
            .iter()
            .map(|&r| format!("\"{}\":{}", r.as_str(), self.feed.as_ref().map_or(0, |f| f.dropped(r))))
            .collect();
        let dropped = dropped.join(",");
        let status = if self.shutdown.load(Relaxed) { "shutting_down" } else { "ok" };
        let mem = super::memory::usage();
        let num = |v: Option<u64>| v.map_or_else(|| "null".to_string(), |v| v.to_string());
        format!(
            "{{\"status\":\"{status}\",\"connections\":{},\"threads\":{},\"upstream\":\"{upstream}\",\
             \"feed_messages\":{published},\"epoch\":{epoch},\"feed_seq\":{feed_seq},\"topics\":{topics},\
             \"topics_expired\":{topics_expired},\"feed_dropped\":{{{dropped}}},\"feed_batches_dropped\":{},\"feed_backpressure_pauses\":{pauses},\
             \"slow_consumers\":{},\"lagging_sends_cancelled\":{},\"closing_cut\":{},\"uptime_s\":{},\
             \"feed_queue_bytes\":{},\"log_bytes\":{},\"topic_log_bytes\":{},\"history_bytes\":{},\
             \"loop_topics\":{},\"pinned_bytes\":{},\
             \"rss_bytes\":{},\"heap_live_bytes\":{},\"heap_free_bytes\":{},\
             \"io\":\"{}\",\"io_waits\":{},\"io_midpass_submits\":{},\"io_recv_enobufs\":{},\"io_sends_deferred\":{}}}\n",
            self.total(|s| &s.connections),
            self.shards.len(),
            self.total(|s| &s.feed_batches_dropped),
            self.total(|s| &s.slow_consumers),
            self.total(|s| &s.lagging_sends_cancelled),
            self.total(|s| &s.closing_cut),
            self.started.elapsed().as_secs(),
            self.total(|s| &s.feed_queue_bytes),
            self.total(|s| &s.log_bytes),
            self.total(|s| &s.topic_log_bytes),
            self.total(|s| &s.history_bytes),
            self.total(|s| &s.loop_topics),
            self.total(|s| &s.pinned_bytes),
            num(mem.rss),
            num(mem.heap_live),
            num(mem.heap_free),
            self.io_backend,
            self.io_total(|s| &s.waits),
            self.io_total(|s| &s.midpass_submits),
            self.io_total(|s| &s.recv_enobufs),
            self.io_total(|s| &s.sends_deferred),
        )
    }
}
