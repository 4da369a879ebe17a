//! Loss, gap, duplicate and reorder accounting for one sequence-numbered stream (one connection × one topic).
//!
//! A [`SeqTrack`] starts at the first sequence number it is shown (the first message of the measured window) and
//! remembers which numbers between that one and the highest seen so far are still missing, as a short sorted
//! list of ranges. In order delivery (the normal case) never allocates; a gap allocates one range, and a late
//! message that fills it shrinks or splits the range. What the caller gets:
//! - [`SeqTrack::observe`]: whether a message is new, a duplicate, or older than the stream's start;
//! - [`SeqTrack::unique_up_to`] / [`SeqTrack::expected_up_to`]: received and expected counts up to a bound
//!   chosen after the fact (the highest number *any* connection saw in the window), so that
//!   `lost = expected − unique` needs no second pass.
//!
//! What it does not do: it reads no clock and knows nothing of windows; the caller decides which messages to
//! show it. At most [`MAX_RANGES`] missing ranges are kept; past that the oldest range is forgotten (it stays
//! counted as missing, and a message that later fills it is counted as a duplicate). [`SeqTrack::ranges_dropped`]
//! says when that happened.

/// Most missing ranges remembered per stream.
pub const MAX_RANGES: usize = 1024;

/// What one observed sequence number was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// In order: exactly one above the highest so far (or the first one).
    InOrder,
    /// New, but more than one above the highest so far: `missing` numbers were skipped (a gap).
    Gap { missing: u64 },
    /// New, but below the highest so far: it fills part of an earlier gap (a reorder).
    Late,
    /// Already received.
    Duplicate,
    /// Below the first number of this stream: it belongs before the window.
    BeforeStart,
}

impl Seen {
    /// The message counts as received.
    pub fn is_new(self) -> bool {
        matches!(self, Seen::InOrder | Seen::Gap { .. } | Seen::Late)
    }
}

/// Accounting state of one stream.
#[derive(Debug, Default, Clone)]
pub struct SeqTrack {
    /// First sequence number shown. INVARIANT: `first <= highest` once `started`.
    first: u64,
    highest: u64,
    /// Distinct numbers received in `first..=highest`.
    unique: u64,
    started: bool,
    ranges_dropped: bool,
    /// Missing numbers as half-open ranges `[lo, hi)`, sorted, disjoint, non-empty, all within `first..highest`.
    missing: Vec<(u64, u64)>,
}

impl SeqTrack {
    pub const fn new() -> Self {
        SeqTrack { first: 0, highest: 0, unique: 0, started: false, ranges_dropped: false, missing: Vec::new() }
    }

    /// Distinct numbers received so far.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// More than [`MAX_RANGES`] gaps were open at once: counts below the oldest kept gap are approximate.
    pub fn ranges_dropped(&self) -> bool {
        self.ranges_dropped
    }

    /// Account for one received sequence number.
    pub fn observe(&mut self, seq: u64) -> Seen {
        if !self.started {
            self.started = true;
            self.first = seq;
            self.highest = seq;
            self.unique = 1;
            return Seen::InOrder;
        }
        if seq > self.highest {
            let missing = seq - self.highest - 1;
            if missing > 0 {
                if self.missing.len() == MAX_RANGES {
                    self.missing.remove(0);
                    self.ranges_dropped = true;
                }
                self.missing.push((self.highest + 1, seq));
            }
            self.highest = seq;
            self.unique += 1;
            return if missing == 0 { Seen::InOrder } else { Seen::Gap { missing } };
        }
        if seq < self.first {
            return Seen::BeforeStart;
        }
        // seq is in first..=highest: new only if it lies in a missing range.
        let i = self.missing.partition_point(|&(_, hi)| hi <= seq);
        match self.missing.get(i).copied() {
            Some((lo, hi)) if lo <= seq => {
                match (lo == seq, hi == seq + 1) {
                    (true, true) => {
                        self.missing.remove(i);
                    }
                    (true, false) => self.missing[i].0 = seq + 1,
                    (false, true) => self.missing[i].1 = seq,
                    (false, false) => {
                        self.missing[i].1 = seq;
                        self.missing.insert(i + 1, (seq + 1, hi));
                    }
                }
                self.unique += 1;
                Seen::Late
            }
            _ => Seen::Duplicate,
        }
    }

    /// Numbers this stream should have received from its first one up to `max` inclusive (0 if it never started
    /// or started above `max`).
    pub fn expected_up_to(&self, max: u64) -> u64 {
        if !self.started || max < self.first {
            0
        } else {
            max - self.first + 1
        }
    }

    /// Of the numbers expected up to `max`, how many lie above the highest one received: not arrived (yet) rather
    /// than skipped — a connection that fell behind, or latency beyond the grace period.
    pub fn tail_up_to(&self, max: u64) -> u64 {
        if !self.started {
            0
        } else {
            max.saturating_sub(self.highest)
        }
    }

    /// Distinct numbers received in `first..=max`.
    pub fn unique_up_to(&self, max: u64) -> u64 {
        if !self.started || max < self.first {
            return 0;
        }
        if max >= self.highest {
            return self.unique;
        }
        let missing: u64 =
            self.missing.iter().take_while(|&&(lo, _)| lo <= max).map(|&(lo, hi)| hi.min(max + 1) - lo).sum();
        (max - self.first + 1) - missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(seqs: &[u64]) -> (SeqTrack, Vec<Seen>) {
        let mut t = SeqTrack::new();
        let seen = seqs.iter().map(|&s| t.observe(s)).collect();
        (t, seen)
    }

    #[test]
    fn in_order_counts_everything_and_allocates_nothing() {
        let seqs: Vec<u64> = (100..200).collect();
        let (t, seen) = feed(&seqs);
        assert!(seen.iter().all(|s| *s == Seen::InOrder));
        assert_eq!(t.unique(), 100);
        assert_eq!(t.expected_up_to(199), 100);
        assert_eq!(t.unique_up_to(199), 100);
        // Messages later than the window's highest count neither way.
        assert_eq!(t.expected_up_to(149), 50);
        assert_eq!(t.unique_up_to(149), 50);
        assert_eq!(t.missing.capacity(), 0);
    }

    #[test]
    fn gap_then_loss_is_counted_against_the_global_maximum() {
        // 10..=20 except 13, 14 and 17; another connection saw up to 25.
        let (t, seen) = feed(&[10, 11, 12, 15, 16, 18, 19, 20]);
        assert_eq!(seen[3], Seen::Gap { missing: 2 });
        assert_eq!(seen[5], Seen::Gap { missing: 1 });
        assert_eq!(t.expected_up_to(25), 16);
        assert_eq!(t.unique_up_to(25), 8);
        assert_eq!(t.expected_up_to(20) - t.unique_up_to(20), 3);
        assert_eq!(t.unique_up_to(15), 4); // 10, 11, 12, 15
        assert_eq!(t.unique_up_to(9), 0);
        assert_eq!(t.tail_up_to(25), 5);
        assert_eq!(t.tail_up_to(20), 0);
        assert_eq!(t.expected_up_to(9), 0);
    }

    #[test]
    fn reorders_fill_gaps_and_duplicates_do_not_count() {
        let (t, seen) = feed(&[0, 1, 5, 3, 2, 4, 4, 5, 0, 6]);
        assert_eq!(
            seen,
            vec![
                Seen::InOrder,
                Seen::InOrder,
                Seen::Gap { missing: 3 },
                Seen::Late,
                Seen::Late,
                Seen::Late,
                Seen::Duplicate,
                Seen::Duplicate,
                Seen::Duplicate,
                Seen::InOrder,
            ]
        );
        assert_eq!(t.unique(), 7);
        assert_eq!(t.unique_up_to(6), 7);
        assert!(t.missing.is_empty());
    }

    #[test]
    fn split_range_in_the_middle() {
        let (t, seen) = feed(&[0, 10, 5, 7]);
        assert_eq!(seen[2], Seen::Late);
        assert_eq!(t.missing, vec![(1, 5), (6, 7), (8, 10)]);
        assert_eq!(t.unique_up_to(10), 4);
        assert_eq!(t.unique_up_to(6), 2);
        assert_eq!(t.unique_up_to(7), 3);
    }

    #[test]
    fn older_than_the_start_is_not_counted() {
        let (t, seen) = feed(&[50, 49, 51]);
        assert_eq!(seen[1], Seen::BeforeStart);
        assert_eq!(t.unique(), 2);
        assert_eq!(t.expected_up_to(51), 2);
    }

    /// Against a `BTreeSet` oracle, for pseudo-random permutations with duplicates and holes.
    #[test]
    fn matches_a_set_oracle() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200 {
            let mut seqs: Vec<u64> = (0..64).filter(|_| rand() % 5 != 0).collect();
            for i in (1..seqs.len()).rev() {
                if rand() % 4 == 0 {
                    let j = (rand() as usize) % (i + 1);
                    seqs.swap(i, j);
                }
            }
            for _ in 0..3 {
                if !seqs.is_empty() {
                    let d = seqs[(rand() as usize) % seqs.len()];
                    seqs.push(d);
                }
            }
            let (t, _) = feed(&seqs);
            let Some(&first) = seqs.first() else { continue };
            let set: std::collections::BTreeSet<u64> = seqs.iter().copied().filter(|&s| s >= first).collect();
            for max in 0..70u64 {
                let oracle = set.range(..=max).count() as u64;
                assert_eq!(t.unique_up_to(max), oracle, "seqs {seqs:?} max {max}");
            }
        }
    }
}
