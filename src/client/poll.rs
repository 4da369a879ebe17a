//! Long-poll responses (`GET /poll?since=E:S`), sans-IO: one JSON object per answer,
//! `{"messages":[…],"next":"E:S"}` — envelopes (and gap notices, in order) in `messages`, and the position to
//! ask from next time in `next`.

use super::encode::{self, FeedMessage, GapReason};
use super::position::Position;

/// A response being built.
#[derive(Debug)]
pub struct PollBody {
    out: Vec<u8>,
    entries: usize,
}

impl Default for PollBody {
    fn default() -> Self {
        Self::new()
    }
}

impl PollBody {
    pub fn new() -> Self {
        PollBody { out: b"{\"messages\":[".to_vec(), entries: 0 }
    }

    fn comma(&mut self) {
        if self.entries > 0 {
            self.out.push(b',');
        }
        self.entries += 1;
    }

    /// Adds a message's envelope.
    pub fn message(&mut self, msg: &FeedMessage<'_>) {
        self.comma();
        encode::envelope(msg, &mut self.out);
    }

    /// Adds a gap notice.
    pub fn gap(&mut self, topic: &str, from: Position, to: Position, reason: GapReason) {
        self.comma();
        encode::gap(topic, from, to, reason, &mut self.out);
    }

    /// Entries so far.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The finished body, with `next` as the position to resume from.
    pub fn finish(mut self, next: Position) -> Vec<u8> {
        self.out.extend_from_slice(b"],\"next\":\"");
        self.out.extend_from_slice(next.to_string().as_bytes());
        self.out.extend_from_slice(b"\"}");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::PayloadKind;
    use serde_json::json;

    #[test]
    fn bodies_are_json_with_entries_in_order() {
        let p = |seq| Position { epoch: 5, seq };
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&PollBody::new().finish(p(3))).unwrap(),
            json!({"messages":[],"next":"5:3"})
        );
        let mut body = PollBody::new();
        body.gap("*", Position { epoch: 1, seq: 1 }, p(3), GapReason::Epoch);
        body.message(&FeedMessage {
            topic: "t",
            payload: b"{\"x\":1}",
            kind: PayloadKind::Text,
            position: p(4),
            prev: 0,
        });
        assert_eq!(body.len(), 2);
        let v: serde_json::Value = serde_json::from_slice(&body.finish(p(4))).unwrap();
        assert_eq!(v["messages"][0]["wsgate"], "gap");
        assert_eq!(v["messages"][1]["data"], json!({"x":1}));
        assert_eq!(v["next"], "5:4");
    }
}
