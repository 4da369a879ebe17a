//! Length-prefixed binary framing for the feed, sans-IO: byte chunks in, complete records out.
//!
//! Wire format: records back to back, each
//! `topic_len: u8 | topic: topic_len bytes | payload_len: u32 big-endian | payload: payload_len bytes`.
//! Chunks may split records anywhere and hold any number of them.
//!
//! A record whose payload is at most `max_payload_bytes` long is yielded as [`Event::Record`]; records that sit
//! wholly inside a chunk are yielded as slices of that chunk (no copy). A record whose payload is longer is
//! reported once, as soon as its header is complete, as [`Event::TooLong`]; its payload bytes are then skipped
//! (across as many chunks as it takes) without being stored, and the stream stays in sync. Only an incomplete
//! record is buffered, and that buffer never holds more than `1 + 255 + 4 + max_payload_bytes` bytes
//! ([`MAX_HEADER_BYTES`]` + max_payload_bytes`). Decoding a stream whole, in any chunks, or a byte at a time
//! gives the same events and leaves the same bytes buffered.
//!
//! What it does not do: it does not check the topic's characters or length against the topic rules (an empty
//! topic is yielded as is; `upstream::topic` decides), and it does not judge payloads. It owns no socket and no
//! clock: the caller owns the read buffer and decides what a dropped connection means (see
//! [`BinaryCodec::reset`]). The format has no magic and no checksum, so the codec cannot detect a corrupt
//! length: the stream is framed as it comes until the caller resets it.

/// Longest record header: the topic length byte, a 255-byte topic, the 4-byte payload length.
pub const MAX_HEADER_BYTES: usize = 1 + 255 + 4;

// Payload lengths are `u32`; `as usize` on them is lossless on every target this crate builds for.
const _: () = assert!(usize::BITS >= 32);

/// What the codec found in the bytes fed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete record. `topic` may be empty (`topic_len` 0) — the caller decides what that means.
    /// `payload.len() <= max_payload_bytes`.
    Record {
        /// The record's topic bytes, unchecked.
        topic: &'a [u8],
        /// The record's payload bytes.
        payload: &'a [u8],
    },
    /// A record whose payload is longer than the limit was dropped; its payload bytes are skipped, the stream
    /// stays in sync.
    TooLong {
        /// The payload length announced by the dropped record's header (`> max_payload_bytes`).
        payload_len: u32,
    },
}

/// Binary framing state for one byte stream (one connection).
#[derive(Debug)]
pub struct BinaryCodec {
    max_payload: usize,
    /// Bytes of the incomplete record seen so far: a strict prefix of one record.
    /// INVARIANT: if `partial` holds a whole header, its payload length is `<= max_payload` (so
    /// `partial.len() < MAX_HEADER_BYTES + max_payload`), and `partial` is empty while `skip > 0`.
    partial: Vec<u8>,
    /// Payload bytes of a too-long record still to skip.
    skip: usize,
}

impl BinaryCodec {
    /// A codec that drops records whose payload is longer than `max_payload_bytes`.
    pub fn new(max_payload_bytes: usize) -> Self {
        BinaryCodec { max_payload: max_payload_bytes, partial: Vec::new(), skip: 0 }
    }

    /// The payload length limit this codec enforces.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload
    }

    /// Bytes of an incomplete record currently buffered (0 while a too-long payload is being skipped).
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Forgets an incomplete record, and any too-long payload still being skipped (the stream it came from is
    /// gone), and returns how many buffered bytes were discarded. The codec is then ready for a new stream.
    pub fn reset(&mut self) -> usize {
        let n = self.partial.len();
        self.partial.clear();
        self.skip = 0;
        n
    }

    /// Feeds one chunk of the stream. Drain the returned cursor with [`Records::poll_event`] until it returns
    /// `None`; dropping it early discards the remaining records of this chunk (the codec itself stays
    /// consistent: the incomplete tail is still buffered, a too-long payload still skipped).
    #[must_use = "records are only produced by polling the cursor"]
    pub fn handle_chunk<'s, 'c>(&'s mut self, chunk: &'c [u8]) -> Records<'s, 'c> {
        Records { codec: self, rest: chunk, release_partial: false }
    }
}

/// The events found in one chunk; see [`BinaryCodec::handle_chunk`].
pub struct Records<'s, 'c> {
    codec: &'s mut BinaryCodec,
    /// The part of the chunk not looked at yet.
    rest: &'c [u8],
    /// The last event borrowed `codec.partial`; clear it before the next one.
    /// INVARIANT: when true, `codec.partial` holds exactly one complete record (the one just yielded).
    release_partial: bool,
}

impl Records<'_, '_> {
    /// The next event of this chunk, or `None` once the chunk is consumed (its incomplete tail is then
    /// buffered in the codec).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event<'_>> {
        if std::mem::take(&mut self.release_partial) {
            self.codec.partial.clear();
        }
        let max = self.codec.max_payload;
        let mut rest = self.rest;
        if self.codec.skip > 0 {
            let n = self.codec.skip.min(rest.len());
            self.codec.skip -= n;
            rest = &rest[n..];
        }
        if rest.is_empty() {
            self.rest = rest;
            return None;
        }

        if self.codec.partial.is_empty() {
            // The record starts in this chunk: yield it as slices of the chunk if it ends here too.
            if let Some(header) = Header::parse(rest) {
                if header.payload_len() > max {
                    self.rest = &rest[header.len()..];
                    self.codec.skip = header.payload_len();
                    return Some(Event::TooLong { payload_len: header.payload_len });
                }
                if let Some(record) = rest.get(..header.record_len()) {
                    self.rest = &rest[record.len()..];
                    return Some(header.event(record));
                }
            }
            // Incomplete, and shorter than a header or than a record within the limit: buffer it all.
            self.codec.partial.extend_from_slice(rest);
            self.rest = &[];
            return None;
        }

        // The record began in an earlier chunk: take only the bytes it still needs, header first, so a
        // too-long payload is never copied.
        let partial = &mut self.codec.partial;
        let header_len = partial.first().map_or(1, |&topic_len| Header::len_for(topic_len));
        let take = header_len.saturating_sub(partial.len()).min(rest.len());
        partial.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        let Some(header) = Header::parse(partial) else {
            self.rest = rest; // empty: the header is still incomplete
            return None;
        };
        if header.payload_len() > max {
            // The header has just completed (by the invariant, a kept header is within the limit).
            partial.clear();
            self.codec.skip = header.payload_len();
            self.rest = rest;
            return Some(Event::TooLong { payload_len: header.payload_len });
        }
        let take = header.record_len().saturating_sub(partial.len()).min(rest.len());
        partial.extend_from_slice(&rest[..take]);
        self.rest = &rest[take..];
        if partial.len() < header.record_len() {
            return None;
        }
        self.release_partial = true;
        Some(header.event(&self.codec.partial))
    }
}

impl Drop for Records<'_, '_> {
    /// Consumes the rest of the chunk so the codec's partial-record and skip state stays right.
    fn drop(&mut self) {
        while self.poll_event().is_some() {}
    }
}

/// A complete record header.
#[derive(Debug, Clone, Copy)]
struct Header {
    topic_len: u8,
    payload_len: u32,
}

impl Header {
    /// The header at the start of `buf`, or `None` if `buf` is shorter than it.
    fn parse(buf: &[u8]) -> Option<Header> {
        let topic_len = *buf.first()?;
        let len_at = 1 + usize::from(topic_len);
        let len_bytes: [u8; 4] = buf.get(len_at..len_at + 4)?.try_into().ok()?;
        Some(Header { topic_len, payload_len: u32::from_be_bytes(len_bytes) })
    }

    /// Length of a header whose topic is `topic_len` bytes long.
    fn len_for(topic_len: u8) -> usize {
        1 + usize::from(topic_len) + 4
    }

    /// Length of this header.
    fn len(self) -> usize {
        Header::len_for(self.topic_len)
    }

    /// The announced payload length.
    fn payload_len(self) -> usize {
        self.payload_len as usize
    }

    /// Length of the whole record (saturating: a record that long can never be complete anyway).
    fn record_len(self) -> usize {
        self.len().saturating_add(self.payload_len())
    }

    /// The event for `record`, the bytes of one whole record with this header.
    fn event(self, record: &[u8]) -> Event<'_> {
        let topic_end = 1 + usize::from(self.topic_len);
        Event::Record { topic: &record[1..topic_end], payload: &record[self.len()..] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Record(Vec<u8>, Vec<u8>),
        TooLong(u32),
    }

    fn own(ev: Event<'_>) -> Owned {
        match ev {
            Event::Record { topic, payload } => Owned::Record(topic.to_vec(), payload.to_vec()),
            Event::TooLong { payload_len } => Owned::TooLong(payload_len),
        }
    }

    fn record(topic: &[u8], payload: &[u8]) -> Owned {
        Owned::Record(topic.to_vec(), payload.to_vec())
    }

    /// The wire encoding of one record.
    fn encode(topic: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from(topic.len()).expect("topic of at most 255 bytes")];
        out.extend_from_slice(topic);
        out.extend_from_slice(&u32::try_from(payload.len()).expect("payload under 4 GiB").to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn feed(codec: &mut BinaryCodec, chunk: &[u8], out: &mut Vec<Owned>) {
        let max = codec.max_payload_bytes();
        let mut records = codec.handle_chunk(chunk);
        while let Some(ev) = records.poll_event() {
            match ev {
                Event::Record { payload, .. } => assert!(payload.len() <= max, "record over the limit"),
                Event::TooLong { payload_len } => assert!(payload_len as usize > max, "TooLong within the limit"),
            }
            out.push(own(ev));
        }
    }

    /// Decodes `chunks` with a fresh codec, checking the buffer bound after each; the events and the bytes
    /// left buffered.
    fn decode_chunks(max: usize, chunks: &[&[u8]]) -> (Vec<Owned>, usize) {
        let mut codec = BinaryCodec::new(max);
        let mut out = Vec::new();
        for c in chunks {
            feed(&mut codec, c, &mut out);
            assert!(codec.buffered() <= MAX_HEADER_BYTES + max, "partial buffer exceeds its bound");
        }
        (out, codec.buffered())
    }

    fn decode_whole(max: usize, input: &[u8]) -> (Vec<Owned>, usize) {
        decode_chunks(max, &[input])
    }

    fn decode_bytewise(max: usize, input: &[u8]) -> (Vec<Owned>, usize) {
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        decode_chunks(max, &chunks)
    }

    /// `input` cut at the (sorted, clamped) offsets in `cuts`.
    fn split_at<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for c in cuts.into_iter().chain(std::iter::once(input.len())) {
            chunks.push(&input[start..c]);
            start = c;
        }
        chunks
    }

    #[test]
    fn several_records_in_one_chunk_are_not_copied() {
        let mut stream = encode(b"BTC-USD", b"{\"p\":1}");
        stream.extend(encode(b"ETH", b"\x00\xff\n"));
        stream.extend(encode(b"x", b""));
        let (out, buffered) = decode_whole(64, &stream);
        assert_eq!(out, vec![record(b"BTC-USD", b"{\"p\":1}"), record(b"ETH", b"\x00\xff\n"), record(b"x", b"")]);
        assert_eq!(buffered, 0);

        let mut codec = BinaryCodec::new(64);
        let mut records = codec.handle_chunk(&stream);
        let Some(Event::Record { topic, payload }) = records.poll_event() else { panic!("expected a record") };
        assert_eq!(topic.as_ptr(), stream[1..].as_ptr(), "topic should borrow the chunk");
        assert_eq!(payload.as_ptr(), stream[12..].as_ptr(), "payload should borrow the chunk");
    }

    #[test]
    fn record_split_at_every_byte_position() {
        let parts = [encode(b"AAPL", b"hello"), encode(b"", b"x"), encode(b"MSFT", b"")];
        let ends: Vec<usize> = parts.iter().scan(0, |end, p| Some(*end + p.len()).inspect(|&e| *end = e)).collect();
        let stream = parts.concat();
        let expected = (vec![record(b"AAPL", b"hello"), record(b"", b"x"), record(b"MSFT", b"")], 0);
        for i in 0..=stream.len() {
            let (a, b) = stream.split_at(i);
            assert_eq!(decode_chunks(8, &[a, b]), expected, "split at {i}");
            // And the first part alone leaves exactly the incomplete record's bytes buffered.
            let done = ends.iter().rev().find(|&&end| end <= i).copied().unwrap_or(0);
            assert_eq!(decode_whole(8, a).1, i - done, "tail after {i} bytes");
        }
        assert_eq!(decode_bytewise(8, &stream), expected);
    }

    #[test]
    fn empty_topic_and_empty_payload() {
        let mut stream = encode(b"", b"");
        stream.extend(encode(b"", b"p"));
        stream.extend(encode(b"t", b""));
        assert_eq!(stream[..5], [0, 0, 0, 0, 0]);
        let expected = vec![record(b"", b""), record(b"", b"p"), record(b"t", b"")];
        assert_eq!(decode_whole(0, &stream[..5]), (vec![record(b"", b"")], 0), "limit 0 allows empty payloads");
        assert_eq!(decode_whole(4, &stream), (expected.clone(), 0));
        assert_eq!(decode_bytewise(4, &stream), (expected, 0));
    }

    #[test]
    fn max_payload_accepted_max_plus_one_too_long_then_next_decoded() {
        let max = 16;
        let mut stream = encode(b"ok", &[b'a'; 16]);
        stream.extend(encode(b"big", &[b'b'; 17]));
        stream.extend(encode(b"next", b"after"));
        let expected = (vec![record(b"ok", &[b'a'; 16]), Owned::TooLong(17), record(b"next", b"after")], 0);
        assert_eq!(decode_whole(max, &stream), expected);
        assert_eq!(decode_bytewise(max, &stream), expected);
        for n in 2..8 {
            let chunks: Vec<&[u8]> = stream.chunks(n).collect();
            assert_eq!(decode_chunks(max, &chunks), expected, "chunks of {n}");
        }
    }

    #[test]
    fn too_long_payload_skipped_across_many_chunks_without_buffering() {
        let max = 8;
        let big = vec![0xab; 10_000];
        let mut stream = encode(b"big", &big);
        let header_len = 1 + 3 + 4;
        stream.extend(encode(b"next", b"tail"));

        let mut codec = BinaryCodec::new(max);
        let mut out = Vec::new();
        // The header arrives split; TooLong comes as soon as it is complete, before any payload byte.
        feed(&mut codec, &stream[..4], &mut out);
        assert_eq!((out.as_slice(), codec.buffered()), ([].as_slice(), 4));
        feed(&mut codec, &stream[4..header_len], &mut out);
        assert_eq!((out.as_slice(), codec.buffered()), ([Owned::TooLong(10_000)].as_slice(), 0));
        // The payload is skipped in many chunks, never stored, never reported again.
        let body_end = header_len + big.len();
        for chunk in stream[header_len..body_end - 1].chunks(333) {
            feed(&mut codec, chunk, &mut out);
            assert_eq!(codec.buffered(), 0);
        }
        assert_eq!(out, vec![Owned::TooLong(10_000)]);
        // The last skipped byte and the next record share a chunk.
        feed(&mut codec, &stream[body_end - 1..], &mut out);
        assert_eq!(out, vec![Owned::TooLong(10_000), record(b"next", b"tail")]);
        assert_eq!(codec.buffered(), 0);
        assert!(codec.partial.capacity() <= MAX_HEADER_BYTES + max, "a too-long payload was buffered");

        // The largest payload length the format allows is reported, not allocated.
        let huge = [&[0u8][..], &u32::MAX.to_be_bytes(), b"zz"].concat();
        assert_eq!(decode_whole(max, &huge), (vec![Owned::TooLong(u32::MAX)], 0));
    }

    #[test]
    fn reset_mid_record() {
        let stream = encode(b"topic", b"payload");
        let mut codec = BinaryCodec::new(64);
        let mut out = Vec::new();
        // In the header.
        feed(&mut codec, &stream[..3], &mut out);
        assert_eq!(codec.reset(), 3);
        // In the payload.
        feed(&mut codec, &stream[..13], &mut out);
        assert_eq!(codec.reset(), 13);
        // While skipping a too-long payload: nothing is buffered, and the skip is forgotten.
        let big = encode(b"t", &[1; 100]);
        feed(&mut codec, &big[..20], &mut out);
        assert_eq!(codec.reset(), 0);
        // A new stream starts clean.
        feed(&mut codec, &stream, &mut out);
        assert_eq!(out, vec![Owned::TooLong(100), record(b"topic", b"payload")]);
        assert_eq!(codec.reset(), 0);
    }

    #[test]
    fn buffered_bound() {
        let max = 32;
        let topic = [b't'; 255];
        let stream = encode(&topic, &[b'p'; 32]);
        assert_eq!(stream.len(), MAX_HEADER_BYTES + max);
        // The largest incomplete record: one byte short of the longest record within the limit.
        let (out, buffered) = decode_bytewise(max, &stream[..stream.len() - 1]);
        assert_eq!((out.len(), buffered), (0, MAX_HEADER_BYTES + max - 1));
        let (out, buffered) = decode_chunks(max, &[&stream[..100], &stream[100..stream.len() - 1], &stream[..0]]);
        assert_eq!((out.len(), buffered), (0, MAX_HEADER_BYTES + max - 1));
        // A too-long record leaves at most its header behind, and only until the header is complete.
        let big = encode(&topic, &[b'p'; 33]);
        assert_eq!(decode_whole(max, &big[..MAX_HEADER_BYTES - 1]).1, MAX_HEADER_BYTES - 1);
        assert_eq!(decode_whole(max, &big[..MAX_HEADER_BYTES]), (vec![Owned::TooLong(33)], 0));
    }

    #[test]
    fn dropping_the_cursor_early_keeps_the_state() {
        let mut stream = encode(b"a", b"1");
        stream.extend(encode(b"b", b"2"));
        stream.extend(encode(b"big", b"too long"));
        stream.extend(encode(b"c", b"3"));
        let mut codec = BinaryCodec::new(4);
        let cut = stream.len() - 3;
        {
            let mut records = codec.handle_chunk(&stream[..cut]);
            assert_eq!(records.poll_event().map(own), Some(record(b"a", b"1")));
        }
        assert_eq!(codec.buffered(), 4, "the incomplete last record is buffered");
        let mut out = Vec::new();
        feed(&mut codec, &stream[cut..], &mut out);
        assert_eq!(out, vec![record(b"c", b"3")]);

        // Dropped right after a record that came from the buffer: the buffer is released.
        let mut codec = BinaryCodec::new(4);
        feed(&mut codec, &stream[..3], &mut out);
        drop(codec.handle_chunk(&stream[3..7]));
        assert_eq!(codec.buffered(), 0);
    }

    /// One record to encode: its topic and its payload.
    type TopicPayload = (Vec<u8>, Vec<u8>);

    /// Reference model: the events and buffered tail for `records` encoded back to back, truncated to `len`
    /// bytes. Written over whole records, independently of the streaming code.
    fn model(records: &[TopicPayload], len: usize, max: usize) -> (Vec<Owned>, usize) {
        let mut out = Vec::new();
        let mut start = 0;
        for (topic, payload) in records {
            let header_end = start + 1 + topic.len() + 4;
            let end = header_end + payload.len();
            let too_long = payload.len() > max;
            if end <= len {
                out.push(if too_long { Owned::TooLong(payload.len() as u32) } else { record(topic, payload) });
            } else if len < header_end {
                return (out, len - start);
            } else if too_long {
                // Reported as soon as the header is complete; the payload is skipped, not buffered.
                out.push(Owned::TooLong(payload.len() as u32));
                return (out, 0);
            } else {
                return (out, len - start);
            }
            start = end;
        }
        (out, 0)
    }

    fn topic() -> impl Strategy<Value = Vec<u8>> {
        // Mostly short topics; sometimes up to the 255-byte maximum.
        prop_oneof![
            3 => prop::collection::vec(any::<u8>(), 0..4),
            1 => prop::collection::vec(any::<u8>(), 0..=255),
        ]
    }

    fn records() -> impl Strategy<Value = (usize, Vec<TopicPayload>)> {
        (0usize..16).prop_flat_map(|max| {
            let payload = prop::collection::vec(any::<u8>(), 0..=2 * max);
            (Just(max), prop::collection::vec((topic(), payload), 0..8))
        })
    }

    proptest! {
        #[test]
        fn chunked_equals_model(
            (max, records) in records(),
            cuts in prop::collection::vec(0usize..2000, 0..16),
            truncate in 0usize..40,
        ) {
            let stream: Vec<u8> = records.iter().flat_map(|(t, p)| encode(t, p)).collect();
            let input = &stream[..stream.len() - truncate.min(stream.len())];
            let expected = model(&records, input.len(), max);
            prop_assert_eq!(&decode_whole(max, input), &expected);
            prop_assert_eq!(&decode_chunks(max, &split_at(input, &cuts)), &expected);
            prop_assert_eq!(&decode_bytewise(max, input), &expected);
        }

        #[test]
        fn arbitrary_bytes_chunked_equals_whole(
            input in prop::collection::vec(any::<u8>(), 0..300),
            max in 0usize..300,
            cuts in prop::collection::vec(0usize..300, 0..16),
        ) {
            let whole = decode_whole(max, &input);
            prop_assert_eq!(&decode_chunks(max, &split_at(&input, &cuts)), &whole);
            prop_assert_eq!(&decode_bytewise(max, &input), &whole);
        }
    }
}
