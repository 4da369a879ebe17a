//! The receive path of `subscribe --topics`: one WebSocket message of a topic connection — a reply, a gap
//! notice, or a data message in either format — applied to the connection's checkers
//! ([`crate::topiccheck`]) and to the process's counts (the [`Recorder`]'s window, histogram and per-topic
//! tallies).
//!
//! Counting rules, on top of the recorder's window rules for the feed counter:
//! - chain anomalies, gap notices and unexpected topics count from the window's start to the end of the grace
//!   period; the chain itself is followed from the connection's first message, so the window starts on a
//!   checked chain;
//! - a replayed message (at or below the live boundary of its topic's latest `subscribed` reply) is a
//!   delivery and is accounted, but stays out of the latency histogram: its scheduled time is as old as the
//!   history it came from;
//! - `error` replies count whenever they come: the load generator never sends a request that should fail.

use crate::envelope::{self, Reply};
use crate::msg::parse_message;
use crate::recorder::Recorder;
use crate::seqtrack::Seen;
use crate::topic_conn::TopicConn;
use crate::topiccheck::Link;
use crate::topics::Format;

/// One message received at `now` on a topic connection.
pub fn on_message(rec: &mut Recorder, tc: &mut TopicConn, payload: &[u8], now: u64) {
    rec.counters.messages_total += 1;
    let counting = rec.window().is_some_and(|(start, _, grace_end)| now >= start && now < grace_end);
    if envelope::is_reply(payload) {
        on_reply(rec, tc, payload, now, counting);
        return;
    }
    let json = rec.topic_mode.as_ref().is_some_and(|m| m.plan.format == Format::Json);
    let (position, inner) = if json {
        match envelope::parse_envelope(payload) {
            Some(e) => (Some(e), e.data),
            None => return unparsed(rec, counting),
        }
    } else {
        (None, payload)
    };
    let Some(p) = parse_message(inner) else { return unparsed(rec, counting) };
    let name = match position {
        Some(e) => e.topic,
        None => p.topic.unwrap_or_default(),
    };
    let Some(mode) = rec.topic_mode.as_ref() else { return };
    let slot = rec.topic_index(name).and_then(|k| Some((k, mode.plan.slot_of(tc.first, k)?)));
    let Some((k, slot)) = slot else {
        if counting {
            rec.topic_mode.as_mut().expect("topic mode").result.unexpected_topic += 1;
        }
        return;
    };
    let tid = k as usize + 1;
    let accounted = rec.account(tid, p.seq, now);
    let checked = tc.streams[slot].on_message(position.map(|e| (e.epoch, e.seq, e.prev)), accounted.map(|_| p.seq));
    if checked.live {
        tc.on_live(now);
    }
    if let Some(seen) = checked.seen {
        rec.count(seen);
        if accounted == Some(true) && seen.is_new() && checked.live {
            rec.record_latency(now, p.scheduled_ns);
        }
    }
    let in_window = rec.window().is_some_and(|(start, end, _)| now >= start && now < end);
    let result = &mut rec.topic_mode.as_mut().expect("topic mode").result;
    let t = &mut result.per_topic[k as usize];
    if in_window {
        t.deliveries += 1;
        result.replayed += u64::from(!checked.live);
    }
    match checked.seen {
        Some(Seen::Duplicate) => t.duplicates += 1,
        Some(Seen::Late | Seen::BeforeStart) => t.reorders += 1,
        _ => {}
    }
    if counting {
        match checked.link {
            Some(Link::Hole) => t.chain_holes += 1,
            Some(Link::Duplicate) => t.chain_duplicates += 1,
            Some(Link::Unanchored) => result.unanchored += 1,
            Some(Link::InOrder | Link::AfterGap) | None => {}
        }
    }
}

fn unparsed(rec: &mut Recorder, counting: bool) {
    if counting {
        rec.counters.unparsed += 1;
    }
}

fn on_reply(rec: &mut Recorder, tc: &mut TopicConn, payload: &[u8], now: u64, counting: bool) {
    let reply = envelope::parse_reply(payload);
    let slot_of = |rec: &Recorder, tc: &TopicConn, topic: &str| {
        let mode = rec.topic_mode.as_ref()?;
        let k = rec.topic_index(topic.as_bytes())?;
        Some((k, mode.plan.slot_of(tc.first, k)?))
    };
    match reply {
        Reply::Subscribed(topics) => {
            for t in &topics {
                if let Some((_, slot)) = slot_of(rec, tc, &t.topic) {
                    tc.streams[slot].chain.on_subscribed(t.position.epoch, t.position.seq);
                }
            }
            tc.on_reply(now);
        }
        Reply::Gap { topic, reason, .. } => {
            let found = slot_of(rec, tc, &topic);
            if let Some((_, slot)) = found {
                tc.streams[slot].on_gap();
            }
            if counting {
                let result = &mut rec.topic_mode.as_mut().expect("topic mode").result;
                *result.gap_notices.entry(reason).or_default() += 1;
                if let Some((k, _)) = found {
                    result.per_topic[k as usize].gap_notices += 1;
                }
            }
        }
        Reply::Error { code, message } => {
            // Every error answers a request (gap notices are not requests), so the connection does not wait on.
            tc.on_reply(now);
            let result = &mut rec.topic_mode.as_mut().expect("topic mode").result;
            *result.error_replies.entry(code.clone()).or_default() += 1;
            result.first_error.get_or_insert_with(|| format!("{code}: {message}"));
        }
        Reply::Other(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::write_message;
    use crate::topics::TopicPlan;

    fn plan(format: Format) -> TopicPlan {
        TopicPlan::new(4, 2, format)
    }

    fn envelope(topic: &str, seq: u64, prev: u64, counter: u64) -> Vec<u8> {
        let mut data = Vec::new();
        write_message(&mut data, counter, 1_000, Some(topic), 0);
        data.pop();
        let mut v = format!(r#"{{"topic":"{topic}","epoch":5,"seq":{seq},"prev":{prev},"data":"#).into_bytes();
        v.extend_from_slice(&data);
        v.push(b'}');
        v
    }

    fn subscribed(topics: &[&str], seq: u64) -> Vec<u8> {
        let list: Vec<String> =
            topics.iter().map(|t| format!(r#"{{"topic":"{t}","position":{{"epoch":5,"seq":{seq}}}}}"#)).collect();
        format!(r#"{{"wsgate":"subscribed","topics":[{}]}}"#, list.join(",")).into_bytes()
    }

    /// Connection 1 holds T0002 and T0001 (places 2 and 3, step 3): a clean run, then a hole, a duplicate, a covered gap, a foreign topic.
    #[test]
    fn counts_per_topic_and_keeps_replays_out_of_the_histogram() {
        let p = plan(Format::Json);
        let mut rec = Recorder::new(false).with_topics(&p);
        rec.set_window(1_000, 2_000, 500);
        let mut tc = TopicConn::new(&p, 1);
        assert_eq!(tc.request_target(&p, "/ws"), "/ws?topics=T0002,T0001");
        on_message(&mut rec, &mut tc, &subscribed(&["T0002", "T0001"], 10), 900);
        assert!(tc.settled());
        // Before the window: followed, not counted.
        on_message(&mut rec, &mut tc, &envelope("T0002", 11, 3, 0), 950);
        // In the window: T0002 gets 1, (2 missing), 3, 3 again; T0001 gets 0 after a gap notice, then 1.
        on_message(&mut rec, &mut tc, &envelope("T0002", 12, 11, 1), 1_100);
        on_message(&mut rec, &mut tc, &envelope("T0002", 16, 14, 3), 1_100);
        on_message(&mut rec, &mut tc, &envelope("T0002", 16, 14, 3), 1_100);
        let gap = br#"{"wsgate":"gap","topic":"T0001","from":{"epoch":5,"seq":1},"to":{"epoch":5,"seq":13},"reason":"history"}"#;
        on_message(&mut rec, &mut tc, gap, 1_100);
        on_message(&mut rec, &mut tc, &envelope("T0001", 13, 8, 5), 1_200);
        on_message(&mut rec, &mut tc, &envelope("T0001", 17, 13, 6), 1_200);
        // A topic this connection did not subscribe to, and a message that is not an envelope.
        on_message(&mut rec, &mut tc, &envelope("T0000", 18, 0, 0), 1_300);
        on_message(&mut rec, &mut tc, b"hello", 1_300);
        let m = &rec.topic_mode.as_ref().unwrap().result;
        let (t2, t1) = (m.per_topic[2], m.per_topic[1]);
        assert_eq!((t2.deliveries, t2.duplicates, t2.chain_holes, t2.chain_duplicates), (3, 1, 1, 1));
        assert_eq!((t1.deliveries, t1.gap_notices, t1.chain_holes), (2, 1, 0));
        assert_eq!(m.gap_notices.get("history"), Some(&1));
        assert_eq!((m.unexpected_topic, m.replayed), (1, 0));
        assert_eq!((rec.counters.gaps, rec.counters.duplicates, rec.counters.unparsed), (1, 1, 1));
        assert_eq!(rec.counters.messages_in_window, 5);
        assert_eq!(rec.hist.len(), 4, "every new live message in the window");
        // A resume replays 17..=20 of T0001 (reply at 20), then 21 is live.
        tc.on_closed();
        // One position for both topics: the last message received (17; nothing of T0002 came after 16 up to it).
        let target = tc.request_target(&p, "/ws");
        assert!(target.contains("T0001") && target.contains("T0002") && target.ends_with("&since=5:17"), "{target}");
        assert!(tc.take_sendable().is_empty());
        on_message(&mut rec, &mut tc, &subscribed(&["T0001", "T0002"], 20), 1_400);
        on_message(&mut rec, &mut tc, &envelope("T0001", 19, 17, 7), 1_500);
        on_message(&mut rec, &mut tc, &envelope("T0001", 21, 19, 8), 1_500);
        let m = &rec.topic_mode.as_ref().unwrap().result;
        assert_eq!((m.replayed, m.per_topic[1].chain_holes), (1, 0));
        assert_eq!(rec.hist.len(), 5);
        // An error reply is kept with its text.
        on_message(&mut rec, &mut tc, br#"{"wsgate":"error","code":"bad_topic","message":"x"}"#, 1_500);
        let m = &rec.topic_mode.as_ref().unwrap().result;
        assert_eq!(m.first_error.as_deref(), Some("bad_topic: x"));
    }

    #[test]
    fn raw_format_checks_the_feed_counter_alone() {
        let p = plan(Format::Raw);
        let mut rec = Recorder::new(false).with_topics(&p);
        rec.set_window(0, 2_000, 500);
        let mut tc = TopicConn::new(&p, 0);
        on_message(&mut rec, &mut tc, &subscribed(&["T0000", "T0003"], 10), 100);
        for counter in [0, 1, 3] {
            let mut line = Vec::new();
            write_message(&mut line, counter, 50, Some("T0003"), 128);
            line.pop();
            on_message(&mut rec, &mut tc, &line, 200);
        }
        assert_eq!((rec.counters.gaps, rec.counters.messages_in_window, rec.hist.len()), (1, 3, 3));
        assert_eq!(rec.topic_mode.as_ref().unwrap().result.per_topic[3].deliveries, 3);
    }
}
