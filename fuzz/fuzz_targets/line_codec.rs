//! Feed framing: `upstream::codec::LineCodec` on arbitrary bytes never panics, yields only lines that obey
//! the framing rules, keeps its buffer bounded, and gives the same events (and the same buffered tail) whether
//! the stream arrives whole or in chunks.
//!
//! Input: byte 0 = line limit, bytes 1..4 = chunk sizes (cycled), the rest = the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::upstream::codec::{Event, LineCodec};

#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Line(String),
    TooLong,
    InvalidUtf8,
}

fn decode(input: &[u8], chunks: &[usize], max: usize) -> (Vec<Owned>, usize) {
    let mut codec = LineCodec::new(max);
    let mut events = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < input.len() {
        let n = chunks[i % chunks.len()].min(input.len() - pos);
        i += 1;
        let mut lines = codec.handle_chunk(&input[pos..pos + n]);
        while let Some(ev) = lines.poll_event() {
            events.push(match ev {
                Event::Line(line) => {
                    assert!(!line.is_empty() && line.len() <= max, "line of {} bytes, limit {max}", line.len());
                    assert!(!line.contains('\n'), "a line never contains a newline");
                    Owned::Line(line.to_string())
                }
                Event::TooLong => Owned::TooLong,
                Event::InvalidUtf8 => Owned::InvalidUtf8,
            });
        }
        drop(lines);
        pos += n;
        assert!(codec.buffered() <= max + 1, "buffer {} over limit {max}", codec.buffered());
    }
    (events, codec.buffered())
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (ctl, input) = data.split_at(4);
    let max = if ctl[0] == 255 { 64 * 1024 } else { usize::from(ctl[0] % 64) + 1 };
    let chunks: Vec<usize> = ctl[1..].iter().map(|&b| usize::from(b % 64) + 1).collect();
    let whole = decode(input, &[input.len().max(1)], max);
    assert_eq!(decode(input, &chunks, max), whole, "chunked differs from whole");
    assert_eq!(decode(input, &[1], max), whole, "byte at a time differs from whole");
});
