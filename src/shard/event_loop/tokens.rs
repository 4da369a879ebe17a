//! Token auth on open connections: each ends when its token expires (a WebSocket is closed with 4001 `token
//! expired`, an event stream gets a `token_expired` error event and ends, a held long-poll is answered at once,
//! empty), unless a WebSocket client refreshed it first (`{"op":"refresh","token":..}`). A refresh puts the new
//! token's claims in place of the old ones, never beside them: what the new claims do not cover is unsubscribed
//! (with an `unsubscribed` notice) before the `refreshed` reply.

use std::time::Instant;

use super::subscriptions::Notice;
use super::Shard;
use crate::client::control::ErrorCode;
use crate::client::encode;
use crate::client::poll::PollBody;
use crate::client::{Pattern, Position};
use crate::conn::{ConnKey, Phase};
use crate::reactor::Reactor;
use crate::shard::access::{self, CLOSE_TOKEN_EXPIRED};
use crate::shard::input::{self, InputCx};
use crate::shard::stats::ShardStats;

/// Stale expiry entries (of refreshed tokens) kept beyond twice the connections, before a compaction.
const EXPIRY_SLACK: usize = 64;

impl<R: Reactor> Shard<R> {
    /// Deadline phase: ends the connections whose token expired by `now`.
    pub(super) fn expire_tokens(&mut self, now: Instant) {
        while let Some((at, key)) = self.auth_expiries.pop_expired(now) {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            // A refreshed token has a later entry of its own; a closing connection ends anyway.
            if conn.auth.as_ref().is_none_or(|a| a.deadline != at) || conn.phase != Phase::Open {
                continue;
            }
            ShardStats::add(&self.shared.shards[self.id].auth_expired, 1);
            tracing::debug!(shard = self.id, ?key, "token expired: connection ended");
            if conn.held_poll {
                // Answered now, empty, from where it stands: its next poll needs a fresh token.
                let Some(i) = self.held.iter().position(|h| h.key == key) else { continue };
                let h = self.held.swap_remove(i);
                let next = Position { epoch: self.epoch, seq: h.since_seq.max(self.last_seq) };
                let mut cx = input_cx!(self);
                input::answer_poll(conn, key, PollBody::new().finish(next), h.cors.as_deref(), &mut cx);
            } else if conn.sse {
                let mut json = Vec::new();
                let message = "token expired: reconnect with a fresh token (Last-Event-ID resumes)";
                encode::error(None, ErrorCode::TokenExpired.as_str(), message, &mut json);
                self.reply(key, &json, Notice::Error); // an error event, then the stream ends
            } else {
                let mut cx = input_cx!(self);
                input::queue_close(conn, key, CLOSE_TOKEN_EXPIRED, "token expired", &mut cx);
            }
        }
        if self.auth_expiries.len() > 2 * self.conns.len() + EXPIRY_SLACK {
            let conns = &self.conns;
            self.auth_expiries
                .compact(|at, key| conns.get(key).and_then(|c| c.auth.as_deref()).is_some_and(|a| a.deadline == at));
        }
    }

    /// Applies a `refresh` request of connection `key`, in order with its other requests.
    pub(super) fn refresh(&mut self, key: ConnKey, id: Option<&str>, token: &str) {
        let stats = &self.shared.shards[self.id];
        let Some(cfg) = self.settings.auth.as_ref() else {
            return self.reply_error(key, id, ErrorCode::BadRequest, "token auth is off on this gateway");
        };
        let auth = match access::authenticate(token, cfg) {
            Ok(auth) => auth,
            Err(e) => {
                ShardStats::add(&stats.auth_refresh_refused, 1);
                tracing::debug!(shard = self.id, ?key, reason = e.category(), "refresh refused");
                return self.reply_error(key, id, ErrorCode::Unauthorized, "token refused");
            }
        };
        let Some(conn) = self.conns.get_mut(key) else { return };
        // The bearer stays who it was: a token of another subject is refused (the old one still runs).
        if let Some(old) = conn.auth.as_deref().and_then(|a| a.grant.subject.as_deref()) {
            if auth.grant.subject.as_deref() != Some(old) {
                ShardStats::add(&stats.auth_refresh_refused, 1);
                tracing::debug!(shard = self.id, ?key, reason = "another subject", "refresh refused");
                return self.reply_error(key, id, ErrorCode::Unauthorized, "token refused: another subject");
            }
        }
        let dropped: Vec<Pattern> = conn
            .topics
            .as_deref()
            .map(|subs| subs.patterns.iter().filter(|p| !auth.grant.may_subscribe(p)).cloned().collect())
            .unwrap_or_default();
        let leaves_whole_feed = conn.topics.is_none() && conn.is_subscribed() && !auth.grant.may_read_everything();
        let exp = auth.grant.exp;
        self.auth_expiries.push(auth.deadline, key);
        conn.auth = Some(auth);
        ShardStats::add(&stats.auth_refreshed, 1);
        if !dropped.is_empty() {
            self.unsubscribe(key, None, &dropped);
        }
        if leaves_whole_feed && self.enter_topic_mode(key) {
            let mut notice = Vec::new();
            encode::unsubscribed(None, &[("*", Position { epoch: self.epoch, seq: self.last_seq })], &mut notice);
            self.reply(key, &notice, Notice::Reply);
        }
        let mut reply = Vec::new();
        encode::refreshed(id, exp, &mut reply);
        self.reply(key, &reply, Notice::Reply);
    }
}
