//! Who may come in, decided from a request head before anything is served: the Origin allow-list (every
//! transport) and, with token auth on, the token (`crate::auth`); then what a connection's token lets it do.
//!
//! Refusals say no more than their status: `401 unauthorized` (no token, or one that is not valid now) or
//! `403 forbidden` / `origin not allowed`. The reason category goes to a debug log line and a counter; the token
//! never goes anywhere (request heads print redacted: `proto::handshake::redact_target`).
//!
//! Order, on every transport: Origin (403), token (401), then the request's own checks (400), then the topics
//! asked for against the gateway's list and the token's claim (403). A page from a foreign origin thus never
//! learns whether a token is valid.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::stats::ShardStats;
use super::timers::ExpiryQueue;
use super::Settings;
use crate::auth::{self, AuthError};
use crate::client::Pattern;
use crate::conn::{Authenticated, Conn, ConnKey};
use crate::proto::handshake::{Rejection, RequestHead};

/// The body of every `401`.
pub const UNAUTHORIZED: Rejection = Rejection { status: 401, reason: "unauthorized" };
/// The body of a `403` for topics the token does not allow.
pub const FORBIDDEN: Rejection = Rejection { status: 403, reason: "forbidden" };
const ORIGIN_NOT_ALLOWED: Rejection = Rejection { status: 403, reason: "origin not allowed" };

/// The WebSocket close code at token expiry (private-use range, RFC 6455 §7.4.2), with reason `token expired`.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;

/// The request's origin against `allowed_origins` (compared ASCII case-insensitively, as the upgrade does):
/// `Ok(Some(value))` is the `Access-Control-Allow-Origin` to send (`*` without a list; the request's own origin
/// when listed). Without `Origin` (not a cross-origin browser request) an event stream or poll is let in with
/// no CORS header; a WebSocket upgrade is not (browsers always send `Origin` on one).
pub fn origin<'h>(
    head: &'h RequestHead,
    websocket: bool,
    settings: &Settings,
    stats: &ShardStats,
) -> Result<Option<&'h str>, Rejection> {
    let verdict = match (settings.handshake.allowed_origins.as_ref(), head.origin.as_deref()) {
        (None, _) => Ok(Some("*")),
        (Some(list), Some(origin)) if list.iter().any(|o| o.eq_ignore_ascii_case(origin)) => Ok(Some(origin)),
        (Some(_), None) if !websocket => Ok(None),
        (Some(_), _) => Err(ORIGIN_NOT_ALLOWED),
    };
    if verdict.is_err() {
        ShardStats::add(&stats.origin_refused, 1);
    }
    verdict
}

/// The answer to a CORS preflight (`OPTIONS /sse` or `/poll`, e.g. before a cross-origin `fetch` with an
/// `Authorization` header): `204` allowing `GET` with `Authorization` and `Last-Event-ID`, for an allowed origin
/// only.
pub fn preflight(head: &RequestHead, settings: &Settings, stats: &ShardStats) -> Result<Vec<u8>, Rejection> {
    let headers = match origin(head, false, settings, stats)? {
        None => String::from("Allow: GET, OPTIONS\r\n"),
        Some(allowed) => format!(
            "Allow: GET, OPTIONS\r\nAccess-Control-Allow-Origin: {allowed}\r\nVary: Origin\r\n\
             Access-Control-Allow-Methods: GET\r\nAccess-Control-Allow-Headers: Authorization, Last-Event-ID\r\n\
             Access-Control-Max-Age: 600\r\n"
        ),
    };
    Ok(crate::proto::handshake::http_response_with(204, "text/plain", &headers, b""))
}

/// Checks the request's token when token auth is on: `Ok(None)` when it is off, or optional and no token came.
/// A refusal is counted and logged by its reason category.
pub fn admit(
    key: ConnKey,
    head: &RequestHead,
    settings: &Settings,
    stats: &ShardStats,
) -> Result<Option<Box<Authenticated>>, Rejection> {
    let Some(cfg) = settings.auth.as_ref() else { return Ok(None) };
    let verdict = match auth::token_from_request(&head.path, head.header_all("authorization")) {
        Ok(None) if cfg.optional => return Ok(None),
        Ok(None) => Err(AuthError::Missing),
        Ok(Some(token)) => authenticate(&token, cfg),
        Err(e) => Err(e),
    };
    verdict.map(Some).map_err(|e| {
        ShardStats::add(&stats.auth_refused, 1);
        tracing::debug!(?key, reason = e.category(), "token refused: 401");
        UNAUTHORIZED
    })
}

/// The connection runs on `auth` from now on: it ends at the token's deadline unless a refresh moves it (the
/// loop's expiry sweep, `event_loop::tokens`).
pub fn attach(conn: &mut Conn, key: ConnKey, auth: Option<Box<Authenticated>>, expiries: &mut ExpiryQueue) {
    if let Some(auth) = auth {
        expiries.push(auth.deadline, key);
        conn.auth = Some(auth);
    }
}

/// Validates `token` now: what it grants, with its deadline on the monotonic clock.
pub fn authenticate(token: &str, cfg: &auth::AuthConfig) -> Result<Box<Authenticated>, AuthError> {
    let (wall, now) = (wall_clock(), Instant::now());
    let grant = auth::validate(token, wall, cfg)?;
    let deadline = now + grant.valid_until.saturating_sub(wall);
    Ok(Box::new(Authenticated { grant, deadline }))
}

/// The wall-clock time, which token times are in.
fn wall_clock() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Whether a connection with `auth` may subscribe to `pattern`, as far as tokens go: without a token (auth off,
/// or optional and none sent) whatever the gateway offers.
pub fn may_subscribe(auth: Option<&Authenticated>, pattern: &Pattern) -> bool {
    auth.is_none_or(|a| a.grant.may_subscribe(pattern))
}

/// Whether a connection with `auth` may read the whole feed (subscribe to nothing, or to `*`).
pub fn may_read_everything(auth: Option<&Authenticated>) -> bool {
    auth.is_none_or(|a| a.grant.may_read_everything())
}

/// Whether a connection with `auth` may publish on `topic` at `now`, as far as tokens go: with token auth on, only
/// with a token whose publish claim names the topic and that has not expired.
pub fn may_publish(settings: &Settings, auth: Option<&Authenticated>, topic: &str, now: Instant) -> bool {
    match (settings.auth.is_some(), auth) {
        (false, _) => true,
        (true, None) => false,
        (true, Some(a)) => now < a.deadline && a.grant.may_publish(topic),
    }
}
