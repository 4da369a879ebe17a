//! Positions: `{epoch, seq}`, the one resume point of every transport (the WebSocket `since`, the SSE
//! `id:`/`Last-Event-ID`, the long-poll `since`).
//!
//! JSON form: `{"epoch":E,"seq":S}`. Text form (SSE ids, URL queries): `E:S`, both decimal. `epoch` names the
//! sequence space (a gateway process: `upstream::sequence`); `seq` counts the feed's messages from 1, so `seq`
//! 0 means "before the first message".

use std::fmt;
use std::str::FromStr;

/// A position in the feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
}

/// A text form that is not `E:S`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a position is written EPOCH:SEQ, two decimal numbers")]
pub struct BadPosition;

/// Largest number either part may have: positions travel as JSON numbers, exact in JavaScript up to 2^53 - 1.
pub const MAX_PART: u64 = (1 << 53) - 1;

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.seq)
    }
}

impl FromStr for Position {
    type Err = BadPosition;

    fn from_str(s: &str) -> Result<Self, BadPosition> {
        let (epoch, seq) = s.split_once(':').ok_or(BadPosition)?;
        let part = |p: &str| -> Result<u64, BadPosition> {
            if p.is_empty() || p.len() > 16 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BadPosition);
            }
            p.parse::<u64>().ok().filter(|&v| v <= MAX_PART).ok_or(BadPosition)
        };
        Ok(Position { epoch: part(epoch)?, seq: part(seq)? })
    }
}

impl Position {
    /// Appends the JSON form.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(out, "{{\"epoch\":{},\"seq\":{}}}", self.epoch, self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_refuses_the_rest() {
        let p = Position { epoch: 4_503_599_627_370_495, seq: 12 };
        assert_eq!(p.to_string(), "4503599627370495:12");
        assert_eq!(p.to_string().parse(), Ok(p));
        assert_eq!("0:0".parse(), Ok(Position { epoch: 0, seq: 0 }));
        for bad in [
            "",
            "1",
            "1:",
            ":1",
            "1:2:3",
            "a:1",
            "1:-2",
            "+1:2",
            " 1:2",
            "1:2 ",
            "9007199254740992:1",
            "1:99999999999999999",
        ] {
            assert_eq!(bad.parse::<Position>(), Err(BadPosition), "{bad:?}");
        }
        let mut json = Vec::new();
        p.write_json(&mut json);
        assert_eq!(json, br#"{"epoch":4503599627370495,"seq":12}"#);
    }
}
