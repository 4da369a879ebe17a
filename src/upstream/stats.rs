//! Counters the feed thread writes and other threads (metrics, health checks) read.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

use super::record::Dropped;
use super::sequence::Sequencer;
use crate::metrics::{declare_stats, LabelSet, PerLabel};

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

declare_stats! {
    prefix "wsgate_";
    /// Feed counters, read with relaxed loads (each value is exact, values are not a consistent snapshot); each
    /// field is a metric of `/metrics`, named after it (see `metrics::declare_stats!`).
    ///
    /// INVARIANT: only the feed thread writes, so increments are plain load + store, not read-modify-write.
    #[derive(Debug, Default)]
    pub struct FeedStats {
        /// Messages the feed forwarded to the loop threads, from every source.
        counter feed_messages_published: AtomicU64,
        /// Feed records not forwarded, by reason (see docs/feed-protocol.md).
        counter feed_dropped: PerLabel<Dropped, { Dropped::ALL.len() }>,
        /// The feed's epoch: names its sequence space (positions of another epoch are foreign).
        gauge feed_epoch: AtomicU64,
        /// The last sequence number the feed handed out.
        gauge feed_last_seq: AtomicU64,
        /// Topics the feed knows now.
        gauge feed_topics: AtomicU64,
        /// Topics the feed forgot for idleness (`topic_idle_expiry`).
        counter feed_topics_expired: AtomicU64,
        /// Unterminated records discarded because their connection ended (upstream or publisher).
        counter feed_partial_lines_discarded: AtomicU64,
        /// Times the feed stopped reading its sources because a loop thread's queue had no room (backpressure).
        counter feed_backpressure_pauses: AtomicU64,
        /// Upstream connections established after the first one (successful reconnects).
        counter upstream_reconnects: AtomicU64,
        /// Upstream connection attempts that failed (resolve, connect, or connect timeout).
        counter upstream_connect_failures: AtomicU64,
        /// 1 while the upstream has been silent (no message) for `upstream_silence` or longer.
        gauge upstream_silent: AtomicU64,
        /// Times the upstream fell silent for `upstream_silence`.
        counter upstream_silences: AtomicU64,
        /// Upstream connections dropped and made again because they were silent (`upstream_silence_reconnect`).
        counter upstream_silence_reconnects: AtomicU64,
        /// Jumps forward in the upstream's own sequence numbers (`upstream_seq_field`): messages lost upstream
        /// of the gateway, or while it was disconnected.
        counter upstream_seq_gaps: AtomicU64,
        /// Messages missing in those jumps (the sum of their sizes).
        counter upstream_seq_missing: AtomicU64,
        /// Upstream sequence numbers that went backwards or repeated (an upstream restart or a replay).
        counter upstream_seq_resets: AtomicU64,
        /// Publisher connections open on the ingest listener.
        gauge ingest_publishers: AtomicU64,
        /// Publisher connections refused because the limit was reached.
        counter ingest_refused: AtomicU64,
    }
    internal {
        upstream_state: AtomicU8,
    }
}

impl LabelSet for Dropped {
    const LABEL: &'static str = "reason";
    fn values() -> &'static [&'static str] {
        const NAMES: [&str; Dropped::ALL.len()] = {
            let mut names = [""; Dropped::ALL.len()];
            let mut i = 0;
            while i < names.len() {
                names[i] = Dropped::ALL[i].as_str();
                i += 1;
            }
            names
        };
        &NAMES
    }
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
        self.feed_messages_published.load(Relaxed)
    }
    /// Records not forwarded for `reason`.
    pub fn dropped(&self, reason: Dropped) -> u64 {
        self.feed_dropped.get(reason.index())
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
        self.feed_epoch.load(Relaxed)
    }
    /// The last sequence number handed out.
    pub fn last_seq(&self) -> u64 {
        self.feed_last_seq.load(Relaxed)
    }
    /// Topics the feed knows now, and topics it forgot for idleness so far.
    pub fn topics(&self) -> (u64, u64) {
        (self.feed_topics.load(Relaxed), self.feed_topics_expired.load(Relaxed))
    }
    /// Unterminated lines discarded because their connection ended (upstream or publisher).
    pub fn partial_lines_discarded(&self) -> u64 {
        self.feed_partial_lines_discarded.load(Relaxed)
    }
    /// Upstream connections established after the first one (successful reconnects).
    pub fn reconnects(&self) -> u64 {
        self.upstream_reconnects.load(Relaxed)
    }
    /// Upstream attempts that failed (resolve, connect, or connect timeout), each followed by a backoff.
    pub fn connect_failures(&self) -> u64 {
        self.upstream_connect_failures.load(Relaxed)
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
        self.feed_backpressure_pauses.load(Relaxed)
    }
    /// Whether the upstream is silent now (see `upstream::watchdog`).
    pub fn silent(&self) -> bool {
        self.upstream_silent.load(Relaxed) != 0
    }
    /// Times it fell silent, and connections dropped for it.
    pub fn silences(&self) -> (u64, u64) {
        (self.upstream_silences.load(Relaxed), self.upstream_silence_reconnects.load(Relaxed))
    }
    /// Upstream sequence gaps, messages missing in them, and resets (see `upstream::upstream_seq`).
    pub fn seq_gaps(&self) -> (u64, u64, u64) {
        (
            self.upstream_seq_gaps.load(Relaxed),
            self.upstream_seq_missing.load(Relaxed),
            self.upstream_seq_resets.load(Relaxed),
        )
    }

    pub(super) fn set_upstream_state(&self, s: UpstreamState) {
        self.upstream_state.store(s as u8, Relaxed);
    }
    pub(super) fn add_published(&self, n: u64) {
        bump(&self.feed_messages_published, n);
    }
    pub(super) fn add_dropped(&self, reason: Dropped) -> u64 {
        bump(self.feed_dropped.at(reason.index()), 1)
    }
    pub(super) fn set_sequencer(&self, seq: &Sequencer) {
        self.feed_epoch.store(seq.epoch(), Relaxed);
        self.feed_last_seq.store(seq.last_seq(), Relaxed);
        self.feed_topics.store(seq.topics() as u64, Relaxed);
        self.feed_topics_expired.store(seq.expired(), Relaxed);
    }
    pub(super) fn add_partial_discarded(&self) {
        bump(&self.feed_partial_lines_discarded, 1);
    }
    pub(super) fn add_reconnect(&self) {
        bump(&self.upstream_reconnects, 1);
    }
    pub(super) fn add_connect_failure(&self) {
        bump(&self.upstream_connect_failures, 1);
    }
    pub(super) fn set_ingest_publishers(&self, n: usize) {
        self.ingest_publishers.store(n as u64, Relaxed);
    }
    pub(super) fn add_ingest_refused(&self) -> u64 {
        bump(&self.ingest_refused, 1)
    }
    pub(super) fn set_silent(&self, silent: bool) {
        self.upstream_silent.store(u64::from(silent), Relaxed);
        if silent {
            bump(&self.upstream_silences, 1);
        }
    }
    pub(super) fn add_silence_reconnect(&self) {
        bump(&self.upstream_silence_reconnects, 1);
    }
    /// Counts a jump of `missing` messages in the upstream's sequence; returns the gaps so far.
    pub(super) fn add_seq_gap(&self, missing: u64) -> u64 {
        bump(&self.upstream_seq_missing, missing);
        bump(&self.upstream_seq_gaps, 1)
    }
    pub(super) fn add_seq_reset(&self) -> u64 {
        bump(&self.upstream_seq_resets, 1)
    }
    pub(super) fn add_backpressure_pause(&self) -> u64 {
        bump(&self.feed_backpressure_pauses, 1)
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
