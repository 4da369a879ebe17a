//! One topic's history on one loop thread: where each retained message of the topic is in the topic's log, by
//! `seq`, within a bound in messages, age and bytes; and the resume decision for a client that comes back with
//! a position. Pure data: the caller passes the clock and owns the log the cursors point into.
//!
//! The resume decision uses the `prev` chain: the oldest retained message knows the `seq` of the message before
//! it (`prev`). If that is at or before the client's position, nothing the client needs was evicted, whatever
//! other topics did meanwhile; otherwise the messages after the client's position and before the oldest
//! retained one are gone, and the client is told so (a gap), never served a silent hole.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::log::Cursor;

/// How much history a topic keeps (each bound applies; 0 messages or bytes keeps none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    pub max_messages: usize,
    pub max_age: Duration,
    pub max_bytes: u64,
}

/// One retained message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    /// `seq` of the topic's previous message (0: none).
    pub prev: u64,
    /// Where its frame starts in the topic's log.
    pub at: Cursor,
    /// Bytes of its frame.
    pub len: u32,
    /// When it arrived (age eviction).
    pub time: Instant,
}

/// Where a resuming subscriber starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// From this cursor in the topic's log (the head when nothing is missed): no message of the topic after the
    /// client's position is lost.
    From { at: Cursor },
    /// Messages of the topic with `seq` in `(from_seq, to_seq)` may be missing; delivery starts at `at`, with the
    /// message `to_seq` (or, when the history is empty, live at the head; then `to_seq` is the topic's last).
    Gap { from_seq: u64, to_seq: u64, at: Cursor },
    /// The position is ahead of anything this feed has handed out (`last_feed_seq`).
    Ahead,
}

/// The history of one topic.
///
/// INVARIANT: `entries` have strictly increasing `seq` and `at`; `bytes` is the sum of their `len`; each entry's
/// `prev` is the `seq` of the entry before it when there is one.
#[derive(Debug)]
pub struct History {
    entries: VecDeque<Entry>,
    bytes: u64,
    /// `seq` of the topic's last message, retained or not (0: none yet).
    last_seq: u64,
    /// Every message of the topic with a `seq` above this went through this history: what came before is
    /// unknown here (the topic was made, or made again after it expired, when the feed stood at this `seq`).
    known_from: u64,
    limits: HistoryLimits,
}

impl History {
    /// A history that has seen every message of its topic.
    pub fn new(limits: HistoryLimits) -> Self {
        Self::known_from(limits, 0, 0)
    }

    /// A history that knows nothing of the topic's messages up to feed position `known_from`, and whose topic's
    /// last message so far is `last_seq` (0: none).
    pub fn known_from(limits: HistoryLimits, known_from: u64, last_seq: u64) -> Self {
        History { entries: VecDeque::new(), bytes: 0, last_seq, known_from, limits }
    }

    pub fn limits(&self) -> HistoryLimits {
        self.limits
    }

    pub fn known_from_seq(&self) -> u64 {
        self.known_from
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.entries.iter()
    }

    /// The retained entries with `seq > since_seq`, oldest first (found by binary search).
    pub fn entries_after(&self, since_seq: u64) -> impl Iterator<Item = &Entry> + '_ {
        let i = self.entries.partition_point(|e| e.seq <= since_seq);
        self.entries.range(i..)
    }

    /// Records the topic's next message, then evicts what the bounds no longer allow (age counted from `now`).
    pub fn push(&mut self, entry: Entry, now: Instant) {
        debug_assert!(entry.seq > self.last_seq || self.entries.is_empty(), "seq must increase");
        self.last_seq = self.last_seq.max(entry.seq);
        self.bytes += u64::from(entry.len);
        self.entries.push_back(entry);
        self.evict(now);
    }

    /// Drops the oldest entries beyond the bounds. Returns the log position history still needs from (the oldest
    /// retained frame), or `None` when it keeps nothing.
    pub fn evict(&mut self, now: Instant) -> Option<Cursor> {
        let l = self.limits;
        while let Some(old) = self.entries.front() {
            let too_many = self.entries.len() > l.max_messages;
            let too_big = self.bytes > l.max_bytes;
            let too_old = now.saturating_duration_since(old.time) > l.max_age;
            if !(too_many || too_big || too_old) {
                break;
            }
            self.bytes -= u64::from(old.len);
            self.entries.pop_front();
        }
        self.oldest().map(|e| e.at)
    }

    /// Forgets every entry and everything up to feed position `seq`: the loop missed messages up to there (a
    /// hole in its feed), so a resume from before it must get a gap, never a silent hole. Returns the bytes freed.
    pub fn forget_through(&mut self, seq: u64) -> u64 {
        let freed = self.bytes;
        self.entries.clear();
        self.bytes = 0;
        self.known_from = self.known_from.max(seq);
        freed
    }

    /// Drops the oldest entry (the owner's cap over all topics); returns it.
    pub fn evict_oldest(&mut self) -> Option<Entry> {
        let old = self.entries.pop_front()?;
        self.bytes -= u64::from(old.len);
        Some(old)
    }

    pub fn oldest(&self) -> Option<&Entry> {
        self.entries.front()
    }

    /// The last retained message (the topic's last value, if still retained).
    pub fn last(&self) -> Option<&Entry> {
        self.entries.back()
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Records that the topic's last message is `seq` (at least), retained or not.
    pub fn note_last_seq(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Where a client that has seen everything up to feed position `since_seq` (same epoch) resumes this topic,
    /// with the log's head at `head` and the feed's last `seq` `last_feed_seq`.
    pub fn resume(&self, since_seq: u64, head: Cursor, last_feed_seq: u64) -> Resume {
        if since_seq > last_feed_seq {
            return Resume::Ahead;
        }
        let Some(oldest) = self.oldest() else {
            if since_seq >= self.last_seq && since_seq >= self.known_from {
                return Resume::From { at: head }; // nothing of this topic since then
            }
            // Messages came after `since_seq` and none is retained, or what came is unknown here.
            return Resume::Gap { from_seq: since_seq, to_seq: self.last_seq.max(last_feed_seq), at: head };
        };
        if oldest.prev > since_seq || (oldest.prev == 0 && since_seq < self.known_from) {
            return Resume::Gap { from_seq: since_seq, to_seq: oldest.seq, at: oldest.at };
        }
        // The first retained message after `since_seq`.
        let i = self.entries.partition_point(|e| e.seq <= since_seq);
        Resume::From { at: self.entries.get(i).map_or(head, |e| e.at) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FOREVER: Duration = Duration::from_secs(1 << 30);

    fn limits(max_messages: usize, max_bytes: u64) -> HistoryLimits {
        HistoryLimits { max_messages, max_age: FOREVER, max_bytes }
    }

    fn entry(seq: u64, prev: u64, at: Cursor, t: Instant) -> Entry {
        Entry { seq, prev, at, len: 10, time: t }
    }

    #[test]
    fn resume_from_history_or_say_gap() {
        let t = Instant::now();
        let mut h = History::new(limits(3, 1000));
        // The topic's messages are feed seq 2, 5, 7, 8; the log has them at 0, 10, 20, 30.
        for (seq, prev, at) in [(2, 0, 0), (5, 2, 10), (7, 5, 20), (8, 7, 30)] {
            h.push(entry(seq, prev, at, t), t);
        }
        assert_eq!((h.len(), h.oldest().map(|e| e.seq)), (3, Some(5)), "max 3 messages: seq 2 evicted");
        let head = 40;
        assert_eq!(h.resume(9, head, 9), Resume::From { at: 40 }, "up to date");
        assert_eq!(h.resume(8, head, 9), Resume::From { at: 40 });
        assert_eq!(h.resume(7, head, 9), Resume::From { at: 30 });
        assert_eq!(h.resume(6, head, 9), Resume::From { at: 20 });
        assert_eq!(h.resume(3, head, 9), Resume::From { at: 10 }, "seq 5's prev is 2: nothing after 3 was lost");
        assert_eq!(h.resume(2, head, 9), Resume::From { at: 10 });
        assert_eq!(h.resume(1, head, 9), Resume::Gap { from_seq: 1, to_seq: 5, at: 10 }, "seq 2 is gone");
        assert_eq!(h.resume(0, head, 9), Resume::Gap { from_seq: 0, to_seq: 5, at: 10 });
        assert_eq!(h.resume(10, head, 9), Resume::Ahead);
    }

    #[test]
    fn a_hole_in_the_feed_makes_every_older_resume_a_gap() {
        let t = Instant::now();
        let mut h = History::new(limits(10, 1000));
        h.push(entry(10, 0, 0, t), t);
        // Feed seq 20..=30 never reached this loop (one of them was this topic's): it forgets through 30.
        assert_eq!(h.forget_through(30), 10);
        assert!(matches!(h.resume(12, 10, 31), Resume::Gap { from_seq: 12, .. }), "seq 25 may be missing");
        assert_eq!(h.resume(30, 10, 31), Resume::From { at: 10 });
        h.push(entry(40, 25, 10, t), t);
        assert!(matches!(h.resume(12, 20, 40), Resume::Gap { from_seq: 12, to_seq: 40, .. }));
        assert_eq!(h.resume(26, 20, 40), Resume::From { at: 10 });
    }

    #[test]
    fn eviction_by_bytes_age_and_an_empty_history() {
        let t0 = Instant::now();
        let mut h = History::new(HistoryLimits { max_messages: 100, max_age: Duration::from_secs(10), max_bytes: 25 });
        h.push(entry(1, 0, 0, t0), t0);
        h.push(entry(2, 1, 10, t0), t0);
        h.push(entry(3, 2, 20, t0 + Duration::from_secs(5)), t0 + Duration::from_secs(5));
        assert_eq!((h.len(), h.bytes()), (2, 20), "30 bytes > 25: the oldest went");
        assert_eq!(h.evict(t0 + Duration::from_secs(11)), Some(20), "seq 2 is 11 s old");
        assert_eq!(h.evict(t0 + Duration::from_secs(16)), None, "all gone");
        assert_eq!(h.resume(2, 30, 3), Resume::Gap { from_seq: 2, to_seq: 3, at: 30 });
        assert_eq!(h.resume(3, 30, 3), Resume::From { at: 30 });
        let none = History::new(limits(0, 0));
        assert_eq!(none.resume(0, 0, 0), Resume::From { at: 0 }, "a topic with no messages misses nothing");
    }

    proptest! {
        /// Against a model that keeps every message: a resume either yields exactly the messages of the topic
        /// after the position (the retained suffix from `at`), or says gap exactly when one of them is gone.
        #[test]
        fn resume_agrees_with_a_model(
            gaps in proptest::collection::vec(1u64..4, 1..40),
            max_messages in 0usize..10,
            max_bytes in 0u64..120,
            since in 0u64..150,
        ) {
            let t = Instant::now();
            let mut h = History::new(limits(max_messages, max_bytes));
            let mut all = Vec::new(); // (seq, at) of every message of the topic
            let (mut seq, mut prev, mut at) = (0u64, 0u64, 0u64);
            for g in gaps {
                seq += g; // other topics took the seqs in between
                h.push(Entry { seq, prev, at, len: 10, time: t }, t);
                all.push((seq, at));
                prev = seq;
                at += 10;
            }
            let head = at;
            let last_feed_seq = seq + 1;
            let retained: Vec<(u64, u64)> = all[all.len() - h.len()..].to_vec();
            let wanted: Vec<(u64, u64)> = all.iter().copied().filter(|&(s, _)| s > since).collect();
            match h.resume(since, head, last_feed_seq) {
                Resume::Ahead => prop_assert!(since > last_feed_seq),
                Resume::From { at } => {
                    // Delivery from `at` gives exactly `wanted`.
                    let delivered: Vec<(u64, u64)> = retained.iter().copied().filter(|&(_, a)| a >= at).collect();
                    prop_assert_eq!(delivered, wanted);
                }
                Resume::Gap { from_seq, to_seq, at } => {
                    prop_assert_eq!(from_seq, since);
                    let missing: Vec<_> = wanted.iter().filter(|w| !retained.contains(w)).collect();
                    prop_assert!(!missing.is_empty(), "a gap only when something is missing");
                    // What is missing lies after the position and up to where delivery resumes (before the
                    // oldest retained message; the topic's last one when nothing is retained).
                    prop_assert!(missing.iter().all(|&&(s, _)| s > from_seq && s <= to_seq));
                    if !h.is_empty() {
                        prop_assert!(missing.iter().all(|&&(s, _)| s < to_seq));
                    }
                    let delivered: Vec<(u64, u64)> = retained.iter().copied().filter(|&(_, a)| a >= at).collect();
                    let kept: Vec<(u64, u64)> = wanted.iter().copied().filter(|w| retained.contains(w)).collect();
                    prop_assert_eq!(delivered, kept, "everything still retained is delivered");
                }
            }
        }
    }
}
