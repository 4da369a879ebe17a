//! Stamped messages as bytes, for the hand-off from the feed thread to the loop threads: the feed appends each
//! message to a batch buffer, the batch crosses to each loop once (one `Arc` per loop), and each loop reads the
//! messages back and encodes what its clients need (frames per encoding). Sans-IO.
//!
//! Record layout (integers little-endian): `topic_len: u8`, `topic`, `seq: u64`, `prev: u64`, `kind: u8`
//! (0 text, 1 binary), `payload_len: u32`, `payload`. The feed writes only valid records, so a reader that meets
//! a malformed one (a bug) stops there and says so.

use super::record::PayloadKind;
use super::sequence::Stamp;
use super::Message;

/// Bytes a record adds to its topic and payload.
pub const RECORD_OVERHEAD: usize = 1 + 8 + 8 + 1 + 4;

/// Appends `msg` as one record.
pub fn append(buf: &mut Vec<u8>, msg: &Message<'_>) {
    debug_assert!(msg.topic.len() <= 255 && msg.payload.len() <= u32::MAX as usize);
    buf.reserve(RECORD_OVERHEAD + msg.topic.len() + msg.payload.len());
    buf.push(msg.topic.len() as u8);
    buf.extend_from_slice(msg.topic.as_bytes());
    buf.extend_from_slice(&msg.stamp.seq.to_le_bytes());
    buf.extend_from_slice(&msg.stamp.prev.to_le_bytes());
    buf.push(match msg.kind {
        PayloadKind::Text => 0,
        PayloadKind::Binary => 1,
    });
    buf.extend_from_slice(&(msg.payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(msg.payload);
}

/// The records of a batch, in order.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Records<'a> {
    pub fn new(batch: &'a [u8]) -> Self {
        Records { rest: batch }
    }

    /// Whether every byte was read as a whole record (false after a malformed one).
    pub fn is_done(&self) -> bool {
        self.rest.is_empty()
    }
}

/// Splits `n` bytes off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

impl<'a> Iterator for Records<'a> {
    type Item = Message<'a>;

    fn next(&mut self) -> Option<Message<'a>> {
        let mut r = self.rest;
        let topic_len = *take(&mut r, 1)?.first()? as usize;
        let topic = std::str::from_utf8(take(&mut r, topic_len)?).ok()?;
        let seq = u64::from_le_bytes(take(&mut r, 8)?.try_into().ok()?);
        let prev = u64::from_le_bytes(take(&mut r, 8)?.try_into().ok()?);
        let kind = match take(&mut r, 1)?[0] {
            0 => PayloadKind::Text,
            1 => PayloadKind::Binary,
            _ => return None,
        };
        let len = u32::from_le_bytes(take(&mut r, 4)?.try_into().ok()?) as usize;
        let payload = take(&mut r, len)?;
        self.rest = r;
        Some(Message::new(topic, payload, kind, Stamp { seq, prev }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn records_round_trip(msgs in proptest::collection::vec(
            ("[A-Za-z0-9._-]{1,20}", proptest::collection::vec(0u8.., 0..300), 0u64.., 0u64.., proptest::bool::ANY),
            0..20,
        )) {
            let mut buf = Vec::new();
            for (topic, payload, seq, prev, binary) in &msgs {
                let kind = if *binary { PayloadKind::Binary } else { PayloadKind::Text };
                append(&mut buf, &Message::new(topic, payload, kind, Stamp { seq: *seq, prev: *prev }));
            }
            let mut records = Records::new(&buf);
            for (topic, payload, seq, prev, binary) in &msgs {
                let m = records.next().expect("a record");
                prop_assert_eq!(m.topic, topic.as_str());
                prop_assert_eq!(m.payload, &payload[..]);
                prop_assert_eq!((m.stamp.seq, m.stamp.prev), (*seq, *prev));
                prop_assert_eq!(m.kind == PayloadKind::Binary, *binary);
            }
            prop_assert!(records.next().is_none() && records.is_done());
        }
    }

    #[test]
    fn a_truncated_batch_stops_and_says_so() {
        let mut buf = Vec::new();
        append(&mut buf, &Message::new("t", b"abc", PayloadKind::Text, Stamp { seq: 1, prev: 0 }));
        let whole = buf.len();
        append(&mut buf, &Message::new("t", b"def", PayloadKind::Text, Stamp { seq: 2, prev: 1 }));
        let mut records = Records::new(&buf[..buf.len() - 1]);
        assert_eq!(records.next().map(|m| m.payload), Some(&b"abc"[..]));
        assert!(records.next().is_none());
        assert!(!records.is_done());
        assert_eq!(buf.len() - whole, RECORD_OVERHEAD + 1 + 3);
    }
}
