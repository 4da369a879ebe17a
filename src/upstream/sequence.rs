//! Positions: one sequence over the whole feed, assigned here and nowhere else, and each topic's previous
//! sequence number. Sans-IO: the caller passes the clock.
//!
//! A position is `{epoch, seq}`. `seq` counts every message the feed forwards, from 1, whatever its topic or
//! source, so every loop thread and every transport agrees on one order. `epoch` names the sequence space: a
//! random number drawn once per process, so a position from another process (an earlier run, another node) is
//! recognised as foreign instead of being compared. Each message also carries `prev`, the `seq` of the previous
//! message of its topic (0 for the first one the feed has for that topic), so a subscriber sees a hole in any
//! topic on the next message of that topic.
//!
//! The feed can create topics without limit, so the table of topics is capped (`max_topics`) and a topic idle
//! for `idle_expiry` is forgotten (its next message starts again with `prev` 0).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::record::Dropped;

/// Largest epoch: positions travel as JSON numbers, exact in JavaScript only up to 2^53.
pub const MAX_EPOCH: u64 = (1 << 53) - 1;

/// Where a message stands in the feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u64,
    /// `seq` of the previous message of the same topic; 0 if none.
    pub prev: u64,
}

#[derive(Debug)]
struct TopicState {
    last_seq: u64,
    last_used: Instant,
}

/// The feed's sequencer and table of topics.
#[derive(Debug)]
pub struct Sequencer {
    epoch: u64,
    last_seq: u64,
    topics: HashMap<Box<str>, TopicState>,
    max_topics: usize,
    idle_expiry: Duration,
    expired: u64,
}

impl Sequencer {
    /// `epoch` in `1..=MAX_EPOCH`; `max_topics` > 0.
    pub fn new(epoch: u64, max_topics: usize, idle_expiry: Duration) -> Self {
        debug_assert!((1..=MAX_EPOCH).contains(&epoch) && max_topics > 0);
        Sequencer { epoch, last_seq: 0, topics: HashMap::new(), max_topics, idle_expiry, expired: 0 }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last `seq` handed out (0 before the first message).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Topics known now.
    pub fn topics(&self) -> usize {
        self.topics.len()
    }

    /// Topics forgotten for idleness so far.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// The position of the next message of `topic` (a valid topic name): the next `seq`. A topic the table has
    /// no room for is refused with [`Dropped::TopicLimit`] and uses no sequence number.
    pub fn stamp(&mut self, topic: &str, now: Instant) -> Result<Stamp, Dropped> {
        self.stamp_at(topic, self.last_seq + 1, now)
    }

    /// The position of a message of `topic` numbered `seq` by the upstream (positions passed through): refused
    /// with [`Dropped::Replayed`] unless `seq` is above every one before, so that `seq` stays one increasing
    /// order over the feed; the numbers in between are simply unused.
    pub fn stamp_at(&mut self, topic: &str, seq: u64, now: Instant) -> Result<Stamp, Dropped> {
        if seq <= self.last_seq {
            return Err(Dropped::Replayed);
        }
        if let Some(state) = self.topics.get_mut(topic) {
            self.last_seq = seq;
            let prev = std::mem::replace(&mut state.last_seq, seq);
            state.last_used = now;
            return Ok(Stamp { seq, prev });
        }
        if self.topics.len() >= self.max_topics && self.expire_idle(now) == 0 {
            return Err(Dropped::TopicLimit);
        }
        self.last_seq = seq;
        self.topics.insert(topic.into(), TopicState { last_seq: seq, last_used: now });
        Ok(Stamp { seq, prev: 0 })
    }

    /// Forgets every topic idle for `idle_expiry` or longer; returns how many.
    pub fn expire_idle(&mut self, now: Instant) -> usize {
        let before = self.topics.len();
        let expiry = self.idle_expiry;
        self.topics.retain(|_, t| now.saturating_duration_since(t.last_used) < expiry);
        let n = before - self.topics.len();
        self.expired += n as u64;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_numbers_must_rise_and_prev_follows_them() {
        let t = Instant::now();
        let mut s = Sequencer::new(42, 10, Duration::from_secs(60));
        assert_eq!(s.stamp_at("a", 100, t), Ok(Stamp { seq: 100, prev: 0 }));
        assert_eq!(s.stamp_at("b", 105, t), Ok(Stamp { seq: 105, prev: 0 }));
        assert_eq!(s.stamp_at("a", 105, t), Err(Dropped::Replayed), "not above the last");
        assert_eq!(s.stamp_at("a", 99, t), Err(Dropped::Replayed), "a replay after a reconnect");
        assert_eq!(s.stamp_at("a", 107, t), Ok(Stamp { seq: 107, prev: 100 }));
        assert_eq!((s.last_seq(), s.epoch()), (107, 42));
    }

    #[test]
    fn one_sequence_over_all_topics_and_prev_per_topic() {
        let t = Instant::now();
        let mut s = Sequencer::new(7, 10, Duration::from_secs(60));
        let got: Vec<Stamp> = ["a", "b", "a", "a", "c", "b"].iter().map(|topic| s.stamp(topic, t).unwrap()).collect();
        let want = [(1, 0), (2, 0), (3, 1), (4, 3), (5, 0), (6, 2)];
        assert_eq!(got, want.map(|(seq, prev)| Stamp { seq, prev }));
        assert_eq!((s.last_seq(), s.topics(), s.epoch()), (6, 3, 7));
    }

    #[test]
    fn the_table_is_capped_and_idle_topics_make_room() {
        let t0 = Instant::now();
        let mut s = Sequencer::new(1, 2, Duration::from_secs(10));
        s.stamp("a", t0).unwrap();
        s.stamp("b", t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(s.stamp("c", t0 + Duration::from_secs(9)), Err(Dropped::TopicLimit));
        assert_eq!(s.last_seq(), 2, "a refused message uses no sequence number");
        // At 10 s "a" has been idle long enough: it makes room, "b" stays.
        assert_eq!(s.stamp("c", t0 + Duration::from_secs(10)), Ok(Stamp { seq: 3, prev: 0 }));
        assert_eq!((s.topics(), s.expired()), (2, 1));
        assert_eq!(s.stamp("b", t0 + Duration::from_secs(11)), Ok(Stamp { seq: 4, prev: 2 }));
        assert_eq!(s.stamp("a", t0 + Duration::from_secs(11)), Err(Dropped::TopicLimit));
        // A forgotten topic starts again with prev 0.
        assert_eq!(s.expire_idle(t0 + Duration::from_secs(30)), 2);
        assert_eq!(s.stamp("a", t0 + Duration::from_secs(30)), Ok(Stamp { seq: 5, prev: 0 }));
    }
}
