//! The hand-off from the feed thread to the loop threads: stamped messages are gathered into a batch of records
//! (`upstream::batch`; one allocation per feed read, not per message), the batch crosses to each loop thread
//! once through a queue bounded in batches and in bytes, plus one wake-up, and each loop encodes the frames its
//! clients need from it ([`encode_raw_frames`]) — once per loop, shared by all its subscribers.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::stats::ShardStats;
use crate::client::encode::{self, FeedMessage};
use crate::client::{sse, Position};
use crate::config::FeedOverflow;
use crate::proto::frame::{encode_frame_into, OpCode};
use crate::reactor::Waker;
use crate::upstream::batch::{self, Records};
use crate::upstream::{Message, PayloadKind, Sink};

/// Stamped records (`upstream::batch`), back to back; shared by every loop thread.
pub struct Batch {
    pub records: Arc<[u8]>,
    pub messages: u32,
    /// When the feed thread received its first message (the start of the publish-to-socket latency).
    pub received: Instant,
}

/// Appends the raw-format frame of every record of `batch` to `out` (a text or binary frame carrying the payload
/// as the feed gave it); returns the `seq` of the last one (0 if none).
pub fn encode_raw_frames(batch: &Batch, out: &mut Vec<u8>) -> u64 {
    let mut records = Records::new(&batch.records);
    let (mut n, mut last) = (0, 0);
    for msg in records.by_ref() {
        last = msg.stamp.seq;
        let op = match msg.kind {
            PayloadKind::Text => OpCode::Text,
            PayloadKind::Binary => OpCode::Binary,
        };
        encode_frame_into(out, op, msg.payload);
        n += 1;
    }
    if !records.is_done() {
        tracing::error!(decoded = n, messages = batch.messages, "malformed feed batch: the rest is skipped");
    }
    last
}

/// Largest chunk an envelope stream (JSON frames, SSE events) is cut into: it is cut once it reaches
/// `BATCH_MAX_BYTES`, so it ends at most one message later, and one message's envelope is at most 6 × its payload
/// (text escaped as `\u00XX`) plus its topic, position and framing. The retention rules rely on this bound
/// (`fanout::Retention::max_chunk`), whatever the expansion from raw to envelopes.
pub fn max_envelope_chunk(max_line_bytes: usize) -> usize {
    BATCH_MAX_BYTES + 6 * max_line_bytes + 512
}

/// Encodes, for every record of `batch`, its JSON envelope (`client::encode::envelope`; `epoch` is the feed's)
/// wrapped by `wrap` (a WebSocket text frame, an SSE event) into `out`, handing `out` to `chunk` (which takes
/// and clears it) each time it reaches `BATCH_MAX_BYTES` and at the end, with the `seq` of its first message;
/// `envelope` is scratch.
fn encode_envelopes(
    batch: &Batch,
    epoch: u64,
    envelope: &mut Vec<u8>,
    out: &mut Vec<u8>,
    wrap: impl Fn(Position, &str, &[u8], &mut Vec<u8>),
    mut chunk: impl FnMut(&mut Vec<u8>, u64),
) {
    let mut first = None;
    for msg in Records::new(&batch.records) {
        envelope.clear();
        let first_seq = *first.get_or_insert(msg.stamp.seq);
        let position = Position { epoch, seq: msg.stamp.seq };
        let m = FeedMessage { topic: msg.topic, payload: msg.payload, kind: msg.kind, position, prev: msg.stamp.prev };
        encode::envelope(&m, envelope);
        wrap(position, msg.topic, envelope, out);
        if out.len() >= BATCH_MAX_BYTES {
            chunk(out, first_seq);
            first = None;
        }
    }
    if !out.is_empty() {
        chunk(out, first.unwrap_or(0));
    }
}

/// Text frames carrying each record's JSON envelope (the `wsgate.v1.json` format), in chunks (see
/// [`encode_envelopes`]).
pub fn encode_json_frames(
    batch: &Batch,
    epoch: u64,
    envelope: &mut Vec<u8>,
    out: &mut Vec<u8>,
    chunk: impl FnMut(&mut Vec<u8>, u64),
) {
    let wrap = |_, _: &str, env: &[u8], out: &mut Vec<u8>| encode_frame_into(out, OpCode::Text, env);
    encode_envelopes(batch, epoch, envelope, out, wrap, chunk);
}

/// An SSE event per record (`id:` its position, `data:` its JSON envelope), in chunks (see
/// [`encode_envelopes`]).
pub fn encode_sse_events(
    batch: &Batch,
    epoch: u64,
    named: bool,
    envelope: &mut Vec<u8>,
    out: &mut Vec<u8>,
    chunk: impl FnMut(&mut Vec<u8>, u64),
) {
    let wrap = |position, topic: &str, env: &[u8], out: &mut Vec<u8>| {
        sse::event(Some(position), named.then_some(topic), env, out)
    };
    encode_envelopes(batch, epoch, envelope, out, wrap, chunk);
}

/// A batch is cut when it reaches this size, so one batch never delays the first message for long. A batch
/// is at most this plus one frame.
pub const BATCH_MAX_BYTES: usize = 64 * 1024;

/// Batches one feed read (or one demo tick) can add after [`Sink::ready`] said yes: a read of 64 KiB of tiny
/// lines encodes to at most 96 KiB of frames, two batches. Kept free in every queue so that backpressure never
/// has to drop.
const READ_MARGIN_BATCHES: u64 = 4;

/// A loop thread's queue limits.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub batches: usize,
    pub bytes: u64,
    pub overflow: FeedOverflow,
}

/// The sender to one loop thread. What is queued is accounted in that thread's [`ShardStats`]
/// (`feed_queue_batches`, `feed_queue_bytes`): the feed thread adds, the loop thread subtracts what it takes.
pub struct ShardQueue {
    tx: SyncSender<Batch>,
    waker: Arc<Waker>,
}

/// The consumer side, owned by one loop thread.
pub struct FeedReceiver {
    rx: Receiver<Batch>,
    stats: Arc<[ShardStats]>,
    id: usize,
}

impl FeedReceiver {
    /// The next queued batch, if any (none also once the feed thread is gone); its bytes leave the queue's
    /// account.
    pub fn try_recv(&self) -> Option<Batch> {
        let batch = self.rx.try_recv().ok()?;
        let stats = &self.stats[self.id];
        ShardStats::sub(&stats.feed_queue_batches, 1);
        ShardStats::sub(&stats.feed_queue_bytes, batch.records.len() as u64);
        Some(batch)
    }

    /// Whether batches are waiting.
    pub fn pending(&self) -> bool {
        self.stats[self.id].feed_queue_batches.load(Relaxed) > 0
    }
}

impl Drop for FeedReceiver {
    /// A loop thread that ended takes nothing more: it says so first (the feed thread then sends it nothing), and
    /// empties its account, so that backpressure does not wait on it.
    fn drop(&mut self) {
        self.stats[self.id].feed_queue_closed.store(true, Relaxed);
        while self.try_recv().is_some() {}
    }
}

/// One loop thread's queue: `capacity` batches at most (`std::sync::mpsc::sync_channel`: a lock-free array
/// channel).
pub fn queue(id: usize, capacity: usize, waker: Arc<Waker>, stats: Arc<[ShardStats]>) -> (ShardQueue, FeedReceiver) {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
    (ShardQueue { tx, waker }, FeedReceiver { rx, stats, id })
}

/// The feed thread's [`Sink`]: encodes each message once and broadcasts batches to every loop thread.
///
/// Overflow policy ([`FeedOverflow`]): with `Backpressure`, [`Sink::ready`] is false while any loop thread's
/// queue holds `limits.bytes` or more (or is within a read's worth of `limits.batches`), so the feed stops
/// reading its sources and nothing is dropped. With `Drop`, a batch that finds a queue over either limit is
/// dropped for that thread only, counted in its `feed_batches_dropped` and logged (at most once a second).
pub struct BroadcastSink {
    batch: Vec<u8>,
    messages: u32,
    /// When the first message of `batch` was published (one clock read per batch).
    received: Instant,
    queues: Vec<ShardQueue>,
    stats: Arc<[ShardStats]>,
    limits: QueueLimits,
    last_drop_log: Option<Instant>,
}

impl BroadcastSink {
    pub fn new(queues: Vec<ShardQueue>, stats: Arc<[ShardStats]>, limits: QueueLimits) -> Self {
        let batch = Vec::with_capacity(BATCH_MAX_BYTES);
        Self { batch, messages: 0, received: Instant::now(), queues, stats, limits, last_drop_log: None }
    }

    /// Whether loop thread `shard`'s queue can take another read's worth of batches.
    fn has_room(&self, shard: usize) -> bool {
        let s = &self.stats[shard];
        s.feed_queue_closed.load(Relaxed)
            || (s.feed_queue_bytes.load(Relaxed) < self.limits.bytes
                && s.feed_queue_batches.load(Relaxed) + READ_MARGIN_BATCHES <= self.limits.batches as u64)
    }

    fn note_drop(&mut self, shard: usize) {
        ShardStats::add(&self.stats[shard].feed_batches_dropped, 1);
        let now = Instant::now();
        if self.last_drop_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            self.last_drop_log = Some(now);
            tracing::warn!(
                shard,
                dropped_total = self.stats[shard].feed_batches_dropped.load(Relaxed),
                "loop thread's feed queue is full: batch dropped for its clients (thread overloaded?)"
            );
        }
    }
}

impl Sink for BroadcastSink {
    fn publish(&mut self, msg: Message<'_>) {
        if self.batch.is_empty() {
            self.received = Instant::now();
        }
        batch::append(&mut self.batch, &msg);
        self.messages += 1;
        if self.batch.len() >= BATCH_MAX_BYTES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let records: Arc<[u8]> = Arc::from(&self.batch[..]);
        let messages = self.messages;
        self.batch.clear();
        self.messages = 0;
        for shard in 0..self.queues.len() {
            let s = &self.stats[shard];
            if s.feed_queue_closed.load(Relaxed) {
                continue; // the loop thread has exited (shutdown): nothing to deliver to
            }
            if self.limits.overflow == FeedOverflow::Drop && !self.has_room(shard) {
                self.note_drop(shard);
                continue;
            }
            // Accounted before the send, so that the loop's subtraction can never come first.
            let len = records.len() as u64;
            ShardStats::add(&s.feed_queue_batches, 1);
            ShardStats::add(&s.feed_queue_bytes, len);
            let q = &self.queues[shard];
            match q.tx.try_send(Batch { records: records.clone(), messages, received: self.received }) {
                Ok(()) => {
                    if let Err(e) = q.waker.wake() {
                        tracing::warn!(shard, error = %e, "could not wake loop thread");
                    }
                }
                Err(e) => {
                    ShardStats::sub(&s.feed_queue_batches, 1);
                    ShardStats::sub(&s.feed_queue_bytes, len);
                    // Backpressure keeps READ_MARGIN_BATCHES free, so only `Drop` finds a full queue.
                    if let TrySendError::Full(_) = e {
                        self.note_drop(shard);
                    }
                }
            }
        }
    }

    fn ready(&self) -> bool {
        self.limits.overflow == FeedOverflow::Drop || (0..self.queues.len()).all(|shard| self.has_room(shard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(limits: QueueLimits, loops: usize) -> (BroadcastSink, Vec<FeedReceiver>, Arc<[ShardStats]>) {
        let stats: Arc<[ShardStats]> = (0..loops).map(|_| ShardStats::default()).collect();
        let (mut queues, mut receivers) = (Vec::new(), Vec::new());
        for id in 0..loops {
            let (q, rx) = queue(id, limits.batches, Arc::new(Waker::new(true).unwrap()), stats.clone());
            queues.push(q);
            receivers.push(rx);
        }
        (BroadcastSink::new(queues, stats.clone(), limits), receivers, stats)
    }

    fn publish_batch(sink: &mut BroadcastSink, bytes: usize) {
        let stamp = crate::upstream::Stamp { seq: 1, prev: 0 };
        sink.publish(Message::new("t", &vec![b'x'; bytes], PayloadKind::Text, stamp));
        sink.flush();
    }

    #[test]
    fn loops_encode_the_frames_of_a_batch() {
        let limits = QueueLimits { batches: 64, bytes: 1 << 20, overflow: FeedOverflow::Backpressure };
        let (mut sink, rx, _) = setup(limits, 1);
        let stamp = crate::upstream::Stamp { seq: 1, prev: 0 };
        sink.publish(Message::new("a", b"text", PayloadKind::Text, stamp));
        sink.publish(Message::new("b", &[0, 255], PayloadKind::Binary, stamp));
        sink.publish(Message::new("a", &[b'x'; 300], PayloadKind::Text, stamp));
        sink.flush();
        let batch = rx[0].try_recv().expect("one batch");
        assert_eq!(batch.messages, 3);
        let mut frames = Vec::new();
        assert_eq!(encode_raw_frames(&batch, &mut frames), 1, "the last seq");
        let mut want = Vec::new();
        encode_frame_into(&mut want, OpCode::Text, b"text");
        encode_frame_into(&mut want, OpCode::Binary, &[0, 255]);
        encode_frame_into(&mut want, OpCode::Text, &[b'x'; 300]);
        assert_eq!(frames, want);
    }

    #[test]
    fn envelope_streams_are_cut_into_bounded_chunks_of_whole_messages() {
        let limits = QueueLimits { batches: 64, bytes: 1 << 20, overflow: FeedOverflow::Backpressure };
        let (mut sink, rx, _) = setup(limits, 1);
        // 60 KiB of 1-byte payloads: their envelopes are ~50 times the raw bytes.
        for seq in 1..=20_000u64 {
            let stamp = crate::upstream::Stamp { seq, prev: seq - 1 };
            sink.publish(Message::new("t", b"\x01", PayloadKind::Text, stamp));
        }
        sink.flush();
        let (mut envelope, mut out, mut chunks) = (Vec::new(), Vec::new(), Vec::new());
        let mut firsts = Vec::new();
        while let Some(batch) = rx[0].try_recv() {
            encode_sse_events(&batch, 7, false, &mut envelope, &mut out, |buf, first| {
                chunks.push(std::mem::take(buf));
                firsts.push(first);
            });
        }
        assert!(chunks.len() > 10, "{} chunks", chunks.len());
        let mut events = 0;
        for (c, &first) in chunks.iter().zip(&firsts) {
            // Each chunk is tagged with the seq of its first event.
            assert_eq!(first, events as u64 + 1);
            assert!(c.len() <= max_envelope_chunk(64 * 1024), "{}", c.len());
            assert!(c.ends_with(b"\n\n"), "a chunk ends with a whole event");
            events += c.windows(4).filter(|w| w == b"id: ").count();
        }
        assert_eq!(events, 20_000);
    }

    #[test]
    fn backpressure_stops_at_the_byte_limit_and_loses_nothing() {
        let limits = QueueLimits { batches: 64, bytes: 10_000, overflow: FeedOverflow::Backpressure };
        let (mut sink, rx, stats) = setup(limits, 2);
        let mut sent = 0;
        while sink.ready() {
            publish_batch(&mut sink, 1000);
            sent += 1;
        }
        assert_eq!(sent, 10, "1,023-byte records: the 10th passes 10,000 bytes");
        assert!(stats[1].feed_queue_bytes.load(Relaxed) >= 10_000);
        // One loop catching up is not enough: the other still has no room.
        while rx[0].try_recv().is_some() {}
        assert_eq!(stats[0].feed_queue_bytes.load(Relaxed), 0);
        assert!(!sink.ready());
        let mut taken = 0;
        while rx[1].try_recv().is_some() {
            taken += 1;
        }
        assert_eq!(taken, 10);
        assert!(sink.ready());
        assert_eq!(stats[0].feed_batches_dropped.load(Relaxed) + stats[1].feed_batches_dropped.load(Relaxed), 0);
    }

    #[test]
    fn backpressure_keeps_room_for_one_read_in_batches() {
        let limits = QueueLimits { batches: 8, bytes: 1 << 30, overflow: FeedOverflow::Backpressure };
        let (mut sink, _rx, stats) = setup(limits, 1);
        while sink.ready() {
            publish_batch(&mut sink, 10);
        }
        assert_eq!(stats[0].feed_queue_batches.load(Relaxed), 8 - READ_MARGIN_BATCHES + 1);
    }

    #[test]
    fn drop_policy_drops_for_the_full_loop_only() {
        let limits = QueueLimits { batches: 64, bytes: 3000, overflow: FeedOverflow::Drop };
        let (mut sink, rx, stats) = setup(limits, 2);
        for _ in 0..5 {
            assert!(sink.ready(), "drop never pauses the feed");
            publish_batch(&mut sink, 1000);
            while rx[0].try_recv().is_some() {}
        }
        assert_eq!(stats[0].feed_batches_dropped.load(Relaxed), 0);
        assert_eq!(stats[1].feed_batches_dropped.load(Relaxed), 2, "3 batches fit, then 2 dropped");
        assert_eq!(stats[1].feed_queue_batches.load(Relaxed), 3);
    }

    #[test]
    fn a_loop_that_ended_does_not_hold_the_feed_back() {
        let limits = QueueLimits { batches: 64, bytes: 2000, overflow: FeedOverflow::Backpressure };
        let (mut sink, mut rx, stats) = setup(limits, 2);
        publish_batch(&mut sink, 1500);
        publish_batch(&mut sink, 1500);
        assert!(!sink.ready());
        drop(rx.pop()); // loop 1 ends with its queue full
        while rx[0].try_recv().is_some() {}
        assert!(sink.ready());
        assert_eq!(stats[1].feed_queue_bytes.load(Relaxed), 0);
        publish_batch(&mut sink, 1500); // its send fails quietly and is not accounted
        assert_eq!(stats[1].feed_queue_bytes.load(Relaxed), 0);
    }
}
