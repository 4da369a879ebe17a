//! [`ProtocolError`]: every way a peer can break RFC 6455 after the handshake.
//!
//! One variant per rule; [`ProtocolError::close_code`] gives the status code to fail the connection
//! with, and the `Display` text is short enough (≤ 123 bytes) to be sent as the close reason.
//! I/O errors never appear here: they belong to the I/O layer.

use crate::proto::close::CloseCode;

/// A violation of RFC 6455 (or of a configured limit) by the peer. The connection must be failed:
/// send a close frame with [`close_code`](Self::close_code) and the `Display` text as reason, then
/// stop reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// §5.1: a client MUST mask every frame it sends to the server.
    #[error("unmasked client frame")]
    UnmaskedClientFrame,
    /// §5.1: a server MUST NOT mask any frame it sends to the client.
    #[error("masked server frame")]
    MaskedServerFrame,
    /// §5.2: RSV1-3 MUST be 0 unless an extension defining them was negotiated (none is).
    /// Carries the three bits as `0b0RRR`.
    #[error("reserved bits set: {0:#05b}")]
    ReservedBits(u8),
    /// §5.2: opcodes 3-7 and 0xB-0xF are reserved.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// §5.5: control frames MUST have a payload of 125 bytes or less.
    #[error("control frame payload {0} > 125")]
    ControlFrameTooLong(u64),
    /// §5.5: control frames MUST NOT be fragmented (FIN must be set).
    #[error("fragmented control frame")]
    FragmentedControl,
    /// §5.4: a continuation frame arrived with no fragmented message in progress.
    #[error("continuation without a started message")]
    ContinuationWithoutStart,
    /// §5.4: a new Text/Binary frame arrived while a fragmented message was still in progress.
    #[error("new data frame inside a fragmented message")]
    DataFrameInsideFragmentedMessage,
    /// §5.2: the most significant bit of a 64-bit payload length MUST be 0.
    #[error("64-bit length with MSB set")]
    LengthMsbSet,
    /// A single frame announces more payload than `Limits::max_frame_bytes` (detected from the header).
    #[error("frame too large: {len} > {max}")]
    FrameTooLarge { len: u64, max: u64 },
    /// A message (all fragments so far plus the announced frame) exceeds `Limits::max_message_bytes`.
    #[error("message too large: {len} > {max}")]
    MessageTooLarge { len: u64, max: u64 },
    /// §5.6 / §8.1: a text message is not valid UTF-8 (detected as soon as a prefix cannot be valid).
    #[error("invalid UTF-8 in text message")]
    InvalidUtf8,
    /// §5.5.1: a close payload of exactly 1 byte (a status code needs 2).
    #[error("invalid close payload length")]
    InvalidClosePayloadLength,
    /// §7.4: the close status code is not one an endpoint may send (see `close::is_valid_received_code`).
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// §5.5.1: the close reason is not valid UTF-8.
    #[error("invalid UTF-8 in close reason")]
    InvalidCloseReasonUtf8,
    /// §5.5.1: after sending a close frame the peer MUST NOT send more data frames; we received bytes
    /// after its close frame.
    #[error("data after close frame")]
    FrameAfterClose,
}

impl ProtocolError {
    /// The status code to close the connection with (RFC 6455 §7.4.1):
    /// 1007 for invalid UTF-8, 1009 for size limits, 1002 for everything else.
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::InvalidCloseReasonUtf8 => CloseCode::INVALID_PAYLOAD,
            ProtocolError::FrameTooLarge { .. } | ProtocolError::MessageTooLarge { .. } => CloseCode::MESSAGE_TOO_BIG,
            ProtocolError::UnmaskedClientFrame
            | ProtocolError::MaskedServerFrame
            | ProtocolError::ReservedBits(_)
            | ProtocolError::ReservedOpcode(_)
            | ProtocolError::ControlFrameTooLong(_)
            | ProtocolError::FragmentedControl
            | ProtocolError::ContinuationWithoutStart
            | ProtocolError::DataFrameInsideFragmentedMessage
            | ProtocolError::LengthMsbSet
            | ProtocolError::InvalidClosePayloadLength
            | ProtocolError::InvalidCloseCode(_)
            | ProtocolError::FrameAfterClose => CloseCode::PROTOCOL_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_worst_case() -> Vec<ProtocolError> {
        vec![
            ProtocolError::UnmaskedClientFrame,
            ProtocolError::MaskedServerFrame,
            ProtocolError::ReservedBits(0b111),
            ProtocolError::ReservedOpcode(0xF),
            ProtocolError::ControlFrameTooLong(u64::MAX),
            ProtocolError::FragmentedControl,
            ProtocolError::ContinuationWithoutStart,
            ProtocolError::DataFrameInsideFragmentedMessage,
            ProtocolError::LengthMsbSet,
            ProtocolError::FrameTooLarge { len: u64::MAX, max: u64::MAX },
            ProtocolError::MessageTooLarge { len: u64::MAX, max: u64::MAX },
            ProtocolError::InvalidUtf8,
            ProtocolError::InvalidClosePayloadLength,
            ProtocolError::InvalidCloseCode(u16::MAX),
            ProtocolError::InvalidCloseReasonUtf8,
            ProtocolError::FrameAfterClose,
        ]
    }

    #[test]
    fn display_fits_in_a_close_reason() {
        for e in all_worst_case() {
            let s = e.to_string();
            assert!(s.len() <= 123, "{e:?} displays as {} bytes", s.len());
            assert!(!s.is_empty());
        }
    }

    #[test]
    fn close_codes() {
        for e in all_worst_case() {
            let expected = match e {
                ProtocolError::InvalidUtf8 | ProtocolError::InvalidCloseReasonUtf8 => 1007,
                ProtocolError::FrameTooLarge { .. } | ProtocolError::MessageTooLarge { .. } => 1009,
                _ => 1002,
            };
            assert_eq!(e.close_code(), expected, "{e:?}");
        }
    }
}
