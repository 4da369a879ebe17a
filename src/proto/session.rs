//! Message-level state machine for one WebSocket connection (either role).
//!
//! [`Session::handle_bytes`] decodes at most one frame from the caller's buffer and returns at most
//! one [`Event`]. The session owns no I/O buffer: unfragmented messages and control frames are
//! returned as slices of the caller's buffer (unmasked in place); only fragmented messages are
//! copied, into a reassembly buffer that exists only while such a message is in progress.
//!
//! What the caller still does (this module never writes anything):
//! - answer `Ping` with `encode_frame_into(out, OpCode::Pong, payload)`;
//! - answer `Close` with [`encode_close_frame_into`] (echo the code), then send nothing but that
//!   close: "nothing after a close" is enforced by the caller, not here;
//! - on `Err(e)`, send a close with `e.close_code()` and `e.to_string()` as reason, then stop
//!   reading; the session must not be fed again (it will not panic, but its answers are meaningless).

use crate::proto::close::parse_close_payload;
use crate::proto::error::ProtocolError;
use crate::proto::frame::{
    check_second_byte, header_len_from_second_byte, parse_first_byte, parse_rest, OpCode, MAX_HEADER_LEN,
};
use crate::proto::mask::apply_mask;
use crate::proto::utf8::Utf8Validator;

pub use crate::proto::close::encode_close_frame_into;

/// Which end of the connection this session is. Decides which masking rule applies to input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Receives client frames: they must be masked.
    Server,
    /// Receives server frames: they must not be masked.
    Client,
}

/// Size limits applied to input, passed on every call (so they need not be stored per connection).
///
/// Defaults: 64 KiB per frame and per message. A fan-out gateway receives only small control
/// messages from its clients, and a zero-copy frame must fit in the caller's read buffer, so the
/// default keeps both the read buffer and the reassembly buffer per connection at ≤ 64 KiB.
/// 64 KiB is also enough for Autobahn cases 1-7 and 10; case 9 needs 16 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload a single frame may announce (checked from the header, before the payload
    /// arrives). The caller's read buffer must be able to hold `MAX_HEADER_LEN + max_frame_bytes`.
    pub max_frame_bytes: u64,
    /// Largest total payload of one message (all fragments).
    pub max_message_bytes: u64,
}

impl Limits {
    pub const DEFAULT: Limits = Limits { max_frame_bytes: 64 * 1024, max_message_bytes: 64 * 1024 };

    /// Read buffer size the caller needs so that any frame within the limits fits whole.
    pub fn max_frame_wire_bytes(&self) -> u64 {
        self.max_frame_bytes.saturating_add(MAX_HEADER_LEN as u64)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Data message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Text,
    Binary,
}

/// What one decoded frame means to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete message; for `Text`, `payload` is valid UTF-8.
    Message { kind: MessageKind, payload: &'a [u8] },
    /// A ping (possibly between fragments of a message); answer with a pong carrying `payload`.
    Ping(&'a [u8]),
    /// An (unsolicited or answering) pong.
    Pong(&'a [u8]),
    /// The peer's valid close frame; `code` is `None` for an empty close payload.
    Close { code: Option<u16>, reason: &'a str },
}

/// Per-connection protocol state: 32 bytes, no heap memory unless a fragmented message is being
/// reassembled.
#[derive(Debug)]
pub struct Session {
    /// Reassembly buffer for a fragmented message.
    /// INVARIANT: has zero capacity unless `fragment` is `Some` or `delivered` is set.
    reassembly: Vec<u8>,
    /// UTF-8 state of the fragmented text message in progress.
    /// INVARIANT: complete (nothing carried) unless `fragment == Some(Text)`.
    utf8: Utf8Validator,
    role: Role,
    /// Kind of the fragmented message in progress, if any.
    fragment: Option<MessageKind>,
    close_received: bool,
    /// The previous call returned a message from `reassembly`; release it on the next call.
    delivered: bool,
}

const _: () = assert!(std::mem::size_of::<Session>() <= 32);

impl Session {
    pub fn new(role: Role) -> Self {
        Session {
            reassembly: Vec::new(),
            utf8: Utf8Validator::new(),
            role,
            fragment: None,
            close_received: false,
            delivered: false,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// A valid close frame has been received (and returned as `Event::Close`).
    pub fn close_received(&self) -> bool {
        self.close_received
    }

    /// A fragmented data message has started and its final fragment has not arrived yet.
    pub fn in_fragmented_message(&self) -> bool {
        self.fragment.is_some()
    }

    /// Heap bytes held by this session (the reassembly buffer's capacity); 0 when idle.
    pub fn heap_bytes(&self) -> usize {
        self.reassembly.capacity()
    }

    /// Decode at most one frame from the start of `buf`.
    ///
    /// Returns `(consumed, event)`:
    /// - `(0, None)`: `buf` holds no complete frame yet (or is empty). Keep the bytes, append more,
    ///   call again. Header rules and size limits are checked as soon as the header bytes they need
    ///   are present, so an oversized frame fails before its payload arrives.
    /// - `(n, None)`, `n > 0`: a non-final fragment was consumed; call again with `buf[n..]`.
    /// - `(n, Some(event))`: one frame consumed, one event.
    ///
    /// The caller loops while `n > 0`, dropping `n` bytes each time. Masked payloads are unmasked
    /// in place, but only once the whole frame is present, so re-calling with the same incomplete
    /// bytes is safe. Events borrow `buf` (unfragmented messages, control frames) or the session's
    /// reassembly buffer (fragmented messages), which is released on the next call.
    #[must_use = "the consumed count and event must be handled"]
    pub fn handle_bytes<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        limits: &Limits,
    ) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        if self.delivered {
            self.reassembly = Vec::new();
            self.delivered = false;
        }
        // Stage 1: first byte.
        let Some(&b0) = buf.first() else {
            return Ok((0, None));
        };
        if self.close_received {
            return Err(ProtocolError::FrameAfterClose);
        }
        let rsv = (b0 >> 4) & 0x7;
        if rsv != 0 {
            return Err(ProtocolError::ReservedBits(rsv));
        }
        let (fin, rsv, opcode) = parse_first_byte(b0)?;
        match opcode {
            OpCode::Continuation if self.fragment.is_none() => return Err(ProtocolError::ContinuationWithoutStart),
            OpCode::Text | OpCode::Binary if self.fragment.is_some() => {
                return Err(ProtocolError::DataFrameInsideFragmentedMessage)
            }
            _ => {}
        }
        // Stage 2: second byte.
        let Some(&b1) = buf.get(1) else {
            return Ok((0, None));
        };
        match (self.role, b1 & 0x80 != 0) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedClientFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedServerFrame),
            _ => {}
        }
        check_second_byte(opcode, b1)?;
        // Stage 3: whole header.
        let header_len = header_len_from_second_byte(b1);
        if buf.len() < header_len {
            return Ok((0, None));
        }
        let header = parse_rest(buf, fin, rsv, opcode)?;
        let len = header.payload_len;
        if len > limits.max_frame_bytes {
            return Err(ProtocolError::FrameTooLarge { len, max: limits.max_frame_bytes });
        }
        if !opcode.is_control() {
            let message_len = (self.reassembly.len() as u64).saturating_add(len);
            if message_len > limits.max_message_bytes {
                return Err(ProtocolError::MessageTooLarge { len: message_len, max: limits.max_message_bytes });
            }
        }
        // Stage 4: whole frame.
        let Some(frame_len) = usize::try_from(len).ok().and_then(|l| l.checked_add(header_len)) else {
            return Err(ProtocolError::FrameTooLarge { len, max: limits.max_frame_bytes });
        };
        if buf.len() < frame_len {
            return Ok((0, None));
        }
        let payload = &mut buf[header_len..frame_len];
        if let Some(key) = header.mask {
            apply_mask(payload, key);
        }
        let payload: &'a [u8] = payload;
        let event = match opcode {
            OpCode::Ping => Some(Event::Ping(payload)),
            OpCode::Pong => Some(Event::Pong(payload)),
            OpCode::Close => {
                let (code, reason) = parse_close_payload(payload)?;
                self.close_received = true;
                Some(Event::Close { code, reason })
            }
            OpCode::Text | OpCode::Binary => {
                let kind = if opcode == OpCode::Text { MessageKind::Text } else { MessageKind::Binary };
                if fin {
                    if kind == MessageKind::Text && std::str::from_utf8(payload).is_err() {
                        return Err(ProtocolError::InvalidUtf8);
                    }
                    Some(Event::Message { kind, payload })
                } else {
                    if kind == MessageKind::Text {
                        self.utf8.reset();
                        self.utf8.feed(payload)?;
                    }
                    self.fragment = Some(kind);
                    self.append(payload, limits);
                    None
                }
            }
            OpCode::Continuation => {
                // Checked in stage 1: a fragmented message is in progress.
                let kind = self.fragment.unwrap_or(MessageKind::Binary);
                if kind == MessageKind::Text {
                    self.utf8.feed(payload)?;
                    if fin {
                        self.utf8.finish()?;
                    }
                }
                self.append(payload, limits);
                if fin {
                    self.fragment = None;
                    self.delivered = true;
                    Some(Event::Message { kind, payload: &self.reassembly })
                } else {
                    None
                }
            }
        };
        Ok((frame_len, event))
    }

    /// Append a fragment to the reassembly buffer, growing it geometrically but never beyond
    /// `max_message_bytes` of capacity (the caller has checked the total against that limit).
    fn append(&mut self, data: &[u8], limits: &Limits) {
        let needed = self.reassembly.len() + data.len();
        if needed > self.reassembly.capacity() {
            let max = usize::try_from(limits.max_message_bytes).unwrap_or(usize::MAX);
            let target = needed.max(self.reassembly.capacity().saturating_mul(2).min(max));
            self.reassembly.reserve_exact(target - self.reassembly.len());
        }
        self.reassembly.extend_from_slice(data);
    }
}

#[cfg(test)]
mod tests;
