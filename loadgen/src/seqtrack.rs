//! Loss, gap, duplicate and reorder accounting for one sequence-numbered stream (one connection × one topic).
//!
//! A [`SeqTrack`] starts at the first sequence number it is shown (the first message of the measured window) and
//! remembers which numbers between that one and the highest seen so far are still missing, as a short sorted
//! list of ranges. In order delivery (the normal case) never allocates; a gap allocates one range, and a late
//! message that fills it shrinks or splits the range. What the caller gets:
//! - [`SeqTrack::observe`]: whether a message is new, a duplicate, or older than the stream's start;
//! - [`SeqTrack::observe_after_gap`]: the same for the first message after the gateway announced a gap (a `gap`
//!   notice): the numbers it skips are *covered* — announced, so neither received nor lost;
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

/// Why a range of numbers is kept: still missing (a hole), or skipped under a gap notice (covered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Missing,
    Covered,
}

/// What one observed sequence number was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// In order: exactly one above the highest so far (or the first one).
    InOrder,
    /// New, but more than one above the highest so far: `missing` numbers were skipped (a gap).
    Gap { missing: u64 },
    /// New, after a gap notice: `skipped` numbers were jumped over, as the notice announced (possibly 0).
    Covered { skipped: u64 },
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
        matches!(self, Seen::InOrder | Seen::Gap { .. } | Seen::Covered { .. } | Seen::Late)
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
    /// Numbers skipped under a gap notice, kept like `missing` and disjoint from it. Empty unless the gateway
    /// announced gaps, so the common path never touches it.
    covered: Vec<(u64, u64)>,
}

impl SeqTrack {
    pub const fn new() -> Self {
        SeqTrack {
            first: 0,
            highest: 0,
            unique: 0,
            started: false,
            ranges_dropped: false,
            missing: Vec::new(),
            covered: Vec::new(),
        }
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
        if !self.start(seq) {
            return Seen::InOrder;
        }
        if seq > self.highest {
            let missing = self.jump(seq, Kind::Missing);
            return if missing == 0 { Seen::InOrder } else { Seen::Gap { missing } };
        }
        self.below_highest(seq)
    }

    /// Account for the first number received after a gap notice: whatever it jumps over is covered by the
    /// notice rather than missing. Anything else (a first number, a duplicate, a late one) is as [`Self::observe`].
    pub fn observe_after_gap(&mut self, seq: u64) -> Seen {
        if !self.start(seq) {
            return Seen::Covered { skipped: 0 };
        }
        if seq > self.highest {
            return Seen::Covered { skipped: self.jump(seq, Kind::Covered) };
        }
        self.below_highest(seq)
    }

    /// Starts the stream at `seq` if it has not started; `true` when it already had.
    fn start(&mut self, seq: u64) -> bool {
        if self.started {
            return true;
        }
        self.started = true;
        self.first = seq;
        self.highest = seq;
        self.unique = 1;
        false
    }

    /// `seq` is above the highest: records the numbers in between as `kind`; returns how many there were.
    fn jump(&mut self, seq: u64, kind: Kind) -> u64 {
        let skipped = seq - self.highest - 1;
        if skipped > 0 {
            let ranges = match kind {
                Kind::Missing => &mut self.missing,
                Kind::Covered => &mut self.covered,
            };
            if ranges.len() == MAX_RANGES {
                ranges.remove(0);
                self.ranges_dropped = true;
            }
            ranges.push((self.highest + 1, seq));
        }
        self.highest = seq;
        self.unique += 1;
        skipped
    }

    /// `seq` is at most the highest: before the start, a late one filling a missing (or covered) range, or a
    /// duplicate.
    fn below_highest(&mut self, seq: u64) -> Seen {
        if seq < self.first {
            return Seen::BeforeStart;
        }
        // seq is in first..=highest: new only if it lies in a missing range (or, rarely, a covered one: the notice
        // said the message may be missing, and here it is after all).
        if take(&mut self.missing, seq) || take(&mut self.covered, seq) {
            self.unique += 1;
            Seen::Late
        } else {
            Seen::Duplicate
        }
    }

    /// Numbers this stream should have received from its first one up to `max` inclusive (0 if it never started
    /// or started above `max`).
    /// Numbers covered by gap notices are not expected.
    pub fn expected_up_to(&self, max: u64) -> u64 {
        if !self.started || max < self.first {
            0
        } else {
            max - self.first + 1 - count_up_to(&self.covered, max)
        }
    }

    /// Numbers skipped under gap notices, up to `max` inclusive.
    pub fn covered_up_to(&self, max: u64) -> u64 {
        count_up_to(&self.covered, max)
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
        (max - self.first + 1) - count_up_to(&self.missing, max) - count_up_to(&self.covered, max)
    }
}

/// Removes `seq` from the sorted disjoint ranges that hold it (shrinking or splitting one); `false` if none does.
fn take(ranges: &mut Vec<(u64, u64)>, seq: u64) -> bool {
    let i = ranges.partition_point(|&(_, hi)| hi <= seq);
    match ranges.get(i).copied() {
        Some((lo, hi)) if lo <= seq => {
            match (lo == seq, hi == seq + 1) {
                (true, true) => {
                    ranges.remove(i);
                }
                (true, false) => ranges[i].0 = seq + 1,
                (false, true) => ranges[i].1 = seq,
                (false, false) => {
                    ranges[i].1 = seq;
                    ranges.insert(i + 1, (seq + 1, hi));
                }
            }
            true
        }
        _ => false,
    }
}

/// How many numbers of the sorted ranges are at most `max`.
fn count_up_to(ranges: &[(u64, u64)], max: u64) -> u64 {
    ranges.iter().take_while(|&&(lo, _)| lo <= max).map(|&(lo, hi)| hi.min(max + 1) - lo).sum()
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

    #[test]
    fn a_gap_notice_covers_what_the_next_message_skips() {
        let mut t = SeqTrack::new();
        for s in 0..=4 {
            t.observe(s);
        }
        // A gap notice, then 9: 5..=8 covered. Then 11: 10 missing (no notice).
        assert_eq!(t.observe_after_gap(9), Seen::Covered { skipped: 4 });
        assert_eq!(t.observe(11), Seen::Gap { missing: 1 });
        assert_eq!(t.observe(9), Seen::Duplicate);
        assert_eq!(t.covered_up_to(20), 4);
        assert_eq!(t.expected_up_to(11), 12 - 4);
        assert_eq!(t.unique_up_to(11), 7);
        assert_eq!(t.expected_up_to(11) - t.unique_up_to(11), 1, "only 10 is lost");
        // Below the highest: covered numbers are neither expected nor received.
        assert_eq!(t.expected_up_to(7), 8 - 3);
        assert_eq!(t.unique_up_to(7), 5);
        // A covered message that turns up after all is late, not a duplicate; 10 fills its hole.
        assert_eq!(t.observe(6), Seen::Late);
        assert_eq!(t.observe(10), Seen::Late);
        assert_eq!(t.covered_up_to(20), 3);
        assert_eq!(t.expected_up_to(11), t.unique_up_to(11));
        // After a notice with nothing skipped, the next message is simply in order.
        assert_eq!(t.observe_after_gap(12), Seen::Covered { skipped: 0 });
        // A notice before the stream started: the first message starts it.
        let mut u = SeqTrack::new();
        assert_eq!(u.observe_after_gap(40), Seen::Covered { skipped: 0 });
        assert_eq!(u.expected_up_to(40), 1);
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
