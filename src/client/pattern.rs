//! What a subscription names: one topic, or every topic starting with a prefix (`BTC-*`; `*` alone is every
//! topic). A `*` anywhere but at the end is not allowed.

use crate::upstream::topic::{self, TopicError};

/// A subscription's topic or prefix pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Exactly this topic.
    Topic(Box<str>),
    /// Every topic that starts with this (possibly empty) prefix.
    Prefix(Box<str>),
}

impl Pattern {
    /// Parses a subscription: a topic name, or a topic-name prefix followed by `*`.
    pub fn parse(s: &str) -> Result<Pattern, TopicError> {
        match s.strip_suffix('*') {
            Some("") => Ok(Pattern::Prefix("".into())),
            Some(prefix) => {
                topic::check(prefix.as_bytes())?;
                Ok(Pattern::Prefix(prefix.into()))
            }
            None => Ok(Pattern::Topic(topic::check(s.as_bytes())?.into())),
        }
    }

    /// Whether `topic` is one this pattern names.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Topic(t) => **t == *topic,
            Pattern::Prefix(p) => topic.starts_with(&**p),
        }
    }

    /// Whether this pattern stays within `allowed` (an empty list allows everything): a topic any allowed
    /// pattern names, or a prefix at least as narrow as an allowed prefix.
    pub fn within(&self, allowed: &[Pattern]) -> bool {
        allowed.is_empty()
            || allowed.iter().any(|a| match (a, self) {
                (Pattern::Prefix(allowed), Pattern::Prefix(asked)) => asked.starts_with(&**allowed),
                (_, Pattern::Topic(name)) => a.matches(name),
                (Pattern::Topic(_), Pattern::Prefix(_)) => false,
            })
    }

    /// The pattern as a client writes it.
    pub fn as_written(&self) -> String {
        match self {
            Pattern::Topic(t) => t.to_string(),
            Pattern::Prefix(p) => format!("{p}*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_prefixes() {
        let btc = Pattern::parse("BTC-*").unwrap();
        assert!(btc.matches("BTC-USD") && btc.matches("BTC-") && !btc.matches("ETH-USD") && !btc.matches("BTC"));
        let exact = Pattern::parse("BTC-USD").unwrap();
        assert!(exact.matches("BTC-USD") && !exact.matches("BTC-USDT"));
        assert!(Pattern::parse("*").unwrap().matches("anything"));
        assert_eq!(btc.as_written(), "BTC-*");
        assert_eq!(exact.as_written(), "BTC-USD");
        assert_eq!(Pattern::parse("B*C"), Err(TopicError::BadChar(b'*')));
        assert_eq!(Pattern::parse("**"), Err(TopicError::BadChar(b'*')));
        assert_eq!(Pattern::parse(""), Err(TopicError::Empty));
        assert_eq!(Pattern::parse("a b*"), Err(TopicError::BadChar(b' ')));
    }

    #[test]
    fn within_an_allow_list() {
        let p = |s| Pattern::parse(s).unwrap();
        let list = [p("BTC-*"), p("ETH-USD")];
        assert!(p("BTC-USD").within(&list) && p("BTC-X*").within(&list) && p("ETH-USD").within(&list));
        assert!(!p("ETH-*").within(&list) && !p("*").within(&list) && !p("SOL").within(&list));
        assert!(p("*").within(&[]));
    }
}
