//! Exactly-once checking of one topic on one subscriber connection, across its reconnects.
//!
//! Two independent witnesses, so that a bug in either the gateway's numbering or the load generator's cannot
//! hide a hole:
//! - the **feed counter**: the load generator's own per-topic sequence number in the payload (`msg.rs`), kept
//!   by a [`SeqTrack`] under the measured window's rules (holes, duplicates, reorders, late messages);
//! - the **gateway chain** ([`Chain`]): each envelope's `prev` must be the `seq` of the last message of the
//!   topic this connection received (`docs/client-protocol.md`, *Positions*), or, before the first message
//!   after a subscription, at most the position the `subscribed` reply gave.
//!
//! A `gap` notice for the topic announces that the next message may skip some: that message's jump is *covered*
//! (counted apart, not lost) for both witnesses. Anything else that skips is a hole, and anything seen twice a
//! duplicate.
//!
//! What it does not do: it reads no clock and knows no window — the caller decides whether the feed counter is
//! accounted for a message (outside the window it passes `None`) — and it sends nothing: the resume position
//! ([`Chain::resume_from`]) is for the caller to put in its next `subscribe`.

use crate::seqtrack::{Seen, SeqTrack};

/// The gateway's positions for one topic as this connection saw them.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    /// Sequence space of `last` (one gateway process).
    epoch: u64,
    /// The seq of the last message received (`exact`), or the position of the `subscribed` reply before any.
    last: u64,
    /// `last` is a message's seq, so the next message's `prev` must equal it.
    exact: bool,
    /// A position is known (a reply or a message arrived). INVARIANT: `exact` implies `known`.
    known: bool,
    /// Messages up to this seq are a replay of history; above it, live. Set by every `subscribed` reply.
    live_from: u64,
}

/// How one message's position relates to the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// `prev` is the last seq received (or at most the subscription's position).
    InOrder,
    /// The first message after a gap notice: whatever it skipped was announced.
    AfterGap,
    /// `prev` is not the last seq received: the connection missed a message of the topic (or, with a lower
    /// `prev`, the gateway's numbering broke), without a gap notice.
    Hole,
    /// `seq` is not above the last position: seen already (or older than the subscription).
    Duplicate,
    /// No reply or message came before it, so there was nothing to check it against.
    Unanchored,
}

impl Chain {
    /// A `subscribed` reply gave `(epoch, seq)` for the topic. The first one anchors the chain; later ones
    /// (after a resume, whose `since` came from this chain) only move the replay/live boundary.
    pub fn on_subscribed(&mut self, epoch: u64, seq: u64) {
        if !self.known {
            *self = Chain { epoch, last: seq, exact: false, known: true, live_from: seq };
        } else {
            self.live_from = seq;
        }
    }

    /// Checks a message at `(epoch, seq)` whose `prev` is given, and advances the chain past it.
    pub fn on_message(&mut self, epoch: u64, seq: u64, prev: u64, after_gap: bool) -> Link {
        let link = if after_gap {
            Link::AfterGap
        } else if !self.known {
            Link::Unanchored
        } else if epoch != self.epoch {
            Link::Hole
        } else if seq <= self.last {
            return Link::Duplicate;
        } else if (self.exact && prev == self.last) || (!self.exact && prev <= self.last) {
            Link::InOrder
        } else {
            Link::Hole
        };
        if epoch != self.epoch {
            // Another sequence space (a gateway restart): positions of the old one say nothing about it.
            self.live_from = 0;
        }
        self.epoch = epoch;
        self.last = seq;
        self.exact = true;
        self.known = true;
        link
    }

    /// A message at `(epoch, seq)` is live (not a replay of history).
    pub fn is_live(&self, epoch: u64, seq: u64) -> bool {
        epoch != self.epoch || seq > self.live_from
    }

    /// Where to resume from (`since`): the last message received, or the subscription's position before any;
    /// `None` before the first reply.
    pub fn resume_from(&self) -> Option<(u64, u64)> {
        self.known.then_some((self.epoch, self.last))
    }
}

/// One topic of one connection: both witnesses and a pending gap notice.
#[derive(Debug, Clone, Default)]
pub struct TopicStream {
    pub track: SeqTrack,
    pub chain: Chain,
    /// A gap notice arrived and no message of the topic since.
    gap_pending: bool,
}

/// What one data message was, for each witness that looked at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// The gateway chain; `None` in the raw format (no positions).
    pub link: Option<Link>,
    /// The feed counter; `None` when the caller did not account it (outside the window).
    pub seen: Option<Seen>,
    /// Live rather than replayed (always, in the raw format).
    pub live: bool,
}

impl TopicStream {
    pub const fn new() -> Self {
        TopicStream {
            track: SeqTrack::new(),
            chain: Chain { epoch: 0, last: 0, exact: false, known: false, live_from: 0 },
            gap_pending: false,
        }
    }

    /// A `gap` notice for this topic: the next message may skip some.
    pub fn on_gap(&mut self) {
        self.gap_pending = true;
    }

    /// One data message: its gateway position `(epoch, seq, prev)` if the format has one, and its feed
    /// counter if the caller accounts it.
    pub fn on_message(&mut self, position: Option<(u64, u64, u64)>, counter: Option<u64>) -> Checked {
        let after_gap = std::mem::take(&mut self.gap_pending);
        let (link, live) = match position {
            Some((epoch, seq, prev)) => {
                let live = self.chain.is_live(epoch, seq);
                (Some(self.chain.on_message(epoch, seq, prev, after_gap)), live)
            }
            None => (None, true),
        };
        let seen = counter.map(|c| if after_gap { self.track.observe_after_gap(c) } else { self.track.observe(c) });
        Checked { link, seen, live }
    }
}

// Every connection keeps one per topic (10,000 x 20 in the market shape): docs/loadgen.md quotes ~120 bytes.
const _: () = assert!(std::mem::size_of::<TopicStream>() <= 128);

#[cfg(test)]
mod tests {
    use super::*;

    const E: u64 = 77;

    /// A hand-made life of one topic on one connection: subscribe, a missing message, a duplicate, a drop and a
    /// resume that replays, a resume past the history with a gap notice, and the counts that come out.
    #[test]
    fn catches_a_hole_and_a_duplicate_and_accepts_a_covered_gap() {
        let mut s = TopicStream::new();
        // Gateway seqs of this topic: 100, 103, 107, 110, 111, 120, 130, 140; feed counters 0, 1, 2, …
        s.chain.on_subscribed(E, 98);
        let c = s.on_message(Some((E, 100, 95)), Some(0));
        assert_eq!((c.link, c.seen, c.live), (Some(Link::InOrder), Some(Seen::InOrder), true));
        // 103 (counter 1) never arrives: 107's prev names it.
        let c = s.on_message(Some((E, 107, 103)), Some(2));
        assert_eq!((c.link, c.seen), (Some(Link::Hole), Some(Seen::Gap { missing: 1 })));
        // 107 again.
        let c = s.on_message(Some((E, 107, 103)), Some(2));
        assert_eq!((c.link, c.seen), (Some(Link::Duplicate), Some(Seen::Duplicate)));
        // Dropped after 107; resumed with since = 107: the reply's position 111 is the live boundary, so the
        // replay of 110 and 111 is not live, 120 is.
        assert_eq!(s.chain.resume_from(), Some((E, 107)));
        s.chain.on_subscribed(E, 111);
        for (seq, prev, counter) in [(110, 107, 3), (111, 110, 4)] {
            let c = s.on_message(Some((E, seq, prev)), Some(counter));
            assert_eq!((c.link, c.seen, c.live), (Some(Link::InOrder), Some(Seen::InOrder), false));
        }
        let c = s.on_message(Some((E, 120, 111)), Some(5));
        assert!(c.live);
        // Away too long: the history only reaches back to 140, a gap notice says so, 130 (counter 6) is skipped.
        s.chain.on_subscribed(E, 140);
        s.on_gap();
        let c = s.on_message(Some((E, 140, 130)), Some(7));
        assert_eq!((c.link, c.seen), (Some(Link::AfterGap), Some(Seen::Covered { skipped: 1 })));
        // Counts: counters 0..=7 expected minus the covered 6; received 0, 2, 3, 4, 5, 7; lost: 1 only.
        assert_eq!(s.track.expected_up_to(7), 7);
        assert_eq!(s.track.unique_up_to(7), 6);
        assert_eq!(s.track.covered_up_to(7), 1);
        // The notice is spent: the next skip is a hole again.
        let c = s.on_message(Some((E, 160, 150)), Some(9));
        assert_eq!((c.link, c.seen), (Some(Link::Hole), Some(Seen::Gap { missing: 1 })));
    }

    #[test]
    fn raw_format_and_unaccounted_messages() {
        let mut s = TopicStream::new();
        // No positions: the counter alone; outside the window: the chain alone.
        let c = s.on_message(None, Some(5));
        assert_eq!((c.link, c.seen, c.live), (None, Some(Seen::InOrder), true));
        let c = s.on_message(Some((E, 9, 3)), None);
        assert_eq!((c.link, c.seen), (Some(Link::Unanchored), None));
        // A gap notice is consumed by a message outside the window too.
        s.on_gap();
        assert_eq!(s.on_message(Some((E, 20, 15)), None).link, Some(Link::AfterGap));
        assert_eq!(s.on_message(Some((E, 21, 20)), Some(7)).seen, Some(Seen::Gap { missing: 1 }));
    }

    #[test]
    fn the_first_message_after_a_subscription_may_follow_older_ones() {
        let mut c = Chain::default();
        assert_eq!(c.resume_from(), None);
        c.on_subscribed(E, 50);
        assert_eq!(c.resume_from(), Some((E, 50)));
        // prev 40 < 50: the previous message of the topic came before the subscription.
        assert_eq!(c.on_message(E, 60, 40, false), Link::InOrder);
        // ... but once a message arrived, prev must match it exactly.
        assert_eq!(c.on_message(E, 70, 65, false), Link::Hole);
        assert_eq!(c.on_message(E, 75, 60, false), Link::Hole, "a lower prev breaks the chain too");
        assert_eq!(c.on_message(E, 60, 50, false), Link::Duplicate);
        // A subscription without a message in between: prev above the position is a message missed.
        let mut d = Chain::default();
        d.on_subscribed(E, 50);
        assert_eq!(d.on_message(E, 60, 55, false), Link::Hole);
        // Another epoch without a gap notice is a hole; with one, a fresh start.
        assert_eq!(d.on_message(E + 1, 3, 0, false), Link::Hole);
        assert_eq!(d.on_message(E + 2, 1, 0, true), Link::AfterGap);
        assert_eq!(d.on_message(E + 2, 2, 1, false), Link::InOrder);
    }
}
