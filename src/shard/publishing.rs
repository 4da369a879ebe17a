//! Client publishing (`{"op":"publish","topic":..,"data":..}`, `docs/client-protocol.md`): off unless
//! `publish_topics` names the topic; the data is capped at `publish_max_bytes`; each connection may publish
//! `publish_rate` messages per second (a token bucket with a burst as large). With token auth on, the
//! connection's token must also name the topic in its publish claim (`forbidden` otherwise). An accepted message goes to the
//! feed thread, which sequences it with the feed's own records, so every subscriber on every loop thread sees
//! one order; nothing is sent back on success (the message arrives like any other).

use std::time::Instant;

use super::access;
use super::input::{self, InputCx};
use super::stats::ShardStats;
use crate::client::control::{ControlError, ErrorCode};
use crate::client::Pattern;
use crate::conn::{Conn, ConnKey, TokenBucket};

/// Handles a `publish` request from connection `key` at once (it needs no other connection): refused with its
/// error code, or handed to the feed thread.
pub fn publish(conn: &mut Conn, key: ConnKey, id: Option<&str>, topic: &str, payload: &str, cx: &mut InputCx<'_>) {
    let settings = cx.settings;
    let now = Instant::now();
    let refusal = if settings.publish_topics.is_empty() {
        Some((ErrorCode::PublishDenied, "publishing is off on this gateway".to_string()))
    } else if !Pattern::Topic(topic.into()).within(&settings.publish_topics) {
        Some((ErrorCode::PublishDenied, format!("publishing on {topic} is not allowed")))
    } else if !access::may_publish(settings, conn.auth.as_deref(), topic, now) {
        ShardStats::add(&cx.stats.auth_forbidden, 1);
        Some((ErrorCode::Forbidden, format!("publishing on {topic} is not allowed by this connection's token")))
    } else if payload.len() > settings.publish_max_bytes {
        Some((
            ErrorCode::TooLarge,
            format!("data of {} bytes; the limit is {}", payload.len(), settings.publish_max_bytes),
        ))
    } else if cx.shared.publish.is_none() {
        Some((ErrorCode::PublishDenied, "this gateway has no feed to publish into".to_string()))
    } else {
        let rate = settings.publish_rate;
        let bucket = cx.publish_buckets.entry(key).or_insert_with(|| TokenBucket::full(rate, now));
        if !bucket.take(rate, rate, now) {
            Some((ErrorCode::RateLimited, format!("more than {rate} messages per second")))
        } else if cx.shared.publish.as_ref().is_some_and(|inbox| inbox.offer(topic, payload.as_bytes()).is_err()) {
            Some((ErrorCode::RateLimited, "the gateway is busy: publish again later".to_string()))
        } else {
            None
        }
    };
    if let Some((code, message)) = refusal {
        let e = ControlError { id: id.map(str::to_string), code, message };
        input::reply_error(conn, key, &e, cx);
    }
}
