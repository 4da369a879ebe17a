//! The hand-off from the feed thread to the loop threads: each message is encoded into a WebSocket frame once,
//! frames are gathered into a batch (one allocation per feed read, not per message), and the batch crosses to
//! each loop thread once through a bounded queue plus one wake-up.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::stats::ShardStats;
use crate::proto::frame::{encode_frame_into, OpCode};
use crate::reactor::Waker;
use crate::upstream::{Message, Sink};

/// Complete frames, back to back; shared by every loop thread and every subscriber.
pub struct Batch {
    pub frames: Arc<[u8]>,
    pub messages: u32,
}

/// A batch is cut when it reaches this size, so one batch never delays the first message for long.
const BATCH_MAX_BYTES: usize = 64 * 1024;

/// The consumer side, owned by one loop thread.
pub type FeedReceiver = Receiver<Batch>;

/// The sender to one loop thread.
pub struct ShardQueue {
    pub tx: SyncSender<Batch>,
    pub waker: Arc<Waker>,
}

/// Bounded queue (`std::sync::mpsc::sync_channel`: a lock-free array channel) of `capacity` batches.
pub fn queue(capacity: usize, waker: Arc<Waker>) -> (ShardQueue, FeedReceiver) {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
    (ShardQueue { tx, waker }, rx)
}

/// The feed thread's [`Sink`]: encodes each message once and broadcasts batches to every loop thread.
///
/// Overflow policy: when a loop thread's queue is full, that batch is dropped for that thread only, counted in
/// its `feed_batches_dropped` and logged (at most once a second); the feed reader never blocks.
pub struct BroadcastSink {
    batch: Vec<u8>,
    messages: u32,
    queues: Vec<ShardQueue>,
    stats: Arc<[ShardStats]>,
    last_drop_log: Option<Instant>,
}

impl BroadcastSink {
    pub fn new(queues: Vec<ShardQueue>, stats: Arc<[ShardStats]>) -> Self {
        Self { batch: Vec::with_capacity(BATCH_MAX_BYTES), messages: 0, queues, stats, last_drop_log: None }
    }

    fn note_drop(&mut self, shard: usize) {
        ShardStats::add(&self.stats[shard].feed_batches_dropped, 1);
        let now = Instant::now();
        if self.last_drop_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            self.last_drop_log = Some(now);
            tracing::warn!(
                shard,
                dropped_total = self.stats[shard].feed_batches_dropped.load(std::sync::atomic::Ordering::Relaxed),
                "loop thread's feed queue is full: batch dropped for its clients (thread overloaded?)"
            );
        }
    }
}

impl Sink for BroadcastSink {
    fn publish(&mut self, msg: Message<'_>) {
        encode_frame_into(&mut self.batch, OpCode::Text, msg.payload);
        self.messages += 1;
        if self.batch.len() >= BATCH_MAX_BYTES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let frames: Arc<[u8]> = Arc::from(&self.batch[..]);
        let messages = self.messages;
        self.batch.clear();
        self.messages = 0;
        for shard in 0..self.queues.len() {
            let q = &self.queues[shard];
            match q.tx.try_send(Batch { frames: frames.clone(), messages }) {
                Ok(()) => {
                    if let Err(e) = q.waker.wake() {
                        tracing::warn!(shard, error = %e, "could not wake loop thread");
                    }
                }
                Err(TrySendError::Full(_)) => self.note_drop(shard),
                // The loop thread has exited (shutdown): nothing to deliver to.
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }
}
