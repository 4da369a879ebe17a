//! A connection's topic subscriptions (`docs/design-topics.md`): one cursor per subscribed topic into that
//! topic's log in the connection's encoding, the patterns as the client wrote them, and what its send in flight
//! carried. Boxed in [`super::Conn`]: a connection that reads the whole feed (today's clients) has none.

use crate::client::Pattern;
use crate::fanout::{Cursor, Encoding, TopicId};

/// A part of a send that is not a topic's: the connection's pinned chunk.
pub const PINNED: TopicId = TopicId::MAX;

/// One subscribed topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sub {
    pub topic: TopicId,
    /// Next byte of the topic's log this connection will receive.
    pub cursor: Cursor,
    /// Index in the topic log's subscriber list.
    pub index: u32,
    /// How many of the connection's patterns name this topic (it is dropped at 0).
    pub refs: u32,
}

/// See the module docs.
///
/// INVARIANT: each `Sub` is in its topic log's subscriber list (encoding `encoding`) at `index`, and no topic
/// appears twice in `subs`.
/// INVARIANT: only `partial` may stand inside a frame (a short write stopped there); every other cursor stands
/// between frames, so private bytes may go once `partial`'s chunk is finished.
#[derive(Debug)]
pub struct TopicSubs {
    pub encoding: Encoding,
    pub subs: Vec<Sub>,
    /// Subscriptions as the client wrote them: exact topics and prefix patterns.
    pub patterns: Vec<Pattern>,
    pub partial: Option<TopicId>,
    /// The parts of the send in flight (io_uring), in order, as (source, bytes): the completion moves the
    /// cursors by these, not by a new plan (the logs have grown since).
    pub sent: Vec<(TopicId, u32)>,
    /// Whether `sent[0]` went before the private bytes (the rest of a chunk) rather than after them.
    pub sent_head: bool,
    /// The loop's pull generation up to which this connection has been offered everything.
    pub offered_gen: u64,
    /// Scratch for merging the subscriptions' pending messages in seq order (kept to save the allocation).
    pub merge: Vec<(u64, u32, u32)>,
}

impl TopicSubs {
    pub fn new(encoding: Encoding) -> Self {
        TopicSubs {
            encoding,
            subs: Vec::new(),
            patterns: Vec::new(),
            partial: None,
            sent: Vec::new(),
            sent_head: false,
            offered_gen: 0,
            merge: Vec::new(),
        }
    }

    pub fn find(&self, topic: TopicId) -> Option<usize> {
        self.subs.iter().position(|s| s.topic == topic)
    }

    pub fn find_mut(&mut self, topic: TopicId) -> Option<&mut Sub> {
        self.subs.iter_mut().find(|s| s.topic == topic)
    }

    pub fn has_prefix_patterns(&self) -> bool {
        self.patterns.iter().any(|p| matches!(p, Pattern::Prefix(_)))
    }
}
