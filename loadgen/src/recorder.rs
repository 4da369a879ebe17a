//! Per-process accounting of received messages: the measured window, the latency histogram, topics and the
//! loss/order counters. Lock-free by construction: one recorder per worker process, owned by its event loop.
//!
//! Window rules (see `docs/loadgen.md`):
//! - subscribe: a message counts when it is *received* in `[start, end)`; streams (connection × topic) start at
//!   the first such message. During the grace period after `end`, messages still count as received (late, not
//!   lost) up to the highest sequence number any connection saw in the window; they go into the histogram when
//!   their number is at most this process's own maximum for the topic at `end`.
//! - echo: a reply counts when its *scheduled send time* is in `[start, end)` and it arrives before the grace
//!   period ends.
//!
//! With `subscribe --topics`, messages go through [`crate::topic_rx`] instead, which uses the same window rules
//! ([`Recorder::account`]) and keeps its per-topic tallies in [`Recorder::topic_mode`].

use std::collections::{BTreeMap, HashMap};

use hdrhistogram::Histogram;

use crate::control::{TopicCounts, TopicResult};
use crate::hist;
use crate::msg::parse_message;
use crate::seqtrack::{Seen, SeqTrack};
use crate::topics::TopicPlan;

/// Topic id 0 is "no topic".
pub type TopicId = usize;

#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Every data message received, window or not (for the progress line).
    pub messages_total: u64,
    pub messages_in_window: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub reorders: u64,
    pub unparsed: u64,
}

pub struct Recorder {
    echo: bool,
    /// `(start, end, grace_end)`, CLOCK_MONOTONIC ns; `None` until the parent sends the window.
    window: Option<(u64, u64, u64)>,
    pub hist: Histogram<u64>,
    pub counters: Counters,
    topic_ids: HashMap<Box<[u8]>, TopicId>,
    topic_names: Vec<Box<[u8]>>,
    /// Highest sequence number received in the window, per topic id.
    window_max: Vec<Option<u64>>,
    /// `subscribe --topics`: the plan and what [`crate::topic_rx`] counted.
    pub topic_mode: Option<Box<TopicMode>>,
}

/// The topic workload's plan and counts, per process.
#[derive(Debug)]
pub struct TopicMode {
    pub plan: TopicPlan,
    pub result: TopicResult,
}

impl Recorder {
    pub fn new(echo: bool) -> Self {
        Recorder {
            echo,
            window: None,
            hist: hist::new_histogram(),
            counters: Counters::default(),
            topic_ids: HashMap::new(),
            topic_names: vec![Box::from(&b""[..])],
            window_max: vec![None],
            topic_mode: None,
        }
    }

    pub fn set_window(&mut self, start_ns: u64, end_ns: u64, grace_ns: u64) {
        self.window = Some((start_ns, end_ns, end_ns + grace_ns));
    }

    pub fn window(&self) -> Option<(u64, u64, u64)> {
        self.window
    }

    /// Topic mode: registers the plan's topic names in order, so topic `k` has id `k + 1` and every name is
    /// known before the first message.
    pub fn with_topics(mut self, plan: &TopicPlan) -> Self {
        for k in 0..plan.topics {
            self.topic_id(Some(plan.name(k).as_bytes()));
        }
        self.topic_mode = Some(Box::new(TopicMode {
            plan: plan.clone(),
            result: TopicResult {
                per_topic: vec![TopicCounts::default(); plan.topics as usize],
                ..TopicResult::default()
            },
        }));
        self
    }

    /// The topic index (`T0000` is 0) of a registered topic name; `None` for a name the plan does not have.
    pub fn topic_index(&self, name: &[u8]) -> Option<u32> {
        let id = *self.topic_ids.get(name)?;
        Some(id as u32 - 1)
    }

    fn topic_id(&mut self, topic: Option<&[u8]>) -> TopicId {
        let Some(name) = topic else { return 0 };
        if let Some(&id) = self.topic_ids.get(name) {
            return id;
        }
        let id = self.topic_names.len();
        self.topic_ids.insert(Box::from(name), id);
        self.topic_names.push(Box::from(name));
        self.window_max.push(None);
        id
    }

    /// Per topic name, the highest sequence number this process received in the window.
    pub fn window_maxes(&self) -> BTreeMap<String, u64> {
        self.topic_names
            .iter()
            .zip(&self.window_max)
            .filter_map(|(name, max)| max.map(|m| (String::from_utf8_lossy(name).into_owned(), m)))
            .collect()
    }

    /// The global maxima (from the parent) by topic id, for [`Self::finish_subscribe`].
    pub fn maxes_by_id(&self, global: &BTreeMap<String, u64>) -> Vec<Option<u64>> {
        self.topic_names.iter().map(|n| global.get(String::from_utf8_lossy(n).as_ref()).copied()).collect()
    }

    /// One data message received at `now` on a connection whose streams are `tracks`.
    #[inline]
    pub fn on_message(&mut self, tracks: &mut Vec<SeqTrack>, payload: &[u8], now: u64) {
        self.counters.messages_total += 1;
        let Some((start, end, grace_end)) = self.window else { return };
        if now >= grace_end {
            return;
        }
        let Some(p) = parse_message(payload) else {
            if now >= start {
                self.counters.unparsed += 1;
            }
            return;
        };
        let tid = self.topic_id(p.topic);
        if tracks.len() <= tid {
            tracks.resize_with(tid + 1, SeqTrack::new);
        }
        let record = if self.echo {
            if p.scheduled_ns < start || p.scheduled_ns >= end {
                return;
            }
            if now < end {
                self.counters.messages_in_window += 1;
            }
            true
        } else {
            match self.account(tid, p.seq, now) {
                Some(record) => record,
                None => return,
            }
        };
        let seen = tracks[tid].observe(p.seq);
        self.count(seen);
        if record && seen.is_new() {
            self.record_latency(now, p.scheduled_ns);
        }
    }

    /// Subscribe's window rules for a message of topic `tid` with sequence number `seq` received at `now`:
    /// `None` when it is not accounted (before the window or after the grace period); otherwise counts it (in
    /// the window: a delivery, and the topic's window maximum) and says whether its latency belongs in the
    /// histogram (in the window, or late but at most this process's window maximum for the topic).
    #[inline]
    pub fn account(&mut self, tid: TopicId, seq: u64, now: u64) -> Option<bool> {
        let (start, end, grace_end) = self.window?;
        if now < start || now >= grace_end {
            return None;
        }
        if now < end {
            self.counters.messages_in_window += 1;
            let max = &mut self.window_max[tid];
            *max = Some(max.map_or(seq, |m| m.max(seq)));
            Some(true)
        } else {
            Some(self.window_max[tid].is_some_and(|m| seq <= m))
        }
    }

    /// Counts what the sequence accounting said of an accounted message.
    #[inline]
    pub fn count(&mut self, seen: Seen) {
        match seen {
            Seen::InOrder | Seen::Covered { .. } => {}
            Seen::Gap { .. } => self.counters.gaps += 1,
            Seen::Late | Seen::BeforeStart => self.counters.reorders += 1,
            Seen::Duplicate => self.counters.duplicates += 1,
        }
    }

    /// Records receive time − scheduled send time.
    #[inline]
    pub fn record_latency(&mut self, now: u64, scheduled_ns: u64) {
        self.hist.saturating_record(now.saturating_sub(scheduled_ns));
    }

    /// Subscribe: one connection's counts against the global maxima by topic id.
    pub fn finish_subscribe(tracks: &[SeqTrack], maxes: &[Option<u64>]) -> StreamTotals {
        let mut s = StreamTotals::default();
        for (t, max) in tracks.iter().zip(maxes) {
            if let Some(max) = *max {
                s.received += t.unique_up_to(max);
                s.expected += t.expected_up_to(max);
                s.tail += t.tail_up_to(max);
                s.ranges_dropped |= t.ranges_dropped();
            }
        }
        s
    }
}

/// Loss accounting of one connection (all its topics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamTotals {
    pub received: u64,
    pub expected: u64,
    /// Part of `expected − received` above the highest number received: never arrived by the end of the grace
    /// period (late or lost at the end), as opposed to holes in the middle.
    pub tail: u64,
    pub ranges_dropped: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::write_message;

    fn msg(seq: u64, ts: u64, topic: Option<&str>) -> Vec<u8> {
        let mut v = Vec::new();
        write_message(&mut v, seq, ts, topic, 0);
        v.pop();
        v
    }

    #[test]
    fn subscribe_window_grace_and_topics() {
        let mut r = Recorder::new(false);
        r.set_window(1_000, 2_000, 500);
        let mut a = Vec::new();
        let mut b = Vec::new();
        // Before the window: ignored.
        r.on_message(&mut a, &msg(0, 900, None), 950);
        // In the window: a gets 1..=5 (4 missing), b gets 2..=6 on topic X and 10 on topic Y.
        for s in [1, 2, 3, 5] {
            r.on_message(&mut a, &msg(s, 1_000, None), 1_100);
        }
        for s in 2..=6 {
            r.on_message(&mut b, &msg(s, 1_000, None), 1_100);
        }
        r.on_message(&mut b, &msg(10, 1_000, Some("Y")), 1_100);
        // Grace: a's late 4 and 6 count; 7 (above every window maximum) does not.
        r.on_message(&mut a, &msg(4, 1_000, None), 2_100);
        r.on_message(&mut a, &msg(6, 1_000, None), 2_200);
        r.on_message(&mut a, &msg(7, 1_000, None), 2_200);
        // After the grace period: ignored.
        r.on_message(&mut a, &msg(8, 1_000, None), 2_600);
        assert_eq!(r.counters.messages_in_window, 10);
        assert_eq!(r.counters.reorders, 1);
        assert_eq!(r.counters.gaps, 1);
        let maxes = r.window_maxes();
        assert_eq!(maxes.get(""), Some(&6));
        assert_eq!(maxes.get("Y"), Some(&10));
        let by_id = r.maxes_by_id(&maxes);
        let totals = |received, expected| StreamTotals { received, expected, tail: 0, ranges_dropped: false };
        assert_eq!(Recorder::finish_subscribe(&a, &by_id), totals(6, 6));
        assert_eq!(Recorder::finish_subscribe(&b, &by_id), totals(6, 6));
        // Every accounted message went into the histogram (late 4 and 6 are within this process's window
        // maximum), and 7 (above it) did not.
        assert_eq!(r.hist.len(), 12);
    }

    #[test]
    fn echo_counts_by_scheduled_time() {
        let mut r = Recorder::new(true);
        r.set_window(1_000, 2_000, 500);
        let mut t = Vec::new();
        r.on_message(&mut t, &msg(0, 999, None), 1_500); // scheduled before the window
        r.on_message(&mut t, &msg(1, 1_000, None), 1_500);
        r.on_message(&mut t, &msg(2, 1_900, None), 2_300); // late reply, within grace
        r.on_message(&mut t, &msg(3, 1_950, None), 2_600); // after grace: lost
        r.on_message(&mut t, &msg(4, 2_000, None), 2_100); // scheduled after the window
        assert_eq!(t[0].unique(), 2);
        assert_eq!(r.hist.len(), 2);
        assert_eq!(r.hist.max(), r.hist.highest_equivalent(500));
        assert_eq!(r.counters.messages_in_window, 1);
        assert_eq!(r.counters.unparsed, 0);
        r.on_message(&mut t, b"hello", 1_500);
        assert_eq!(r.counters.unparsed, 1);
    }
}
