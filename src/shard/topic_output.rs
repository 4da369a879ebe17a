//! Writing a connection that reads topic subscriptions: everything pending for it — the rest of the frame a
//! short write stopped in (or of its pinned chunk), its private bytes, then what is new in its subscribed topics'
//! logs, merged in seq order — leaves in one send per pass, as for a whole-feed connection (`output`).

use super::transport;
use crate::conn::{BufPool, Conn, ConnKey, TopicSubs, PINNED};
use crate::fanout::{Cursor, Located, TopicId, Topics};
use crate::reactor::{Outgoing, Reactor, Sending};
use crate::tls::TlsSession;

use super::output::{send_failed, Flushed};

/// Most slices of any backend's send.
const MAX_PARTS: usize = 64;

/// Writes (or starts writing) what is pending for topic connection `conn` (see the module docs). Once
/// `close_queued` is set only the frame in progress is finished.
pub fn flush<R: Reactor>(
    conn: &mut Conn,
    key: ConnKey,
    topics: &Topics,
    pool: &mut BufPool,
    io: &mut R,
    mut tls: Option<&mut TlsSession>,
) -> Flushed {
    use std::os::fd::AsRawFd;
    debug_assert!(!conn.send_in_flight, "one send per connection at a time");
    loop {
        if let Some(tls) = tls.as_deref_mut() {
            if let Some(outcome) = transport::drain(conn, key, tls, pool, io) {
                return outcome;
            }
        }
        let subs = conn.topics.as_deref_mut().expect("a topic connection");
        let released = conn.log_released;
        let mut sources = [0 as TopicId; MAX_PARTS];
        let mut tail = [&[][..]; MAX_PARTS];
        let mut tail_len = 0;
        // The head: the rest of the pinned chunk, or of the chunk a short write stopped in.
        let (head, head_source): (&[u8], TopicId) = if let Some(pin) = &conn.pinned {
            (pin.rest(conn.cursor), PINNED)
        } else if let (Some(t), false) = (subs.partial, released) {
            match rest_of_message(topics, subs, t) {
                Ok(rest) => (rest, t),
                Err(()) => return trimmed(key, t),
            }
        } else {
            (&[][..], PINNED)
        };
        let private_len = conn.outbuf.len() - conn.out_pos;
        let room = R::MAX_IOV.min(MAX_PARTS) - usize::from(!head.is_empty()) - usize::from(private_len > 0);
        if !conn.close_queued && !released && conn.pinned.is_none() {
            match gather(topics, subs, room, &mut tail, &mut sources) {
                Ok(n) => tail_len = n,
                Err(t) => return trimmed(key, t),
            }
        }
        if head.is_empty() && private_len == 0 && tail_len == 0 {
            if transport::close_notify(conn, tls.as_deref_mut()) {
                continue;
            }
            conn.out_pos = 0;
            pool.give(&mut conn.outbuf);
            return Flushed::Done;
        }
        let head_len = head.len();
        let fd = conn.stream.as_raw_fd();
        let out = Outgoing { head, private: &mut conn.outbuf, private_from: conn.out_pos, tail: &tail[..tail_len] };
        let lens: [u32; MAX_PARTS] = std::array::from_fn(|i| if i < tail_len { tail[i].len() as u32 } else { 0 });
        let sending = match tls.as_deref_mut() {
            // TLS: encrypted into the session's buffer, which the next round sends (`transport`).
            Some(tls) => transport::encrypt(tls, &out, pool),
            // SAFETY: the broadcast bytes (`head`, `tail`) are chunks of topic logs or the connection's pinned chunk.
            // While this send is in flight the connection is flagged `send_in_flight` and kept in the blocked list,
            // and the trim phase never drops a chunk at or after a cursor of such a connection (each of its
            // subscriptions holds its log); subscriptions change only with no send in flight (the loop defers control
            // messages until the completion), and a pinned chunk is dropped only with no send in flight or when the
            // connection is freed. The cursors move only when the completion is handled (`on_sent`).
            None => unsafe { io.send(key, fd, out) },
        };
        match sending {
            Sending::Done(Ok(written)) => {
                let parts = sources[..tail_len].iter().copied().zip(lens[..tail_len].iter().copied());
                let subs = conn.topics.as_deref_mut().expect("a topic connection");
                let head = (head_source, head_len);
                let private = advance(subs, &mut conn.cursor, head, private_len, parts, written);
                conn.out_pos += private;
                if conn.out_pos == conn.outbuf.len() {
                    conn.out_pos = 0;
                    pool.give(&mut conn.outbuf);
                }
            }
            Sending::Done(Err(e)) => {
                if let Some(outcome) = send_failed(&e) {
                    return outcome;
                }
            }
            Sending::InFlight(token) => {
                let subs = conn.topics.as_deref_mut().expect("a topic connection");
                subs.sent.clear();
                subs.sent_head = head_len > 0;
                if head_len > 0 {
                    subs.sent.push((head_source, head_len as u32));
                }
                subs.sent.extend(sources[..tail_len].iter().copied().zip(lens[..tail_len].iter().copied()));
                conn.send_token = token;
                conn.out_pos = 0; // the private bytes went with the operation
                conn.send_in_flight = true;
                conn.inflight += 1;
                return Flushed::InFlight;
            }
            Sending::Deferred => return Flushed::Deferred,
        }
    }
}

fn trimmed(key: ConnKey, topic: TopicId) -> Flushed {
    if let Some(suppressed) = super::log_limit::rare_path(std::time::Instant::now()) {
        tracing::error!(?key, topic, suppressed, "topic bytes this connection needs were freed: dropped");
    }
    Flushed::Failed
}

/// The rest of the message subscription `t`'s cursor stands inside of (a short write stopped there).
fn rest_of_message<'a>(topics: &'a Topics, subs: &TopicSubs, t: TopicId) -> Result<&'a [u8], ()> {
    let sub = subs.subs[subs.find(t).ok_or(())?];
    let log = topics.get(t).and_then(|topic| topic.log(subs.encoding)).ok_or(())?;
    match log.log.locate(sub.cursor) {
        Located::At { index, offset } => {
            let i = log.message_containing(sub.cursor).ok_or(())?;
            let (_, end) = log.message(i);
            Ok(&log.log.chunk(index)[offset..offset + (end - sub.cursor) as usize])
        }
        Located::Head => Ok(&[]),
        Located::Trimmed => Err(()),
    }
}

/// Fills `tail` with up to `room` parts: the pending messages of every subscription merged in seq order, each
/// part a run of one topic's consecutive messages within one chunk. So a connection receives its topics'
/// messages in feed order, and the position of the last message it received is a resume point that skips
/// nothing. Returns how many parts; `Err(topic)` when a cursor fell out of its log.
fn gather<'a>(
    topics: &'a Topics,
    subs: &mut TopicSubs,
    room: usize,
    tail: &mut [&'a [u8]; MAX_PARTS],
    sources: &mut [TopicId; MAX_PARTS],
) -> Result<usize, TopicId> {
    // Each subscription with something pending: (seq of its next message, index in `subs`, that message).
    let mut next = std::mem::take(&mut subs.merge);
    next.clear();
    for (i, sub) in subs.subs.iter().enumerate() {
        let Some(log) = topics.get(sub.topic).and_then(|t| t.log(subs.encoding)) else { continue };
        if sub.cursor >= log.log.head() {
            continue; // nothing new: most subscriptions of most connections, most passes
        }
        match log.log.locate(sub.cursor) {
            Located::Head => continue,
            Located::Trimmed => return Err(sub.topic),
            Located::At { .. } => {}
        }
        // The partial subscription's current message went as the head: its next one follows.
        let m = if subs.partial == Some(sub.topic) {
            log.message_containing(sub.cursor).map_or(0, |m| m + 1)
        } else {
            log.message_from(sub.cursor)
        };
        if m < log.message_count() && log.message(m).0.at < log.log.head() {
            next.push((log.message(m).0.seq, i as u32, m as u32));
        }
    }
    let mut len = 0;
    while len < room && !next.is_empty() {
        // The subscription with the lowest next seq, and the lowest next seq of the others (one scan).
        let (mut first, mut others) = (0, None::<u64>);
        for (j, n) in next.iter().enumerate().skip(1) {
            if n.0 < next[first].0 {
                others = Some(others.map_or(next[first].0, |o| o.min(next[first].0)));
                first = j;
            } else {
                others = Some(others.map_or(n.0, |o| o.min(n.0)));
            }
        }
        let (_, i, m) = next[first];
        let topic = subs.subs[i as usize].topic;
        let log = topics.get(topic).and_then(|t| t.log(subs.encoding)).expect("found above");
        let (mark, mut end) = log.message(m as usize);
        let Located::At { index, offset } = log.log.locate(mark.at) else { return Err(topic) };
        let chunk = log.log.chunk(index);
        let chunk_end = mark.at + (chunk.len() - offset) as u64;
        // The run: this topic's messages while they come before every other topic's next one, within the chunk.
        let mut m = m as usize + 1;
        while m < log.message_count() {
            let (after, after_end) = log.message(m);
            if after.at >= chunk_end || others.is_some_and(|o| after.seq > o) {
                break;
            }
            end = after_end;
            m += 1;
        }
        tail[len] = &chunk[offset..offset + (end - mark.at) as usize];
        sources[len] = topic;
        len += 1;
        if m < log.message_count() && log.message(m).0.at < log.log.head() {
            next[first] = (log.message(m).0.seq, i, m as u32);
        } else {
            next.swap_remove(first);
        }
    }
    subs.merge = next;
    Ok(len)
}

/// Moves the cursors over `written` bytes of `[head][private_len private][tail parts]`; returns how many private
/// bytes went. A part cut short leaves its source `partial` (inside a frame, perhaps). `pinned_cursor` is the
/// connection's cursor into its pinned chunk (source [`PINNED`]).
fn advance(
    subs: &mut TopicSubs,
    pinned_cursor: &mut Cursor,
    head: (TopicId, usize),
    private_len: usize,
    tail: impl Iterator<Item = (TopicId, u32)>,
    mut written: usize,
) -> usize {
    let (head_source, head_len) = head;
    let k = written.min(head_len);
    move_cursor(subs, pinned_cursor, head_source, k);
    written -= k;
    if k < head_len {
        return 0; // still inside the same chunk: `partial` (or the pin) stays
    }
    if head_source != PINNED {
        subs.partial = None;
    }
    let private = written.min(private_len);
    written -= private;
    if private < private_len {
        return private;
    }
    for (source, len) in tail {
        let len = len as usize;
        let k = written.min(len);
        move_cursor(subs, pinned_cursor, source, k);
        written -= k;
        if k < len {
            if k > 0 {
                subs.partial = Some(source);
            }
            break;
        }
    }
    private
}

fn move_cursor(subs: &mut TopicSubs, pinned_cursor: &mut Cursor, source: TopicId, by: usize) {
    if by == 0 {
        return;
    }
    if source == PINNED {
        *pinned_cursor += by as Cursor;
    } else if let Some(sub) = subs.find_mut(source) {
        sub.cursor += by as Cursor;
    }
}

/// Applies a completed send (io_uring) by the parts it carried: moves the cursors over the broadcast bytes
/// written and puts back the private bytes that were not (as `output::on_sent`).
pub fn on_sent(conn: &mut Conn, pool: &mut BufPool, written: usize, private: Vec<u8>, from: usize) {
    let subs = conn.topics.as_deref_mut().expect("a topic connection");
    let mut sent = std::mem::take(&mut subs.sent);
    let (head, tail) = if subs.sent_head && !sent.is_empty() {
        let (s, l) = sent[0];
        ((s, l as usize), &sent[1..])
    } else {
        ((PINNED, 0), &sent[..])
    };
    let private_len = private.len() - from;
    let subs = conn.topics.as_deref_mut().expect("a topic connection");
    let p = advance(subs, &mut conn.cursor, head, private_len, tail.iter().copied(), written);
    sent.clear();
    subs.sent = sent;
    super::output::return_private(conn, pool, private, from, p);
}

/// Bytes topic connection `subs` is behind over all its subscriptions (its lag, judged like a whole-feed
/// connection's against `max_lag_bytes`).
pub fn lag(topics: &Topics, subs: &TopicSubs) -> u64 {
    subs.subs
        .iter()
        .filter_map(|s| Some(topics.get(s.topic)?.log(subs.encoding)?.log.head().saturating_sub(s.cursor)))
        .sum()
}

/// Whether anything is pending for `subs` in its logs.
pub fn has_pending(topics: &Topics, subs: &TopicSubs) -> bool {
    subs.subs
        .iter()
        .any(|s| topics.get(s.topic).and_then(|t| t.log(subs.encoding)).is_some_and(|l| s.cursor < l.log.head()))
}

#[cfg(test)]
mod tests {
    //! The merge against a model: whatever the pulls, the room per send and the bytes each send gets written,
    //! a connection receives exactly its topics' messages, each once and whole, in seq order.
    use super::*;
    use crate::conn::Sub;
    use crate::fanout::{Encoding, HistoryLimits, TopicLimits};
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    /// A message's bytes: its seq, then filler, so that any misplaced byte shows.
    fn message(seq: u64, len: usize) -> Vec<u8> {
        let mut m = format!("<{seq}:").into_bytes();
        m.resize(m.len() + len, b'a' + (seq % 26) as u8);
        m.push(b'>');
        m
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// A pull: messages (topic index, filler length), then every log is sealed.
        Pull(Vec<(usize, usize)>),
        /// A send with room for `room` parts, of which the first `written` bytes (capped at the total) go.
        Send { room: usize, written: usize },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            prop::collection::vec((0..4usize, 0..40usize), 0..12).prop_map(Step::Pull),
            (1..8usize, 0..300usize).prop_map(|(room, written)| Step::Send { room, written }),
        ]
    }

    proptest! {
        #[test]
        fn sends_deliver_every_subscribed_message_once_in_seq_order(
            subscribed in prop::collection::vec(any::<bool>(), 4),
            steps in prop::collection::vec(step(), 1..40),
        ) {
            let limits = TopicLimits {
                max_topics: 8,
                idle: Duration::from_secs(60),
                history: HistoryLimits { max_messages: 0, max_age: Duration::from_secs(60), max_bytes: 0 },
                total_bytes: 0,
            };
            let now = Instant::now();
            let mut topics = Topics::new(limits);
            let ids: Vec<TopicId> = (0..4).map(|t| topics.get_or_make(&format!("t{t}"), now).unwrap().0).collect();
            let mut subs = TopicSubs::new(Encoding::Raw);
            for (t, _) in subscribed.iter().enumerate().filter(|(_, on)| **on) {
                subs.subs.push(Sub { topic: ids[t], cursor: 0, index: 0, refs: 1 });
            }
            let mut pinned_cursor = 0;
            let (mut seq, mut want, mut got) = (0u64, Vec::new(), Vec::new());
            let mut last_topic = [0u64; 4];
            for step in steps.iter().chain(std::iter::repeat_n(&Step::Send { room: 64, written: usize::MAX }, 200)) {
                match step {
                    Step::Pull(messages) => {
                        for &(t, len) in messages {
                            seq += 1;
                            let bytes = message(seq, len);
                            if subscribed[t] {
                                want.extend_from_slice(&bytes);
                            }
                            let prev = std::mem::replace(&mut last_topic[t], seq);
                            topics.append(ids[t], seq, prev, now, |_, out| out.extend_from_slice(&bytes));
                        }
                        // Seal, and trim as the loop does: to the subscriber's cursor (no history is kept).
                        for (id, topic) in topics.iter_mut() {
                            for log in topic.logs.iter_mut().flatten() {
                                log.seal();
                                let keep = subs.subs.iter().find(|s| s.topic == id).map_or(log.log.head(), |s| s.cursor);
                                log.trim(keep);
                            }
                        }
                    }
                    Step::Send { room, written } => {
                        let head: &[u8] = match subs.partial {
                            Some(t) => rest_of_message(&topics, &subs, t).expect("retained"),
                            None => &[],
                        };
                        let head_source = subs.partial.unwrap_or(PINNED);
                        let mut tail = [&[][..]; MAX_PARTS];
                        let mut sources = [0 as TopicId; MAX_PARTS];
                        let n = gather(&topics, &mut subs, *room, &mut tail, &mut sources).expect("retained");
                        let mut out = head.to_vec();
                        for part in &tail[..n] {
                            out.extend_from_slice(part);
                        }
                        let w = (*written).min(out.len());
                        got.extend_from_slice(&out[..w]);
                        let parts: Vec<(TopicId, u32)> =
                            (0..n).map(|i| (sources[i], tail[i].len() as u32)).collect();
                        advance(&mut subs, &mut pinned_cursor, (head_source, head.len()), 0, parts.into_iter(), w);
                    }
                }
            }
            prop_assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
        }
    }
}
