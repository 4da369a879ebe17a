//! Long-poll answers from the topics' history: what a client that stands at `since` is owed from the topics it
//! asks for (or from every topic), in feed order, with a `gap` notice for each topic whose history no longer
//! reaches back (or for every topic, when `since` is from another epoch). Reads the raw history each topic keeps
//! on this loop thread; the envelopes are encoded for the answer (an answer from history is one client's, unlike
//! the live answers, which share one encoding per batch).

use crate::client::encode::{FeedMessage, GapReason};
use crate::client::poll::PollBody;
use crate::client::{Pattern, Position};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::fanout::{Resume, Topics};
use crate::proto::frame::{FrameHeader, OpCode};
use crate::upstream::PayloadKind;

/// Bytes of messages (raw frames) after which an answer stops; the rest comes with the next poll, from `next`.
pub const ANSWER_BUDGET: usize = 64 * 1024;

/// The answer for a client at `since` (this loop stands at `now`) over the topics `patterns` name (every topic
/// with `None`); `None` when there is nothing to say yet (no message, no gap): the request waits.
pub fn answer(topics: &Topics, patterns: Option<&[Pattern]>, since: Position, now: Position) -> Option<Vec<u8>> {
    let named = |name: &str| patterns.is_none_or(|ps| ps.iter().any(|p| p.matches(name)));
    let mut body = PollBody::new();
    let at = |seq| Position { epoch: now.epoch, seq };
    if since.epoch != now.epoch {
        match patterns {
            None => body.gap("*", since, now, GapReason::Epoch),
            Some(ps) => {
                for p in ps {
                    body.gap(&p.as_written(), since, now, GapReason::Epoch);
                }
            }
        }
        return Some(body.finish(now));
    }
    // Each named topic's entries after `since`, merged by seq (a heap over the topics' next entries): the work is
    // one step per topic plus one per message answered, however much history lies beyond the budget.
    let mut next_of: Vec<(_, std::iter::Peekable<_>)> = Vec::new();
    let mut heap = BinaryHeap::new();
    for (id, topic) in topics.iter() {
        if !named(&topic.name) {
            continue;
        }
        let raw = topic.raw();
        if let Resume::Gap { from_seq, to_seq, .. } = raw.history.resume(since.seq, raw.log.head(), now.seq) {
            body.gap(&topic.name, at(from_seq), at(to_seq), GapReason::History);
        }
        let mut entries = raw.history.entries_after(since.seq).peekable();
        if let Some(first) = entries.peek() {
            heap.push(Reverse((first.seq, next_of.len())));
            next_of.push((id, entries));
        }
    }
    let mut next = now.seq.max(since.seq);
    let mut bytes = 0;
    while let Some(Reverse((seq, i))) = heap.pop() {
        if bytes >= ANSWER_BUDGET {
            next = seq - 1; // this one and the rest: next time
            break;
        }
        let (id, entries) = &mut next_of[i];
        let entry = *entries.next().expect("peeked");
        if let Some(after) = entries.peek() {
            heap.push(Reverse((after.seq, i)));
        }
        let Some(topic) = topics.get(*id) else { continue };
        let Some(frame) = topic.raw().log.bytes_at(entry.at, entry.len as usize) else { continue };
        let Ok(Some(header)) = FrameHeader::parse(frame) else { continue };
        let kind = if header.opcode == OpCode::Binary { PayloadKind::Binary } else { PayloadKind::Text };
        let payload = &frame[usize::from(header.header_len)..];
        body.message(&FeedMessage { topic: &topic.name, payload, kind, position: at(entry.seq), prev: entry.prev });
        bytes += frame.len();
    }
    (!body.is_empty()).then(|| body.finish(at(next)))
}
