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

    /// Adds entries already encoded: a comma-separated run of JSON values (see [`EncodedRun`]).
    pub fn encoded(&mut self, run: &[u8], entries: usize) {
        if run.is_empty() {
            return;
        }
        if self.entries > 0 {
            self.out.push(b',');
        }
        self.out.extend_from_slice(run);
        self.entries += entries;
    }

    /// The finished body, with `next` as the position to resume from.
    pub fn finish(mut self, next: Position) -> Vec<u8> {
        self.out.extend_from_slice(b"],\"next\":\"");
        self.out.extend_from_slice(next.to_string().as_bytes());
        self.out.extend_from_slice(b"\"}");
        self.out
    }
}

/// A batch's envelopes encoded once, comma-separated, with where each message starts, so that every held
/// request takes its suffix (the messages after its position) without encoding them again.
#[derive(Debug, Default)]
pub struct EncodedRun {
    bytes: Vec<u8>,
    /// (seq, offset of its envelope in `bytes`), seq increasing.
    starts: Vec<(u64, usize)>,
}

impl EncodedRun {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.starts.clear();
    }

    /// Appends a message (seq above every one before it).
    pub fn push(&mut self, msg: &FeedMessage<'_>) {
        if !self.starts.is_empty() {
            self.bytes.push(b',');
        }
        self.starts.push((msg.position.seq, self.bytes.len()));
        encode::envelope(msg, &mut self.bytes);
    }

    /// The run of messages with `seq > since`, how many, and the last one's seq (the response's `next`); `None`
    /// when there is none. Always the whole suffix: with no history kept, what an answer left out could not be
    /// served later.
    pub fn after(&self, since: u64) -> Option<(&[u8], usize, u64)> {
        let i = self.starts.partition_point(|&(seq, _)| seq <= since);
        let from = self.starts.get(i)?.1;
        let &(last, _) = self.starts.last()?;
        Some((&self.bytes[from..], self.starts.len() - i, last))
    }

    /// The answer for a request held at `since` (the head of the feed when it was held): the run's messages after
    /// it, `None` when there is none. A run that starts further on than `since.seq + 1` follows a hole in the
    /// feed (batches dropped for an overloaded loop), so the answer starts with a `gap` notice (topic `*`,
    /// reason `overload`) from `since` to the run's first message: a jump is never silent.
    pub fn held_answer(&self, since: Position) -> Option<Vec<u8>> {
        let (messages, n, last) = self.after(since.seq)?;
        let mut body = PollBody::new();
        let first = self.starts[0].0;
        if first > since.seq + 1 {
            body.gap("*", since, Position { epoch: since.epoch, seq: first }, GapReason::Overload);
        }
        body.encoded(messages, n);
        Some(body.finish(Position { epoch: since.epoch, seq: last }))
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

    #[test]
    fn a_held_request_learns_of_a_hole_before_the_run() {
        let p = |seq| Position { epoch: 5, seq };
        let mut run = EncodedRun::default();
        for seq in 10..=11 {
            run.push(&FeedMessage { topic: "t", payload: b"1", kind: PayloadKind::Text, position: p(seq), prev: 0 });
        }
        let answer = |since| serde_json::from_slice::<serde_json::Value>(&run.held_answer(p(since)).unwrap()).unwrap();
        let v = answer(9);
        assert_eq!(v["messages"].as_array().unwrap().len(), 2, "no hole: {v}");
        assert_eq!((&v["messages"][0]["seq"], &v["next"]), (&json!(10), &json!("5:11")));
        let v = answer(6);
        assert_eq!(
            v["messages"][0],
            json!({"wsgate":"gap","topic":"*","from":{"epoch":5,"seq":6},"to":{"epoch":5,"seq":10},"reason":"overload"})
        );
        assert_eq!(v["messages"][1]["seq"], 10);
        assert!(run.held_answer(p(11)).is_none());
    }

    #[test]
    fn each_request_takes_the_suffix_after_its_position() {
        let mut run = EncodedRun::default();
        for seq in [3, 5, 8] {
            let position = Position { epoch: 1, seq };
            run.push(&FeedMessage { topic: "t", payload: b"1", kind: PayloadKind::Text, position, prev: 0 });
        }
        assert!(run.after(8).is_none());
        for (since, want) in [(0, vec![3, 5, 8]), (3, vec![5, 8]), (6, vec![8])] {
            let (bytes, n, last) = run.after(since).unwrap();
            let mut body = PollBody::new();
            body.encoded(bytes, n);
            let v: serde_json::Value = serde_json::from_slice(&body.finish(Position { epoch: 1, seq: last })).unwrap();
            let seqs: Vec<u64> = v["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
            assert_eq!(seqs, want, "since {since}");
            assert_eq!(v["next"], format!("1:{}", want.last().unwrap()));
        }
    }
}
