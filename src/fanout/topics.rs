//! The topics of one loop thread: per topic, one log per encoding in use (frames encoded once, shared by every
//! subscriber of that topic and encoding), its history (`fanout::History`) and its subscribers. Pure data: the
//! loop encodes frames (this module sees opaque bytes) and passes the clock.
//!
//! A topic's `Raw` log always exists while the topic does: it is the history the other encodings are made from
//! when a subscriber first asks for them ([`Topics::add_log`]), so a client that resumes in an encoding nobody
//! else on this loop reads still finds its messages. Logs of other encodings live as long as their topic.
//!
//! Bounds: at most `max_topics` topics (a topic with nobody subscribed and no message for `idle` is forgotten,
//! [`Topics::expire_idle`]); per log, the history's own bounds; over every log together, `total_bytes` of
//! history, oldest first across topics ([`Topics::enforce_total`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::history::{Entry, History, HistoryLimits};
use super::log::{Cursor, FrameLog};
use super::subscribers::Subscribers;

/// A topic's index in its loop's table (valid while the topic lives; reused after it is forgotten).
pub type TopicId = u32;

/// How a topic's messages are encoded for a group of clients. Leaves room for the compressed and STOMP
/// encodings of later work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// WebSocket frames carrying the payload as the feed gave it.
    Raw = 0,
    /// WebSocket text frames carrying JSON envelopes.
    Json = 1,
    /// Server-Sent Events carrying JSON envelopes.
    Sse = 2,
}

/// How many encodings there are.
pub const ENCODINGS: usize = 3;

impl Encoding {
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One topic in one encoding.
#[derive(Debug)]
pub struct TopicLog {
    pub log: FrameLog,
    pub history: History,
    pub subscribers: Subscribers,
    /// Position up to which every subscriber has been offered the log (as `Stream::fanned_out_to`).
    pub offered: Cursor,
    /// Scratch for the trim phase: the oldest position someone still needs.
    pub keep_from: Cursor,
    /// Frames appended since the last [`TopicLog::seal`]: they become one chunk of `log`.
    open: Vec<u8>,
    /// Where each message in the log (and in `open`) starts, seq increasing: what lets a connection with
    /// several topics take their messages in seq order. Trimmed with the log.
    marks: VecDeque<Mark>,
}

/// Where one message of a topic log starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub seq: u64,
    pub at: Cursor,
}

impl TopicLog {
    fn new(history: History) -> Self {
        TopicLog {
            log: FrameLog::new(),
            history,
            subscribers: Subscribers::new(),
            offered: 0,
            keep_from: 0,
            open: Vec::new(),
            marks: VecDeque::new(),
        }
    }

    /// Drops the chunks before `keep_from` (as [`FrameLog::trim_to`]) and their marks.
    pub fn trim(&mut self, keep_from: Cursor) {
        self.log.trim_to(keep_from);
        let tail = self.log.tail();
        while self.marks.front().is_some_and(|m| m.at < tail) {
            self.marks.pop_front();
        }
    }

    /// How many messages the log holds (and `open`).
    pub fn message_count(&self) -> usize {
        self.marks.len()
    }

    /// Message `i` (in log order) and where it ends (its successor's start, or the sealed head).
    pub fn message(&self, i: usize) -> (Mark, Cursor) {
        let mark = self.marks[i];
        let end = self.marks.get(i + 1).map_or(self.log.head(), |next| next.at).min(self.log.head());
        (mark, end)
    }

    /// The index of the first message that starts at or after `cursor`.
    pub fn message_from(&self, cursor: Cursor) -> usize {
        self.marks.partition_point(|m| m.at < cursor)
    }

    /// The index of the message `cursor` stands in (or at the start of); `None` before the first.
    pub fn message_containing(&self, cursor: Cursor) -> Option<usize> {
        self.marks.partition_point(|m| m.at <= cursor).checked_sub(1)
    }

    /// Where the next appended frame starts.
    pub fn next_at(&self) -> Cursor {
        self.log.head() + self.open.len() as u64
    }

    /// Appends one message's frame (written by `write`) to the open chunk and records it in the history;
    /// returns the change in history bytes (negative when the bounds evicted more than was added).
    pub fn append(&mut self, seq: u64, prev: u64, now: Instant, write: impl FnOnce(&mut Vec<u8>)) -> i64 {
        let at = self.next_at();
        let start = self.open.len();
        write(&mut self.open);
        let len = (self.open.len() - start) as u32;
        self.marks.push_back(Mark { seq, at });
        let before = self.history.bytes();
        self.history.push(Entry { seq, prev, at, len, time: now }, now);
        self.history.bytes() as i64 - before as i64
    }

    /// Appends a notice frame (written by `write`) at feed position `seq` — between the messages before and after
    /// it, so that a subscriber receives it in order — without recording it in the history (a resume learns of
    /// the same thing from the history itself).
    pub fn append_notice(&mut self, seq: u64, write: impl FnOnce(&mut Vec<u8>)) {
        let at = self.next_at();
        write(&mut self.open);
        self.marks.push_back(Mark { seq, at });
    }

    /// Bytes waiting in the open chunk.
    pub fn open_len(&self) -> usize {
        self.open.len()
    }

    /// Turns the frames appended since the last seal into one chunk of the log. Returns whether the log grew.
    pub fn seal(&mut self) -> bool {
        if self.open.is_empty() {
            return false;
        }
        self.log.push(Arc::from(&self.open[..]));
        self.open.clear();
        if self.open.capacity() > OPEN_KEEP {
            self.open = Vec::new(); // a burst's buffer is not kept by every quiet topic
        }
        true
    }
}

/// Capacity of a topic's open-chunk buffer kept between pulls.
const OPEN_KEEP: usize = 16 * 1024;

/// One topic of a loop thread.
#[derive(Debug)]
pub struct Topic {
    pub name: Box<str>,
    pub logs: [Option<Box<TopicLog>>; ENCODINGS],
    /// When its last message arrived (or it was made).
    pub last_active: Instant,
    /// In the loop's list of topics that grew this pull.
    pub grown: bool,
    /// In the loop's list of topics whose new bytes are still to be offered to their subscribers.
    pub offer: bool,
    /// Grew since the last trim.
    pub trim: bool,
}

impl Topic {
    pub fn log(&self, encoding: Encoding) -> Option<&TopicLog> {
        self.logs[encoding.index()].as_deref()
    }

    pub fn log_mut(&mut self, encoding: Encoding) -> Option<&mut TopicLog> {
        self.logs[encoding.index()].as_deref_mut()
    }

    pub fn raw(&self) -> &TopicLog {
        self.logs[Encoding::Raw.index()].as_deref().expect("a topic always has its raw log")
    }

    pub fn has_subscribers(&self) -> bool {
        self.logs.iter().flatten().any(|l| !l.subscribers.is_empty())
    }
}

/// Limits of a loop's topics.
#[derive(Debug, Clone, Copy)]
pub struct TopicLimits {
    pub max_topics: usize,
    pub idle: Duration,
    pub history: HistoryLimits,
    /// Most history bytes over every topic and encoding of the loop.
    pub total_bytes: u64,
}

/// The table is full and no topic can be forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

/// A loop thread's topics. See the module docs.
#[derive(Debug)]
pub struct Topics {
    by_name: HashMap<Box<str>, TopicId>,
    slots: Vec<Option<Topic>>,
    free: Vec<TopicId>,
    limits: TopicLimits,
    /// History bytes over every log.
    history_bytes: u64,
    /// Every retained history entry, oldest first: `(topic, encoding, seq)`. May hold entries the per-log
    /// bounds evicted since (skipped when met; compacted when they outnumber the live ones).
    order: VecDeque<(TopicId, Encoding, u64)>,
    /// `order`'s length at which it is next checked for entries the per-log bounds evicted.
    next_order_check: usize,
    /// Feed position up to which this loop has forgotten topics: a topic made later knows nothing before it.
    forgotten_up_to: u64,
    /// Topics forgotten so far (idle).
    pub expired: u64,
}

impl Topics {
    pub fn new(limits: TopicLimits) -> Self {
        Topics {
            by_name: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            limits,
            history_bytes: 0,
            order: VecDeque::new(),
            next_order_check: 0,
            forgotten_up_to: 0,
            expired: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn history_bytes(&self) -> u64 {
        self.history_bytes
    }

    pub fn id(&self, name: &str) -> Option<TopicId> {
        self.by_name.get(name).copied()
    }

    pub fn get(&self, id: TopicId) -> Option<&Topic> {
        self.slots.get(id as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, id: TopicId) -> Option<&mut Topic> {
        self.slots.get_mut(id as usize)?.as_mut()
    }

    /// Every live topic.
    pub fn iter(&self) -> impl Iterator<Item = (TopicId, &Topic)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, t)| Some((i as TopicId, t.as_ref()?)))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (TopicId, &mut Topic)> + '_ {
        self.slots.iter_mut().enumerate().filter_map(|(i, t)| Some((i as TopicId, t.as_mut()?)))
    }

    /// The topic named `name`, made when new (`Ok((id, true))`); when the table is full an idle topic is
    /// forgotten to make room, else [`TableFull`].
    pub fn get_or_make(&mut self, name: &str, now: Instant) -> Result<(TopicId, bool), TableFull> {
        if let Some(id) = self.id(name) {
            return Ok((id, false));
        }
        if self.by_name.len() >= self.limits.max_topics && self.expire_idle(now, None).is_empty() {
            return Err(TableFull);
        }
        let history = History::known_from(self.limits.history, self.forgotten_up_to, 0);
        let mut logs: [Option<Box<TopicLog>>; ENCODINGS] = Default::default();
        logs[Encoding::Raw.index()] = Some(Box::new(TopicLog::new(history)));
        let topic = Topic { name: name.into(), logs, last_active: now, grown: false, offer: false, trim: false };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(topic);
                id
            }
            None => {
                self.slots.push(Some(topic));
                (self.slots.len() - 1) as TopicId
            }
        };
        self.by_name.insert(name.into(), id);
        Ok((id, true))
    }

    /// Appends one message to every log of topic `id` (`write` encodes it for each encoding); the caller seals
    /// the logs at the end of the pull. History bytes over the loop are kept within `total_bytes`.
    pub fn append(
        &mut self,
        id: TopicId,
        seq: u64,
        prev: u64,
        now: Instant,
        mut write: impl FnMut(Encoding, &mut Vec<u8>),
    ) {
        let Some(topic) = self.slots.get_mut(id as usize).and_then(Option::as_mut) else { return };
        topic.last_active = now;
        let mut delta = 0i64;
        for (e, log) in topic.logs.iter_mut().enumerate() {
            let Some(log) = log else { continue };
            let encoding = ENCODING_OF[e];
            delta += log.append(seq, prev, now, |out| write(encoding, out));
            if log.history.limits().max_messages > 0 {
                self.order.push_back((id, encoding, seq));
            }
        }
        self.history_bytes = self.history_bytes.saturating_add_signed(delta);
        self.enforce_total();
    }

    /// Makes topic `id`'s log in `encoding` from its raw history: `convert` turns one raw frame (and its
    /// entry) into the frame of the new encoding. The new log holds the same messages as the raw history.
    pub fn add_log(
        &mut self,
        id: TopicId,
        encoding: Encoding,
        now: Instant,
        mut convert: impl FnMut(&str, &Entry, &[u8], &mut Vec<u8>),
    ) {
        let Some(topic) = self.slots.get_mut(id as usize).and_then(Option::as_mut) else { return };
        if topic.logs[encoding.index()].is_some() {
            return;
        }
        let raw = topic.raw();
        let history = History::known_from(raw.history.limits(), raw.history.known_from_seq(), 0);
        let mut log = TopicLog::new(history);
        let mut added = 0u64;
        let entries: Vec<Entry> = raw.history.entries().copied().collect();
        for entry in &entries {
            let Some(frame) = raw.log.bytes_at(entry.at, entry.len as usize) else { continue };
            let at = log.next_at();
            let start = log.open.len();
            convert(&topic.name, entry, frame, &mut log.open);
            let len = (log.open.len() - start) as u32;
            log.marks.push_back(Mark { seq: entry.seq, at });
            log.history.push(Entry { at, len, ..*entry }, now);
            if log.open.len() >= OPEN_KEEP {
                log.seal();
            }
        }
        log.history.note_last_seq(raw.history.last_seq());
        log.seal();
        log.offered = log.log.head();
        added += log.history.bytes();
        // Its entries join the loop-wide order by age (approximately: after what is there).
        for entry in log.history.entries() {
            self.order.push_back((id, encoding, entry.seq));
        }
        topic.logs[encoding.index()] = Some(Box::new(log));
        self.history_bytes += added;
        self.enforce_total();
    }

    /// Evicts the oldest history entries over every topic until the loop's history is within `total_bytes`.
    fn enforce_total(&mut self) {
        while self.history_bytes > self.limits.total_bytes {
            let Some((id, encoding, seq)) = self.order.pop_front() else { break };
            let Some(log) = self.slots.get_mut(id as usize).and_then(Option::as_mut).and_then(|t| t.log_mut(encoding))
            else {
                continue;
            };
            if log.history.oldest().is_some_and(|e| e.seq == seq) {
                if let Some(old) = log.history.evict_oldest() {
                    self.history_bytes -= u64::from(old.len);
                }
            }
        }
        // Entries the per-log bounds evicted stay in `order` until met: keep them from outnumbering live ones.
        // Counting the live ones visits every topic, so it is done only after as many more entries as it found
        // (or 1024): amortised O(1) per append.
        if self.order.len() < self.next_order_check {
            return;
        }
        let live: usize = self.live_entries_hint();
        if self.order.len() > 2 * live + 1024 {
            let slots = &self.slots;
            self.order.retain(|&(id, encoding, seq)| {
                slots
                    .get(id as usize)
                    .and_then(Option::as_ref)
                    .and_then(|t| t.log(encoding))
                    .and_then(|l| l.history.oldest())
                    .is_some_and(|oldest| seq >= oldest.seq)
            });
        }
        self.next_order_check = self.order.len() + live.max(1024);
    }

    /// Retained entries over every log (counted when compacting, which is rare).
    fn live_entries_hint(&self) -> usize {
        self.slots.iter().flatten().flat_map(|t| t.logs.iter().flatten()).map(|l| l.history.len()).sum()
    }

    /// Ages out history and forgets topics with nobody subscribed and no message for `idle` (`idle` given: the
    /// configured one unless overridden). Returns the forgotten ids (their subscribers' lists were empty).
    pub fn expire_idle(&mut self, now: Instant, idle: Option<Duration>) -> Vec<TopicId> {
        let idle = idle.unwrap_or(self.limits.idle);
        let mut gone = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(topic) = slot else { continue };
            for log in topic.logs.iter_mut().flatten() {
                let before = log.history.bytes();
                log.history.evict(now);
                self.history_bytes -= before - log.history.bytes();
            }
            if topic.has_subscribers() || now.saturating_duration_since(topic.last_active) < idle {
                continue;
            }
            let topic = slot.take().expect("checked above");
            for log in topic.logs.iter().flatten() {
                self.history_bytes -= log.history.bytes();
                self.forgotten_up_to = self.forgotten_up_to.max(log.history.last_seq());
            }
            self.by_name.remove(&topic.name);
            self.free.push(i as TopicId);
            gone.push(i as TopicId);
        }
        self.expired += gone.len() as u64;
        gone
    }

    /// The loop missed the feed's messages up to `seq` (batches dropped for it): every history forgets what it
    /// had and everything up to there (`History::forget_through`), and topics made later know nothing before it.
    pub fn forget_history_through(&mut self, seq: u64) {
        for topic in self.slots.iter_mut().flatten() {
            for log in topic.logs.iter_mut().flatten() {
                self.history_bytes -= log.history.forget_through(seq);
            }
        }
        self.forget_up_to(seq);
    }

    /// Raises the position before which topics made from now on know nothing (the loop took a message of a
    /// topic it had no room for: its history is not complete).
    pub fn forget_up_to(&mut self, seq: u64) {
        self.forgotten_up_to = self.forgotten_up_to.max(seq);
    }
}

const ENCODING_OF: [Encoding; ENCODINGS] = [Encoding::Raw, Encoding::Json, Encoding::Sse];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::Resume;

    fn limits(max_topics: usize, max_messages: usize, total_bytes: u64) -> TopicLimits {
        TopicLimits {
            max_topics,
            idle: Duration::from_secs(60),
            history: HistoryLimits { max_messages, max_age: Duration::from_secs(3600), max_bytes: 1 << 20 },
            total_bytes,
        }
    }

    fn frame(seq: u64) -> Vec<u8> {
        format!("m{seq};").into_bytes()
    }

    fn feed(topics: &mut Topics, id: TopicId, seq: u64, prev: u64, now: Instant) {
        topics.append(id, seq, prev, now, |e, out| {
            if e == Encoding::Json {
                out.extend_from_slice(b"J");
            }
            out.extend_from_slice(&frame(seq));
        });
    }

    fn seal_all(topics: &mut Topics) {
        let ids: Vec<TopicId> = topics.iter().map(|(id, _)| id).collect();
        for id in ids {
            for log in topics.get_mut(id).unwrap().logs.iter_mut().flatten() {
                log.seal();
            }
        }
    }

    /// The bytes of `log` from `at` to its head.
    fn from(log: &TopicLog, at: Cursor) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..log.log.chunk_count() {
            out.extend_from_slice(log.log.chunk(i));
        }
        out[(at - log.log.tail()) as usize..].to_vec()
    }

    #[test]
    fn messages_land_in_their_topic_and_resume_replays_them() {
        let t = Instant::now();
        let mut topics = Topics::new(limits(10, 100, 1 << 20));
        let (a, made) = topics.get_or_make("A", t).unwrap();
        assert!(made);
        let (b, _) = topics.get_or_make("B", t).unwrap();
        assert_eq!(topics.get_or_make("A", t).unwrap(), (a, false));
        feed(&mut topics, a, 1, 0, t);
        feed(&mut topics, b, 2, 0, t);
        feed(&mut topics, a, 3, 1, t);
        seal_all(&mut topics);
        let log = topics.get(a).unwrap().raw();
        assert_eq!(from(log, 0), b"m1;m3;");
        match log.history.resume(1, log.log.head(), 3) {
            Resume::From { at } => assert_eq!(from(log, at), b"m3;"),
            other => panic!("{other:?}"),
        }
        // A JSON log made later holds the same history.
        topics.add_log(a, Encoding::Json, t, |_, e, raw, out| {
            out.push(b'J');
            out.extend_from_slice(raw);
            assert!(e.seq == 1 || e.seq == 3);
        });
        feed(&mut topics, a, 4, 3, t);
        seal_all(&mut topics);
        let json = topics.get(a).unwrap().log(Encoding::Json).unwrap();
        assert_eq!(from(json, 0), b"Jm1;Jm3;Jm4;");
        assert_eq!(json.history.last_seq(), 4);
        match json.history.resume(1, json.log.head(), 4) {
            Resume::From { at } => assert_eq!(from(json, at), b"Jm3;Jm4;"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_table_is_capped_and_idle_topics_expire() {
        let t = Instant::now();
        let mut topics = Topics::new(limits(2, 10, 1 << 20));
        let (a, _) = topics.get_or_make("A", t).unwrap();
        topics.get_or_make("B", t).unwrap();
        assert_eq!(topics.get_or_make("C", t), Err(TableFull), "nothing idle yet");
        feed(&mut topics, a, 7, 0, t);
        let later = t + Duration::from_secs(61);
        let (c, made) = topics.get_or_make("C", later).unwrap();
        assert!(made);
        assert_eq!((topics.len(), topics.id("C"), topics.id("A")), (1, Some(c), None), "A and B were idle");
        assert_eq!(topics.expired, 2);
        // A topic made after others were forgotten knows nothing before their last message: a resume from
        // before that position is a gap, never a silent "nothing missed".
        let (a2, _) = topics.get_or_make("A", later).unwrap();
        let log = topics.get(a2).unwrap().raw();
        assert!(matches!(log.history.resume(3, log.log.head(), 9), Resume::Gap { from_seq: 3, .. }));
        assert!(matches!(log.history.resume(7, log.log.head(), 9), Resume::From { .. }));
    }

    #[test]
    fn history_over_every_topic_is_capped_oldest_first() {
        let t = Instant::now();
        // Frames "mN;" are 3–4 bytes; keep at most 12 bytes over both topics.
        let mut topics = Topics::new(limits(10, 100, 12));
        let (a, _) = topics.get_or_make("A", t).unwrap();
        let (b, _) = topics.get_or_make("B", t).unwrap();
        for seq in 1..=6 {
            feed(&mut topics, if seq % 2 == 0 { b } else { a }, seq, seq.saturating_sub(2), t);
        }
        assert!(topics.history_bytes() <= 12);
        let a_oldest = topics.get(a).unwrap().raw().history.oldest().unwrap().seq;
        let b_oldest = topics.get(b).unwrap().raw().history.oldest().unwrap().seq;
        assert_eq!((a_oldest, b_oldest), (3, 4), "3-byte frames: seq 1 and 2 went first");
        // Many entries the per-log bound evicts never make the order list grow without bound.
        let mut topics = Topics::new(limits(10, 2, 1 << 30));
        let (a, _) = topics.get_or_make("A", t).unwrap();
        // (Checked every max(live, 1024) entries, compacted above 2 × live + 1024: never over 3 × live + 2048.)
        for seq in 1..=10_000 {
            feed(&mut topics, a, seq, seq - 1, t);
            assert!(topics.order.len() <= 3 * 2 + 2048, "{seq}: {}", topics.order.len());
        }
    }
}
