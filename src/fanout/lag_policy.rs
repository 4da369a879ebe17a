//! What a connection that falls too far behind gets: the slow-consumer policy, chosen per topic. Pure decisions
//! over backlog sizes; the loop thread applies them (moves cursors, queues `gap` notices, closes).
//!
//! A connection's backlog is what it has yet to receive, in bytes and in messages, summed over what it reads
//! (its topic subscriptions, or its whole-feed stream). While it is within [`LagLimits`] nothing happens. Past
//! them, each subscription is relieved by its topic's [`LagPolicy`]:
//! - `Disconnect`: nothing is skipped for it;
//! - `Drop`: it skips to the live head of its topic (the client gets a `gap` notice with the range it missed);
//! - `Conflate`: it skips to the newest message of its topic (so a slow client of a fast symbol gets the newest
//!   price, not a stale backlog; a `gap` notice and the envelope's `seq`/`prev` show the jump).
//!
//! If what is left (the backlog of `Disconnect` topics plus the newest message of each conflated one) is still
//! past the limits, the connection is closed with 1008 instead: its remaining backlog is what no policy allows
//! skipping. A connection whose subscriptions are all `Disconnect` is closed at once, as before policies existed.
//!
//! Skips act at message boundaries only: a subscription standing inside a message first finishes it (the loop
//! keeps that one chunk apart, [`crate::fanout::Pins`]), so every frame a client receives is whole.

/// What to do with a subscription of a connection past its backlog limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LagPolicy {
    /// Close the connection with 1008 (slow consumer).
    Disconnect,
    /// Skip to live and tell the client the range it missed (`gap`, reason `skipped`).
    Drop,
    /// Keep only the newest message per topic (`gap`, reason `conflated`).
    Conflate,
}

impl LagPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            LagPolicy::Disconnect => "disconnect",
            LagPolicy::Drop => "drop",
            LagPolicy::Conflate => "conflate",
        }
    }
}

/// Which topics a rule applies to: one topic, or every topic whose name starts with a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagRule {
    pub name: Box<str>,
    /// `name` is a prefix (the rule was written `name*`); otherwise the exact topic.
    pub prefix: bool,
    pub policy: LagPolicy,
}

/// The policy per topic: the first rule that matches, else the default. A whole-feed connection (no topics)
/// has the default; `Conflate` there means `Drop` (the whole feed is one stream, not a set of topics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagPolicies {
    pub rules: Vec<LagRule>,
    pub default: LagPolicy,
}

impl Default for LagPolicies {
    fn default() -> Self {
        LagPolicies { rules: Vec::new(), default: LagPolicy::Disconnect }
    }
}

impl LagPolicies {
    /// The policy of topic `name`.
    pub fn for_topic(&self, name: &str) -> LagPolicy {
        self.rules
            .iter()
            .find(|r| if r.prefix { name.starts_with(&*r.name) } else { *r.name == *name })
            .map_or(self.default, |r| r.policy)
    }

    /// The policy of a whole-feed connection.
    pub fn whole_feed(&self) -> LagPolicy {
        match self.default {
            LagPolicy::Conflate => LagPolicy::Drop,
            other => other,
        }
    }
}

/// What a connection has yet to receive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub bytes: u64,
    pub messages: u64,
}

impl std::ops::Add for Backlog {
    type Output = Backlog;
    fn add(self, o: Backlog) -> Backlog {
        Backlog { bytes: self.bytes.saturating_add(o.bytes), messages: self.messages.saturating_add(o.messages) }
    }
}

/// How far behind a connection may be (`max_lag_bytes`, `max_lag_messages`; 0 messages: no message bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagLimits {
    pub max_bytes: u64,
    pub max_messages: u64,
}

impl LagLimits {
    pub fn exceeded(&self, b: Backlog) -> bool {
        b.bytes > self.max_bytes || (self.max_messages > 0 && b.messages > self.max_messages)
    }

    /// Whether a message count is needed to judge a connection `bytes` behind (counting costs a search per log).
    pub fn counts_messages(&self) -> bool {
        self.max_messages > 0
    }
}

/// One subscription of a connection past its limits, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubBacklog {
    pub policy: LagPolicy,
    /// Everything pending for it, the rest of a message it stands inside of included.
    pub pending: Backlog,
    /// What stays pending if it is conflated: the rest of the message it stands inside of (that is finished
    /// first) plus its topic's newest message when that is another one.
    pub newest: Backlog,
}

/// What the loop does with one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relief {
    Keep,
    /// Skip to the head of its log (after the message it stands inside of).
    ToHead,
    /// Skip to the start of its log's newest message (after the message it stands inside of).
    ToNewest,
}

/// The decision for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// Within its limits: nothing to do.
    Within,
    /// Close it with 1008 (slow consumer).
    Close,
    /// Apply the reliefs written to the caller's list; afterwards it is within its limits.
    Relieve,
}

/// Decides for a connection whose subscriptions are `subs` (see the module docs); on [`Decision::Relieve`],
/// `reliefs[i]` is what to do with `subs[i]` (`reliefs` is cleared and refilled; kept by the caller to reuse
/// its allocation).
pub fn decide(limits: LagLimits, subs: &[SubBacklog], reliefs: &mut Vec<Relief>) -> Decision {
    reliefs.clear();
    let total = subs.iter().fold(Backlog::default(), |acc, s| acc + s.pending);
    if !limits.exceeded(total) {
        return Decision::Within;
    }
    let mut left = Backlog::default();
    let mut relieved = false;
    for s in subs {
        let (relief, stays) = match s.policy {
            LagPolicy::Disconnect => (Relief::Keep, s.pending),
            LagPolicy::Drop if s.pending.messages > 0 => (Relief::ToHead, Backlog::default()),
            LagPolicy::Conflate if s.newest != s.pending => (Relief::ToNewest, s.newest),
            LagPolicy::Drop | LagPolicy::Conflate => (Relief::Keep, s.pending),
        };
        relieved |= relief != Relief::Keep;
        left = left + stays;
        reliefs.push(relief);
    }
    if !relieved || limits.exceeded(left) {
        reliefs.clear();
        return Decision::Close;
    }
    Decision::Relieve
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const L: LagLimits = LagLimits { max_bytes: 100, max_messages: 10 };

    fn b(bytes: u64, messages: u64) -> Backlog {
        Backlog { bytes, messages }
    }

    fn sub(policy: LagPolicy, pending: Backlog, newest: Backlog) -> SubBacklog {
        SubBacklog { policy, pending, newest }
    }

    #[test]
    fn within_the_limits_nothing_happens_whatever_the_policy() {
        let mut r = Vec::new();
        let subs = [sub(LagPolicy::Drop, b(100, 10), b(5, 1))];
        assert_eq!(decide(L, &subs, &mut r), Decision::Within);
        let no_count = LagLimits { max_bytes: 100, max_messages: 0 };
        assert_eq!(
            decide(no_count, &[sub(LagPolicy::Disconnect, b(50, 1_000_000), b(1, 1))], &mut r),
            Decision::Within
        );
    }

    #[test]
    fn disconnect_closes_past_bytes_or_messages() {
        let mut r = Vec::new();
        assert_eq!(decide(L, &[sub(LagPolicy::Disconnect, b(101, 1), b(1, 1))], &mut r), Decision::Close);
        assert_eq!(decide(L, &[sub(LagPolicy::Disconnect, b(20, 11), b(1, 1))], &mut r), Decision::Close);
        assert!(r.is_empty());
    }

    #[test]
    fn drop_skips_to_the_head_and_conflate_to_the_newest() {
        let mut r = Vec::new();
        let subs = [
            sub(LagPolicy::Drop, b(80, 8), b(10, 1)),
            sub(LagPolicy::Conflate, b(60, 6), b(10, 1)),
            sub(LagPolicy::Disconnect, b(30, 2), b(15, 1)),
        ];
        assert_eq!(decide(L, &subs, &mut r), Decision::Relieve);
        assert_eq!(r, [Relief::ToHead, Relief::ToNewest, Relief::Keep]);
    }

    #[test]
    fn what_no_policy_may_skip_still_closes() {
        let mut r = Vec::new();
        // The disconnect topic alone is past the limit.
        let subs = [sub(LagPolicy::Drop, b(80, 8), b(10, 1)), sub(LagPolicy::Disconnect, b(101, 2), b(15, 1))];
        assert_eq!(decide(L, &subs, &mut r), Decision::Close);
        // Conflated, each topic's newest message still adds up to more than the limit.
        let subs: Vec<SubBacklog> = (0..11).map(|_| sub(LagPolicy::Conflate, b(20, 2), b(5, 1))).collect();
        assert_eq!(decide(L, &subs, &mut r), Decision::Close, "11 newest messages > 10");
        // Nothing to conflate: one message pending per topic, and too many topics.
        let subs: Vec<SubBacklog> = (0..11).map(|_| sub(LagPolicy::Conflate, b(5, 1), b(5, 1))).collect();
        assert_eq!(decide(L, &subs, &mut r), Decision::Close);
        assert!(r.is_empty());
    }

    #[test]
    fn policies_by_topic_first_rule_wins() {
        let p = LagPolicies {
            rules: vec![
                LagRule { name: "BTC-USD".into(), prefix: false, policy: LagPolicy::Drop },
                LagRule { name: "BTC-".into(), prefix: true, policy: LagPolicy::Conflate },
                LagRule { name: "".into(), prefix: true, policy: LagPolicy::Disconnect },
            ],
            default: LagPolicy::Drop,
        };
        assert_eq!(p.for_topic("BTC-USD"), LagPolicy::Drop);
        assert_eq!(p.for_topic("BTC-EUR"), LagPolicy::Conflate);
        assert_eq!(p.for_topic("ETH-USD"), LagPolicy::Disconnect, "`*` catches the rest");
        assert_eq!(LagPolicies { rules: vec![], default: LagPolicy::Conflate }.whole_feed(), LagPolicy::Drop);
        assert_eq!(LagPolicies::default().for_topic("x"), LagPolicy::Disconnect);
    }

    fn policy() -> impl Strategy<Value = LagPolicy> {
        prop_oneof![Just(LagPolicy::Disconnect), Just(LagPolicy::Drop), Just(LagPolicy::Conflate)]
    }

    proptest! {
        /// Whatever the subscriptions: a relief leaves the connection within its limits, touches only what its
        /// policy allows, and a close happens only when no allowed relief could bring it within them.
        #[test]
        fn a_relief_always_ends_within_the_limits(
            raw in proptest::collection::vec((policy(), 0u64..60, 0u64..6, 0u64..20), 0..8),
        ) {
            let subs: Vec<SubBacklog> = raw
                .iter()
                .map(|&(p, bytes, messages, newest)| {
                    // A pending byte belongs to a pending message.
                    let messages = if bytes == 0 { 0 } else { messages.max(1) };
                    let newest = if messages == 0 { b(0, 0) } else { b(newest.min(bytes), 1) };
                    sub(p, b(bytes, messages), newest)
                })
                .collect();
            let mut r = Vec::new();
            let best = subs.iter().fold(Backlog::default(), |acc, s| acc + match s.policy {
                LagPolicy::Disconnect => s.pending,
                LagPolicy::Drop => b(0, 0),
                LagPolicy::Conflate => s.newest,
            });
            let total = subs.iter().fold(Backlog::default(), |acc, s| acc + s.pending);
            match decide(L, &subs, &mut r) {
                Decision::Within => prop_assert!(!L.exceeded(total)),
                Decision::Close => prop_assert!(L.exceeded(best), "closed though relief would do: {best:?}"),
                Decision::Relieve => {
                    prop_assert_eq!(r.len(), subs.len());
                    let mut left = Backlog::default();
                    for (s, relief) in subs.iter().zip(&r) {
                        left = left + match (s.policy, relief) {
                            (_, Relief::Keep) => s.pending,
                            (LagPolicy::Drop, Relief::ToHead) => b(0, 0),
                            (LagPolicy::Conflate, Relief::ToNewest) => s.newest,
                            other => { prop_assert!(false, "{other:?} not allowed"); unreachable!() }
                        };
                    }
                    prop_assert!(!L.exceeded(left));
                }
            }
        }
    }
}
