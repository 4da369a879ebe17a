//! Frame header codec (RFC 6455 §5.2) and frame encoders.
//!
//! Decoding is staged by how many header bytes it needs (first byte, second byte, full header) so a
//! caller that sees bytes one at a time reports the same first error as one that sees them all at
//! once. This module checks only rules that hold for every endpoint (opcode, control-frame shape,
//! 64-bit length MSB); role (masking), RSV and message-sequence rules live in `session`.
//!
//! Non-minimal length encodings (e.g. a 5-byte payload announced with the 16-bit form) are
//! **tolerated** on receive: RFC 6455 says the minimal encoding MUST be used, but rejecting it buys
//! nothing and breaks sloppy peers; size limits apply to the announced length either way. Encoders
//! here always emit the minimal form.

use crate::proto::error::ProtocolError;
use crate::proto::mask::apply_mask;

/// Longest possible header: 2 + 8 (64-bit length) + 4 (mask key).
pub const MAX_HEADER_LEN: usize = 14;

/// Frame opcodes defined by RFC 6455 (§5.2). Reserved values have no variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    Continuation = 0,
    Text = 1,
    Binary = 2,
    Close = 8,
    Ping = 9,
    Pong = 10,
}

impl OpCode {
    /// The opcode for a 4-bit value, or `None` if it is reserved (3-7, 0xB-0xF).
    pub fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0 => OpCode::Continuation,
            1 => OpCode::Text,
            2 => OpCode::Binary,
            8 => OpCode::Close,
            9 => OpCode::Ping,
            10 => OpCode::Pong,
            _ => return None,
        })
    }

    /// Close, Ping and Pong (opcodes with the high bit set).
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1-3 as `0b0RRR` (not validated here).
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// INVARIANT: 2..=14, and equal to 2 + length-extension bytes + (4 if `mask` is `Some`).
    pub header_len: u8,
}

/// Stage 1, first byte: FIN, RSV, opcode. Rejects reserved opcodes and control frames without FIN.
pub(crate) fn parse_first_byte(b0: u8) -> Result<(bool, u8, OpCode), ProtocolError> {
    let fin = b0 & 0x80 != 0;
    let rsv = (b0 >> 4) & 0x7;
    let raw = b0 & 0x0F;
    let opcode = OpCode::from_u8(raw).ok_or(ProtocolError::ReservedOpcode(raw))?;
    if opcode.is_control() && !fin {
        return Err(ProtocolError::FragmentedControl);
    }
    Ok((fin, rsv, opcode))
}

/// Stage 2, second byte: control frames must announce ≤ 125 bytes (so only the 7-bit form).
pub(crate) fn check_second_byte(opcode: OpCode, b1: u8) -> Result<(), ProtocolError> {
    let len7 = b1 & 0x7F;
    if opcode.is_control() && len7 > 125 {
        // The exact length needs the extension bytes; 126 stands for "more than 125".
        return Err(ProtocolError::ControlFrameTooLong(u64::from(len7)));
    }
    Ok(())
}

/// Header length implied by the second byte.
#[inline]
pub(crate) fn header_len_from_second_byte(b1: u8) -> usize {
    let ext = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

/// Stage 3, full header present (`buf.len() >= header_len_from_second_byte(buf[1])`): length and mask.
#[inline]
pub(crate) fn parse_rest(buf: &[u8], fin: bool, rsv: u8, opcode: OpCode) -> Result<FrameHeader, ProtocolError> {
    let b1 = buf[1];
    let (payload_len, mut pos) = match b1 & 0x7F {
        126 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(ProtocolError::LengthMsbSet);
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if b1 & 0x80 != 0 {
        let key = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(key)
    } else {
        None
    };
    Ok(FrameHeader { fin, rsv, opcode, mask, payload_len, header_len: pos as u8 })
}

impl FrameHeader {
    /// Decode a header from the start of `buf`: `Ok(None)` if more bytes are needed. Checks the
    /// endpoint-independent rules only (reserved opcode, control frame FIN and length, length MSB),
    /// as soon as the bytes they need are present.
    pub fn parse(buf: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
        let Some(&b0) = buf.first() else {
            return Ok(None);
        };
        let (fin, rsv, opcode) = parse_first_byte(b0)?;
        let Some(&b1) = buf.get(1) else {
            return Ok(None);
        };
        check_second_byte(opcode, b1)?;
        if buf.len() < header_len_from_second_byte(b1) {
            return Ok(None);
        }
        parse_rest(buf, fin, rsv, opcode).map(Some)
    }
}

/// Write a header (RSV bits zero, minimal length encoding) into `out`; returns its length.
/// `payload_len` must be < 2^63.
pub fn encode_header(
    out: &mut [u8; MAX_HEADER_LEN],
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload_len: u64,
) -> usize {
    debug_assert!(payload_len >> 63 == 0, "payload length MSB must be 0");
    out[0] = (u8::from(fin) << 7) | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut pos = if payload_len < 126 {
        out[1] = mask_bit | payload_len as u8;
        2
    } else if payload_len <= u64::from(u16::MAX) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&payload_len.to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[pos..pos + 4].copy_from_slice(&key);
        pos += 4;
    }
    pos
}

/// Append one frame with explicit FIN and optional mask (masks the appended payload copy).
/// The building block of the other encoders; also useful for fragmenting.
pub fn encode_raw_frame_into(out: &mut Vec<u8>, fin: bool, opcode: OpCode, mask: Option<[u8; 4]>, payload: &[u8]) {
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut header, fin, opcode, mask, payload.len() as u64);
    out.reserve(n + payload.len());
    out.extend_from_slice(&header[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key);
    }
}

/// Append one complete, unmasked (server) frame with FIN set. Encode a broadcast message once
/// with this and share the bytes among subscribers.
pub fn encode_frame_into(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    encode_raw_frame_into(out, true, opcode, None, payload);
}

/// Append one complete, masked (client) frame with FIN set.
pub fn encode_masked_frame_into(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], key: [u8; 4]) {
    encode_raw_frame_into(out, true, opcode, Some(key), payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn opcodes() {
        for v in 0..16u8 {
            let op = OpCode::from_u8(v);
            assert_eq!(op.is_some(), matches!(v, 0 | 1 | 2 | 8 | 9 | 10), "{v}");
            if let Some(op) = op {
                assert_eq!(op as u8, v);
                assert_eq!(op.is_control(), v >= 8);
            }
        }
    }

    #[test]
    fn length_forms() {
        let mut h = [0u8; MAX_HEADER_LEN];
        for (len, hl, b1) in
            [(0u64, 2, 0u8), (125, 2, 125), (126, 4, 126), (65535, 4, 126), (65536, 10, 127), ((1 << 63) - 1, 10, 127)]
        {
            let n = encode_header(&mut h, true, OpCode::Binary, None, len);
            assert_eq!(n, hl, "len {len}");
            assert_eq!(h[1], b1);
            let parsed = FrameHeader::parse(&h[..n]).unwrap().unwrap();
            assert_eq!(parsed.payload_len, len);
            assert_eq!(parsed.header_len as usize, n);
            let n = encode_header(&mut h, false, OpCode::Text, Some([9, 8, 7, 6]), len);
            assert_eq!(n, hl + 4);
            let parsed = FrameHeader::parse(&h[..n]).unwrap().unwrap();
            assert_eq!(parsed.mask, Some([9, 8, 7, 6]));
            assert!(!parsed.fin);
            // Every strict prefix is incomplete, never an error.
            for i in 0..n {
                assert_eq!(FrameHeader::parse(&h[..i]), Ok(None), "prefix {i}");
            }
        }
    }

    #[test]
    fn sixteen_bit_sample_from_rfc() {
        // RFC 6455 §5.7: 256 bytes binary message in a single unmasked frame.
        let h = FrameHeader::parse(&[0x82, 0x7E, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!(h.payload_len, 256);
        assert_eq!(h.opcode, OpCode::Binary);
        // 64 KiB: 0x82 0x7F 0x0000000000010000
        let h = FrameHeader::parse(&[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap().unwrap();
        assert_eq!(h.payload_len, 65536);
    }

    #[test]
    fn non_minimal_length_is_tolerated() {
        let h = FrameHeader::parse(&[0x82, 0x7E, 0x00, 0x05]).unwrap().unwrap();
        assert_eq!(h.payload_len, 5);
        let h = FrameHeader::parse(&[0x82, 0x7F, 0, 0, 0, 0, 0, 0, 0, 5]).unwrap().unwrap();
        assert_eq!(h.payload_len, 5);
    }

    #[test]
    fn header_errors() {
        assert_eq!(FrameHeader::parse(&[0x83]), Err(ProtocolError::ReservedOpcode(3)));
        assert_eq!(FrameHeader::parse(&[0x8B]), Err(ProtocolError::ReservedOpcode(0xB)));
        assert_eq!(FrameHeader::parse(&[0x09]), Err(ProtocolError::FragmentedControl));
        assert_eq!(FrameHeader::parse(&[0x89, 0x7E]), Err(ProtocolError::ControlFrameTooLong(126)));
        assert_eq!(FrameHeader::parse(&[0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]), Err(ProtocolError::LengthMsbSet));
        // RSV is reported, not rejected, at this layer.
        assert_eq!(FrameHeader::parse(&[0xC2, 0x00]).unwrap().unwrap().rsv, 0b100);
    }

    #[test]
    fn encoders() {
        let mut out = Vec::new();
        encode_frame_into(&mut out, OpCode::Text, b"Hello");
        assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]); // RFC 6455 §5.7
        out.clear();
        encode_masked_frame_into(&mut out, OpCode::Text, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(
            out,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58] // RFC 6455 §5.7
        );
        out.clear();
        encode_raw_frame_into(&mut out, false, OpCode::Text, None, b"Hel");
        assert_eq!(out, [0x01, 0x03, 0x48, 0x65, 0x6c]);
    }

    fn any_opcode() -> impl Strategy<Value = OpCode> {
        prop_oneof![
            Just(OpCode::Continuation),
            Just(OpCode::Text),
            Just(OpCode::Binary),
            Just(OpCode::Close),
            Just(OpCode::Ping),
            Just(OpCode::Pong),
        ]
    }

    fn any_len() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..=130, 65530u64..=65540, Just(125), Just(126), Just(65535), Just(65536), 0u64..(1 << 63),]
    }

    proptest! {
        #[test]
        fn header_round_trip(op in any_opcode(), fin in any::<bool>(), len in any_len(),
                             mask in proptest::option::of(any::<[u8; 4]>())) {
            let fin = fin || op.is_control();
            let len = if op.is_control() { len % 126 } else { len };
            let mut h = [0u8; MAX_HEADER_LEN];
            let n = encode_header(&mut h, fin, op, mask, len);
            let parsed = FrameHeader::parse(&h[..n]).unwrap().unwrap();
            prop_assert_eq!(parsed, FrameHeader { fin, rsv: 0, opcode: op, mask, payload_len: len, header_len: n as u8 });
        }

        #[test]
        fn frame_round_trip(op in any_opcode(), len in prop_oneof![0usize..=130, 65534usize..=65537],
                            key in any::<[u8; 4]>(), seed in any::<u8>()) {
            let len = if op.is_control() { len % 126 } else { len };
            let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
            let mut out = Vec::new();
            encode_masked_frame_into(&mut out, op, &payload, key);
            let h = FrameHeader::parse(&out).unwrap().unwrap();
            prop_assert_eq!(out.len(), h.header_len as usize + len);
            let mut body = out[h.header_len as usize..].to_vec();
            apply_mask(&mut body, h.mask.unwrap());
            prop_assert_eq!(body, payload);
        }
    }
}
