//! Control messages from clients (`docs/client-protocol.md`): JSON text in, a typed request or an error with a
//! machine-readable code out. Checks what one message can show (syntax, fields, topic names, the per-request
//! limit); what depends on the connection or the gateway (its subscriptions so far, allowed topics, publish
//! rights and rates) is the engine's business, reported with the same codes.

use serde_json::{Map, Value};

use super::pattern::Pattern;
use super::position::{Position, MAX_PART};
use crate::upstream::topic;

/// Longest request id echoed back, in bytes of its JSON text.
pub const MAX_ID_BYTES: usize = 128;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Subscribe to topics or patterns; replay from `since` first; send each topic's last value first.
    Subscribe {
        id: Option<String>,
        patterns: Vec<Pattern>,
        since: Option<Position>,
        snapshot: bool,
    },
    Unsubscribe {
        id: Option<String>,
        patterns: Vec<Pattern>,
    },
    /// Publish `payload` (text) on `topic`.
    Publish {
        id: Option<String>,
        topic: String,
        payload: String,
    },
    /// Replace the connection's token (token auth) before it expires.
    Refresh {
        id: Option<String>,
        token: Secret,
    },
}

/// A credential from a client: shown as `<redacted>` by `Debug`, so that a logged request never carries it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Control {
    /// The request id as its JSON text (a string with its quotes, or a number), to echo in the reply.
    pub fn id(&self) -> Option<&str> {
        match self {
            Control::Subscribe { id, .. }
            | Control::Unsubscribe { id, .. }
            | Control::Publish { id, .. }
            | Control::Refresh { id, .. } => id.as_deref(),
        }
    }
}

/// Error codes of the client protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadJson,
    BadRequest,
    UnknownOp,
    BadTopic,
    BadPosition,
    TooManySubscriptions,
    UnknownTopic,
    PublishDenied,
    TooLarge,
    RateLimited,
    /// Token auth: the token of a `refresh` was refused (invalid, expired, or for another subject).
    Unauthorized,
    /// Token auth: the connection's token does not allow this topic (subscribe or publish).
    Forbidden,
    /// Token auth: the token expired; the event stream ends (SSE; a WebSocket is closed with 4001 instead).
    TokenExpired,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::BadTopic => "bad_topic",
            ErrorCode::BadPosition => "bad_position",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::UnknownTopic => "unknown_topic",
            ErrorCode::PublishDenied => "publish_denied",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TokenExpired => "token_expired",
        }
    }
}

/// A request that cannot be served, with the id to answer it under (when it could be read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ControlError {
    pub id: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

/// Parses one control message. `max_topics` bounds the topics of one request (the connection's own limit is
/// checked by the engine).
pub fn parse(msg: &[u8], max_topics: usize) -> Result<Control, ControlError> {
    let fail = |id: &Option<String>, code, message: String| ControlError { id: id.clone(), code, message };
    let value: Value =
        serde_json::from_slice(msg).map_err(|e| fail(&None, ErrorCode::BadJson, format!("not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(fail(&None, ErrorCode::BadJson, "a control message is a JSON object".into()));
    };
    let id = match obj.get("id") {
        None => None,
        Some(v @ (Value::String(_) | Value::Number(_))) => {
            let text = v.to_string();
            if text.len() > MAX_ID_BYTES {
                return Err(fail(&None, ErrorCode::BadRequest, format!("id longer than {MAX_ID_BYTES} bytes")));
            }
            Some(text)
        }
        Some(_) => return Err(fail(&None, ErrorCode::BadRequest, "id must be a string or a number".into())),
    };
    let op = match obj.get("op") {
        Some(Value::String(op)) => op.as_str(),
        Some(_) => return Err(fail(&id, ErrorCode::BadRequest, "op must be a string".into())),
        None => return Err(fail(&id, ErrorCode::BadRequest, "op is missing".into())),
    };
    let allowed: &[&str] = match op {
        "subscribe" => &["op", "id", "topics", "since", "snapshot"],
        "unsubscribe" => &["op", "id", "topics"],
        "publish" => &["op", "id", "topic", "data"],
        "refresh" => &["op", "id", "token"],
        other => {
            let message = format!("unknown op {}: use subscribe, unsubscribe, publish or refresh", shown(other));
            return Err(fail(&id, ErrorCode::UnknownOp, message));
        }
    };
    if let Some(extra) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(fail(&id, ErrorCode::BadRequest, format!("{op} has no field {}", shown(extra))));
    }
    let body = || -> Result<Control, ControlError> {
        Ok(match op {
            "subscribe" => {
                let patterns = patterns(&obj, max_topics)?;
                let since = obj.get("since").map(position).transpose()?;
                let snapshot = match obj.get("snapshot") {
                    None => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(bad(ErrorCode::BadRequest, "snapshot must be true or false")),
                };
                Control::Subscribe { id: None, patterns, since, snapshot }
            }
            "unsubscribe" => Control::Unsubscribe { id: None, patterns: patterns(&obj, max_topics)? },
            "refresh" => match obj.get("token") {
                Some(Value::String(t)) if !t.is_empty() => Control::Refresh { id: None, token: Secret(t.clone()) },
                _ => return Err(bad(ErrorCode::BadRequest, "refresh needs a token (a non-empty string)")),
            },
            _ => {
                let topic = match obj.get("topic") {
                    Some(Value::String(t)) => topic::check(t.as_bytes())
                        .map_err(|e| bad(ErrorCode::BadTopic, &format!("topic {}: {e}", shown(t))))?
                        .to_string(),
                    Some(_) => return Err(bad(ErrorCode::BadRequest, "topic must be a string")),
                    None => return Err(bad(ErrorCode::BadRequest, "publish needs a topic")),
                };
                let payload = match obj.get("data") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => return Err(bad(ErrorCode::BadRequest, "publish needs data")),
                };
                if payload.is_empty() {
                    return Err(bad(ErrorCode::BadRequest, "data is empty"));
                }
                Control::Publish { id: None, topic, payload }
            }
        })
    };
    match body() {
        Ok(control) => Ok(with_id(control, id)),
        Err(e) => Err(ControlError { id, ..e }),
    }
}

/// An error without an id yet (the caller adds it).
fn bad(code: ErrorCode, message: &str) -> ControlError {
    ControlError { id: None, code, message: message.to_string() }
}

fn with_id(control: Control, new_id: Option<String>) -> Control {
    match control {
        Control::Subscribe { patterns, since, snapshot, .. } => {
            Control::Subscribe { id: new_id, patterns, since, snapshot }
        }
        Control::Unsubscribe { patterns, .. } => Control::Unsubscribe { id: new_id, patterns },
        Control::Publish { topic, payload, .. } => Control::Publish { id: new_id, topic, payload },
        Control::Refresh { token, .. } => Control::Refresh { id: new_id, token },
    }
}

/// Longest client text quoted in an error message, in bytes of its escaped form.
const SHOWN_BYTES: usize = 60;

/// Client text as quoted in an error message: escaped (`{:?}`: control characters never reach the client raw)
/// and cut to at most [`SHOWN_BYTES`] escaped bytes, with `…` where it was cut. Fuzzing found that cutting
/// before escaping is not enough: one character can escape to ten bytes.
fn shown(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        let escaped: String = c.escape_debug().collect();
        if out.len() + escaped.len() > SHOWN_BYTES {
            out.push('…');
            break;
        }
        out.push_str(&escaped);
    }
    out.push('"');
    out
}

fn patterns(obj: &Map<String, Value>, max_topics: usize) -> Result<Vec<Pattern>, ControlError> {
    let Some(Value::Array(items)) = obj.get("topics") else {
        return Err(bad(ErrorCode::BadRequest, "topics must be an array of topic names or patterns"));
    };
    if items.is_empty() {
        return Err(bad(ErrorCode::BadRequest, "topics is empty"));
    }
    if items.len() > max_topics {
        let message = format!("{} topics in one request; the limit is {max_topics}", items.len());
        return Err(bad(ErrorCode::TooManySubscriptions, &message));
    }
    let mut out: Vec<Pattern> = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(s) = item else {
            return Err(bad(ErrorCode::BadRequest, "topics must be strings"));
        };
        let pattern = Pattern::parse(s).map_err(|e| bad(ErrorCode::BadTopic, &format!("topic {}: {e}", shown(s))))?;
        if !out.contains(&pattern) {
            out.push(pattern);
        }
    }
    Ok(out)
}

fn position(v: &Value) -> Result<Position, ControlError> {
    let err = || bad(ErrorCode::BadPosition, "since must be {\"epoch\":E,\"seq\":S} with integers below 2^53");
    let Value::Object(o) = v else { return Err(err()) };
    if o.len() != 2 {
        return Err(err());
    }
    let part = |k: &str| o.get(k).and_then(Value::as_u64).filter(|&n| n <= MAX_PART).ok_or_else(err);
    Ok(Position { epoch: part("epoch")?, seq: part("seq")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(msg: &str) -> Control {
        parse(msg.as_bytes(), 4).unwrap_or_else(|e| panic!("{msg}: {e}"))
    }

    fn err(msg: &str) -> (ErrorCode, Option<String>) {
        let e = parse(msg.as_bytes(), 4).expect_err(msg);
        assert!(!e.message.is_empty());
        (e.code, e.id)
    }

    fn pat(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn subscribe_unsubscribe_publish() {
        assert_eq!(
            ok(
                r#"{"op":"subscribe","id":"r1","topics":["BTC-USD","ETH-*","BTC-USD"],"since":{"epoch":3,"seq":9},"snapshot":true}"#
            ),
            Control::Subscribe {
                id: Some("\"r1\"".into()),
                patterns: vec![pat("BTC-USD"), pat("ETH-*")],
                since: Some(Position { epoch: 3, seq: 9 }),
                snapshot: true
            }
        );
        assert_eq!(
            ok(r#"{"topics":["*"],"op":"subscribe"}"#),
            Control::Subscribe { id: None, patterns: vec![pat("*")], since: None, snapshot: false }
        );
        assert_eq!(
            ok(r#"{"op":"unsubscribe","id":7,"topics":["a"]}"#),
            Control::Unsubscribe { id: Some("7".into()), patterns: vec![pat("a")] }
        );
        assert_eq!(
            ok(r#"{"op":"publish","topic":"chat","data":"hi \"you\""}"#),
            Control::Publish { id: None, topic: "chat".into(), payload: "hi \"you\"".into() }
        );
        let Control::Publish { payload, .. } = ok(r#"{"op":"publish","topic":"quiz","data":{"answer":[1, 2]}}"#) else {
            panic!()
        };
        assert_eq!(payload, r#"{"answer":[1,2]}"#, "non-string data travels as its JSON text");
        assert_eq!(ok(r#"{"op":"subscribe","id":"x","topics":["a"]}"#).id(), Some("\"x\""));
        let refresh = ok(r#"{"op":"refresh","id":1,"token":"aaa.bbb.ccc"}"#);
        assert_eq!(refresh, Control::Refresh { id: Some("1".into()), token: Secret("aaa.bbb.ccc".into()) });
        assert!(!format!("{refresh:?}").contains("aaa"), "a token never shows in a log line");
    }

    #[test]
    fn every_bad_input_gets_its_code_and_keeps_the_id() {
        use ErrorCode::*;
        let id = Some("\"q\"".to_string());
        for (msg, code) in [
            ("", BadJson),
            ("not json", BadJson),
            ("[1]", BadJson),
            (r#"{"op":"subscribe","topics":["a"]"#, BadJson),
            (r#"{"topics":["a"]}"#, BadRequest),
            (r#"{"op":5}"#, BadRequest),
            (r#"{"op":"subscribe","id":{"a":1},"topics":["a"]}"#, BadRequest),
        ] {
            assert_eq!(err(msg), (code, None), "{msg}");
        }
        for (msg, code) in [
            (r#"{"op":"subscribbe","id":"q"}"#, UnknownOp),
            (r#"{"op":"subscribe","id":"q"}"#, BadRequest),
            (r#"{"op":"subscribe","id":"q","topics":[]}"#, BadRequest),
            (r#"{"op":"subscribe","id":"q","topics":"a"}"#, BadRequest),
            (r#"{"op":"subscribe","id":"q","topics":[1]}"#, BadRequest),
            (r#"{"op":"subscribe","id":"q","topics":["a"],"extra":1}"#, BadRequest),
            (r#"{"op":"subscribe","id":"q","topics":["a"],"snapshot":"yes"}"#, BadRequest),
            (r#"{"op":"subscribe","id":"q","topics":["a b"]}"#, BadTopic),
            (r#"{"op":"subscribe","id":"q","topics":["a*b"]}"#, BadTopic),
            (r#"{"op":"subscribe","id":"q","topics":[""]}"#, BadTopic),
            (r#"{"op":"subscribe","id":"q","topics":["a","b","c","d","e"]}"#, TooManySubscriptions),
            (r#"{"op":"subscribe","id":"q","topics":["a"],"since":"3:4"}"#, BadPosition),
            (r#"{"op":"subscribe","id":"q","topics":["a"],"since":{"epoch":3}}"#, BadPosition),
            (r#"{"op":"subscribe","id":"q","topics":["a"],"since":{"epoch":-1,"seq":2}}"#, BadPosition),
            (r#"{"op":"subscribe","id":"q","topics":["a"],"since":{"epoch":1.5,"seq":2}}"#, BadPosition),
            (r#"{"op":"subscribe","id":"q","topics":["a"],"since":{"epoch":9007199254740992,"seq":2}}"#, BadPosition),
            (r#"{"op":"subscribe","id":"q","topics":["a"],"since":{"epoch":1,"seq":2,"x":3}}"#, BadPosition),
            (r#"{"op":"unsubscribe","id":"q","topics":["a"],"since":{"epoch":1,"seq":2}}"#, BadRequest),
            (r#"{"op":"publish","id":"q","topic":"a*","data":"x"}"#, BadTopic),
            (r#"{"op":"publish","id":"q","topic":"a"}"#, BadRequest),
            (r#"{"op":"publish","id":"q","data":"x"}"#, BadRequest),
            (r#"{"op":"publish","id":"q","topic":"a","data":""}"#, BadRequest),
            (r#"{"op":"refresh","id":"q"}"#, BadRequest),
            (r#"{"op":"refresh","id":"q","token":""}"#, BadRequest),
            (r#"{"op":"refresh","id":"q","token":5}"#, BadRequest),
            (r#"{"op":"refresh","id":"q","token":"a","topics":["x"]}"#, BadRequest),
        ] {
            assert_eq!(err(msg), (code, id.clone()), "{msg}");
        }
        let long_id = format!(r#"{{"op":"subscribe","id":"{}","topics":["a"]}}"#, "i".repeat(200));
        assert_eq!(err(&long_id).0, BadRequest);
    }

    #[test]
    fn error_messages_name_the_problem_and_stay_short() {
        let e = parse(r#"{"op":"subscribe","topics":["BTC USD"]}"#.as_bytes(), 4).unwrap_err();
        assert!(e.message.contains("\"BTC USD\"") && e.message.contains("outside"), "{}", e.message);
        let huge = format!(r#"{{"op":"{}"}}"#, "x".repeat(10_000));
        let e = parse(huge.as_bytes(), 4).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownOp);
        assert!(e.message.len() < 128, "{}", e.message);
        // Found by fuzzing: characters that escape long (DEL is \u{7f}) must not stretch the message.
        let dels = format!("{{\"op\":\"unsubscribe\",\"topics\":[\"{}\"]}}", "\u{7f}".repeat(60));
        let e = parse(dels.as_bytes(), 4).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadTopic);
        assert!(e.message.len() < 200, "{} bytes: {}", e.message.len(), e.message);
        for field in ["\u{10ffff}", "\u{7f}", "\n"] {
            let msg = format!("{{\"op\":\"subscribe\",\"topics\":[\"a\"],\"{}\":1}}", field.repeat(100));
            let e = parse(msg.as_bytes(), 4).unwrap_err();
            assert!(e.message.len() < 200, "{} bytes: {}", e.message.len(), e.message);
        }
    }
}
