//! One encoded stream of a loop thread: a log of frames in one encoding, the connections that read it, and how
//! far the last fan-out pass offered it. Today a loop has one stream per client format for the whole feed
//! (raw, JSON envelopes); topic streams come next (`docs/design-topics.md`).

use super::log::{Cursor, FrameLog};
use super::subscribers::Subscribers;

/// Index of a stream in its loop's table.
pub type StreamId = u8;

/// See the module docs.
#[derive(Debug, Default)]
pub struct Stream {
    pub log: FrameLog,
    pub subscribers: Subscribers,
    /// Stream position up to which every subscriber has been offered the log.
    /// INVARIANT (relied on by the trim): after a fan-out pass every open subscriber of this stream that is not
    /// in the loop's blocked list stands at or after it.
    pub fanned_out_to: Cursor,
    /// Scratch for the trim phase: the oldest position someone still needs.
    pub keep_from: Cursor,
}

impl Stream {
    /// Whether the log has bytes the last fan-out did not offer.
    pub fn has_news(&self) -> bool {
        self.log.head() != self.fanned_out_to
    }
}
