//! Slow consumers and memory bounds, applied: the slow-consumer policy (`fanout::lag_policy`) for a connection
//! past its backlog limits, the `gap` notices that tell clients what they missed (a skip, a conflation, a hole
//! in the loop's own feed), and the loop's budget for private bytes (`max_loop_private_bytes`).
//!
//! How a skip keeps frames whole and sequence numbers truthful:
//! - a topic connection's subscriptions move to their log's head (`drop`) or to the start of its newest message
//!   (`conflate`); one that stands inside a message first finishes it from a pinned chunk (`fanout::Pins`, as a
//!   closing connection does), and the `gap` notices are private bytes, which go out only between frames, after
//!   that rest. Each notice gives its topic and the exact range skipped: every message of the topic after `from`
//!   and before `to` was skipped, and nothing else (`from` + 1 is the first skipped, `to` − 1 the last);
//! - a whole-feed connection (no topics) skips its stream to the head, at a chunk boundary: one that stands inside
//!   a chunk first finishes that chunk from a pin (`Pinned::then_skip`), then skips ([`finish_whole_feed_skip`]);
//!   its notice has the topic `*`. `conflate` means `drop` for it;
//! - a connection with a send in flight (io_uring) cannot move its cursors: its send is cancelled and the policy
//!   applied once the completion is in (`Conn::lag_relief_due`).
//!
//! Raw-format clients get the notices as JSON text frames, as every notice (`docs/client-protocol.md`); event
//! streams as `event: gap`.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::Shard;
use crate::client::encode::{self, GapReason};
use crate::client::{sse, Position};
use crate::conn::{BufPool, Conn, ConnKey, Phase};
use crate::fanout::{decide, Backlog, Decision, LagLimits, LagPolicy, Pins, Relief, Stream, SubBacklog};
use crate::proto::frame::{encode_frame_into, OpCode};
use crate::reactor::Reactor;
use crate::shard::input::{self, InputCx};
use crate::shard::stats::ShardStats;
use crate::shard::topic_output;

/// `json` (a notice) framed for a transport: a text frame, or an `event: gap` of an event stream.
fn frame_notice(sse: bool, json: &[u8], out: &mut Vec<u8>) {
    if sse {
        sse::event(None, Some("gap"), json, out);
    } else {
        encode_frame_into(out, OpCode::Text, json);
    }
}

/// The gap notice for `topic`, framed for an event stream or not: messages after `from` and before `to` were
/// skipped.
fn gap_into(sse: bool, topic: &str, epoch: u64, from: u64, to: u64, reason: GapReason, out: &mut Vec<u8>) {
    let mut json = Vec::with_capacity(160);
    encode::gap(topic, Position { epoch, seq: from }, Position { epoch, seq: to }, reason, &mut json);
    frame_notice(sse, &json, out);
}

/// The gap notice for `topic`, queued for `conn`.
fn gap(conn: &mut Conn, pool: &mut BufPool, topic: &str, epoch: u64, from: u64, to: u64, reason: GapReason) {
    if conn.outbuf.capacity() == 0 {
        conn.outbuf = pool.take();
    }
    gap_into(conn.sse, topic, epoch, from, to, reason, &mut conn.outbuf);
}

/// Messages a whole-feed connection at `cursor` has yet to receive, counted from the start of the chunk it is in
/// (chunks are tagged with their first message's seq), when the loop's last seq is `last_seq`.
fn whole_feed_messages(stream: &Stream, cursor: u64, last_seq: u64) -> u64 {
    match stream.log.locate(cursor) {
        crate::fanout::Located::At { index, .. } => (last_seq + 1).saturating_sub(stream.log.tag(index)),
        _ => 0,
    }
}

/// An open whole-feed connection that has written the chunk it was finishing before a skip (`drop`) skips now:
/// to its stream's head, with a `gap` notice (topic `*`) for what arrived after that chunk. Otherwise, as
/// [`input::unpin_if_written`]. Never with a send in flight. Returns whether the pin was let go (what comes after
/// it may be pending: the connection must be flushed again).
#[allow(clippy::too_many_arguments)]
pub(super) fn finish_whole_feed_skip(
    conn: &mut Conn,
    pins: &mut Pins,
    pool: &mut BufPool,
    stats: &ShardStats,
    epoch: u64,
) -> bool {
    let Some(pin) = conn.pinned.as_deref() else { return false };
    let Some(skip) = pin.then_skip.filter(|_| conn.phase == Phase::Open && conn.topics.is_none()) else {
        input::unpin_if_written(conn, pins, stats);
        return conn.pinned.is_none();
    };
    if conn.send_in_flight || conn.cursor < pin.end() {
        return false;
    }
    input::unpin(conn, pins, stats);
    conn.cursor = skip.at;
    if skip.to_seq > skip.from_seq + 1 {
        gap(conn, pool, "*", epoch, skip.from_seq, skip.to_seq, GapReason::Skipped);
        ShardStats::add(&stats.lag_messages_skipped, skip.to_seq - skip.from_seq - 1);
    }
    true
}

impl<R: Reactor> Shard<R> {
    /// Whether an open connection past `max_lag_bytes` (`bytes` behind) is also past its limits once its
    /// messages are counted — or past them by messages alone. Counting costs a search per log, so it is done only
    /// with `max_lag_messages` set.
    pub(super) fn is_late(&self, key: ConnKey, bytes: u64) -> bool {
        let Some(conn) = self.conns.get(key) else { return false };
        let limits = self.settings.lag_limits;
        if bytes > limits.max_bytes {
            return true;
        }
        if !limits.counts_messages() || conn.phase != Phase::Open || bytes == 0 {
            return false;
        }
        let messages = match conn.topics.as_deref() {
            Some(subs) => subs
                .subs
                .iter()
                .filter_map(|s| {
                    let log = self.topics.get(s.topic)?.log(subs.encoding)?;
                    let head = log.message_from(log.log.head());
                    Some(head.saturating_sub(log.message_from(s.cursor)) as u64)
                })
                .sum(),
            None => whole_feed_messages(&self.streams[usize::from(conn.stream_id)], conn.cursor, self.last_seq),
        };
        limits.exceeded(Backlog { bytes, messages })
    }

    /// Feed positions after `last` and before `first` never reached this loop (the feed thread dropped batches
    /// for it: `feed_overflow = drop`). Counted and logged; every reader of the loop gets a `gap` notice (reason
    /// `overload`; topic `*` on the whole feed, each of its topics otherwise) between the messages before the hole
    /// and those after it, and the topics' histories forget what came before it, so that a resume from there
    /// is a gap too.
    pub(super) fn feed_hole(&mut self, last: u64, first: u64) {
        let stats = &self.shared.shards[self.id];
        ShardStats::add(&stats.feed_holes, 1);
        if let Some(suppressed) = self.hole_log.allow(Instant::now()) {
            tracing::warn!(
                shard = self.id,
                missed = first - last - 1,
                suppressed,
                "feed messages dropped for this loop thread (its queue was full): clients get a gap notice"
            );
        }
        self.topics.forget_history_through(first - 1);
        // The notice goes into the logs, at the hole: every reader gets it in order, after what came before it
        // (a reader that is behind has not received that yet), encoded once per log.
        let (from, to) = (Position { epoch: self.epoch, seq: last }, Position { epoch: self.epoch, seq: first });
        let mut json = Vec::with_capacity(160);
        encode::gap("*", from, to, GapReason::Overload, &mut json);
        for (sid, stream) in self.streams.iter_mut().enumerate() {
            if stream.subscribers.is_empty() {
                continue;
            }
            let mut chunk = Vec::with_capacity(json.len() + 16);
            frame_notice(sid == usize::from(input::SSE_ALL), &json, &mut chunk);
            stream.log.push_tagged(chunk.into(), first);
        }
        // Topic readers: a notice per subscribed topic, in each of its logs that has subscribers (sealed with the
        // batch's messages, after them in the log, but merged by position: before them).
        let ids: Vec<crate::fanout::TopicId> =
            self.topics.iter().filter(|(_, t)| t.has_subscribers()).map(|(id, _)| id).collect();
        for id in ids {
            let Some(topic) = self.topics.get_mut(id) else { continue };
            json.clear();
            encode::gap(&topic.name, from, to, GapReason::Overload, &mut json);
            for (e, log) in topic.logs.iter_mut().enumerate() {
                let Some(log) = log.as_deref_mut().filter(|l| !l.subscribers.is_empty()) else { continue };
                log.append_notice(first - 1, |out| frame_notice(e == crate::fanout::Encoding::Sse.index(), &json, out));
            }
            if !topic.grown {
                topic.grown = true;
                self.grown.push(id);
            }
        }
    }

    /// A whole-feed connection finishing a chunk before its skip: its pin keeps that chunk (counted in the loop's
    /// pinned-chunk budget, `pinned_bytes`; once that is spent, further slow consumers standing inside a chunk
    /// are closed instead), and it holds its stream from where it will go next. If that falls too far behind in
    /// turn, it will go further (the same skip, one notice). Returns whether it holds the stream.
    pub(super) fn judge_skipping(&mut self, key: ConnKey) -> bool {
        let last_seq = self.last_seq;
        let Some(conn) = self.conns.get_mut(key) else { return false };
        let head = self.streams[usize::from(conn.stream_id)].log.head();
        let Some(skip) = conn.pinned.as_mut().and_then(|p| p.then_skip.as_mut()) else { return false };
        if head - skip.at > self.settings.lag_limits.max_bytes {
            *skip = crate::fanout::Skip { at: head, to_seq: last_seq + 1, ..*skip };
        }
        skip.at < head
    }

    /// Closes `key` as a slow consumer (1008, counted, logged at most once a second).
    pub(super) fn close_slow(&mut self, key: ConnKey, lag_bytes: u64, reason: &str) {
        let stats = &self.shared.shards[self.id];
        if let Some(suppressed) = self.slow_log.allow(Instant::now()) {
            tracing::warn!(shard = self.id, ?key, lag_bytes, suppressed, "{reason}: closing with 1008");
        }
        ShardStats::add(&stats.slow_consumers, 1);
        let mut cx = input_cx!(self);
        let Some(conn) = self.conns.get_mut(key) else { return };
        input::queue_close(conn, key, 1008, reason, &mut cx);
    }

    /// Applies the slow-consumer policy to open connection `key` (no send in flight), judged against `limits`
    /// (the configured ones; the trim phase passes tighter ones to shed backlog). Returns whether it still holds
    /// the log (something is pending for it).
    pub(super) fn relieve(&mut self, key: ConnKey, limits: LagLimits) -> bool {
        let Some(conn) = self.conns.get(key) else { return false };
        debug_assert!(!conn.send_in_flight, "cursors cannot move under a send");
        if conn.phase != Phase::Open || conn.send_in_flight {
            return false;
        }
        if conn.private_pending().len() > self.settings.max_private_bytes {
            // Skipped again and again without reading its notices: they are bounded like every reply.
            let lag = conn.private_pending().len() as u64;
            self.close_slow(key, lag, "slow consumer: replies not read");
            return false;
        }
        if conn.topics.is_some() {
            self.relieve_topics(key, limits)
        } else {
            self.relieve_whole_feed(key)
        }
    }

    fn relieve_whole_feed(&mut self, key: ConnKey) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        let stream = &self.streams[usize::from(conn.stream_id)];
        let head = stream.log.head();
        let lag = head.saturating_sub(conn.cursor);
        if self.settings.lag_policies.whole_feed() == LagPolicy::Disconnect || conn.pinned.is_some() {
            self.close_slow(key, lag, "slow consumer: too far behind the feed");
            return false;
        }
        let stats = &self.shared.shards[self.id];
        match stream.log.locate(conn.cursor) {
            crate::fanout::Located::Head => return false,
            crate::fanout::Located::Trimmed => {
                self.close_slow(key, lag, "slow consumer: too far behind the feed");
                return false;
            }
            crate::fanout::Located::At { index, offset: 0 } => {
                let from = stream.log.tag(index).saturating_sub(1);
                conn.cursor = head;
                if self.last_seq > from {
                    gap(conn, &mut self.pool, "*", self.epoch, from, self.last_seq + 1, GapReason::Skipped);
                    ShardStats::add(&stats.lag_messages_skipped, self.last_seq - from);
                }
            }
            crate::fanout::Located::At { index, .. } => {
                // Inside a chunk: finish it from a pin, then skip to what is the head now
                // (`finish_whole_feed_skip`).
                let last_in_chunk =
                    if index + 1 < stream.log.chunk_count() { stream.log.tag(index + 1) - 1 } else { self.last_seq };
                match self.pins.pin(&stream.log, conn.cursor) {
                    Ok(Some(mut pin)) => {
                        let skip = crate::fanout::Skip { from_seq: last_in_chunk, at: head, to_seq: self.last_seq + 1 };
                        pin.then_skip = Some(skip);
                        conn.pinned = Some(Box::new(pin));
                        stats.pinned_bytes.store(self.pins.bytes(), Relaxed);
                    }
                    Ok(None) | Err(_) => {
                        self.close_slow(key, lag, "slow consumer: too far behind the feed");
                        return false;
                    }
                }
            }
        }
        ShardStats::add(&stats.lag_skips, 1);
        if let Some(suppressed) = self.slow_log.allow(Instant::now()) {
            tracing::info!(shard = self.id, ?key, lag_bytes = lag, suppressed, "slow consumer: skipped to live");
        }
        if let Some(conn) = self.conns.get_mut(key) {
            input::mark_dirty(conn, key, &mut self.dirty);
        }
        false
    }

    fn relieve_topics(&mut self, key: ConnKey, limits: LagLimits) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        let Some(subs) = conn.topics.as_deref_mut() else { return false };
        // Per subscription: its backlog, and where its messages are (first pending, newest, end).
        let mut backlogs = std::mem::take(&mut self.lag_backlogs);
        let mut spots = std::mem::take(&mut self.lag_spots);
        let mut reliefs = std::mem::take(&mut self.lag_reliefs);
        backlogs.clear();
        spots.clear();
        for sub in &subs.subs {
            let Some(topic) = self.topics.get(sub.topic) else {
                backlogs.push(SubBacklog {
                    policy: LagPolicy::Disconnect,
                    pending: Backlog::default(),
                    newest: Backlog::default(),
                });
                spots.push(Spot::default());
                continue;
            };
            let policy = self.settings.lag_policies.for_topic(&topic.name);
            let Some(log) = topic.log(subs.encoding) else { continue };
            let head = log.log.head();
            let end = log.message_from(head); // messages sealed into the log (none is open after a pull)
                                              // Inside a message (a short write stopped there): it is finished first, whatever the policy.
            let inside = log.message_containing(sub.cursor).filter(|&i| i < end && log.message(i).0.at < sub.cursor);
            let first = inside.map_or_else(|| log.message_from(sub.cursor), |i| i + 1);
            let rest = inside.map_or(0, |i| log.message(i).1 - sub.cursor);
            let pending = Backlog {
                bytes: head.saturating_sub(sub.cursor),
                messages: end.saturating_sub(first) as u64 + u64::from(inside.is_some()),
            };
            let newest = if first < end {
                let newest_at = log.message(end - 1).0.at;
                Backlog { bytes: rest + (head - newest_at), messages: 1 + u64::from(inside.is_some()) }
            } else {
                pending
            };
            backlogs.push(SubBacklog { policy, pending, newest });
            spots.push(Spot { first, end, inside: inside.is_some() });
        }
        let decision =
            if backlogs.len() == subs.subs.len() { decide(limits, &backlogs, &mut reliefs) } else { Decision::Close };
        let lag: u64 = backlogs.iter().map(|b| b.pending.bytes).sum();
        let hold = match decision {
            Decision::Within => lag > 0,
            Decision::Close => {
                self.close_slow(key, lag, "slow consumer: too far behind the feed");
                false
            }
            Decision::Relieve => self.apply_reliefs(key, &spots, &reliefs),
        };
        self.lag_backlogs = backlogs;
        self.lag_spots = spots;
        self.lag_reliefs = reliefs;
        hold
    }

    /// Moves the subscriptions of `key` as `reliefs` say, with a gap notice per topic that skipped messages.
    fn apply_reliefs(&mut self, key: ConnKey, spots: &[Spot], reliefs: &[Relief]) -> bool {
        let stats = &self.shared.shards[self.id];
        let Some(conn) = self.conns.get_mut(key) else { return false };
        let sse = conn.sse;
        let mut notices = Vec::new();
        let Some(subs) = conn.topics.as_deref_mut() else { return false };
        let (mut skipped_total, mut dropped, mut conflated) = (0u64, false, 0u64);
        for (i, (&spot, &relief)) in spots.iter().zip(reliefs).enumerate() {
            let sub = subs.subs[i];
            let Some(topic) = self.topics.get(sub.topic) else { continue };
            let Some(log) = topic.log(subs.encoding) else { continue };
            let (target, last_skipped, reason) = match relief {
                Relief::Keep => continue,
                Relief::ToHead => (log.log.head(), spot.end, GapReason::Skipped),
                Relief::ToNewest => (log.message(spot.end - 1).0.at, spot.end - 1, GapReason::Conflated),
            };
            if last_skipped <= spot.first {
                continue; // nothing to skip
            }
            if spot.inside {
                // Finish the message it stands inside of (only that one) from a pin; its private bytes, the
                // notice among them, follow it.
                match self.pins.pin(&log.log, sub.cursor) {
                    Ok(Some(mut pin)) => {
                        pin.cut_at(log.message(spot.first - 1).1);
                        conn.pinned = Some(Box::new(pin));
                        conn.cursor = sub.cursor;
                        stats.pinned_bytes.store(self.pins.bytes(), Relaxed);
                    }
                    Ok(None) | Err(_) => {
                        let lag = topic_output::lag(&self.topics, subs);
                        self.close_slow(key, lag, "slow consumer: too far behind the feed");
                        return false;
                    }
                }
            }
            if subs.partial == Some(sub.topic) {
                subs.partial = None;
            }
            // Exact: `from` + 1 is the first message skipped; `to` is the newest (conflate: delivered next), or
            // one past the last skipped (drop: what comes next is newer).
            let from = log.message(spot.first).0.seq - 1;
            let to = match relief {
                Relief::ToNewest => log.message(spot.end - 1).0.seq,
                _ => log.message(last_skipped - 1).0.seq + 1,
            };
            subs.subs[i].cursor = target;
            let skipped = (last_skipped - spot.first) as u64;
            skipped_total += skipped;
            match reason {
                GapReason::Conflated => conflated += 1,
                _ => dropped = true,
            }
            gap_into(sse, &topic.name, self.epoch, from, to, reason, &mut notices);
        }
        if conn.outbuf.capacity() == 0 {
            conn.outbuf = self.pool.take();
        }
        conn.outbuf.extend_from_slice(&notices);
        ShardStats::add(&stats.lag_messages_skipped, skipped_total);
        ShardStats::add(&stats.lag_conflations, conflated);
        if dropped {
            ShardStats::add(&stats.lag_skips, 1);
        }
        if skipped_total > 0 {
            if let Some(suppressed) = self.slow_log.allow(Instant::now()) {
                tracing::info!(shard = self.id, ?key, skipped_total, suppressed, "slow consumer: messages skipped");
            }
        }
        input::mark_dirty(conn, key, &mut self.dirty);
        let subs = conn.topics.as_deref().expect("a topic connection");
        topic_output::has_pending(&self.topics, subs)
    }
}

/// Where one subscription's messages are, by index in its log's messages: the first it has not started,
/// the end (one past the newest), and whether it stands inside the one before `first`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Spot {
    first: usize,
    end: usize,
    inside: bool,
}
