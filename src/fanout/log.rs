//! The broadcast log of one loop thread: a window over an append-only byte stream of complete frames.

use std::collections::VecDeque;
use std::sync::Arc;

/// A position in the broadcast stream, in bytes since the loop thread started.
pub type Cursor = u64;

/// Append-only stream of batches of complete frames, trimmed from the front once nobody needs them.
///
/// INVARIANT: `starts.len() == chunks.len() == tags.len()`, `starts` is strictly increasing, `starts[i] + chunks[i].len()
/// == starts[i + 1]`, and `head == starts.back() + chunks.back().len()` (or `head == tail` when empty).
/// Every chunk ends on a frame boundary, so a subscriber that has finished a chunk stands between frames.
#[derive(Debug, Default)]
pub struct FrameLog {
    chunks: VecDeque<Arc<[u8]>>,
    starts: VecDeque<Cursor>,
    /// Per chunk, a number its owner gave it ([`FrameLog::push_tagged`]): the whole-feed streams store the `seq`
    /// of the first message at or after the chunk's start, which tells a lagging subscriber's message backlog and
    /// the range a skip makes it miss. Same length as `chunks`.
    tags: VecDeque<u64>,
    tail: Cursor,
    head: Cursor,
}

/// One chunk kept apart from the log (its own reference, taken once per connection, not per message), so the
/// log can be trimmed past a connection that still has to finish a frame of it.
#[derive(Debug, Clone)]
pub struct Pinned {
    pub chunk: Arc<[u8]>,
    /// Stream position of the chunk's first byte.
    pub start: Cursor,
    /// Set when an open whole-feed connection skips ahead once this chunk is written (the slow-consumer policy
    /// `drop`, `fanout::lag_policy`).
    pub then_skip: Option<Skip>,
    /// Bytes of the chunk the connection still receives (the whole chunk, unless it only finishes the message
    /// it stands inside of and skips the rest: [`Pinned::cut_at`]).
    /// INVARIANT: `keep <= chunk.len()`, and `start + keep` is a frame boundary.
    keep: usize,
}

impl Pinned {
    /// Stream position just after what the connection receives of the chunk.
    pub fn end(&self) -> Cursor {
        self.start + self.keep as u64
    }

    /// The chunk's bytes from `cursor` on (empty once `cursor` is at or past its end).
    pub fn rest(&self, cursor: Cursor) -> &[u8] {
        let offset = cursor.saturating_sub(self.start).min(self.keep as u64) as usize;
        &self.chunk[offset..self.keep]
    }

    /// The connection receives the chunk only up to stream position `end` (a frame boundary within it): the end
    /// of the message it stands inside of, when the rest of the chunk is skipped.
    pub fn cut_at(&mut self, end: Cursor) {
        debug_assert!(end >= self.start && end <= self.start + self.chunk.len() as u64);
        self.keep = end.saturating_sub(self.start).min(self.chunk.len() as u64) as usize;
    }
}

/// Where a whole-feed connection that finishes a pinned chunk goes next: to `at` in its stream, having missed
/// the messages after `from_seq` (the chunk's last) and before `to_seq` (the first at `at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skip {
    pub from_seq: u64,
    pub at: Cursor,
    pub to_seq: u64,
}

/// Where a cursor falls in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Located {
    /// Inside chunk `index`, `offset` bytes in (`offset == 0`: at a frame boundary).
    At { index: usize, offset: usize },
    /// At the head: nothing pending.
    Head,
    /// Before the retained window: those bytes were trimmed.
    Trimmed,
}

impl FrameLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a batch of complete frames. Empty batches are ignored.
    pub fn push(&mut self, chunk: Arc<[u8]>) {
        self.push_tagged(chunk, 0);
    }

    /// Appends a batch of complete frames with a tag (see `tags`). Empty batches are ignored.
    pub fn push_tagged(&mut self, chunk: Arc<[u8]>, tag: u64) {
        if chunk.is_empty() {
            return;
        }
        self.tags.push_back(tag);
        self.starts.push_back(self.head);
        self.head += chunk.len() as u64;
        self.chunks.push_back(chunk);
    }

    /// Position just after the newest byte: where a new subscriber starts.
    pub fn head(&self) -> Cursor {
        self.head
    }

    /// Oldest retained position.
    pub fn tail(&self) -> Cursor {
        self.tail
    }

    /// Bytes held by the log.
    pub fn retained_bytes(&self) -> u64 {
        self.head - self.tail
    }

    pub fn chunk(&self, index: usize) -> &[u8] {
        &self.chunks[index]
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The tag chunk `index` was pushed with.
    pub fn tag(&self, index: usize) -> u64 {
        self.tags[index]
    }

    #[inline]
    pub fn locate(&self, cursor: Cursor) -> Located {
        if cursor >= self.head {
            return Located::Head;
        }
        if cursor < self.tail {
            return Located::Trimmed;
        }
        // Subscribers are nearly always in the newest chunks: look there before searching.
        let last = self.starts.len() - 1;
        let index = if cursor >= self.starts[last] { last } else { self.starts.partition_point(|&s| s <= cursor) - 1 };
        Located::At { index, offset: (cursor - self.starts[index]) as usize }
    }

    /// The chunk under `cursor` when `cursor` stands inside it (not at its start): what a connection that stops
    /// reading the log still needs to finish the frame it is in the middle of. `None` at a chunk boundary, at
    /// the head, or before the retained window.
    pub fn pin(&self, cursor: Cursor) -> Option<Pinned> {
        match self.locate(cursor) {
            Located::At { index, offset } if offset > 0 => {
                let chunk = self.chunks[index].clone();
                Some(Pinned { keep: chunk.len(), chunk, start: self.starts[index], then_skip: None })
            }
            _ => None,
        }
    }

    /// The `len` bytes at `at`, when they lie within one retained chunk (a frame always does).
    pub fn bytes_at(&self, at: Cursor, len: usize) -> Option<&[u8]> {
        match self.locate(at) {
            Located::At { index, offset } => self.chunks[index].get(offset..offset + len),
            _ => None,
        }
    }

    /// Drops every chunk that ends at or before `keep_from`.
    pub fn trim_to(&mut self, keep_from: Cursor) {
        while let Some(&start) = self.starts.front() {
            let end = start + self.chunks[0].len() as u64;
            if end > keep_from {
                break;
            }
            self.starts.pop_front();
            self.chunks.pop_front();
            self.tags.pop_front();
            self.tail = end;
        }
        if self.chunks.is_empty() {
            self.tail = self.head;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: usize) -> Arc<[u8]> {
        vec![7u8; n].into()
    }

    #[test]
    fn locate_and_trim() {
        let mut log = FrameLog::new();
        assert_eq!(log.locate(0), Located::Head);
        log.push(chunk(10));
        log.push(chunk(5));
        log.push_tagged(chunk(0), 9);
        assert_eq!(log.head(), 15);
        assert_eq!((log.tag(0), log.tag(1)), (0, 0), "an empty chunk is not kept, nor its tag");
        assert_eq!(log.chunk_count(), 2);
        assert_eq!(log.locate(0), Located::At { index: 0, offset: 0 });
        assert_eq!(log.locate(9), Located::At { index: 0, offset: 9 });
        assert_eq!(log.locate(10), Located::At { index: 1, offset: 0 });
        assert_eq!(log.locate(14), Located::At { index: 1, offset: 4 });
        assert_eq!(log.locate(15), Located::Head);
        log.trim_to(12);
        assert_eq!(log.tail(), 10);
        assert_eq!(log.locate(3), Located::Trimmed);
        assert_eq!(log.locate(12), Located::At { index: 0, offset: 2 });
        log.trim_to(15);
        assert_eq!(log.retained_bytes(), 0);
        assert_eq!(log.tail(), 15);
        log.push(chunk(4));
        assert_eq!(log.locate(15), Located::At { index: 0, offset: 0 });
    }

    #[test]
    fn a_pinned_chunk_outlives_the_trim() {
        let mut log = FrameLog::new();
        log.push(Arc::from(&b"abcd"[..]));
        log.push(Arc::from(&b"efgh"[..]));
        assert!(log.pin(0).is_none(), "at a chunk boundary nothing needs pinning");
        assert!(log.pin(4).is_none());
        assert!(log.pin(8).is_none(), "at the head");
        let pin = log.pin(6).expect("inside the second chunk");
        assert_eq!((pin.start, pin.end()), (4, 8));
        log.trim_to(8);
        assert_eq!(log.retained_bytes(), 0);
        assert_eq!(pin.rest(6), b"gh");
        assert_eq!(pin.rest(8), b"");
        let mut fresh = FrameLog::new();
        fresh.push(Arc::from(&b"abcd"[..]));
        let mut pin = fresh.pin(1).unwrap();
        pin.cut_at(3); // only the frame it stands in: "bc"
        assert_eq!((pin.rest(1), pin.end()), (&b"bc"[..], 3));
        assert_eq!(pin.rest(3), b"");
        assert!(log.pin(2).is_none(), "trimmed positions cannot be pinned");
    }

    #[test]
    fn locate_searches_older_chunks() {
        let mut log = FrameLog::new();
        for n in 1..=50 {
            log.push(chunk(n));
        }
        let mut pos = 0u64;
        for n in 1..=50usize {
            assert_eq!(log.locate(pos), Located::At { index: n - 1, offset: 0 });
            assert_eq!(log.locate(pos + n as u64 - 1), Located::At { index: n - 1, offset: n - 1 });
            pos += n as u64;
        }
    }
}
