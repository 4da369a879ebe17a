//! Topic names: the one character set and length cap every transport and the feed agree on.
//!
//! A name is 1 to [`MAX_TOPIC_BYTES`] bytes of ASCII letters, digits and `- _ . : / @`. Excluded on purpose: `*`
//! (a trailing `*` makes a subscription a prefix pattern), `,` (separates topics in `?topics=`), spaces, quotes
//! and anything that would need escaping in JSON, a URL query or an SSE field.

/// Longest topic name, in bytes.
pub const MAX_TOPIC_BYTES: usize = 128;

/// Why a name is not a topic name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("empty topic name")]
    Empty,
    #[error("topic name longer than {MAX_TOPIC_BYTES} bytes")]
    TooLong,
    #[error("topic name has a character outside A-Z a-z 0-9 - _ . : / @ (byte {0:#04x})")]
    BadChar(u8),
}

/// Whether `b` may appear in a topic name.
pub fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'@')
}

/// `name` as a topic name, or why not.
pub fn check(name: &[u8]) -> Result<&str, TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong);
    }
    if let Some(&b) = name.iter().find(|&&b| !allowed(b)) {
        return Err(TopicError::BadChar(b));
    }
    // Every allowed byte is ASCII.
    Ok(std::str::from_utf8(name).expect("ASCII is UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_market_names_and_refuses_the_rest() {
        for ok in ["BTC-USD", "eth_usd", "fx.EUR:USD", "book/BTC-USD@10", "a", &"x".repeat(MAX_TOPIC_BYTES)] {
            assert_eq!(check(ok.as_bytes()), Ok(ok), "{ok}");
        }
        assert_eq!(check(b""), Err(TopicError::Empty));
        assert_eq!(check("x".repeat(MAX_TOPIC_BYTES + 1).as_bytes()), Err(TopicError::TooLong));
        for (bad, b) in [("BTC-*", b'*'), ("a,b", b','), ("a b", b' '), ("a\"", b'"'), ("é", 0xc3), ("a\n", b'\n')] {
            assert_eq!(check(bad.as_bytes()), Err(TopicError::BadChar(b)), "{bad:?}");
        }
    }
}
