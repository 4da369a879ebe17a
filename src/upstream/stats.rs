//! Counters the feed thread writes and other threads (metrics, health checks) read.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

use super::record::Dropped;
use super::sequence::Sequencer;

/// State of the upstream client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum UpstreamState {
    /// No upstream configured (or the feed thread has stopped).
    Disabled = 0,
    /// A connection attempt is in flight.
    Connecting = 1,
    /// Connected; lines are being read.
    Connected = 2,
    /// Waiting before the next attempt.
    Backoff = 3,
}

impl UpstreamState {
    /// Lower-case name: `"disabled"`, `"connecting"`, `"connected"`, `"backoff"`.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamState::Disabled => "disabled",
            UpstreamState::Connecting => "connecting",
            UpstreamState::Connected => "connected",
            UpstreamState::Backoff => "backoff",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => UpstreamState::Connecting,
            2 => UpstreamState::Connected,
            3 => UpstreamState::Backoff,
            _ => UpstreamState::Disabled,
        }
    }
}

impl fmt::Display for UpstreamState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Feed counters, read with relaxed loads (each value is exact, values are not a consistent snapshot).
///
/// INVARIANT: only the feed thread writes, so increments are plain load + store, not read-modify-write.
#[derive(Debug, Default)]
pub struct FeedStats {
    upstream_state: AtomicU8,
    messages_published: AtomicU64,
    /// Records not forwarded, per [`Dropped`] reason (indexed by [`Dropped::index`]).
    dropped: [AtomicU64; Dropped::ALL.len()],
    epoch: AtomicU64,
    last_seq: AtomicU64,
    topics: AtomicU64,
    topics_expired: AtomicU64,
    partial_lines_discarded: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    ingest_publishers: AtomicU64,
    ingest_refused: AtomicU64,
    backpressure_pauses: AtomicU64,
}

/// Adds `n` to a single-writer counter and returns the new value.
fn bump(counter: &AtomicU64, n: u64) -> u64 {
    let v = counter.load(Relaxed) + n;
    counter.store(v, Relaxed);
    v
}

impl FeedStats {
    /// State of the upstream client connection.
    pub fn upstream_state(&self) -> UpstreamState {
        UpstreamState::from_u8(self.upstream_state.load(Relaxed))
    }
    /// Messages handed to the sink, from all sources.
    pub fn messages_published(&self) -> u64 {
        self.messages_published.load(Relaxed)
    }
    /// Records not forwarded for `reason`.
    pub fn dropped(&self, reason: Dropped) -> u64 {
        self.dropped[reason.index()].load(Relaxed)
    }
    /// Complete lines dropped because they were not valid UTF-8.
    pub fn lines_invalid_utf8(&self) -> u64 {
        self.dropped(Dropped::InvalidUtf8)
    }
    /// Lines (or binary payloads) dropped because they were longer than `max_line_bytes`.
    pub fn lines_too_long(&self) -> u64 {
        self.dropped(Dropped::TooLong)
    }
    /// The feed's epoch: names its sequence space (see `upstream::sequence`).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Relaxed)
    }
    /// The last sequence number handed out.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Relaxed)
    }
    /// Topics the feed knows now, and topics it forgot for idleness so far.
    pub fn topics(&self) -> (u64, u64) {
        (self.topics.load(Relaxed), self.topics_expired.load(Relaxed))
    }
    /// Unterminated lines discarded because their connection ended (upstream or publisher).
    pub fn partial_lines_discarded(&self) -> u64 {
        self.partial_lines_discarded.load(Relaxed)
    }
    /// Upstream connections established after the first one (successful reconnects).
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Relaxed)
    }
    /// Upstream attempts that failed (resolve, connect, or connect timeout), each followed by a backoff.
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Relaxed)
    }
    /// Publisher connections currently open on the ingest listener.
    pub fn ingest_publishers(&self) -> u64 {
        self.ingest_publishers.load(Relaxed)
    }
    /// Publisher connections refused because the limit was reached.
    pub fn ingest_refused(&self) -> u64 {
        self.ingest_refused.load(Relaxed)
    }
    /// Times the feed stopped reading its sources because the sink had no room (backpressure).
    pub fn backpressure_pauses(&self) -> u64 {
        self.backpressure_pauses.load(Relaxed)
    }

    pub(super) fn set_upstream_state(&self, s: UpstreamState) {
        self.upstream_state.store(s as u8, Relaxed);
    }
    pub(super) fn add_published(&self, n: u64) {
        bump(&self.messages_published, n);
    }
    pub(super) fn add_dropped(&self, reason: Dropped) -> u64 {
        bump(&self.dropped[reason.index()], 1)
    }
    pub(super) fn set_sequencer(&self, seq: &Sequencer) {
        self.epoch.store(seq.epoch(), Relaxed);
        self.last_seq.store(seq.last_seq(), Relaxed);
        self.topics.store(seq.topics() as u64, Relaxed);
        self.topics_expired.store(seq.expired(), Relaxed);
    }
    pub(super) fn add_partial_discarded(&self) {
        bump(&self.partial_lines_discarded, 1);
    }
    pub(super) fn add_reconnect(&self) {
        bump(&self.reconnects, 1);
    }
    pub(super) fn add_connect_failure(&self) {
        bump(&self.connect_failures, 1);
    }
    pub(super) fn set_ingest_publishers(&self, n: usize) {
        self.ingest_publishers.store(n as u64, Relaxed);
    }
    pub(super) fn add_ingest_refused(&self) -> u64 {
        bump(&self.ingest_refused, 1)
    }
    pub(super) fn add_backpressure_pause(&self) -> u64 {
        bump(&self.backpressure_pauses, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let stats = FeedStats::default();
        assert_eq!(stats.upstream_state(), UpstreamState::Disabled);
        for s in [UpstreamState::Disabled, UpstreamState::Connecting, UpstreamState::Connected, UpstreamState::Backoff]
        {
            stats.set_upstream_state(s);
            assert_eq!(stats.upstream_state(), s);
        }
        assert_eq!(UpstreamState::Connected.as_str(), "connected");
    }
}
