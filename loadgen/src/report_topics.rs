//! The topic part of a `subscribe --topics` report: the workers' per-topic counts summed, the gateway chain,
//! gap notices, reconnections and the resume storm, and the run's **verdict** — exactly-once delivery verified,
//! or the list of what broke it. Built by [`crate::report::Report::build`], printed under its summary.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::control::{TopicCounts, TopicResult, WorkerResult};
use crate::topics::{Format, TopicPlan};

/// One topic's counts, as written in the JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct PerTopic {
    #[serde(flatten)]
    pub counts: TopicCounts,
    pub lost: u64,
}

/// Percentiles of a set of durations, ms.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SpreadMs {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl SpreadMs {
    fn of(mut ns: Vec<u64>) -> SpreadMs {
        if ns.is_empty() {
            return SpreadMs::default();
        }
        ns.sort_unstable();
        let at = |q: f64| ns[((ns.len() - 1) as f64 * q).round() as usize] as f64 / 1e6;
        SpreadMs { p50: at(0.5), p99: at(0.99), max: at(1.0) }
    }
}

/// The resume storm: how long until every dropped connection was subscribed again and caught up.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub at_s: f64,
    pub away_ms: u64,
    /// Connections dropped at once (every one open at that moment).
    pub dropped: u64,
    /// Of those, how many got every `subscribed` reply again, and the time from the drop until they had.
    pub resubscribed: u64,
    pub resubscribed_ms: SpreadMs,
    /// Of those, how many then received a live message (their replay done), and the time from the drop until.
    pub live: u64,
    pub live_ms: SpreadMs,
    /// Time from the drop until the last dropped connection was live again; `None` if some never were.
    pub all_live_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopicReport {
    pub topics: u32,
    pub per_conn: u32,
    pub format: Format,
    /// Connections that opened × topics each.
    pub subscriptions: u64,
    /// Messages received in the window over all connections and topics, per second (replays included).
    pub deliveries_per_s: f64,
    /// Of the window's deliveries, those that were a replay of history after a resume (not in the histogram).
    pub replayed: u64,
    /// Feed-counter numbers missing between received ones (lost, not late), over every connection × topic.
    pub holes: u64,
    /// Numbers skipped under gap notices: announced, so neither expected nor lost.
    pub gap_covered: u64,
    pub gap_notices: BTreeMap<String, u64>,
    pub chain_holes: u64,
    pub chain_duplicates: u64,
    pub unanchored: u64,
    pub unexpected_topic: u64,
    pub error_replies: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    pub drops: u64,
    pub reconnects: u64,
    pub reconnect_failures: u64,
    pub churn_skipped: u64,
    pub topics_with_loss: u64,
    pub topics_with_duplicates: u64,
    pub topics_with_reorders: u64,
    pub topics_with_chain_errors: u64,
    /// Topics no subscriber received anything of in the window (their loss cannot be measured).
    pub topics_silent: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormReport>,
    /// Every topic by name.
    pub per_topic: BTreeMap<String, PerTopic>,
}

/// The run-wide figures the verdict also looks at.
#[derive(Debug, Clone, Copy)]
pub struct RunFigures {
    pub connections_ok: u64,
    pub connections_failed: u64,
    pub window_s: f64,
    pub messages_in_window: u64,
    pub messages_lost: u64,
    pub messages_lost_tail: u64,
    pub duplicates: u64,
    pub reorders: u64,
    pub unparsed: u64,
}

impl TopicReport {
    pub fn build(plan: &TopicPlan, results: &[WorkerResult], f: &RunFigures) -> TopicReport {
        let mut per_topic = vec![TopicCounts::default(); plan.topics as usize];
        let mut sum = TopicResult::default();
        let mut storm = plan.storm_at_ms.map(|_| (0u64, Vec::new(), Vec::new()));
        for r in results.iter().filter_map(|r| r.topics.as_deref()) {
            for (total, t) in per_topic.iter_mut().zip(&r.per_topic) {
                total.add(t);
            }
            for (k, v) in &r.gap_notices {
                *sum.gap_notices.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &r.error_replies {
                *sum.error_replies.entry(k.clone()).or_default() += v;
            }
            if sum.first_error.is_none() {
                sum.first_error.clone_from(&r.first_error);
            }
            sum.replayed += r.replayed;
            sum.unexpected_topic += r.unexpected_topic;
            sum.unanchored += r.unanchored;
            sum.drops += r.drops;
            sum.reconnects += r.reconnects;
            sum.reconnect_failures += r.reconnect_failures;
            sum.churn_skipped += r.churn_skipped;
            if let (Some((dropped, replied, live)), Some(s)) = (&mut storm, &r.storm) {
                *dropped += s.dropped;
                replied.extend_from_slice(&s.resubscribed_ns);
                live.extend_from_slice(&s.live_ns);
            }
        }
        let mut total = TopicCounts::default();
        for t in &per_topic {
            total.add(t);
        }
        let count = |f: fn(&TopicCounts) -> bool| per_topic.iter().filter(|t| f(t)).count() as u64;
        TopicReport {
            topics: plan.topics,
            per_conn: plan.per_conn,
            format: plan.format,
            subscriptions: f.connections_ok * u64::from(plan.per_conn),
            deliveries_per_s: f.messages_in_window as f64 / f.window_s.max(1e-9),
            replayed: sum.replayed,
            holes: f.messages_lost.saturating_sub(f.messages_lost_tail),
            gap_covered: total.gap_covered,
            gap_notices: sum.gap_notices,
            chain_holes: total.chain_holes,
            chain_duplicates: total.chain_duplicates,
            unanchored: sum.unanchored,
            unexpected_topic: sum.unexpected_topic,
            error_replies: sum.error_replies,
            first_error: sum.first_error,
            drops: sum.drops,
            reconnects: sum.reconnects,
            reconnect_failures: sum.reconnect_failures,
            churn_skipped: sum.churn_skipped,
            topics_with_loss: count(|t| t.lost() > 0),
            topics_with_duplicates: count(|t| t.duplicates > 0 || t.chain_duplicates > 0),
            topics_with_reorders: count(|t| t.reorders > 0),
            topics_with_chain_errors: count(|t| t.chain_holes > 0 || t.chain_duplicates > 0),
            topics_silent: count(|t| t.deliveries == 0),
            storm: storm.map(|(dropped, replied, live)| StormReport {
                at_s: plan.storm_at_ms.unwrap_or(0) as f64 / 1e3,
                away_ms: plan.storm_away_ms,
                dropped,
                resubscribed: replied.len() as u64,
                resubscribed_ms: SpreadMs::of(replied),
                live: live.len() as u64,
                all_live_ms: (live.len() as u64 == dropped && dropped > 0)
                    .then(|| live.iter().max().copied().unwrap_or(0) as f64 / 1e6),
                live_ms: SpreadMs::of(live),
            }),
            per_topic: per_topic
                .iter()
                .enumerate()
                .map(|(k, t)| (plan.name(k as u32), PerTopic { counts: *t, lost: t.lost() }))
                .collect(),
        }
    }

    /// What keeps the run from having verified exactly-once delivery; empty: the verdict is "pass".
    pub fn failures(&self, f: &RunFigures) -> Vec<String> {
        let mut v = Vec::new();
        let mut say = |n: u64, what: &str| {
            if n > 0 {
                v.push(format!("{n} {what}"));
            }
        };
        say(f.connections_failed, "connections failed to open");
        say(self.holes, "messages missing without a gap notice (holes in the feed counter)");
        say(f.messages_lost_tail, "messages not arrived by the end of the grace period (late or lost)");
        say(self.chain_holes, "messages whose prev skipped a message without a gap notice");
        say(f.duplicates, "duplicate messages (feed counter)");
        say(self.chain_duplicates, "messages whose seq was not above the last position (gateway chain)");
        say(f.reorders, "messages out of order");
        say(self.unexpected_topic, "messages of a topic not subscribed to");
        say(f.unparsed, "messages that could not be read");
        say(self.error_replies.values().sum(), "error replies");
        if let Some(s) = &self.storm {
            say(s.dropped - s.live.min(s.dropped), "storm connections not caught up by the end");
        }
        if f.messages_in_window == 0 {
            v.push("no message received in the window".into());
        }
        v
    }

    /// Lines for the human-readable summary.
    pub fn render(&self, o: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            o,
            "  topics        {} topics, {} per connection ({:?}): {} subscriptions, {:.0} deliveries/s ({} replayed)",
            self.topics, self.per_conn, self.format, self.subscriptions, self.deliveries_per_s, self.replayed
        );
        let _ = writeln!(
            o,
            "  per topic     holes {}  topics with loss {}, duplicates {}, reorders {}, chain errors {}, silent {}",
            self.holes,
            self.topics_with_loss,
            self.topics_with_duplicates,
            self.topics_with_reorders,
            self.topics_with_chain_errors,
            self.topics_silent
        );
        let notices: u64 = self.gap_notices.values().sum();
        let _ = writeln!(
            o,
            "  gateway chain holes {}  duplicates {}  unanchored {};  gap notices {notices} {:?} covering {} messages",
            self.chain_holes, self.chain_duplicates, self.unanchored, self.gap_notices, self.gap_covered
        );
        if self.drops + self.reconnects + self.reconnect_failures > 0 {
            let _ = writeln!(
                o,
                "  resume        drops {}  reconnects {}  failed attempts {}  churn skipped {}",
                self.drops, self.reconnects, self.reconnect_failures, self.churn_skipped
            );
        }
        if let Some(s) = &self.storm {
            let _ = writeln!(
                o,
                "  storm         {} dropped at {:.1} s, back after {} ms: resubscribed {} (p50 {:.1} max {:.1} ms), \
                 live {} (p50 {:.1} p99 {:.1} max {:.1} ms), all live after {}",
                s.dropped,
                s.at_s,
                s.away_ms,
                s.resubscribed,
                s.resubscribed_ms.p50,
                s.resubscribed_ms.max,
                s.live,
                s.live_ms.p50,
                s.live_ms.p99,
                s.live_ms.max,
                s.all_live_ms.map_or("never".into(), |ms| format!("{ms:.1} ms"))
            );
        }
        if !self.error_replies.is_empty() {
            let _ = writeln!(
                o,
                "  error replies {:?} (first: {})",
                self.error_replies,
                self.first_error.as_deref().unwrap_or("")
            );
        }
        let mut worst: Vec<(&String, &PerTopic)> = self
            .per_topic
            .iter()
            .filter(|(_, t)| t.lost + t.counts.duplicates + t.counts.reorders + t.counts.chain_holes > 0)
            .collect();
        worst.sort_by_key(|(_, t)| std::cmp::Reverse(t.lost + t.counts.duplicates + t.counts.chain_holes));
        for (name, t) in worst.iter().take(5) {
            let c = &t.counts;
            let _ = writeln!(
                o,
                "    {name}: lost {} (tail {})  duplicates {}  reorders {}  chain holes {}  gap-covered {}",
                t.lost, c.lost_tail, c.duplicates, c.reorders, c.chain_holes, c.gap_covered
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::StormResult;

    fn figures() -> RunFigures {
        RunFigures {
            connections_ok: 4,
            connections_failed: 0,
            window_s: 2.0,
            messages_in_window: 100,
            messages_lost: 0,
            messages_lost_tail: 0,
            duplicates: 0,
            reorders: 0,
            unparsed: 0,
        }
    }

    fn plan() -> TopicPlan {
        TopicPlan::new(3, 2, Format::Json).with_storm(Some(500), 100)
    }

    fn worker(per_topic: [TopicCounts; 3], storm: StormResult) -> WorkerResult {
        WorkerResult {
            topics: Some(Box::new(TopicResult {
                per_topic: per_topic.to_vec(),
                gap_notices: [("history".to_string(), 1)].into(),
                storm: Some(storm),
                ..TopicResult::default()
            })),
            ..WorkerResult::default()
        }
    }

    #[test]
    fn sums_workers_and_judges() {
        let clean = TopicCounts { deliveries: 10, expected: 10, received: 10, ..TopicCounts::default() };
        let covered = TopicCounts { gap_covered: 3, gap_notices: 1, ..clean };
        let storm =
            |live: Vec<u64>| StormResult { dropped: 2, resubscribed_ns: vec![1_000_000, 2_000_000], live_ns: live };
        let results = [
            worker([clean, covered, TopicCounts::default()], storm(vec![3_000_000, 4_000_000])),
            worker([clean, clean, TopicCounts::default()], storm(vec![5_000_000, 9_000_000])),
        ];
        let r = TopicReport::build(&plan(), &results, &figures());
        assert_eq!((r.subscriptions, r.deliveries_per_s, r.gap_covered), (8, 50.0, 3));
        assert_eq!(r.gap_notices.get("history"), Some(&2));
        assert_eq!((r.topics_with_loss, r.topics_silent), (0, 1));
        assert_eq!(r.per_topic["T0001"].counts.deliveries, 20);
        let s = r.storm.as_ref().unwrap();
        assert_eq!((s.dropped, s.resubscribed, s.live, s.all_live_ms), (4, 4, 4, Some(9.0)));
        assert_eq!(s.live_ms.max, 9.0);
        assert!(r.failures(&figures()).is_empty(), "gap-covered messages are not a failure");

        // A hole, a chain duplicate and a storm connection that never caught up each fail the verdict.
        let lossy = TopicCounts { expected: 11, chain_duplicates: 1, ..clean };
        let results = [worker([lossy, clean, clean], storm(vec![3_000_000]))];
        let f = RunFigures { messages_lost: 1, ..figures() };
        let r = TopicReport::build(&plan(), &results, &f);
        assert_eq!((r.holes, r.topics_with_loss, r.topics_with_chain_errors), (1, 1, 1));
        assert_eq!(r.storm.as_ref().unwrap().all_live_ms, None);
        let failures = r.failures(&f);
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert!(failures[0].starts_with("1 messages missing without a gap notice"), "{failures:?}");
        let mut text = String::new();
        r.render(&mut text);
        assert!(text.contains("T0000: lost 1"), "{text}");
    }
}
