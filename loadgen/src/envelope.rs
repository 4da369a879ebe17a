//! What a topic subscriber reads from the gateway (`docs/client-protocol.md`): `wsgate.v1.json` data envelopes
//! and the replies and notices that start with the reserved key `"wsgate"`. Pure functions over one message's
//! bytes.
//!
//! Envelopes are read without a JSON parser, because every delivery goes through here: the gateway writes
//! `{"topic":T,"epoch":E,"seq":S,"prev":P,"data":…}` with the keys in that order (`src/client/encode.rs`), and a
//! topic name never needs escaping (`docs/feed-protocol.md`). Anything else — another key order, `text`/`b64`
//! instead of `data` — is not an envelope of the load generator's feed and is counted as unparsed by the caller.
//! Replies are rare (one per subscribe, one per gap) and are parsed with `serde_json`.

use serde::Deserialize;

/// The reserved first key of every reply and notice, as it starts the message.
const REPLY_PREFIX: &[u8] = b"{\"wsgate\":";

/// A data envelope: where the gateway put the message, and the payload it carried (the load generator's line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub topic: &'a [u8],
    pub epoch: u64,
    pub seq: u64,
    pub prev: u64,
    /// The `data` value, up to the envelope's closing brace.
    pub data: &'a [u8],
}

/// Reads a `wsgate.v1.json` envelope whose payload is a JSON value (`"data"`); `None` for anything else.
pub fn parse_envelope(msg: &[u8]) -> Option<Envelope<'_>> {
    let rest = msg.strip_prefix(b"{\"topic\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let (topic, rest) = (&rest[..end], &rest[end + 1..]);
    let (epoch, rest) = number_after(rest, b",\"epoch\":")?;
    let (seq, rest) = number_after(rest, b",\"seq\":")?;
    let (prev, rest) = number_after(rest, b",\"prev\":")?;
    let data = rest.strip_prefix(b",\"data\":")?.strip_suffix(b"}")?;
    Some(Envelope { topic, epoch, seq, prev, data })
}

fn number_after<'a>(buf: &'a [u8], key: &[u8]) -> Option<(u64, &'a [u8])> {
    let rest = buf.strip_prefix(key)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let value = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    Some((value, &rest[digits..]))
}

/// Whether a message is a reply or notice rather than data (in either format).
pub fn is_reply(msg: &[u8]) -> bool {
    msg.starts_with(REPLY_PREFIX)
}

/// A position `{"epoch":E,"seq":S}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
}

/// One pattern of a `subscribed` reply with the feed's position when it was applied.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Subscribed {
    pub topic: String,
    pub position: Position,
}

/// The replies and notices the load generator acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Subscribed(Vec<Subscribed>),
    /// Messages of `topic` after `from` and before `to` may be missing.
    Gap {
        topic: String,
        from: Position,
        to: Position,
        reason: String,
    },
    Error {
        code: String,
        message: String,
    },
    /// A reply the load generator has no use for (`unsubscribed`), or one it cannot read.
    Other(String),
}

#[derive(Deserialize)]
struct RawReply {
    wsgate: String,
    #[serde(default)]
    topics: Option<serde_json::Value>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    from: Option<Position>,
    #[serde(default)]
    to: Option<Position>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Parses a reply or notice (a message for which [`is_reply`] holds).
pub fn parse_reply(msg: &[u8]) -> Reply {
    let Ok(raw) = serde_json::from_slice::<RawReply>(msg) else {
        return Reply::Other(String::from_utf8_lossy(msg).into_owned());
    };
    match raw.wsgate.as_str() {
        "subscribed" => match raw.topics.map(serde_json::from_value::<Vec<Subscribed>>) {
            Some(Ok(topics)) => Reply::Subscribed(topics),
            _ => Reply::Other(raw.wsgate),
        },
        "gap" => match (raw.topic, raw.from, raw.to) {
            (Some(topic), Some(from), Some(to)) => {
                Reply::Gap { topic, from, to, reason: raw.reason.unwrap_or_default() }
            }
            _ => Reply::Other(raw.wsgate),
        },
        "error" => Reply::Error { code: raw.code.unwrap_or_default(), message: raw.message.unwrap_or_default() },
        _ => Reply::Other(raw.wsgate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_gateway_envelope() {
        let msg = br#"{"topic":"T0042","epoch":4503599627370495,"seq":1042,"prev":1037,"data":{"seq":7,"ts":9}}"#;
        let e = parse_envelope(msg).unwrap();
        assert_eq!(
            e,
            Envelope {
                topic: b"T0042",
                epoch: 4_503_599_627_370_495,
                seq: 1042,
                prev: 1037,
                data: br#"{"seq":7,"ts":9}"#
            }
        );
        assert!(!is_reply(msg));
        for bad in [
            &br#"{"topic":"T","epoch":1,"seq":2,"prev":0,"text":"hello"}"#[..],
            br#"{"topic":"T","epoch":1,"seq":2,"data":{}}"#,
            br#"{"topic":"T","epoch":1,"seq":,"prev":0,"data":{}}"#,
            br#"{"seq":7,"ts":9}"#,
            br#"{"topic":"T","epoch":1,"seq":2,"prev":0,"data":5"#,
        ] {
            assert_eq!(parse_envelope(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn reads_replies_and_notices() {
        let sub = br#"{"wsgate":"subscribed","id":"r1","topics":[{"topic":"A","position":{"epoch":3,"seq":10}}]}"#;
        assert!(is_reply(sub));
        assert_eq!(
            parse_reply(sub),
            Reply::Subscribed(vec![Subscribed { topic: "A".into(), position: Position { epoch: 3, seq: 10 } }])
        );
        let gap =
            br#"{"wsgate":"gap","topic":"A","from":{"epoch":3,"seq":4},"to":{"epoch":3,"seq":9},"reason":"history"}"#;
        assert_eq!(
            parse_reply(gap),
            Reply::Gap {
                topic: "A".into(),
                from: Position { epoch: 3, seq: 4 },
                to: Position { epoch: 3, seq: 9 },
                reason: "history".into()
            }
        );
        let err = br#"{"wsgate":"error","code":"bad_topic","message":"no"}"#;
        assert_eq!(parse_reply(err), Reply::Error { code: "bad_topic".into(), message: "no".into() });
        assert_eq!(
            parse_reply(br#"{"wsgate":"unsubscribed","topics":[{"topic":"A","position":{"epoch":1,"seq":2}}]}"#),
            Reply::Other("unsubscribed".into())
        );
        assert!(matches!(parse_reply(br#"{"wsgate":"gap"}"#), Reply::Other(_)));
        assert!(matches!(parse_reply(br#"{"wsgate":"#), Reply::Other(_)));
    }
}
