//! The market shape of `subscribe --topics K --per-conn M`: which topics each connection subscribes to, in which
//! format, and what it asks the gateway for when it (re)connects. Pure; the worker does the I/O.
//!
//! **Spread.** Connection `i` (its global index over all worker processes) takes the `M` consecutive places
//! `(i·M + j) mod K`, `j = 0..M`, of a tiling of `K` places — contiguous blocks, so over `N` connections every
//! place gets `⌊N·M/K⌋` or `⌈N·M/K⌉` subscribers (all of them as soon as `N·M ≥ K`). Place `x` is topic
//! `x·a mod K`, with `a` the smallest integer `≥ K/M` coprime with `K` (a bijection, so the balance holds for
//! topics): a connection's topics lie about `K/M` apart instead of side by side. That matters because the feed
//! is round-robin (message `n` goes to topic `n mod K`): side-by-side topics would reach each connection as a
//! burst of `M` messages every `K`, all of one block's connections at once — easy for a gateway to coalesce and
//! unlike a market — where spread topics reach it about evenly, one message every `K/M`. Topic names are
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
    /// Place → topic multiplier `a` and its inverse mod `topics` (see the module doc). INVARIANT: both set by
    /// [`TopicPlan::new`], `stride · stride_inv ≡ 1 (mod topics)` (both 0 when `topics` is 1).
    stride: u32,
    stride_inv: u32,
}

impl TopicPlan {
    /// Churn every `interval_ms` (or not).
    pub fn with_churn(mut self, interval_ms: Option<u64>) -> TopicPlan {
        self.churn_interval_ms = interval_ms;
        self
    }

    /// A storm `at_ms` into the window (or none), away for `away_ms`.
    pub fn with_storm(mut self, at_ms: Option<u64>, away_ms: u64) -> TopicPlan {
        self.storm_at_ms = at_ms;
        self.storm_away_ms = away_ms;
        self
    }

    /// A plan without churn or storm (see [`Self::with_churn`], [`Self::with_storm`]). Requires
    /// `1 <= per_conn <= topics`.
    pub fn new(topics: u32, per_conn: u32, format: Format) -> TopicPlan {
        assert!((1..=topics).contains(&per_conn), "per_conn {per_conn} of {topics} topics");
        let (stride, stride_inv) = stride(topics, per_conn);
        TopicPlan {
            topics,
            per_conn,
            format,
            churn_interval_ms: None,
            storm_at_ms: None,
            storm_away_ms: 0,
            stride,
            stride_inv,
        }
    }

    /// Connections drop and resume (churn or a storm), so each needs positions: the JSON format.
    pub fn resumes(&self) -> bool {
        self.churn_interval_ms.is_some() || self.storm_at_ms.is_some()
    }

    /// The subprotocol to offer.
    pub fn protocol(&self) -> Option<&'static str> {
        (self.format == Format::Json).then_some(JSON_SUBPROTOCOL)
    }

    /// The place of connection `index`'s slot 0 (slot `j` is place `first + j`).
    pub fn first_topic(&self, index: u64) -> u32 {
        ((u128::from(index) * u128::from(self.per_conn)) % u128::from(self.topics)) as u32
    }

    /// Topic index in slot `slot` of a connection whose slot 0 is place `first`.
    pub fn topic_in(&self, first: u32, slot: usize) -> u32 {
        let k = u64::from(self.topics);
        let place = (u64::from(first) + slot as u64) % k;
        (place * u64::from(self.stride) % k) as u32
    }

    /// The slot that holds topic `t` on a connection whose slot 0 is place `first`; `None` if it has not
    /// subscribed.
    pub fn slot_of(&self, first: u32, t: u32) -> Option<usize> {
        let k = u64::from(self.topics);
        let place = u64::from(t) * u64::from(self.stride_inv) % k;
        let d = (place + k - u64::from(first)) % k;
        (d < u64::from(self.per_conn)).then_some(d as usize)
    }

    pub fn name(&self, k: u32) -> String {
        topic_name(k, self.topics)
    }
}

/// The place → topic multiplier for `k` topics, `m` per connection, and its inverse mod `k`.
fn stride(k: u32, m: u32) -> (u32, u32) {
    if k == 1 {
        return (0, 0);
    }
    let k = u64::from(k);
    // Terminates: k + 1 is coprime with k.
    let mut a = (k / u64::from(m)).max(1);
    while gcd(a, k) != 1 {
        a += 1;
    }
    let a = a % k;
    // The inverse by the extended Euclidean algorithm (a and k coprime).
    let (mut r0, mut r1, mut s0, mut s1) = (k as i64, a as i64, 0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (s0, s1) = (s1, s0 - q * s1);
    }
    (a as u32, s0.rem_euclid(k as i64) as u32)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
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
///
/// When every slot has a position in one epoch, one position serves them all — the highest: the gateway delivers
/// a connection's topics in feed order (`docs/client-protocol.md`), so everything of every topic up to the last
/// message received was received, and the connection resumes with its request target alone (no control
/// message). Otherwise topics are grouped by position, one request per group.
pub fn open_request(plan: &TopicPlan, base: &str, first: u32, resume: &[Option<(u64, u64)>]) -> OpenRequest {
    let one_epoch = resume.first().copied().flatten().map(|(epoch, _)| epoch);
    let shared = one_epoch.filter(|e| resume.iter().all(|r| r.is_some_and(|(epoch, _)| epoch == *e)));
    let highest = shared.map(|epoch| (epoch, resume.iter().flatten().map(|&(_, seq)| seq).max().unwrap_or(0)));
    let mut groups: BTreeMap<Option<(u64, u64)>, Vec<String>> = BTreeMap::new();
    for (slot, since) in resume.iter().enumerate() {
        let since = if highest.is_some() { highest } else { *since };
        groups.entry(since).or_default().push(plan.name(plan.topic_in(first, slot)));
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
        TopicPlan::new(topics, per_conn, Format::Json)
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
        // The market shape: 10,000 connections x 20 of 1,000 topics, 200 subscribers each; a connection's topics
        // lie 51 apart (the smallest step >= 1000/20 coprime with 1000).
        let p = plan(1000, 20);
        assert_eq!((p.first_topic(0), p.first_topic(1), p.first_topic(50)), (0, 20, 0));
        let topics: Vec<u32> = (0..20).map(|j| p.topic_in(p.first_topic(1), j)).collect();
        assert_eq!(&topics[..4], [20, 71, 122, 173]);
        assert_eq!(p.topic_in(990, 15), 5 * 51, "blocks wrap around");
    }

    #[test]
    fn strides_are_invertible() {
        for (k, m) in [(1u32, 1u32), (2, 1), (2, 2), (10, 3), (1000, 20), (1024, 16), (7, 7), (65_536, 3)] {
            let (a, inv) = stride(k, m);
            assert_eq!(u64::from(a) * u64::from(inv) % u64::from(k), u64::from(k > 1), "k {k} m {m} a {a}");
        }
    }

    #[test]
    fn first_connect_subscribes_in_the_target() {
        let p = plan(100, 3);
        // Step 33 (coprime with 100): places 98, 99, 0 are topics 34, 67, 0.
        let r = open_request(&p, "/ws", 98, &[None, None, None]);
        assert_eq!(r, OpenRequest { target: "/ws?topics=T0034,T0067,T0000".into(), controls: vec![] });
        assert_eq!(r.replies(), 1);
        assert_eq!(open_request(&p, "/ws?x=1", 0, &[None; 3]).target, "/ws?x=1&topics=T0000,T0033,T0066");
    }

    #[test]
    fn resume_from_one_position_or_grouped_by_position() {
        let p = plan(100, 4);
        // Step 27: places 10..=13 are topics 70, 97, 24, 51.
        let r = open_request(&p, "/ws", 10, &[Some((5, 40)), Some((5, 30)), Some((5, 40)), None]);
        assert_eq!(r.target, "/ws?topics=T0051");
        assert_eq!(
            r.controls,
            vec![
                r#"{"op":"subscribe","topics":["T0097"],"since":{"epoch":5,"seq":30}}"#.to_string(),
                r#"{"op":"subscribe","topics":["T0070","T0024"],"since":{"epoch":5,"seq":40}}"#.to_string(),
            ]
        );
        assert_eq!(r.replies(), 3);
        let r = open_request(&p, "/ws", 0, &[Some((5, 40)); 4]);
        assert_eq!(r.target, "/ws?topics=T0000,T0027,T0054,T0081&since=5:40");
        assert!(r.controls.is_empty());
        // Every topic with a position in one epoch: the highest, for all, in the target alone.
        let r = open_request(&p, "/ws", 0, &[Some((5, 40)), Some((5, 30)), Some((5, 44)), Some((5, 41))]);
        assert_eq!(r.target, "/ws?topics=T0000,T0027,T0054,T0081&since=5:44");
        assert!(r.controls.is_empty());
        // Two epochs (a restart came between): grouped again.
        let r = open_request(&p, "/ws", 0, &[Some((5, 40)), Some((6, 3)), Some((5, 40)), Some((5, 40))]);
        assert_eq!(r.controls.len(), 1);
        // Every control message is valid JSON.
        let r = open_request(&p, "/ws", 0, &[None, Some((1, 2)), Some((1, 3)), Some((1, 4))]);
        for c in &r.controls {
            serde_json::from_str::<serde_json::Value>(c).unwrap();
        }
    }
}
