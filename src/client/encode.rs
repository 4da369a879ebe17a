//! What clients receive, as bytes: a feed message in each [`Format`](super::Format), and the replies and
//! notices of the client protocol (`docs/client-protocol.md`). Every function appends to a caller's buffer, so a
//! message is encoded once per topic and format into a shared batch and never per subscriber.

use std::io::Write;

use base64::Engine;

use super::position::Position;
use crate::upstream::PayloadKind;

/// The key that marks a reply or notice (never present in an envelope, and the first key of every reply).
pub const RESERVED_KEY: &str = "wsgate";

/// A feed message as the client protocol sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedMessage<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub kind: PayloadKind,
    pub position: Position,
    /// `seq` of the previous message of the topic (0: none the gateway knows of).
    pub prev: u64,
}

/// Appends the envelope of `msg`: `{"topic":T,"epoch":E,"seq":S,"prev":P,` then the payload as `"data":` (a
/// text payload that is one complete JSON value, inserted as it is), `"text":` (any other text, as a JSON
/// string) or `"b64":` (a binary payload, standard base64), then `}`.
pub fn envelope(msg: &FeedMessage<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"topic\":");
    json_str(msg.topic, out);
    let _ = write!(out, ",\"epoch\":{},\"seq\":{},\"prev\":{},", msg.position.epoch, msg.position.seq, msg.prev);
    match msg.kind {
        PayloadKind::Binary => {
            out.extend_from_slice(b"\"b64\":\"");
            let mut b64 = String::new();
            base64::engine::general_purpose::STANDARD.encode_string(msg.payload, &mut b64);
            out.extend_from_slice(b64.as_bytes());
            out.push(b'"');
        }
        PayloadKind::Text if is_json_value(msg.payload) => {
            out.extend_from_slice(b"\"data\":");
            out.extend_from_slice(msg.payload);
        }
        PayloadKind::Text => {
            out.extend_from_slice(b"\"text\":");
            // Text payloads are UTF-8 by the feed's contract; a lossy view never changes valid text.
            json_str(&String::from_utf8_lossy(msg.payload), out);
        }
    }
    out.push(b'}');
}

/// Whether `payload` is exactly one JSON value (surrounding whitespace allowed).
fn is_json_value(payload: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
}

/// A request id as the client sent it (a JSON string or number, kept as its JSON text), echoed in replies.
pub type RequestId<'a> = Option<&'a str>;

/// `{"wsgate":"subscribed","id":..,"topics":[{"topic":P,"position":{..}},..]}`: each pattern as the client wrote
/// it, with the feed's current position (where live delivery starts for it).
pub fn subscribed(id: RequestId<'_>, topics: &[(&str, Position)], out: &mut Vec<u8>) {
    reply_with_positions("subscribed", id, topics, out);
}

/// `{"wsgate":"unsubscribed","id":..,"topics":[{"topic":P,"position":{..}},..]}`: nothing after each position
/// comes for that pattern.
pub fn unsubscribed(id: RequestId<'_>, topics: &[(&str, Position)], out: &mut Vec<u8>) {
    reply_with_positions("unsubscribed", id, topics, out);
}

fn reply_with_positions(kind: &str, id: RequestId<'_>, topics: &[(&str, Position)], out: &mut Vec<u8>) {
    reply_head(kind, id, out);
    out.extend_from_slice(b",\"topics\":[");
    for (i, (topic, position)) in topics.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"topic\":");
        json_str(topic, out);
        out.extend_from_slice(b",\"position\":");
        position.write_json(out);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

/// `{"wsgate":"refreshed","id":..,"exp":E}`: the connection now runs on the new token, which expires at `E`
/// (its `exp`, seconds since the Unix epoch).
pub fn refreshed(id: RequestId<'_>, exp: u64, out: &mut Vec<u8>) {
    reply_head("refreshed", id, out);
    let _ = write!(out, ",\"exp\":{exp}}}");
}

/// `{"wsgate":"error","id":..,"code":C,"message":M}`: `code` is machine-readable, `message` for people.
pub fn error(id: RequestId<'_>, code: &str, message: &str, out: &mut Vec<u8>) {
    reply_head("error", id, out);
    out.extend_from_slice(b",\"code\":");
    json_str(code, out);
    out.extend_from_slice(b",\"message\":");
    json_str(message, out);
    out.push(b'}');
}

/// `{"wsgate":"notice","code":C,"message":M,"close_in_ms":N}`: the gateway will close this connection in about
/// `N` ms for reason `code` (`lifetime`: `max_connection_lifetime`); the client should reconnect (and resume from
/// its last position) before or after that.
pub fn notice(code: &str, message: &str, close_in_ms: u64, out: &mut Vec<u8>) {
    reply_head("notice", None, out);
    out.extend_from_slice(b",\"code\":");
    json_str(code, out);
    out.extend_from_slice(b",\"message\":");
    json_str(message, out);
    let _ = write!(out, ",\"close_in_ms\":{close_in_ms}}}");
}

/// `{"wsgate":"closing","code":1012,"reason":R,"retry_after_ms":N}`: sent to `wsgate.v1.json` clients right
/// before the close frame of a shutdown (1001) or restart (1012) drain; `retry_after_ms` is the suggested
/// reconnect delay (the close reason carries it too).
pub fn closing(code: u16, reason: &str, retry_after_ms: u64, out: &mut Vec<u8>) {
    reply_head("closing", None, out);
    out.extend_from_slice(format!(",\"code\":{code},\"reason\":").as_bytes());
    json_str(reason, out);
    out.extend_from_slice(format!(",\"retry_after_ms\":{retry_after_ms}}}").as_bytes());
}

/// Why messages may be missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// The history no longer reaches back to the requested position.
    History,
    /// The requested position belongs to another epoch (another process, e.g. before a restart).
    Epoch,
    /// The client fell behind and messages were skipped for it (slow-consumer policy `drop`).
    Skipped,
    /// The client fell behind and got only its topic's newest message (slow-consumer policy `conflate`).
    Conflated,
    /// The gateway's loop thread could not keep up with the feed and missed messages (`feed_overflow = drop`).
    Overload,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::History => "history",
            GapReason::Epoch => "epoch",
            GapReason::Skipped => "skipped",
            GapReason::Conflated => "conflated",
            GapReason::Overload => "overload",
        }
    }
}

/// `{"wsgate":"gap","topic":T,"from":{..},"to":{..},"reason":R}`: messages of `topic` after `from` and before
/// `to` may be missing (`to` is where delivery resumes); the client should take a fresh snapshot.
pub fn gap(topic: &str, from: Position, to: Position, reason: GapReason, out: &mut Vec<u8>) {
    reply_head("gap", None, out);
    out.extend_from_slice(b",\"topic\":");
    json_str(topic, out);
    out.extend_from_slice(b",\"from\":");
    from.write_json(out);
    out.extend_from_slice(b",\"to\":");
    to.write_json(out);
    out.extend_from_slice(b",\"reason\":");
    json_str(reason.as_str(), out);
    out.push(b'}');
}

fn reply_head(kind: &str, id: RequestId<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"wsgate\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.push(b'"');
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        out.extend_from_slice(id.as_bytes());
    }
}

/// Appends `s` as a JSON string.
pub fn json_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&s.as_bytes()[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&s.as_bytes()[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const P: Position = Position { epoch: 9, seq: 42 };

    fn parse(out: &[u8]) -> Value {
        serde_json::from_slice(out).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
    }

    fn env(payload: &[u8], kind: PayloadKind) -> Value {
        let mut out = Vec::new();
        envelope(&FeedMessage { topic: "BTC-USD", payload, kind, position: P, prev: 40 }, &mut out);
        parse(&out)
    }

    #[test]
    fn envelopes_carry_json_payloads_as_json_and_the_rest_as_strings() {
        assert_eq!(
            env(br#"{"px":1.5,"q":[1,2]}"#, PayloadKind::Text),
            json!({"topic":"BTC-USD","epoch":9,"seq":42,"prev":40,"data":{"px":1.5,"q":[1,2]}})
        );
        assert_eq!(env(b" 7 ", PayloadKind::Text)["data"], json!(7));
        assert_eq!(env(br#""s""#, PayloadKind::Text)["data"], json!("s"));
        for text in ["plain line", "{broken", "1 2", "tab\there \"q\" \\ \u{1} é"] {
            let v = env(text.as_bytes(), PayloadKind::Text);
            assert_eq!(v["text"], json!(text), "{text:?}");
            assert!(v.get("data").is_none());
        }
        let v = env(&[0, 159, 255], PayloadKind::Binary);
        assert_eq!(v["b64"], json!("AJ//"));
        assert!(v.get(RESERVED_KEY).is_none(), "an envelope never has the reserved key");
    }

    #[test]
    fn closing_notice() {
        let mut out = Vec::new();
        closing(1012, "server \"restarting\"", 1234, &mut out);
        assert_eq!(
            parse(&out),
            json!({"wsgate":"closing","code":1012,"reason":"server \"restarting\"","retry_after_ms":1234})
        );
        assert!(out.starts_with(b"{\"wsgate\":\"closing\""));
    }

    #[test]
    fn replies_and_notices() {
        let mut out = Vec::new();
        subscribed(Some("\"r1\""), &[("BTC-USD", P), ("ETH-*", P)], &mut out);
        assert_eq!(
            parse(&out),
            json!({"wsgate":"subscribed","id":"r1","topics":[
                {"topic":"BTC-USD","position":{"epoch":9,"seq":42}},
                {"topic":"ETH-*","position":{"epoch":9,"seq":42}}]})
        );
        assert!(out.starts_with(b"{\"wsgate\":"), "the reserved key comes first");
        out.clear();
        let p = Position { epoch: 3, seq: 9 };
        unsubscribed(Some("7"), &[("a", p), ("b*", p)], &mut out);
        let at = json!({"epoch":3,"seq":9});
        assert_eq!(
            parse(&out),
            json!({"wsgate":"unsubscribed","id":7,"topics":[{"topic":"a","position":at},{"topic":"b*","position":at}]})
        );
        out.clear();
        refreshed(Some("\"t\""), 1_796_428_860, &mut out);
        assert_eq!(parse(&out), json!({"wsgate":"refreshed","id":"t","exp":1_796_428_860u64}));
        out.clear();
        error(None, "bad_topic", "topic \"a b\" has a space", &mut out);
        assert_eq!(parse(&out), json!({"wsgate":"error","code":"bad_topic","message":"topic \"a b\" has a space"}));
        out.clear();
        notice("lifetime", "closing in \"30\" s", 30000, &mut out);
        assert_eq!(
            parse(&out),
            json!({"wsgate":"notice","code":"lifetime","message":"closing in \"30\" s","close_in_ms":30000})
        );
        assert!(out.starts_with(b"{\"wsgate\":"), "the reserved key comes first");
        out.clear();
        gap("BTC-USD", Position { epoch: 1, seq: 5 }, P, GapReason::Epoch, &mut out);
        assert_eq!(
            parse(&out),
            json!({"wsgate":"gap","topic":"BTC-USD","from":{"epoch":1,"seq":5},"to":{"epoch":9,"seq":42},"reason":"epoch"})
        );
    }

    proptest::proptest! {
        /// Whatever the payload, the envelope is one JSON object that gives the payload back exactly.
        #[test]
        fn every_envelope_is_json_and_round_trips(text in ".{0,40}", bytes in proptest::collection::vec(0u8.., 0..40)) {
            let v = env(text.as_bytes(), PayloadKind::Text);
            let back = match (v.get("data"), v.get("text")) {
                (Some(data), None) => {
                    serde_json::from_str::<Value>(&text).map(|t| t == *data).unwrap_or(false)
                }
                (None, Some(Value::String(t))) => *t == text,
                other => panic!("{other:?}"),
            };
            proptest::prop_assert!(back, "{text:?} -> {v}");
            let v = env(&bytes, PayloadKind::Binary);
            let b64 = v["b64"].as_str().unwrap();
            proptest::prop_assert_eq!(base64::engine::general_purpose::STANDARD.decode(b64).unwrap(), bytes);
        }
    }

    #[test]
    fn json_strings_escape_what_json_requires() {
        for s in ["", "plain", "\"", "\\", "\n\r\t", "\u{0}\u{1f}", "ünï€😀", "</script>"] {
            let mut out = Vec::new();
            json_str(s, &mut out);
            assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
        }
    }
}
