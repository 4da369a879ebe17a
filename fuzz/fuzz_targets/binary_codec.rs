//! Feed framing: `upstream::binary_codec::BinaryCodec` on arbitrary bytes never panics, yields only records
//! within the payload limit, keeps its buffer bounded, and gives the same events (and the same buffered tail)
//! whether the stream arrives whole, in chunks, or a byte at a time.
//!
//! Input: byte 0 = payload limit, bytes 1..4 = chunk sizes (cycled), the rest = the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::upstream::binary_codec::{BinaryCodec, Event, MAX_HEADER_BYTES};

#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Record { topic: Vec<u8>, payload: Vec<u8> },
    TooLong { payload_len: u32 },
}

fn decode(input: &[u8], chunks: &[usize], max: usize) -> (Vec<Owned>, usize) {
    let mut codec = BinaryCodec::new(max);
    let mut events = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < input.len() {
        let n = chunks[i % chunks.len()].min(input.len() - pos);
        i += 1;
        let mut records = codec.handle_chunk(&input[pos..pos + n]);
        while let Some(ev) = records.poll_event() {
            events.push(match ev {
                Event::Record { topic, payload } => {
                    assert!(payload.len() <= max, "record payload of {} bytes, limit {max}", payload.len());
                    assert!(topic.len() <= 255, "topic of {} bytes", topic.len());
                    Owned::Record { topic: topic.to_vec(), payload: payload.to_vec() }
                }
                Event::TooLong { payload_len } => {
                    assert!(payload_len as usize > max, "TooLong for {payload_len} bytes, limit {max}");
                    Owned::TooLong { payload_len }
                }
            });
        }
        drop(records);
        pos += n;
        assert!(
            codec.buffered() <= MAX_HEADER_BYTES + max,
            "buffer {} over bound {}",
            codec.buffered(),
            MAX_HEADER_BYTES + max
        );
    }
    (events, codec.buffered())
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (ctl, input) = data.split_at(4);
    let max = if ctl[0] == 255 { 64 * 1024 } else { usize::from(ctl[0] % 64) };
    let chunks: Vec<usize> = ctl[1..].iter().map(|&b| usize::from(b % 64) + 1).collect();
    let whole = decode(input, &[input.len().max(1)], max);
    assert_eq!(decode(input, &chunks, max), whole, "chunked differs from whole");
    assert_eq!(decode(input, &[1], max), whole, "byte at a time differs from whole");
});
