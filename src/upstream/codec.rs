//! Newline framing for the feed, sans-IO: byte chunks in, complete lines out.
//!
//! A line ends at `\n`; one trailing `\r` is stripped. Empty lines are skipped. A line whose payload (after
//! stripping) is longer than `max_line_bytes` is dropped and reported once as [`Event::TooLong`]; the codec then
//! skips bytes until the next newline. A complete line that is not valid UTF-8 is dropped and reported as
//! [`Event::InvalidUtf8`]. Lines that sit wholly inside a chunk are yielded as slices of that chunk (no copy);
//! only the unterminated tail is buffered, and that buffer never holds more than `max_line_bytes + 1` bytes.
//!
//! The codec owns no socket and no clock: the caller owns the read buffer and decides what a dropped
//! connection means (see [`LineCodec::reset`]).

/// What the codec found in the bytes fed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete, non-empty line: no `\n`, no trailing `\r`, valid UTF-8.
    Line(&'a str),
    /// A line longer than the limit was dropped; the rest of it, up to the next newline, is skipped.
    TooLong,
    /// A complete line that is not valid UTF-8 was dropped.
    InvalidUtf8,
}

/// Newline framing state for one byte stream (one connection).
#[derive(Debug)]
pub struct LineCodec {
    max_line: usize,
    /// Bytes of the unterminated line seen so far, without any newline.
    /// INVARIANT: `!too_long(partial.len(), partial.last(), max_line)` (so `len <= max_line + 1`), and
    /// `partial` is empty while `discarding`.
    partial: Vec<u8>,
    /// Skipping the rest of a too-long line until the next newline.
    discarding: bool,
}

impl LineCodec {
    /// A codec that drops lines whose payload is longer than `max_line_bytes`.
    pub fn new(max_line_bytes: usize) -> Self {
        LineCodec { max_line: max_line_bytes, partial: Vec::new(), discarding: false }
    }

    /// The line length limit this codec enforces.
    pub fn max_line_bytes(&self) -> usize {
        self.max_line
    }

    /// Bytes of the unterminated line currently buffered.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Forgets the unterminated line (the stream it came from is gone) and returns how many bytes were
    /// discarded. The codec is then ready for a new stream.
    pub fn reset(&mut self) -> usize {
        let n = self.partial.len();
        self.partial.clear();
        self.discarding = false;
        n
    }

    /// Feeds one chunk of the stream. Drain the returned cursor with [`Lines::poll_event`] until it returns
    /// `None`; dropping it early discards the remaining lines of this chunk (the codec itself stays
    /// consistent: the tail is still buffered).
    #[must_use = "lines are only produced by polling the cursor"]
    pub fn handle_chunk<'s, 'c>(&'s mut self, chunk: &'c [u8]) -> Lines<'s, 'c> {
        Lines { codec: self, rest: chunk, release_partial: false }
    }
}

/// The events found in one chunk; see [`LineCodec::handle_chunk`].
pub struct Lines<'s, 'c> {
    codec: &'s mut LineCodec,
    /// The part of the chunk not looked at yet.
    rest: &'c [u8],
    /// The last event borrowed `codec.partial`; clear it before the next one.
    release_partial: bool,
}

impl Lines<'_, '_> {
    /// The next event of this chunk, or `None` once the chunk is consumed (its unterminated tail is then
    /// buffered in the codec).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event<'_>> {
        if std::mem::take(&mut self.release_partial) {
            self.codec.partial.clear();
        }
        let max = self.codec.max_line;
        loop {
            let rest = self.rest;
            if rest.is_empty() {
                return None;
            }
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                // Unterminated tail: keep it, unless it can no longer become a deliverable line.
                self.rest = &[];
                if self.codec.discarding {
                    return None;
                }
                let len = self.codec.partial.len() + rest.len();
                if too_long(len, rest.last().copied(), max) {
                    self.codec.partial.clear();
                    self.codec.discarding = true;
                    return Some(Event::TooLong);
                }
                self.codec.partial.extend_from_slice(rest);
                return None;
            };
            let line = &rest[..nl];
            self.rest = &rest[nl + 1..];
            if std::mem::take(&mut self.codec.discarding) {
                continue; // end of a line already reported as too long
            }
            if self.codec.partial.is_empty() {
                // The whole line is inside this chunk: yield a slice of it.
                match classify(line, max) {
                    Some(ev) => return Some(ev),
                    None => continue,
                }
            }
            // The line began in an earlier chunk: decide before copying, so a huge line is never copied.
            let partial = &mut self.codec.partial;
            let len = partial.len() + line.len();
            let last = line.last().or(partial.last()).copied();
            if too_long(len, last, max) {
                partial.clear();
                return Some(Event::TooLong);
            }
            let end = payload_len(len, last);
            if end == 0 {
                partial.clear();
                continue;
            }
            partial.extend_from_slice(line);
            self.release_partial = true;
            return Some(match std::str::from_utf8(&self.codec.partial[..end]) {
                Ok(s) => Event::Line(s),
                Err(_) => Event::InvalidUtf8,
            });
        }
    }
}

impl Drop for Lines<'_, '_> {
    /// Consumes the rest of the chunk so the codec's partial-line state stays right.
    fn drop(&mut self) {
        while self.poll_event().is_some() {}
    }
}

/// Length of a line of `len` bytes ending in `last` once a trailing `\r` is stripped.
fn payload_len(len: usize, last: Option<u8>) -> usize {
    if last == Some(b'\r') {
        len - 1
    } else {
        len
    }
}

/// Whether a line (or a line prefix: any continuation only grows the payload) of `len` bytes ending in
/// `last` is over the limit.
fn too_long(len: usize, last: Option<u8>, max: usize) -> bool {
    payload_len(len, last) > max
}

/// The event for a complete line (without its `\n`), or `None` for an empty line.
fn classify(line: &[u8], max: usize) -> Option<Event<'_>> {
    if too_long(line.len(), line.last().copied(), max) {
        return Some(Event::TooLong);
    }
    let payload = &line[..payload_len(line.len(), line.last().copied())];
    if payload.is_empty() {
        return None;
    }
    Some(match std::str::from_utf8(payload) {
        Ok(s) => Event::Line(s),
        Err(_) => Event::InvalidUtf8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Line(String),
        TooLong,
        InvalidUtf8,
    }

    fn own(ev: Event<'_>) -> Owned {
        match ev {
            Event::Line(s) => Owned::Line(s.to_owned()),
            Event::TooLong => Owned::TooLong,
            Event::InvalidUtf8 => Owned::InvalidUtf8,
        }
    }

    fn feed(codec: &mut LineCodec, chunk: &[u8], out: &mut Vec<Owned>) {
        let mut lines = codec.handle_chunk(chunk);
        while let Some(ev) = lines.poll_event() {
            out.push(own(ev));
        }
    }

    fn decode_chunks(max: usize, chunks: &[&[u8]]) -> Vec<Owned> {
        let mut codec = LineCodec::new(max);
        let mut out = Vec::new();
        for c in chunks {
            feed(&mut codec, c, &mut out);
            assert!(codec.buffered() <= max + 1, "partial buffer exceeds its bound");
        }
        out
    }

    /// Reference model over the whole input, written independently of the streaming code.
    fn oracle(input: &[u8], max: usize) -> Vec<Owned> {
        let mut out = Vec::new();
        let mut segments: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
        let tail = segments.pop().unwrap_or(&[]);
        for seg in segments {
            let seg = seg.strip_suffix(b"\r").unwrap_or(seg);
            if seg.len() > max {
                out.push(Owned::TooLong);
            } else if seg.is_empty() {
            } else if let Ok(s) = std::str::from_utf8(seg) {
                out.push(Owned::Line(s.to_owned()));
            } else {
                out.push(Owned::InvalidUtf8);
            }
        }
        // An unterminated tail is reported only once it is known to be too long.
        if tail.strip_suffix(b"\r").unwrap_or(tail).len() > max {
            out.push(Owned::TooLong);
        }
        out
    }

    fn line(s: &str) -> Owned {
        Owned::Line(s.to_owned())
    }

    #[test]
    fn splits_lines_strips_cr_skips_empty() {
        let out = decode_chunks(64, &[b"a\nb\r\n\n\r\nc\r\r\nd"]);
        assert_eq!(out, vec![line("a"), line("b"), line("c\r")]);
    }

    #[test]
    fn joins_lines_across_chunks() {
        let out = decode_chunks(64, &[b"he", b"l", b"lo\r", b"\nwor", b"ld\n"]);
        assert_eq!(out, vec![line("hello"), line("world")]);
    }

    #[test]
    fn lines_inside_a_chunk_are_not_copied() {
        let chunk = b"abc\ndef\n";
        let mut codec = LineCodec::new(64);
        let mut lines = codec.handle_chunk(chunk);
        let Some(Event::Line(s)) = lines.poll_event() else { panic!("expected a line") };
        assert_eq!(s.as_ptr(), chunk.as_ptr(), "line should borrow the chunk");
    }

    #[test]
    fn too_long_dropped_once_and_skipped_to_newline() {
        // Exactly max is fine; max + 1 is not; a CR does not count toward the limit.
        let out = decode_chunks(4, &[b"abcd\nabcde\nabcd\r\nok\n"]);
        assert_eq!(out, vec![line("abcd"), Owned::TooLong, line("abcd"), line("ok")]);
        // Detected while still unterminated, reported once, rest skipped across chunks.
        let out = decode_chunks(4, &[b"abc", b"defgh", b"ijk", b"lm\nok\n"]);
        assert_eq!(out, vec![Owned::TooLong, line("ok")]);
    }

    #[test]
    fn partial_of_max_plus_cr_is_kept() {
        let out = decode_chunks(3, &[b"abc\r", b"\n"]);
        assert_eq!(out, vec![line("abc")]);
        let out = decode_chunks(3, &[b"abc\r", b"x\n"]);
        assert_eq!(out, vec![Owned::TooLong]);
    }

    #[test]
    fn invalid_utf8_dropped_and_split_code_points_joined() {
        let out = decode_chunks(64, &[b"ok\n\xff\xfe\nx\xc3", b"\xa9\n"]);
        assert_eq!(out, vec![line("ok"), Owned::InvalidUtf8, line("x\u{e9}")]);
    }

    #[test]
    fn reset_discards_partial_and_discarding() {
        let mut codec = LineCodec::new(4);
        let mut out = Vec::new();
        feed(&mut codec, b"par", &mut out);
        assert_eq!(codec.reset(), 3);
        feed(&mut codec, b"toolongline", &mut out);
        assert_eq!(codec.reset(), 0);
        feed(&mut codec, b"new\n", &mut out);
        assert_eq!(out, vec![Owned::TooLong, line("new")]);
    }

    #[test]
    fn dropping_the_cursor_early_keeps_the_tail() {
        let mut codec = LineCodec::new(64);
        {
            let mut lines = codec.handle_chunk(b"a\nb\nta");
            assert_eq!(lines.poll_event(), Some(Event::Line("a")));
        }
        let mut out = Vec::new();
        feed(&mut codec, b"il\n", &mut out);
        assert_eq!(out, vec![line("tail")]);
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        // An alphabet that makes newlines, CRs, multi-byte and invalid UTF-8 frequent.
        let byte = prop::sample::select(vec![b'a', b'b', b'\n', b'\r', 0xc3, 0xa9, 0xff, b' ']);
        prop::collection::vec(byte, 0..200)
    }

    proptest! {
        #[test]
        fn chunked_equals_oracle(input in bytes(), max in 0usize..12, cuts in prop::collection::vec(0usize..200, 0..12)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for c in cuts.into_iter().chain(std::iter::once(input.len())) {
                chunks.push(&input[start..c]);
                start = c;
            }
            let expected = oracle(&input, max);
            prop_assert_eq!(&decode_chunks(max, &[&input]), &expected);
            prop_assert_eq!(&decode_chunks(max, &chunks), &expected);
        }
    }
}
