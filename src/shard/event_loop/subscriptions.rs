//! Topic subscriptions of a loop thread's connections: control messages applied (`subscribe`, `unsubscribe`,
//! `publish`), a connection's move from the whole-feed stream to its topics, resume from history, prefix
//! patterns joining topics that appear later, and what a freed connection leaves. Runs between the wait and
//! the pull, where every connection and topic can be reached (input handling only queues the requests).

use std::time::Instant;

use super::Shard;
use crate::client::control::{Control, ErrorCode};
use crate::client::encode::{self, FeedMessage, GapReason};
use crate::client::{sse, Pattern, Position};
use crate::conn::{ConnKey, Phase, Sub, TopicSubs, NOT_SUBSCRIBED};
use crate::fanout::{Encoding, Entry, Resume, TopicId};
use crate::proto::frame::{encode_frame_into, FrameHeader, OpCode};
use crate::reactor::Reactor;
use crate::shard::access;
use crate::shard::input::{self, InputCx, JSON_ALL, SSE_ALL};
use crate::shard::stats::{GapKind, ShardStats};
use crate::upstream::PayloadKind;

impl<R: Reactor> Shard<R> {
    /// Applies the queued control messages. A connection with a send in flight keeps its requests until the
    /// completion (its subscriptions cannot change under a send), and a `since` ahead of this loop thread (the
    /// client came from a thread a little ahead) waits until this thread has pulled that far.
    pub(super) fn apply_controls(&mut self) {
        self.apply_queued();
        for key in std::mem::take(&mut self.too_busy) {
            let mut cx = input_cx!(self);
            if let Some(conn) = self.conns.get_mut(key) {
                input::queue_close(conn, key, 1013, "server busy: try again later", &mut cx);
            }
        }
    }

    fn apply_queued(&mut self) {
        let feed_seq = self.shared.feed.as_ref().map_or(self.last_seq, |f| f.last_seq());
        for _ in 0..self.controls.len() {
            let Some((key, request)) = self.controls.pop_front() else { break };
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if conn.phase != Phase::Open || conn.log_released {
                conn.pending_controls = conn.pending_controls.saturating_sub(1);
                continue; // closing: nothing more is sent to it
            }
            let waits_for_feed = matches!(&request, Control::Subscribe { since: Some(p), .. }
                if p.epoch == self.epoch && p.seq > self.last_seq && p.seq <= feed_seq);
            if conn.send_in_flight || waits_for_feed {
                self.controls.push_back((key, request));
                continue;
            }
            conn.pending_controls = conn.pending_controls.saturating_sub(1);
            match request {
                Control::Subscribe { id, patterns, since, snapshot } => {
                    self.subscribe(key, id.as_deref(), &patterns, since, snapshot, feed_seq)
                }
                Control::Unsubscribe { id, patterns } => self.unsubscribe(key, id.as_deref(), &patterns),
                Control::Refresh { id, token } => self.refresh(key, id.as_deref(), &token.0),
                // Handled on input (`shard::publishing`): never queued.
                Control::Publish { .. } => debug_assert!(false, "a publish request was queued"),
            }
        }
    }

    pub(super) fn reply_error(&mut self, key: ConnKey, id: Option<&str>, code: ErrorCode, message: &str) {
        let mut json = Vec::new();
        encode::error(id, code.as_str(), message, &mut json);
        self.reply(key, &json, Notice::Error);
    }

    /// Queues a reply or notice (JSON) for `key`, framed for its transport. An event stream gets no replies (it
    /// sends no requests); an error ends it, since it cannot ask again (it reconnects after its `retry:` time).
    pub(super) fn reply(&mut self, key: ConnKey, json: &[u8], kind: Notice) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.outbuf.capacity() == 0 {
            conn.outbuf = self.pool.take();
        }
        if !conn.sse {
            encode_frame_into(&mut conn.outbuf, OpCode::Text, json);
            input::mark_dirty(conn, key, &mut self.dirty);
            return;
        }
        match kind {
            Notice::Reply => {}
            Notice::Gap => sse::event(None, Some("gap"), json, &mut conn.outbuf),
            Notice::Error => {
                sse::event(None, Some(sse::ERROR_EVENT), json, &mut conn.outbuf);
                let mut cx = input_cx!(self);
                input::queue_close(conn, key, 1008, "", &mut cx); // an event stream: no close frame
            }
        }
        input::mark_dirty(conn, key, &mut self.dirty);
    }

    fn subscribe(
        &mut self,
        key: ConnKey,
        id: Option<&str>,
        patterns: &[Pattern],
        since: Option<Position>,
        snapshot: bool,
        feed_seq: u64,
    ) {
        if let Some(p) = patterns.iter().find(|p| !p.within(&self.settings.allowed_topics)) {
            let message = format!("{} is not offered by this gateway", p.as_written());
            return self.reply_error(key, id, ErrorCode::UnknownTopic, &message);
        }
        let auth = self.conns.get(key).and_then(|c| c.auth.as_deref());
        if let Some(p) = patterns.iter().find(|p| !access::may_subscribe(auth, p)) {
            ShardStats::add(&self.shared.shards[self.id].auth_forbidden, 1);
            let message = format!("{} is not allowed by this connection's token", p.as_written());
            return self.reply_error(key, id, ErrorCode::Forbidden, &message);
        }
        if let Some(p) = since.filter(|p| p.epoch == self.epoch && p.seq > feed_seq) {
            let message = format!("since {p} is ahead of the feed (at {}:{feed_seq})", self.epoch);
            return self.reply_error(key, id, ErrorCode::BadPosition, &message);
        }
        let Some(conn) = self.conns.get(key) else { return };
        let had = conn.topics.as_deref().map_or(&[][..], |s| &s.patterns[..]);
        let new: Vec<Pattern> = patterns.iter().filter(|p| !had.contains(p)).cloned().collect();
        if had.len() + new.len() > self.settings.max_subscriptions {
            let message =
                format!("{} subscriptions; the limit is {}", had.len() + new.len(), self.settings.max_subscriptions);
            return self.reply_error(key, id, ErrorCode::TooManySubscriptions, &message);
        }
        // Topics named exactly are made now (empty until their first message), so the subscription holds.
        let now = Instant::now();
        let mut named = Vec::new();
        for p in &new {
            if let Pattern::Topic(name) = p {
                match self.topics.get_or_make(name, now) {
                    Ok((topic, made)) => {
                        if made {
                            self.join_patterns(topic);
                        }
                        named.push(topic);
                    }
                    Err(_) => {
                        let message = format!("the gateway's topic table is full: {name} cannot be subscribed");
                        return self.reply_error(key, id, ErrorCode::UnknownTopic, &message);
                    }
                }
            }
        }
        if self.conns.get(key).is_some_and(|c| c.topics.is_none()) && !self.enter_topic_mode(key) {
            return;
        }
        let encoding = self.conns.get(key).and_then(|c| c.topics.as_deref()).map(|s| s.encoding);
        let Some(encoding) = encoding else { return };
        // Every topic the new patterns name, with how many of them name it.
        let mut covered: Vec<(TopicId, u32)> = Vec::new();
        let mut cover = |topic: TopicId| match covered.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, n)) => *n += 1,
            None => covered.push((topic, 1)),
        };
        let mut named = named.into_iter();
        for p in &new {
            match p {
                Pattern::Topic(_) => cover(named.next().expect("one per named topic")),
                Pattern::Prefix(prefix) => {
                    for (topic, t) in self.topics.iter() {
                        if t.name.starts_with(&**prefix) {
                            cover(topic);
                        }
                    }
                }
            }
        }
        let mut gaps: Vec<Vec<u8>> = Vec::new();
        let position = Position { epoch: self.epoch, seq: self.last_seq };
        for (topic, refs) in covered {
            if let Some(sub) = self.conns.get_mut(key).and_then(|c| c.topics.as_deref_mut()?.find_mut(topic)) {
                sub.refs += refs; // already subscribed: it keeps its place in the topic
                continue;
            }
            self.ensure_log(topic, encoding, now);
            let Some(log) = self.topics.get(topic).and_then(|t| t.log(encoding)) else { continue };
            let head = log.log.head();
            let name = &*self.topics.get(topic).expect("exists").name;
            let start = match since {
                Some(p) if p.epoch != self.epoch => {
                    gaps.push(gap_notice(name, p, position, GapReason::Epoch));
                    self.shared.shards[self.id].gap_notices.add(GapKind::Epoch as usize, 1);
                    head
                }
                Some(p) => match log.history.resume(p.seq, head, self.last_seq) {
                    Resume::From { at } => at,
                    Resume::Gap { from_seq, to_seq, at } => {
                        let to = Position { epoch: self.epoch, seq: to_seq };
                        gaps.push(gap_notice(name, Position { epoch: p.epoch, seq: from_seq }, to, GapReason::History));
                        self.shared.shards[self.id].gap_notices.add(GapKind::History as usize, 1);
                        at
                    }
                    Resume::Ahead => head, // cannot happen: such requests wait above
                },
                None if snapshot => log.history.last().map_or(head, |e| e.at),
                None => head,
            };
            self.add_sub(key, topic, encoding, start, refs);
        }
        let Some(conn) = self.conns.get_mut(key) else { return };
        let subs = conn.topics.as_deref_mut().expect("entered topic mode above");
        let joins_patterns = !subs.has_prefix_patterns() && new.iter().any(|p| matches!(p, Pattern::Prefix(_)));
        subs.patterns.extend(new);
        if joins_patterns {
            self.pattern_conns.push(key);
        }
        if conn.write_blocked {
            self.hold(key); // its new cursors may stand behind what the trim would free
        }
        let mut reply = Vec::new();
        let written: Vec<String> = patterns.iter().map(Pattern::as_written).collect();
        let listed: Vec<(&str, Position)> = written.iter().map(|w| (w.as_str(), position)).collect();
        encode::subscribed(id, &listed, &mut reply);
        self.reply(key, &reply, Notice::Reply);
        for notice in gaps {
            self.reply(key, &notice, Notice::Gap);
        }
        if let Some(conn) = self.conns.get_mut(key) {
            input::mark_dirty(conn, key, &mut self.dirty);
        }
    }

    pub(super) fn unsubscribe(&mut self, key: ConnKey, id: Option<&str>, patterns: &[Pattern]) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let mut dropped: Vec<TopicId> = Vec::new();
        if let Some(subs) = conn.topics.as_deref_mut() {
            for p in patterns {
                let Some(i) = subs.patterns.iter().position(|q| q == p) else { continue };
                subs.patterns.swap_remove(i);
                for sub in subs.subs.iter_mut() {
                    let named = self.topics.get(sub.topic).is_some_and(|t| p.matches(&t.name));
                    if named {
                        sub.refs = sub.refs.saturating_sub(1);
                        if sub.refs == 0 {
                            dropped.push(sub.topic);
                        }
                    }
                }
            }
        }
        for topic in dropped {
            self.remove_sub(key, topic);
        }
        let mut reply = Vec::new();
        let position = Position { epoch: self.epoch, seq: self.last_seq };
        let written: Vec<String> = patterns.iter().map(Pattern::as_written).collect();
        let listed: Vec<(&str, Position)> = written.iter().map(|w| (w.as_str(), position)).collect();
        encode::unsubscribed(id, &listed, &mut reply);
        self.reply(key, &reply, Notice::Reply);
    }

    /// Moves a connection from the whole-feed stream (or from nothing, when it subscribed at connect) to topic
    /// subscriptions in its format's encoding. The rest of a whole-feed chunk it stands inside of is pinned, so
    /// it finishes that frame first. Returns false when it could not (it is closed).
    pub(super) fn enter_topic_mode(&mut self, key: ConnKey) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        let encoding = match conn.stream_id {
            JSON_ALL => Encoding::Json,
            SSE_ALL => Encoding::Sse,
            _ => Encoding::Raw,
        };
        if conn.is_subscribed() {
            let stream = &mut self.streams[usize::from(conn.stream_id)];
            let Ok(pin) = self.pins.pin(&stream.log, conn.cursor) else {
                ShardStats::add(&self.shared.shards[self.id].closing_cut, 1);
                if let Some(suppressed) = self.slow_log.allow(std::time::Instant::now()) {
                    tracing::warn!(
                        ?key,
                        suppressed,
                        "pinned-chunk budget spent: a subscribing client is closed with 1013"
                    );
                }
                self.too_busy.push(key); // closed once the requests are applied
                return false;
            };
            conn.pinned = pin.map(Box::new);
            let index = conn.sub_index;
            conn.sub_index = NOT_SUBSCRIBED;
            if let Some(moved) = stream.subscribers.remove(index) {
                if let Some(other) = self.conns.get_mut(ConnKey(moved)) {
                    other.sub_index = index;
                }
            }
            self.shared.shards[self.id].pinned_bytes.store(self.pins.bytes(), std::sync::atomic::Ordering::Relaxed);
        }
        let Some(conn) = self.conns.get_mut(key) else { return false };
        conn.topics = Some(Box::new(TopicSubs::new(encoding)));
        if encoding == Encoding::Sse {
            self.sse_topic_conns.push(key);
        }
        true
    }

    /// Makes topic `topic`'s log in `encoding` if nobody on this loop read it yet, from its raw history.
    pub(super) fn ensure_log(&mut self, topic: TopicId, encoding: Encoding, now: Instant) {
        if self.topics.get(topic).is_none_or(|t| t.log(encoding).is_some()) {
            return;
        }
        let to = Reencode { encoding, epoch: self.epoch, sse_named: self.settings.sse_event_names };
        let mut envelope = std::mem::take(&mut self.envelope);
        self.topics.add_log(topic, encoding, now, |name, entry, raw, out| {
            convert_raw(name, entry, raw, to, &mut envelope, out);
        });
        self.topic_log_bytes +=
            self.topics.get(topic).and_then(|t| t.log(encoding)).map_or(0, |l| l.log.retained_bytes());
        self.envelope = envelope;
    }

    /// Adds subscription `topic` (reading from `cursor`) to connection `key`.
    fn add_sub(&mut self, key: ConnKey, topic: TopicId, encoding: Encoding, cursor: u64, refs: u32) {
        let Some(log) = self.topics.get_mut(topic).and_then(|t| t.log_mut(encoding)) else { return };
        let index = log.subscribers.add(key.0);
        let Some(subs) = self.conns.get_mut(key).and_then(|c| c.topics.as_deref_mut()) else { return };
        subs.subs.push(Sub { topic, cursor, index, refs });
    }

    /// Drops subscription `topic` of connection `key`. If a short write stopped inside one of its frames, that
    /// chunk is pinned so the frame is finished first.
    fn remove_sub(&mut self, key: ConnKey, topic: TopicId) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Some(subs) = conn.topics.as_deref_mut() else { return };
        let Some(i) = subs.find(topic) else { return };
        let sub = subs.subs.swap_remove(i);
        let encoding = subs.encoding;
        let partial = subs.partial == Some(topic);
        if partial {
            subs.partial = None;
        }
        let Some(log) = self.topics.get_mut(topic).and_then(|t| t.log_mut(encoding)) else { return };
        if partial {
            match self.pins.pin(&log.log, sub.cursor) {
                Ok(pin) => {
                    conn.pinned = pin.map(Box::new);
                    conn.cursor = sub.cursor;
                }
                Err(_) => input::kill(conn, key, &mut self.dead), // mid-frame with no room to finish it
            }
        }
        if let Some(moved) = log.subscribers.remove(sub.index) {
            if let Some(sub_of_other) =
                self.conns.get_mut(ConnKey(moved)).and_then(|c| c.topics.as_deref_mut()?.find_mut(topic))
            {
                sub_of_other.index = sub.index;
            }
        }
    }

    /// A freed connection's subscriptions leave their topics' subscriber lists.
    pub(super) fn drop_topic_subs(&mut self, key: ConnKey, subs: &TopicSubs) {
        for sub in &subs.subs {
            let Some(log) = self.topics.get_mut(sub.topic).and_then(|t| t.log_mut(subs.encoding)) else { continue };
            debug_assert_eq!(log.subscribers.keys().get(sub.index as usize), Some(&key.0));
            if let Some(moved) = log.subscribers.remove(sub.index) {
                if let Some(other) =
                    self.conns.get_mut(ConnKey(moved)).and_then(|c| c.topics.as_deref_mut()?.find_mut(sub.topic))
                {
                    other.index = sub.index;
                }
            }
        }
    }

    /// A topic new on this loop: connections with prefix patterns that name it subscribe to it from its start.
    pub(super) fn join_patterns(&mut self, topic: TopicId) {
        if self.pattern_conns.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut keys = std::mem::take(&mut self.pattern_conns);
        keys.retain(|&key| {
            let Some(conn) = self.conns.get(key) else { return false };
            let Some(subs) = conn.topics.as_deref() else { return false };
            if !subs.has_prefix_patterns() {
                return false;
            }
            if conn.log_released || conn.phase != Phase::Open {
                return true;
            }
            let name = &self.topics.get(topic).expect("just made").name;
            let refs = subs.patterns.iter().filter(|p| matches!(p, Pattern::Prefix(_)) && p.matches(name)).count();
            if refs > 0 && subs.find(topic).is_none() {
                let encoding = subs.encoding;
                self.ensure_log(topic, encoding, now);
                let head = self.topics.get(topic).and_then(|t| t.log(encoding)).map_or(0, |l| l.log.head());
                self.add_sub(key, topic, encoding, head, refs as u32);
            }
            true
        });
        keys.append(&mut self.pattern_conns);
        self.pattern_conns = keys;
    }
}

/// What a message from the gateway to one client is, for transports that frame them differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Notice {
    /// The answer to a request (`subscribed`, `unsubscribed`).
    Reply,
    Gap,
    Error,
}

fn gap_notice(topic: &str, from: Position, to: Position, reason: GapReason) -> Vec<u8> {
    let mut out = Vec::new();
    encode::gap(topic, from, to, reason, &mut out);
    out
}

/// What a raw-history frame is re-encoded into: the encoding, in this epoch, SSE events named by topic or not.
#[derive(Debug, Clone, Copy)]
struct Reencode {
    encoding: Encoding,
    epoch: u64,
    sse_named: bool,
}

/// A raw-history frame of `topic` re-encoded (for a log made after the messages arrived).
fn convert_raw(topic: &str, entry: &Entry, raw: &[u8], to: Reencode, envelope: &mut Vec<u8>, out: &mut Vec<u8>) {
    let Reencode { encoding, epoch, sse_named } = to;
    let Ok(Some(header)) = FrameHeader::parse(raw) else { return };
    let payload = &raw[usize::from(header.header_len)..];
    let kind = if header.opcode == OpCode::Binary { PayloadKind::Binary } else { PayloadKind::Text };
    let position = Position { epoch, seq: entry.seq };
    envelope.clear();
    encode::envelope(&FeedMessage { topic, payload, kind, position, prev: entry.prev }, envelope);
    match encoding {
        Encoding::Raw => out.extend_from_slice(raw),
        Encoding::Json => encode_frame_into(out, OpCode::Text, envelope),
        Encoding::Sse => sse::event(Some(position), sse_named.then_some(topic), envelope, out),
    }
}
