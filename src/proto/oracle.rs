//! Test and fuzz helpers (compiled only under `cfg(test)` or `cfg(fuzzing)`): drive the sans-IO
//! API the way a real caller does, whole or in chunks, and record owned results to compare.
//!
//! The chunked drivers follow the documented caller contract exactly: append the new bytes to
//! what was kept, call until `(0, None)`, drop what was consumed.

use crate::proto::error::ProtocolError;
use crate::proto::handshake::{parse_request, HandshakeConfig, Parsed, Rejection};
use crate::proto::session::{Event, Limits, MessageKind, Role, Session};

/// An owned copy of an [`Event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedEvent {
    Message(MessageKind, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

impl From<Event<'_>> for OwnedEvent {
    fn from(e: Event<'_>) -> Self {
        match e {
            Event::Message { kind, payload } => OwnedEvent::Message(kind, payload.to_vec()),
            Event::Ping(p) => OwnedEvent::Ping(p.to_vec()),
            Event::Pong(p) => OwnedEvent::Pong(p.to_vec()),
            Event::Close { code, reason } => OwnedEvent::Close(code, reason.to_owned()),
        }
    }
}

/// Everything observable after feeding a byte stream to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub events: Vec<OwnedEvent>,
    /// The error that ended decoding, if any.
    pub error: Option<ProtocolError>,
    /// Bytes consumed before the error or the end of input.
    pub consumed: usize,
    pub close_received: bool,
    pub in_fragmented_message: bool,
    /// Heap bytes the session still holds at the end (must be 0 when no message is in progress).
    pub heap_bytes: usize,
}

/// Feed `input` to a fresh session in one buffer.
pub fn decode_whole(role: Role, input: &[u8], limits: &Limits) -> Outcome {
    decode_chunked(role, input, &[usize::MAX], limits)
}

/// Feed `input` to a fresh session in chunks of the given sizes (cycled; 0 counts as 1).
pub fn decode_chunked(role: Role, input: &[u8], chunks: &[usize], limits: &Limits) -> Outcome {
    let mut session = Session::new(role);
    let mut pending: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    let mut error = None;
    let mut consumed = 0;
    let mut fed = 0;
    let mut sizes = chunks.iter().copied().cycle();
    'feed: while fed < input.len() {
        let size = sizes.next().unwrap_or(usize::MAX).max(1);
        let end = fed.saturating_add(size).min(input.len());
        pending.extend_from_slice(&input[fed..end]);
        fed = end;
        let mut start = 0;
        loop {
            match session.handle_bytes(&mut pending[start..], limits) {
                Ok((0, event)) => {
                    assert!(event.is_none(), "an event must consume bytes");
                    break;
                }
                Ok((n, event)) => {
                    if let Some(event) = event {
                        events.push(OwnedEvent::from(event));
                    }
                    start += n;
                    consumed += n;
                }
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
        pending.drain(..start);
    }
    if error.is_none() {
        // The caller contract: one more call on the kept bytes is harmless (and releases buffers).
        let r = session.handle_bytes(&mut pending, limits);
        assert!(matches!(r, Ok((0, None))), "kept bytes must stay incomplete");
    }
    Outcome {
        events,
        error,
        consumed,
        close_received: session.close_received(),
        in_fragmented_message: session.in_fragmented_message(),
        heap_bytes: session.heap_bytes(),
    }
}

/// Parse a request whose bytes arrive in chunks (cycled; 0 counts as 1): the first non-`Partial`
/// answer, or `Partial` once all input is seen.
pub fn parse_request_chunked(input: &[u8], chunks: &[usize], cfg: &HandshakeConfig) -> Result<Parsed, Rejection> {
    let mut seen = 0;
    let mut sizes = chunks.iter().copied().cycle();
    while seen < input.len() {
        let size = sizes.next().unwrap_or(usize::MAX).max(1);
        seen = seen.saturating_add(size).min(input.len());
        match parse_request(&input[..seen], cfg)? {
            Parsed::Partial => {}
            done => return Ok(done),
        }
    }
    Ok(Parsed::Partial)
}
