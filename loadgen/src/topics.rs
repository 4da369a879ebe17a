//! The market shape of `subscribe --topics K --per-conn M`: which topics each connection subscribes to, in which
//! format, and what it asks the gateway for when it (re)connects. Pure; the worker does the I/O.
//!
//! **Spread.** Connection `i` (its global index over all worker processes) subscribes to the `M` consecutive
//! topics `(i·M + j) mod K`, `j = 0..M`: contiguous blocks that tile the topic list, so over `N` connections
//! every topic gets `⌊N·M/K⌋` or `⌈N·M/K⌉` subscribers (all of them as soon as `N·M ≥ K`). Topic names are
//! `msg::topic_name` (`T0000`…), the ones `feed --topics K` publishes.
//!
//! **(Re)connecting.** The first connect subscribes in the request target, `/ws?topics=A,B,…`. A reconnect
//! resumes every topic from its own last position ([`crate::topiccheck::Chain::resume_from`]): topics are grouped
//! by that position; the first group goes in the target (`?topics=…&since=E:S`), every other group in one
//! `{"op":"subscribe","topics":[…],"since":{…}}` control message sent as soon as the connection is open. A
//! topic with no position yet (the connection dropped before its reply) is subscribed without `since`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::msg::topic_name;

/// What data messages look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `wsgate.v1.json`: envelopes with the gateway's topic, epoch, seq and prev (needed to resume).
    Json,
    /// No subprotocol: the payload as published; only the feed counter is checked.
    Raw,
}

/// The subprotocol that asks for the JSON envelope.
pub const JSON_SUBPROTOCOL: &str = "wsgate.v1.json";

/// The topic workload every worker runs; part of the worker spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPlan {
    /// Topics in the feed (K).
    pub topics: u32,
    /// Topics per connection (M). INVARIANT: `1 <= per_conn <= topics`.
    pub per_conn: u32,
    pub format: Format,
    /// Churn: each connection drops and resumes once per this many ms (spread evenly over the interval).
    pub churn_interval_ms: Option<u64>,
    /// Resume storm: every connection drops this many ms after the window starts ...
    pub storm_at_ms: Option<u64>,
    /// ... and reconnects this many ms later.
    pub storm_away_ms: u64,
}

impl TopicPlan {
    /// Connections drop and resume (churn or a storm), so each needs positions: the JSON format.
    pub fn resumes(&self) -> bool {
        self.churn_interval_ms.is_some() || self.storm_at_ms.is_some()
    }

    /// The subprotocol to offer.
    pub fn protocol(&self) -> Option<&'static str> {
        (self.format == Format::Json).then_some(JSON_SUBPROTOCOL)
    }

    /// Topic index of connection `index`'s slot 0.
    pub fn first_topic(&self, index: u64) -> u32 {
        ((u128::from(index) * u128::from(self.per_conn)) % u128::from(self.topics)) as u32
    }

    /// Topic index in slot `slot` of a connection whose slot 0 holds `first`.
    pub fn topic_in(&self, first: u32, slot: usize) -> u32 {
        ((u64::from(first) + slot as u64) % u64::from(self.topics)) as u32
    }

    /// The slot that holds topic `k` on a connection whose slot 0 holds `first`; `None` if it has not subscribed.
    pub fn slot_of(&self, first: u32, k: u32) -> Option<usize> {
        let d = (u64::from(k) + u64::from(self.topics) - u64::from(first)) % u64::from(self.topics);
        (d < u64::from(self.per_conn)).then_some(d as usize)
    }

    pub fn name(&self, k: u32) -> String {
        topic_name(k, self.topics)
    }
}

/// What to ask for when a connection opens: the request target and the control messages to send once open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRequest {
    pub target: String,
    pub controls: Vec<String>,
}

impl OpenRequest {
    /// Replies to expect: one for the target's subscription, one per control message.
    pub fn replies(&self) -> u32 {
        1 + self.controls.len() as u32
    }
}

/// The request for a connection whose slot 0 holds `first`, on `base` (the URL's path and query), given each
/// slot's resume position (`None`: live only).
pub fn open_request(plan: &TopicPlan, base: &str, first: u32, resume: &[Option<(u64, u64)>]) -> OpenRequest {
    let mut groups: BTreeMap<Option<(u64, u64)>, Vec<String>> = BTreeMap::new();
    for (slot, since) in resume.iter().enumerate() {
        groups.entry(*since).or_default().push(plan.name(plan.topic_in(first, slot)));
    }
    let mut groups = groups.into_iter();
    let mut target = base.to_string();
    let mut controls = Vec::new();
    if let Some((since, names)) = groups.next() {
        target.push(if base.contains('?') { '&' } else { '?' });
        let _ = write!(target, "topics={}", names.join(","));
        if let Some((epoch, seq)) = since {
            let _ = write!(target, "&since={epoch}:{seq}");
        }
    }
    for (since, names) in groups {
        let mut c = String::from("{\"op\":\"subscribe\",\"topics\":[");
        for (i, n) in names.iter().enumerate() {
            let _ = write!(c, "{}\"{n}\"", if i > 0 { "," } else { "" });
        }
        c.push(']');
        if let Some((epoch, seq)) = since {
            let _ = write!(c, ",\"since\":{{\"epoch\":{epoch},\"seq\":{seq}}}");
        }
        c.push('}');
        controls.push(c);
    }
    OpenRequest { target, controls }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(topics: u32, per_conn: u32) -> TopicPlan {
        TopicPlan {
            topics,
            per_conn,
            format: Format::Json,
            churn_interval_ms: None,
            storm_at_ms: None,
            storm_away_ms: 0,
        }
    }

    #[test]
    fn blocks_tile_the_topics_evenly() {
        for (k, m, n) in [(1000u32, 20u32, 10_000u64), (7, 3, 10), (5, 5, 3), (10, 1, 25), (3, 2, 1)] {
            let p = plan(k, m);
            let mut subscribers = vec![0u64; k as usize];
            for i in 0..n {
                let first = p.first_topic(i);
                for slot in 0..m as usize {
                    let t = p.topic_in(first, slot);
                    subscribers[t as usize] += 1;
                    assert_eq!(p.slot_of(first, t), Some(slot));
                }
                let outside = (0..k).filter(|&t| p.slot_of(first, t).is_none()).count();
                assert_eq!(outside, (k - m) as usize, "a connection holds exactly M topics");
            }
            let (lo, hi) = (n * u64::from(m) / u64::from(k), (n * u64::from(m)).div_ceil(u64::from(k)));
            assert!(subscribers.iter().all(|&s| s == lo || s == hi), "K {k} M {m} N {n}: {subscribers:?}");
        }
        // The market shape: 10,000 connections x 20 of 1,000 topics, 200 subscribers each.
        let p = plan(1000, 20);
        assert_eq!((p.first_topic(0), p.first_topic(1), p.first_topic(50)), (0, 20, 0));
        assert_eq!(p.topic_in(990, 15), 5, "blocks wrap around");
    }

    #[test]
    fn first_connect_subscribes_in_the_target() {
        let p = plan(100, 3);
        let r = open_request(&p, "/ws", 98, &[None, None, None]);
        assert_eq!(r, OpenRequest { target: "/ws?topics=T0098,T0099,T0000".into(), controls: vec![] });
        assert_eq!(r.replies(), 1);
        assert_eq!(open_request(&p, "/ws?x=1", 0, &[None; 3]).target, "/ws?x=1&topics=T0000,T0001,T0002");
    }

    #[test]
    fn resume_groups_topics_by_position() {
        let p = plan(100, 4);
        let r = open_request(&p, "/ws", 10, &[Some((5, 40)), Some((5, 30)), Some((5, 40)), None]);
        assert_eq!(r.target, "/ws?topics=T0013");
        assert_eq!(
            r.controls,
            vec![
                r#"{"op":"subscribe","topics":["T0011"],"since":{"epoch":5,"seq":30}}"#.to_string(),
                r#"{"op":"subscribe","topics":["T0010","T0012"],"since":{"epoch":5,"seq":40}}"#.to_string(),
            ]
        );
        assert_eq!(r.replies(), 3);
        let r = open_request(&p, "/ws", 0, &[Some((5, 40)); 4]);
        assert_eq!(r.target, "/ws?topics=T0000,T0001,T0002,T0003&since=5:40");
        assert!(r.controls.is_empty());
        // Every control message is valid JSON.
        let r = open_request(&p, "/ws", 0, &[None, Some((1, 2)), Some((1, 3)), Some((1, 4))]);
        for c in &r.controls {
            serde_json::from_str::<serde_json::Value>(c).unwrap();
        }
    }
}
