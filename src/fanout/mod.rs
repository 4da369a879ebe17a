//! Fan-out: broadcast frames shared by every subscriber of a loop thread, and the subscriber set.
//!
//! Frames are opaque bytes here: this module knows neither the WebSocket protocol nor sockets. A topic keeps
//! one [`FrameLog`] (the frames every subscriber will receive, encoded once) and the list of its subscribers;
//! each subscriber is a single stream position ([`Cursor`]) into that log, so a message costs no per-subscriber
//! copy, allocation or reference-count update. Topics (a later feature) are several of these per loop thread.

mod gather;
mod history;
mod lag_policy;
mod log;
mod pins;
mod retention;
mod stream;
mod subscribers;
mod topics;

pub use gather::{advance, plan, Plan, Trimmed, MAX_PARTS};
pub use history::{Entry, History, HistoryLimits, Resume};
pub use lag_policy::{decide, Backlog, Decision, LagLimits, LagPolicies, LagPolicy, LagRule, Relief, SubBacklog};
pub use log::{Cursor, FrameLog, Located, Pinned, Skip};
pub use pins::{OverBudget, Pins};
pub use retention::{Holder, Retention, Verdict};
pub use stream::{Stream, StreamId};
pub use subscribers::Subscribers;
pub use topics::{Encoding, Mark, TableFull, Topic, TopicId, TopicLimits, TopicLog, Topics, ENCODINGS};
