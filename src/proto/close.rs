//! Close frames (RFC 6455 §5.5.1, §7.4): which status codes are valid, parsing a received close
//! payload, and encoding the close frame we send.

use crate::proto::error::ProtocolError;
use crate::proto::frame::{encode_header, OpCode, MAX_HEADER_LEN};
use crate::proto::mask::apply_mask;

/// Largest payload of any control frame (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Largest close reason that fits beside the 2-byte status code.
pub const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// Named status codes (§7.4.1).
pub struct CloseCode;

impl CloseCode {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Reserved: "no status code present". Never sent on the wire.
    pub const NO_STATUS: u16 = 1005;
    /// Reserved: "closed abnormally". Never sent on the wire.
    pub const ABNORMAL: u16 = 1006;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const MANDATORY_EXTENSION: u16 = 1010;
    pub const INTERNAL_ERROR: u16 = 1011;
    /// Reserved: TLS handshake failure. Never sent on the wire.
    pub const TLS_HANDSHAKE: u16 = 1015;
}

/// Whether `code` may appear in a close frame received from the peer (§7.4):
/// 1000-1003, 1007-1014 (1012-1014 are IANA-registered since the RFC), 3000-4999.
/// Everything else (< 1000, 1004, 1005, 1006, 1015, 1016-2999, ≥ 5000) is a protocol error.
pub fn is_valid_received_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parse a received close payload: empty = no status code; 1 byte = error; otherwise a big-endian
/// status code that must be valid ([`is_valid_received_code`]) followed by a UTF-8 reason.
pub fn parse_close_payload(payload: &[u8]) -> Result<(Option<u16>, &str), ProtocolError> {
    match payload {
        [] => Ok((None, "")),
        [_] => Err(ProtocolError::InvalidClosePayloadLength),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_received_code(code) {
                return Err(ProtocolError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidCloseReasonUtf8)?;
            Ok((Some(code), reason))
        }
    }
}

/// `reason` cut to at most [`MAX_CLOSE_REASON`] bytes, at a char boundary.
pub fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= MAX_CLOSE_REASON {
        return reason;
    }
    let mut end = MAX_CLOSE_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Append a close payload: the status code, then `reason` truncated at a char boundary so the
/// payload fits in 125 bytes.
pub fn encode_close_payload(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(truncate_reason(reason).as_bytes());
}

/// Append a complete close frame to `out`: with `code`, the code plus `reason` (truncated to fit);
/// with no code, an empty close (the reason is ignored, §5.5.1 allows a reason only after a code).
/// `mask` is `None` for the server role, `Some(key)` for the client role.
///
/// To reply to a received close, echo its code (`Event::Close { code, .. }`). `code` must be one
/// an endpoint may send: not 1005, 1006 or 1015 (checked in debug builds).
pub fn encode_close_frame_into(out: &mut Vec<u8>, code: Option<u16>, reason: &str, mask: Option<[u8; 4]>) {
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    let len = match code {
        None => 0,
        Some(code) => {
            debug_assert!(
                !matches!(code, CloseCode::NO_STATUS | CloseCode::ABNORMAL | CloseCode::TLS_HANDSHAKE),
                "close code {code} must not be sent"
            );
            let reason = truncate_reason(reason).as_bytes();
            payload[..2].copy_from_slice(&code.to_be_bytes());
            payload[2..2 + reason.len()].copy_from_slice(reason);
            2 + reason.len()
        }
    };
    let mut header = [0u8; MAX_HEADER_LEN];
    let header_len = encode_header(&mut header, true, OpCode::Close, mask, len as u64);
    out.extend_from_slice(&header[..header_len]);
    let start = out.len();
    out.extend_from_slice(&payload[..len]);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_code_ranges() {
        let valid = [
            1000..=1003,
            1007..=1014,
            3000..=4999, // registered + private use
        ];
        for code in 0..=u16::MAX {
            let expected = valid.iter().any(|r| r.contains(&code));
            assert_eq!(is_valid_received_code(code), expected, "code {code}");
        }
        for invalid in [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535] {
            assert!(!is_valid_received_code(invalid), "{invalid}");
        }
        for ok in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999] {
            assert!(is_valid_received_code(ok), "{ok}");
        }
    }

    #[test]
    fn parse_payloads() {
        assert_eq!(parse_close_payload(&[]), Ok((None, "")));
        assert_eq!(parse_close_payload(&[0x03]), Err(ProtocolError::InvalidClosePayloadLength));
        assert_eq!(parse_close_payload(&[0x03, 0xE8]), Ok((Some(1000), "")));
        assert_eq!(parse_close_payload(b"\x03\xe8bye \xc3\xa9"), Ok((Some(1000), "bye é")));
        assert_eq!(parse_close_payload(&[0x03, 0xED]), Err(ProtocolError::InvalidCloseCode(1005)));
        assert_eq!(
            parse_close_payload(b"\x03\xe8\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"),
            Err(ProtocolError::InvalidCloseReasonUtf8)
        );
        // An invalid code is reported before an invalid reason.
        assert_eq!(parse_close_payload(b"\x00\x00\xff"), Err(ProtocolError::InvalidCloseCode(0)));
    }

    #[test]
    fn reason_truncated_at_char_boundary() {
        let long = "é".repeat(100); // 200 bytes, 2 bytes per char
        let t = truncate_reason(&long);
        assert_eq!(t.len(), 122);
        let mut out = Vec::new();
        encode_close_payload(&mut out, 1000, &long);
        assert_eq!(out.len(), 124);
        assert!(out.len() <= MAX_CONTROL_PAYLOAD);
        assert_eq!(parse_close_payload(&out), Ok((Some(1000), t)));
        let ascii = "a".repeat(200);
        assert_eq!(truncate_reason(&ascii).len(), 123);
    }

    #[test]
    fn close_frames() {
        let mut out = Vec::new();
        encode_close_frame_into(&mut out, None, "ignored", None);
        assert_eq!(out, [0x88, 0x00]);
        out.clear();
        encode_close_frame_into(&mut out, Some(1000), "ok", None);
        assert_eq!(out, [0x88, 0x04, 0x03, 0xE8, b'o', b'k']);
        out.clear();
        let key = [1, 2, 3, 4];
        encode_close_frame_into(&mut out, Some(1001), "", Some(key));
        assert_eq!(&out[..6], &[0x88, 0x82, 1, 2, 3, 4]);
        let mut payload = out[6..].to_vec();
        apply_mask(&mut payload, key);
        assert_eq!(payload, 1001u16.to_be_bytes());
        out.clear();
        encode_close_frame_into(&mut out, Some(4000), &"x".repeat(300), None);
        assert_eq!(out[1] as usize, MAX_CONTROL_PAYLOAD);
        assert_eq!(out.len(), 2 + MAX_CONTROL_PAYLOAD);
    }
}
