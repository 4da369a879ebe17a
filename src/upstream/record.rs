//! What a feed record means: its topic and its payload, by the framing of the source it came from. Sans-IO.
//!
//! Framings (`docs/feed-protocol.md`):
//! - [`Framing::Auto`] (default): one message per line. A line that is a JSON object whose top-level field
//!   `topic_field` is a string is routed by it (the line is the payload, unchanged); every other line — not
//!   JSON, JSON without that field, or JSON with a syntax error before it — goes to `default_topic`, so plain
//!   line feeds keep working. A topic field that is not a string, or not a valid topic name, drops the line.
//! - [`Framing::Tab`]: one message per line, `TOPIC<TAB>payload`.
//! - [`Framing::Binary`]: length-prefixed records (`upstream::binary_codec`), payload forwarded as binary.
//!
//! Dropped records are reported with a [`Dropped`] reason, which the feed counts and logs; nothing here knows
//! sockets, clocks or counters.

use serde::{Deserialize, Serialize};

use super::json_field::{self, Field};
use super::topic;

/// How a source frames its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// Lines; JSON lines with the topic field are routed by it, others go to the default topic.
    #[default]
    Auto,
    /// Lines of `TOPIC<TAB>payload`.
    Tab,
    /// Length-prefixed binary records: `u8` topic length, topic, `u32` big-endian payload length, payload.
    Binary,
}

/// Whether a payload goes to clients as a text or a binary message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// Valid UTF-8 (every line framing).
    Text,
    /// Any bytes (binary framing).
    Binary,
}

/// Why a record was not forwarded. Every reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Longer than `max_line_bytes` (a line, or a binary payload).
    TooLong,
    /// A line that is not valid UTF-8.
    InvalidUtf8,
    /// Tab framing: no tab in the line.
    NoTab,
    /// The topic is empty, too long, has a character outside the topic set, or a bad JSON escape.
    BadTopic,
    /// Auto framing: the topic field's value is not a string.
    TopicNotString,
    /// Nothing after the topic (tab framing), or an empty binary payload.
    EmptyPayload,
    /// A new topic while the feed already has `max_topics` topics (none idle long enough to expire).
    TopicLimit,
    /// Positions from upstream (`upstream_epoch`): a line without the upstream's sequence number.
    NoSeq,
    /// Positions from upstream: a sequence number not above the last one published — the upstream replaying
    /// what the gateway already has (after a reconnect), or an upstream that restarted its numbering.
    Replayed,
}

impl Dropped {
    /// Every reason, in the order of [`Dropped::index`].
    pub const ALL: [Dropped; 9] = [
        Dropped::TooLong,
        Dropped::InvalidUtf8,
        Dropped::NoTab,
        Dropped::BadTopic,
        Dropped::TopicNotString,
        Dropped::EmptyPayload,
        Dropped::TopicLimit,
        Dropped::NoSeq,
        Dropped::Replayed,
    ];

    /// Position in [`Dropped::ALL`] (an array index for counters).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name used in `/healthz`, `/metrics` and in log lines.
    pub const fn as_str(self) -> &'static str {
        match self {
            Dropped::TooLong => "too_long",
            Dropped::InvalidUtf8 => "invalid_utf8",
            Dropped::NoTab => "no_tab",
            Dropped::BadTopic => "bad_topic",
            Dropped::TopicNotString => "topic_not_string",
            Dropped::EmptyPayload => "empty_payload",
            Dropped::TopicLimit => "topic_limit",
            Dropped::NoSeq => "no_seq",
            Dropped::Replayed => "replayed",
        }
    }
}

/// A record's routing: where it goes and what goes there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
}

/// How lines are routed (the topic field and the default topic; both checked at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    pub topic_field: String,
    pub default_topic: String,
}

impl Default for Routing {
    fn default() -> Self {
        Routing { topic_field: "topic".into(), default_topic: "default".into() }
    }
}

impl Routing {
    /// Routes one line (never empty, valid UTF-8) of a line framing. `scratch` holds a topic that had to be
    /// unescaped.
    pub fn route_line<'a>(
        &'a self,
        line: &'a str,
        framing: Framing,
        scratch: &'a mut String,
    ) -> Result<Routed<'a>, Dropped> {
        match framing {
            Framing::Tab => {
                let (name, payload) = line.split_once('\t').ok_or(Dropped::NoTab)?;
                let topic = topic::check(name.as_bytes()).map_err(|_| Dropped::BadTopic)?;
                if payload.is_empty() {
                    return Err(Dropped::EmptyPayload);
                }
                Ok(Routed { topic, payload: payload.as_bytes() })
            }
            // Binary sources never produce lines; routing one as auto is the safe reading.
            Framing::Auto | Framing::Binary => {
                let topic = match json_field::find_top_level(line.as_bytes(), &self.topic_field) {
                    Field::String { raw, escaped: false } => topic::check(raw).map_err(|_| Dropped::BadTopic)?,
                    Field::String { raw, escaped: true } => {
                        scratch.clear();
                        json_field::unescape(raw, scratch).map_err(|()| Dropped::BadTopic)?;
                        topic::check(scratch.as_bytes()).map_err(|_| Dropped::BadTopic)?
                    }
                    Field::NotString => return Err(Dropped::TopicNotString),
                    Field::Absent | Field::NotAnObject | Field::Invalid => self.default_topic.as_str(),
                };
                Ok(Routed { topic, payload: line.as_bytes() })
            }
        }
    }

    /// Routes one binary record.
    pub fn route_binary<'a>(&self, topic: &'a [u8], payload: &'a [u8]) -> Result<Routed<'a>, Dropped> {
        let topic = topic::check(topic).map_err(|_| Dropped::BadTopic)?;
        if payload.is_empty() {
            return Err(Dropped::EmptyPayload);
        }
        Ok(Routed { topic, payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto(line: &str) -> Result<(String, String), Dropped> {
        let routing = Routing::default();
        let mut scratch = String::new();
        routing
            .route_line(line, Framing::Auto, &mut scratch)
            .map(|r| (r.topic.to_string(), String::from_utf8(r.payload.to_vec()).unwrap()))
    }

    #[test]
    fn auto_routes_json_by_the_topic_field_and_everything_else_to_the_default() {
        let line = r#"{"topic":"BTC-USD","px":1}"#;
        assert_eq!(auto(line), Ok(("BTC-USD".into(), line.into())), "the payload is the line, unchanged");
        let escaped = r#"{"\u0074opic":"ETH\/USD","px":1}"#;
        assert_eq!(auto(escaped), Ok(("ETH/USD".into(), escaped.into())));
        for plain in ["hello", "42", r#"{"px":1}"#, r#"{"book":{"topic":"X"}}"#, "{not json", "[1,2]"] {
            assert_eq!(auto(plain), Ok(("default".into(), plain.into())), "{plain}");
        }
        assert_eq!(auto(r#"{"topic":7}"#), Err(Dropped::TopicNotString));
        assert_eq!(auto(r#"{"topic":"a b"}"#), Err(Dropped::BadTopic));
        assert_eq!(auto(r#"{"topic":""}"#), Err(Dropped::BadTopic));
        assert_eq!(auto(r#"{"topic":"\ud800"}"#), Err(Dropped::BadTopic), "a lone surrogate");
    }

    #[test]
    fn a_configured_field_and_default() {
        let routing = Routing { topic_field: "sym".into(), default_topic: "misc".into() };
        let mut scratch = String::new();
        let r = routing.route_line(r#"{"topic":"X","sym":"Y"}"#, Framing::Auto, &mut scratch).unwrap();
        assert_eq!(r.topic, "Y");
        let r = routing.route_line(r#"{"topic":"X"}"#, Framing::Auto, &mut scratch).unwrap();
        assert_eq!(r.topic, "misc");
    }

    #[test]
    fn tab_lines() {
        let routing = Routing::default();
        let mut s = String::new();
        let r = routing.route_line("BTC-USD\t{\"px\":1}\tmore", Framing::Tab, &mut s).unwrap();
        assert_eq!((r.topic, r.payload), ("BTC-USD", &b"{\"px\":1}\tmore"[..]), "split at the first tab only");
        assert_eq!(routing.route_line("no tab here", Framing::Tab, &mut s), Err(Dropped::NoTab));
        assert_eq!(routing.route_line("\tx", Framing::Tab, &mut s), Err(Dropped::BadTopic));
        assert_eq!(routing.route_line("a*\tx", Framing::Tab, &mut s), Err(Dropped::BadTopic));
        assert_eq!(routing.route_line("a\t", Framing::Tab, &mut s), Err(Dropped::EmptyPayload));
    }

    #[test]
    fn binary_records() {
        let routing = Routing::default();
        assert_eq!(routing.route_binary(b"t", &[0, 255]), Ok(Routed { topic: "t", payload: &[0, 255] }));
        assert_eq!(routing.route_binary(b"", &[1]), Err(Dropped::BadTopic));
        assert_eq!(routing.route_binary(b"t", &[]), Err(Dropped::EmptyPayload));
    }

    #[test]
    fn reasons_index_their_table() {
        for (i, r) in Dropped::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
