//! The topic side of one subscriber connection: its topics' checkers, the replies it waits for, and the
//! timestamps of a resume storm. Lives as long as the connection's slot, across every reconnect, so the
//! checkers see one stream per topic however often the socket changes. Plain data; the worker and
//! [`crate::topic_rx`] drive it.

use crate::topiccheck::TopicStream;
use std::collections::VecDeque;

use crate::topics::{open_request, TopicPlan};

/// Most requests of one connection in flight (sent, reply not yet received). The gateway answers more than 16
/// waiting requests with `rate_limited` (`src/shard/input.rs`); a resume of 20 topics at different positions
/// needs up to 20, so the rest wait for replies.
pub const MAX_REQUESTS_IN_FLIGHT: u32 = 8;

#[derive(Debug)]
pub struct TopicConn {
    /// Topic index of slot 0 (see [`TopicPlan::first_topic`]).
    pub first: u32,
    /// One per subscribed topic, by slot.
    pub streams: Box<[TopicStream]>,
    /// Control messages not sent yet (the rest of a resume): sent once the upgrade completes, at most
    /// [`MAX_REQUESTS_IN_FLIGHT`] unanswered at a time.
    pub controls: VecDeque<String>,
    /// Replies still expected on the current socket, for requests sent or queued in `controls`.
    /// INVARIANT: `replies_pending >= controls.len()`.
    pub replies_pending: u32,
    /// The current attempt is a reconnection (the slot had been open before).
    pub reconnecting: bool,
    /// Resume storm: when this connection was dropped for it, and since then, when its last reply and then its
    /// first live message arrived.
    pub storm_dropped_at: Option<u64>,
    pub storm_replied_at: Option<u64>,
    pub storm_live_at: Option<u64>,
}

impl TopicConn {
    pub fn new(plan: &TopicPlan, index: u64) -> Self {
        TopicConn {
            first: plan.first_topic(index),
            streams: (0..plan.per_conn).map(|_| TopicStream::new()).collect(),
            controls: VecDeque::new(),
            replies_pending: 0,
            reconnecting: false,
            storm_dropped_at: None,
            storm_replied_at: None,
            storm_live_at: None,
        }
    }

    /// The request target for the next attempt on `base`; remembers the control messages to send once open.
    pub fn request_target(&mut self, plan: &TopicPlan, base: &str) -> String {
        let resume: Vec<Option<(u64, u64)>> = self.streams.iter().map(|s| s.chain.resume_from()).collect();
        let req = open_request(plan, base, self.first, &resume);
        self.replies_pending = req.replies();
        self.controls = req.controls.into();
        req.target
    }

    /// The control messages that may be sent now (the connection is open): as many as keep at most
    /// [`MAX_REQUESTS_IN_FLIGHT`] unanswered.
    pub fn take_sendable(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while !self.controls.is_empty() && self.replies_pending - (self.controls.len() as u32) < MAX_REQUESTS_IN_FLIGHT
        {
            out.extend(self.controls.pop_front());
        }
        out
    }

    /// Every reply of the current socket has arrived (nothing is being (re)subscribed).
    pub fn settled(&self) -> bool {
        self.replies_pending == 0
    }

    /// A reply to one of the requests arrived at `now` (`subscribed`, or `error`: answered, if not well).
    pub fn on_reply(&mut self, now: u64) {
        self.replies_pending = self.replies_pending.saturating_sub(1);
        if self.replies_pending == 0 && self.storm_dropped_at.is_some() && self.storm_replied_at.is_none() {
            self.storm_replied_at = Some(now);
        }
    }

    /// A live message arrived at `now`: the first one after a storm's replies marks this connection caught up
    /// (per topic, the gateway sends the replay before live messages).
    pub fn on_live(&mut self, now: u64) {
        if self.storm_replied_at.is_some() && self.storm_live_at.is_none() {
            self.storm_live_at = Some(now);
        }
    }

    /// The socket is gone (dropped on purpose, or closed); the next attempt resumes.
    pub fn on_closed(&mut self) {
        self.reconnecting = true;
        self.replies_pending = 0;
        self.controls.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topics::Format;

    #[test]
    fn resumes_from_each_topics_position_and_times_a_storm() {
        let plan = TopicPlan::new(10, 2, Format::Json).with_storm(Some(0), 0);
        let mut c = TopicConn::new(&plan, 3);
        // Step 7 (coprime with 10): places 6 and 7 are topics 2 and 9.
        assert_eq!(c.request_target(&plan, "/ws"), "/ws?topics=T0002,T0009");
        assert_eq!(c.replies_pending, 1);
        assert!(!c.settled());
        c.streams[0].chain.on_subscribed(9, 100);
        c.streams[1].chain.on_subscribed(9, 100);
        c.on_reply(1);
        assert!(c.settled());
        c.streams[1].on_message(Some((9, 104, 90)), None);
        // Dropped in a storm at 10: resumes both from the last message received (the connection's topics come
        // in feed order, so nothing of T0002 up to 104 was missed), in the request target alone.
        c.on_closed();
        c.storm_dropped_at = Some(10);
        assert_eq!(c.request_target(&plan, "/ws"), "/ws?topics=T0002,T0009&since=9:104");
        assert!(c.take_sendable().is_empty());
        assert_eq!(c.replies_pending, 1);
        c.on_live(11); // before the reply: not caught up yet
        c.on_reply(12);
        c.on_live(15);
        c.on_live(16);
        assert_eq!((c.storm_replied_at, c.storm_live_at), (Some(12), Some(15)));
    }

    #[test]
    fn at_most_eight_requests_unanswered() {
        let plan = TopicPlan::new(40, 20, Format::Json).with_churn(Some(1));
        let mut c = TopicConn::new(&plan, 0);
        c.request_target(&plan, "/ws");
        // 19 different positions and one topic never confirmed: no one position serves all, 20 requests.
        for (slot, s) in c.streams.iter_mut().enumerate().skip(1) {
            s.chain.on_subscribed(1, 100 + slot as u64);
        }
        c.on_closed();
        c.request_target(&plan, "/ws");
        assert_eq!((c.replies_pending, c.controls.len()), (20, 19));
        // The target's subscription is one of the 8.
        assert_eq!(c.take_sendable().len(), 7);
        assert!(c.take_sendable().is_empty());
        for sent in [1, 1, 1] {
            c.on_reply(0);
            assert_eq!(c.take_sendable().len(), sent);
        }
        while !c.settled() {
            c.on_reply(0);
            c.take_sendable();
        }
        assert!(c.controls.is_empty());
    }
}
