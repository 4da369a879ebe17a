//! The client protocol, sans-IO: what clients send (control messages) and what they receive (messages in their
//! format, replies, notices), as pure code over bytes and strings. One position format and one set of
//! encodings for every transport (WebSocket, SSE, long-poll; later STOMP): `docs/client-protocol.md`.
//!
//! Files: `position` (`{epoch, seq}` and its text form), `pattern` (topic subscriptions, prefix patterns),
//! `format` (the formats and their subprotocol names), `control` (parsing control messages), `encode` (messages
//! in each format, replies and notices), `sse` (Server-Sent Events framing), `query` (request query parameters).
//!
//! Nothing here knows sockets, threads, clocks or the fan-out engine.

pub mod control;
pub mod encode;
pub mod format;
pub mod pattern;
pub mod poll;
pub mod position;
pub mod query;
pub mod sse;

pub use format::Format;
pub use pattern::Pattern;
pub use position::Position;
