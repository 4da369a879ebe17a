//! Streaming UTF-8 validation for text messages that arrive in fragments (RFC 6455 §5.6, §8.1).
//!
//! Carries at most 3 bytes of an incomplete code point from one fragment to the next, and fails as
//! soon as the bytes seen so far cannot be the prefix of valid UTF-8 (fail-fast, as Autobahn's
//! 6.x cases expect). Built on `std::str::from_utf8` and `Utf8Error::error_len`, which already
//! distinguish "invalid" (`Some`) from "truncated at the end" (`None`).

use crate::proto::error::ProtocolError;

/// Incremental validator state: 4 bytes, no heap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Utf8Validator {
    /// Bytes of an incomplete code point carried over from the previous chunk.
    partial: [u8; 3],
    /// INVARIANT: ≤ 3, and `partial[..len]` is a valid but incomplete UTF-8 prefix.
    len: u8,
}

impl Utf8Validator {
    pub const fn new() -> Self {
        Utf8Validator { partial: [0; 3], len: 0 }
    }

    /// Whether the bytes fed so far end on a code point boundary.
    pub fn is_complete(&self) -> bool {
        self.len == 0
    }

    /// Forget any carried bytes (start a new message).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Validate the next chunk. Errors as soon as the stream so far cannot be valid UTF-8.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), ProtocolError> {
        if self.len > 0 {
            // Complete the carried code point one byte at a time (at most 3 more bytes).
            let mut cp = [0u8; 4];
            let mut n = self.len as usize;
            cp[..n].copy_from_slice(&self.partial[..n]);
            loop {
                let Some((&b, rest)) = data.split_first() else {
                    // Still incomplete (n ≤ 3: four bytes always decide); wait for more.
                    self.partial[..n].copy_from_slice(&cp[..n]);
                    self.len = n as u8;
                    return Ok(());
                };
                data = rest;
                cp[n] = b;
                n += 1;
                match std::str::from_utf8(&cp[..n]) {
                    Ok(_) => {
                        self.len = 0;
                        break;
                    }
                    Err(e) if e.error_len().is_some() => return Err(ProtocolError::InvalidUtf8),
                    Err(_) => {} // a valid prefix: keep going
                }
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(ProtocolError::InvalidUtf8),
            Err(e) => {
                let tail = &data[e.valid_up_to()..];
                debug_assert!(tail.len() <= 3);
                self.partial[..tail.len()].copy_from_slice(tail);
                self.len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// The message ended: error if it stopped in the middle of a code point. Resets the state.
    pub fn finish(&mut self) -> Result<(), ProtocolError> {
        let complete = self.is_complete();
        self.len = 0;
        if complete {
            Ok(())
        } else {
            Err(ProtocolError::InvalidUtf8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn validate_chunks(chunks: &[&[u8]]) -> Result<(), ProtocolError> {
        let mut v = Utf8Validator::new();
        for c in chunks {
            v.feed(c)?;
        }
        v.finish()
    }

    #[test]
    fn code_point_split_across_chunks() {
        let s = "κόσμε 😀 €".as_bytes();
        for i in 0..=s.len() {
            for j in i..=s.len() {
                assert_eq!(validate_chunks(&[&s[..i], &s[i..j], &s[j..]]), Ok(()), "{i} {j}");
            }
        }
        // Byte at a time.
        let mut v = Utf8Validator::new();
        for b in s {
            v.feed(std::slice::from_ref(b)).unwrap();
        }
        assert!(v.is_complete());
    }

    #[test]
    fn fails_fast() {
        let mut v = Utf8Validator::new();
        // U+D800 (surrogate) is invalid after its second byte: ED A0.
        v.feed(b"ok\xed").unwrap();
        assert_eq!(v.feed(b"\xa0"), Err(ProtocolError::InvalidUtf8));
        // > U+10FFFF: F4 90 fails at the second byte.
        let mut v = Utf8Validator::new();
        v.feed(b"\xf4").unwrap();
        assert_eq!(v.feed(b"\x90\x80\x80"), Err(ProtocolError::InvalidUtf8));
        // Invalid lead byte in the middle of a chunk.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"abc\xffdef"), Err(ProtocolError::InvalidUtf8));
        // Overlong encoding.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xc0"), Err(ProtocolError::InvalidUtf8));
        // Continuation byte where a lead byte is expected, right after a carried code point.
        let mut v = Utf8Validator::new();
        v.feed(b"\xe2\x82").unwrap();
        assert_eq!(v.feed(b"\xac\x80"), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn incomplete_at_end() {
        assert_eq!(validate_chunks(&[b"ab\xe2\x82"]), Err(ProtocolError::InvalidUtf8));
        assert_eq!(validate_chunks(&[b"ab\xe2", b"\x82"]), Err(ProtocolError::InvalidUtf8));
        assert_eq!(validate_chunks(&[b"", b""]), Ok(()));
    }

    proptest! {
        /// Chunked validation agrees with `std::str::from_utf8` on the whole input, and fails no
        /// later than the first chunk containing the error.
        #[test]
        fn chunked_equals_whole(data in proptest::collection::vec(
                prop_oneof![any::<u8>(), 0x80u8..0xC0, Just(0xED), Just(0xF4), Just(0xE2)], 0..40),
                cuts in proptest::collection::vec(0usize..40, 0..6)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort();
            let mut v = Utf8Validator::new();
            let mut prev = 0;
            let mut result = Ok(());
            for &c in cuts.iter().chain(std::iter::once(&data.len())) {
                if let Err(e) = v.feed(&data[prev..c]) {
                    // The prefix up to c can no longer be valid.
                    let err = std::str::from_utf8(&data[..c]).unwrap_err();
                    prop_assert!(err.error_len().is_some());
                    result = Err(e);
                    break;
                }
                prev = c;
            }
            if result.is_ok() {
                result = v.finish();
            }
            prop_assert_eq!(result.is_ok(), std::str::from_utf8(&data).is_ok());
        }
    }
}
