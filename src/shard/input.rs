//! What a connection's incoming bytes do: the HTTP request head (upgrade, `/healthz`, refusals), then frames.
//! All protocol decisions come from `proto`; this file only applies them to the connection's state.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::access;
use super::admission;
use super::client;
use super::drain::{self, StopMode};
use super::keepalive::{self, Keepalive, Opened};
use super::message_rate::MessageRate;
use super::poll_history;
use super::preface;
use super::publishing;
use super::stats::{GapKind, LoadRefusal, ShardStats, Shared, Transport};
use super::timers::{DeadlineQueue, ExpiryQueue};
use super::Settings;
use crate::client::control::{self, Control, ControlError, ErrorCode};
use crate::client::{encode, sse, Format, Pattern, Position};
use crate::conn::{AddrState, Authenticated, BufPool, Conn, ConnKey, Phase, TokenBucket};
use crate::fanout::{Pins, Stream, StreamId, Topics};
use crate::proto::frame::{encode_frame_into, OpCode};
use crate::proto::handshake::{self, Parsed, Rejection};
use crate::proto::session::{encode_close_frame_into, Event, MessageKind};

/// What input handling needs from the loop thread besides the connection.
pub struct InputCx<'a> {
    pub settings: &'a Settings,
    pub shared: &'a Shared,
    pub stats: &'a ShardStats,
    pub pool: &'a mut BufPool,
    /// The loop's streams, by [`StreamId`] (see [`stream_for`]).
    pub streams: &'a mut [Stream],
    /// The loop's topics (a topic connection that closes lets go of their logs).
    pub topics: &'a Topics,
    /// Control messages waiting to be applied (after the wait, where every connection can be reached).
    pub controls: &'a mut VecDeque<(ConnKey, Control)>,
    /// The feed's epoch and the last `seq` this loop has taken from the feed: where a new subscriber starts.
    pub position: Position,
    /// Long-poll requests waiting for a message, and their deadlines.
    pub held: &'a mut Vec<HeldPoll>,
    pub poll_deadlines: &'a mut DeadlineQueue,
    pub pins: &'a mut Pins,
    /// Closing connections get this long to finish (see [`start_closing`]).
    pub linger: &'a mut DeadlineQueue,
    pub dirty: &'a mut Vec<ConnKey>,
    pub dead: &'a mut Vec<ConnKey>,
    /// Rate limits of the connections that published.
    pub publish_buckets: &'a mut HashMap<ConnKey, TokenBucket>,
    /// Deadlines of open connections (pings, idle, subscribe, lifetime), armed when one opens.
    pub keepalive: &'a mut Keepalive,
    /// Rate limits of the control messages and pings of the WebSocket clients that sent some.
    pub message_rate: &'a mut MessageRate,
    /// Token auth: when each connection's token expires (`shard::access`).
    pub auth_expiries: &'a mut ExpiryQueue,
    /// The trusted proxy a PROXY header named, by connection, until its request head is read (`shard::client`).
    pub proxied_from: &'a mut HashMap<ConnKey, std::net::IpAddr>,
}

/// Feeds freshly read bytes to `conn`. Bytes that do not complete a request head or frame are kept in
/// `conn.inbuf` (bounded: the head by `max_header_bytes`, a frame by `max_frame_bytes`).
pub fn on_bytes(conn: &mut Conn, key: ConnKey, data: &mut [u8], cx: &mut InputCx<'_>) {
    if !conn.wants_input() {
        return; // Draining after our final bytes: the peer's bytes no longer matter.
    }
    if conn.client_addr == AddrState::AwaitingPreface {
        // The PROXY header comes before anything else; what follows it comes back here.
        return preface::on_bytes(conn, key, data, cx);
    }
    if conn.upgraded {
        keepalive::on_input(conn);
    }
    if conn.inbuf.is_empty() {
        let used = consume(conn, key, data, cx);
        if used < data.len() && conn.wants_input() {
            conn.inbuf = cx.pool.take();
            conn.inbuf.extend_from_slice(&data[used..]);
        }
    } else {
        conn.inbuf.extend_from_slice(data);
        let mut buf = std::mem::take(&mut conn.inbuf);
        let used = consume(conn, key, &mut buf, cx);
        if used < buf.len() && conn.wants_input() {
            buf.drain(..used);
            conn.inbuf = buf;
        } else {
            cx.pool.give(&mut buf);
        }
    }
}

/// Consumes what it can of `buf`; returns how many bytes were used.
fn consume(conn: &mut Conn, key: ConnKey, buf: &mut [u8], cx: &mut InputCx<'_>) -> usize {
    let mut pos = 0;
    if conn.sse || conn.held_poll {
        return buf.len(); // an event stream's or held request's client has nothing to say: drained and dropped
    }
    if conn.phase == Phase::Handshake {
        match handshake::parse_request(buf, &cx.settings.handshake) {
            Ok(Parsed::Partial) => return 0,
            Err(rejection) => {
                refuse(conn, key, &rejection, cx);
                return buf.len();
            }
            Ok(Parsed::Complete { head, consumed }) => {
                pos = consumed;
                if client::at_head(conn, key, &head, cx) {
                    route(conn, key, &head, cx);
                }
            }
        }
    }
    while conn.wants_input() {
        let (n, event) = match conn.session.handle_bytes(&mut buf[pos..], &cx.settings.limits) {
            Ok((0, None)) => break,
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::debug!(?key, error = %e, "protocol error");
                ShardStats::add(&cx.stats.protocol_errors, 1);
                conn.input_failed = true;
                if conn.phase == Phase::Open {
                    queue_close(conn, key, e.close_code(), &e.to_string(), cx);
                } // else our close is on its way already: nothing more to say.
                return buf.len();
            }
        };
        pos += n;
        let Some(event) = event else { continue };
        if conn.phase == Phase::Closing {
            // After our close only the peer's close matters (RFC 6455 §5.5.1: nothing follows a close).
            if let Event::Close { .. } = event {
                conn.peer_closed = true;
                if conn.write_shut {
                    kill(conn, key, cx.dead); // Both closes are through: the handshake is complete.
                }
                return buf.len();
            }
            continue;
        }
        if !matches!(event, Event::Pong(_) | Event::Close { .. }) && !cx.message_rate.allow(key, Instant::now()) {
            let rate = cx.message_rate.rate();
            tracing::debug!(?key, rate, "client sends too many messages: closing with 1008");
            ShardStats::add(&cx.stats.message_rate_closes, 1);
            conn.input_failed = true; // its further bytes are not worth decoding
            let reason = format!("more than {rate} messages per second");
            queue_close(conn, key, 1008, &reason, cx);
            return buf.len();
        }
        match event {
            Event::Message { kind, payload } => {
                ShardStats::add(&cx.stats.client_messages, 1);
                if cx.settings.echo {
                    let op = match kind {
                        MessageKind::Text => OpCode::Text,
                        MessageKind::Binary => OpCode::Binary,
                    };
                    encode_frame_into(private(&mut conn.outbuf, cx.pool), op, payload);
                } else if kind == MessageKind::Binary {
                    let e = ControlError {
                        id: None,
                        code: ErrorCode::BadJson,
                        message: "control messages are JSON text messages, not binary".into(),
                    };
                    reply_error(conn, key, &e, cx);
                } else {
                    match control::parse(payload, cx.settings.max_subscriptions) {
                        Ok(Control::Publish { id, topic, payload }) => {
                            publishing::publish(conn, key, id.as_deref(), &topic, &payload, cx)
                        }
                        Ok(request) => queue_control(conn, key, request, cx),
                        Err(e) => reply_error(conn, key, &e, cx),
                    }
                }
            }
            Event::Ping(payload) => encode_frame_into(private(&mut conn.outbuf, cx.pool), OpCode::Pong, payload),
            Event::Pong(_) => keepalive::on_pong(conn),
            Event::Close { code, .. } => {
                // Echo the peer's code (or an empty close), then hang up once it is written.
                encode_close_frame_into(private(&mut conn.outbuf, cx.pool), code, "", None);
                conn.peer_closed = true;
                start_closing(conn, key, cx);
                return buf.len();
            }
        }
        if conn.outbuf.len() - conn.out_pos > cx.settings.max_private_bytes {
            tracing::debug!(?key, "client does not read its own replies: closing");
            ShardStats::add(&cx.stats.slow_consumers, 1);
            queue_close(conn, key, 1008, "slow consumer: replies not read", cx);
            return buf.len();
        }
        mark_dirty(conn, key, cx.dirty);
    }
    pos
}

fn route(conn: &mut Conn, key: ConnKey, head: &handshake::RequestHead, cx: &mut InputCx<'_>) {
    if matches!(head.path_only(), "/ws" | "/sse" | "/poll") && admission::refuse_if_overloaded(conn, key, cx) {
        return; // the page and /healthz are still answered
    }
    match head.path_only() {
        "/ws" => {
            // Origin and token first (403, 401): a foreign page learns nothing about a token.
            let auth = match access::origin(head, true, cx.settings, cx.stats)
                .and_then(|_| access::admit(key, head, cx.settings, cx.stats))
            {
                Ok(auth) => auth,
                Err(rejection) => return refuse(conn, key, &rejection, cx),
            };
            // Subscriptions at connect are checked before upgrading: a bad one is a 400.
            let at_connect = match subscription_at_connect(head, cx.settings, auth.as_deref(), cx.stats) {
                Ok(request) => request,
                Err(rejection) => return refuse(conn, key, &rejection, cx),
            };
            match handshake::accept_upgrade(head, &cx.settings.handshake) {
                Ok(accepted) => {
                    private(&mut conn.outbuf, cx.pool).extend_from_slice(&accepted.response);
                    conn.upgraded = true;
                    cx.keepalive.on_open(key, Opened::WebSocket, Instant::now());
                    let stream = stream_for(Format::from_subprotocol(accepted.subprotocol.as_deref()));
                    // A token that does not cover every topic opens with nothing to read until it subscribes.
                    let whole_feed = access::may_read_everything(auth.as_deref());
                    access::attach(conn, key, auth, cx.auth_expiries);
                    match at_connect {
                        Some(request) => {
                            // Its topics are subscribed once the request is applied, right after this wait: it
                            // reads no whole-feed stream meanwhile.
                            conn.phase = Phase::Open;
                            conn.stream_id = stream;
                            cx.stats.opened(Transport::Ws);
                            queue_control(conn, key, request, cx);
                        }
                        None if cx.settings.require_subscription || !whole_feed => {
                            conn.phase = Phase::Open;
                            conn.stream_id = stream;
                            cx.stats.opened(Transport::Ws);
                            mark_dirty(conn, key, cx.dirty);
                        }
                        None => subscribe(conn, key, stream, cx),
                    }
                }
                Err(rejection) => refuse(conn, key, &rejection, cx),
            }
        }
        "/sse" if head.method == "GET" => start_sse(conn, key, head, cx),
        "/sse" | "/poll" if head.method == "OPTIONS" => match access::preflight(head, cx.settings, cx.stats) {
            Ok(response) => respond(conn, key, &response, cx),
            Err(rejection) => refuse(conn, key, &rejection, cx),
        },
        "/sse" => refuse(conn, key, &Rejection { status: 405, reason: "method not allowed: use GET" }, cx),
        "/poll" if head.method == "GET" => start_poll(conn, key, head, cx),
        "/poll" => refuse(conn, key, &Rejection { status: 405, reason: "method not allowed: use GET" }, cx),
        "/" | "/index.html" if head.method == "GET" => {
            respond(conn, key, &handshake::http_response(200, "text/html; charset=utf-8", LIVE_PAGE), cx);
        }
        // With an admin listener (`admin_listen`) these are served there only: not found here.
        "/healthz" | "/metrics" if cx.settings.admin_elsewhere => not_found(conn, key, cx),
        // 503 once a shutdown has started, so that a balancer stops sending new clients (see `HealthStatus`).
        "/healthz" if head.method == "GET" => respond(conn, key, &cx.shared.health_response(), cx),
        "/metrics" if head.method == "GET" => respond(conn, key, &cx.shared.metrics_response(), cx),
        "/healthz" | "/metrics" => {
            refuse(conn, key, &Rejection { status: 405, reason: "method not allowed: use GET" }, cx)
        }
        _ => not_found(conn, key, cx),
    }
}

fn not_found(conn: &mut Conn, key: ConnKey, cx: &mut InputCx<'_>) {
    let body: &[u8] = if cx.settings.admin_elsewhere {
        b"not found: the endpoints are / (live page), /ws, /sse and /poll\n"
    } else {
        b"not found: the endpoints are / (live page), /ws, /sse, /poll, /healthz and /metrics\n"
    };
    cx.stats.refused(404);
    respond(conn, key, &handshake::http_response(404, "text/plain", body), cx);
}

fn refuse(conn: &mut Conn, key: ConnKey, rejection: &Rejection, cx: &mut InputCx<'_>) {
    tracing::debug!(?key, status = rejection.status, reason = rejection.reason, "request refused");
    cx.stats.refused(rejection.status);
    respond(conn, key, &rejection.to_response(), cx);
}

/// Queues a final HTTP response; the connection closes once it is written.
pub fn respond(conn: &mut Conn, key: ConnKey, response: &[u8], cx: &mut InputCx<'_>) {
    private(&mut conn.outbuf, cx.pool).extend_from_slice(response);
    start_closing(conn, key, cx);
}

/// Queues our close frame (`code`, `reason`); nothing but it follows, and the connection hangs up once it is
/// written. Only a WebSocket has a close frame: an event stream ends after the event in progress.
pub fn queue_close(conn: &mut Conn, key: ConnKey, code: u16, reason: &str, cx: &mut InputCx<'_>) {
    if conn.upgraded {
        encode_close_frame_into(private(&mut conn.outbuf, cx.pool), Some(code), reason, None);
    }
    start_closing(conn, key, cx);
}

/// Closes an open connection for a shutdown or restart drain, telling it when to come back: a WebSocket gets
/// close `mode.close_code()` with `"…: retry after N ms"` as its reason (a `wsgate.v1.json` client first gets a
/// `closing` notice saying the same); an event stream gets `retry: N` (the browser's reconnect delay) and ends;
/// any other HTTP connection (idle keep-alive) just ends. A held long-poll is answered by the caller.
pub fn queue_drain_close(conn: &mut Conn, key: ConnKey, mode: StopMode, retry_after_ms: u64, cx: &mut InputCx<'_>) {
    let reason = drain::close_reason(mode, retry_after_ms);
    if conn.sse {
        let _ = write!(private(&mut conn.outbuf, cx.pool), "retry: {retry_after_ms}\n\n");
    } else if conn.upgraded && conn.stream_id == JSON_ALL {
        let mut json = Vec::new();
        encode::closing(mode.close_code(), mode.reason(), retry_after_ms, &mut json);
        encode_frame_into(private(&mut conn.outbuf, cx.pool), OpCode::Text, &json);
    }
    ShardStats::add(&cx.stats.drain_closes, 1);
    queue_close(conn, key, mode.close_code(), &reason, cx);
}

/// `GET /sse[?topics=A,B-*]`: Server-Sent Events (`docs/client-protocol.md`). With `topics=`, those topics
/// through the topic engine; without, the whole feed. A client that comes back with a position
/// (`Last-Event-ID`, or `?since=E:S`) resumes from it through the topics' history (without `topics=`: every
/// topic's), with a `gap` event where the history does not reach back; a position from another epoch gets its
/// `gap` and the stream from now.
fn start_sse(conn: &mut Conn, key: ConnKey, head: &handshake::RequestHead, cx: &mut InputCx<'_>) {
    let (allow_origin, auth) = match admit_plain(key, head, cx) {
        Ok(admitted) => admitted,
        Err(rejection) => return refuse(conn, key, &rejection, cx),
    };
    let since = match sse::resume_point(&head.path, head.header("last-event-id")) {
        Ok(since) => since,
        Err(_) => return refuse(conn, key, &bad_request("bad Last-Event-ID or since: a position is EPOCH:SEQ"), cx),
    };
    let patterns = match requested_patterns(head, cx.settings, auth.as_deref(), true, cx.stats) {
        Ok(patterns) => patterns,
        Err(rejection) => return refuse(conn, key, &rejection, cx),
    };
    let out = private(&mut conn.outbuf, cx.pool);
    sse::response_head(allow_origin, cx.settings.sse_retry_ms, out);
    conn.sse = true;
    cx.keepalive.on_open(key, Opened::EventStream, Instant::now());
    access::attach(conn, key, auth, cx.auth_expiries);
    let out = private(&mut conn.outbuf, cx.pool);
    let now = cx.position;
    // A position of this epoch other than this loop's: behind (replay from history) or a little ahead (another
    // loop served it; the request waits until this loop has pulled that far). Either way exactly once.
    let resumes = since.filter(|s| s.epoch == now.epoch && s.seq != now.seq);
    // `topics=*` is the whole feed: the fast path unless it resumes.
    let patterns = patterns.filter(|p| !(is_every_topic(p) && resumes.is_none()));
    match (patterns, resumes) {
        (Some(patterns), _) => subscribe_topics(conn, key, patterns, since, cx),
        // Every topic, from history: through the topic engine (with the `*` pattern).
        (None, Some(_)) => subscribe_topics(conn, key, vec![Pattern::Prefix("".into())], since, cx),
        (None, None) => {
            if let Some(since) = since.filter(|s| s.epoch != now.epoch) {
                let mut notice = Vec::new();
                encode::gap("*", since, now, encode::GapReason::Epoch, &mut notice);
                cx.stats.gap_notices.add(GapKind::Epoch as usize, 1);
                sse::event(None, Some("gap"), &notice, out);
            }
            subscribe(conn, key, SSE_ALL, cx)
        }
    }
}

fn is_every_topic(patterns: &[Pattern]) -> bool {
    matches!(patterns, [Pattern::Prefix(p)] if p.is_empty())
}

/// An open event stream (or WebSocket) that reads `patterns` once the loop applies the request, right after
/// this wait; it reads no whole-feed stream meanwhile.
fn subscribe_topics(
    conn: &mut Conn,
    key: ConnKey,
    patterns: Vec<Pattern>,
    since: Option<Position>,
    cx: &mut InputCx<'_>,
) {
    conn.phase = Phase::Open;
    conn.stream_id = if conn.sse { SSE_ALL } else { conn.stream_id };
    cx.stats.opened(if conn.sse { Transport::Sse } else { Transport::Ws });
    queue_control(conn, key, Control::Subscribe { id: None, patterns, since, snapshot: false }, cx);
}

/// An event stream's or long-poll's Origin (the `Access-Control-Allow-Origin` to answer with), then its token.
fn admit_plain<'h>(
    key: ConnKey,
    head: &'h handshake::RequestHead,
    cx: &InputCx<'_>,
) -> Result<(Option<&'h str>, Option<Box<Authenticated>>), Rejection> {
    let allow_origin = access::origin(head, false, cx.settings, cx.stats)?;
    Ok((allow_origin, access::admit(key, head, cx.settings, cx.stats)?))
}

/// The `topics=` of a request: `None` without it. Refused with 400 when malformed or over `max_subscriptions`,
/// 403 when outside `allowed_topics` or outside what the token allows (`auth`; for an event stream or poll,
/// where no `topics=` is the whole feed, `none_is_everything`, the claim must then cover `*`).
fn requested_patterns(
    head: &handshake::RequestHead,
    settings: &Settings,
    auth: Option<&Authenticated>,
    none_is_everything: bool,
    stats: &ShardStats,
) -> Result<Option<Vec<Pattern>>, Rejection> {
    let patterns = requested_topics(head, settings)?;
    let allowed = match &patterns {
        None => !none_is_everything || access::may_read_everything(auth),
        Some(patterns) => patterns.iter().all(|p| access::may_subscribe(auth, p)),
    };
    if !allowed {
        ShardStats::add(&stats.auth_forbidden, 1);
        return Err(access::FORBIDDEN);
    }
    Ok(patterns)
}

fn requested_topics(head: &handshake::RequestHead, settings: &Settings) -> Result<Option<Vec<Pattern>>, Rejection> {
    let Some(topics) = crate::client::query::param(&head.path, "topics") else {
        return Ok(None);
    };
    let topics = topics.map_err(|()| bad_request("bad topics=: malformed percent escape"))?;
    let mut patterns: Vec<Pattern> = Vec::new();
    for name in topics.split(',').filter(|t| !t.is_empty()) {
        let pattern = Pattern::parse(name).map_err(|_| bad_request("bad topics=: a topic or pattern is not valid"))?;
        if !pattern.within(&settings.allowed_topics) {
            return Err(Rejection { status: 403, reason: "a topic asked for is not offered by this gateway" });
        }
        if !patterns.contains(&pattern) {
            patterns.push(pattern);
        }
    }
    if patterns.is_empty() {
        return Err(bad_request("bad topics=: no topic given"));
    }
    if patterns.len() > settings.max_subscriptions {
        return Err(bad_request("bad topics=: more topics than max_subscriptions"));
    }
    Ok(Some(patterns))
}

fn bad_request(reason: &'static str) -> Rejection {
    Rejection { status: 400, reason }
}

/// A long-poll request waiting for a message newer than `since_seq`.
#[derive(Debug)]
pub struct HeldPoll {
    pub key: ConnKey,
    pub since_seq: u64,
    /// The topics it asked for; `None`: every topic.
    pub patterns: Option<Box<[Pattern]>>,
    /// Its `Access-Control-Allow-Origin`, if any.
    pub cors: Option<Box<str>>,
}

/// `GET /poll[?topics=A,B-*][&since=E:S]`: answered at once when the topics' history holds something after the
/// position (messages, or a gap where it no longer reaches back), else held until a message newer than it
/// arrives in those topics or `poll_timeout` passes (`docs/client-protocol.md`).
fn start_poll(conn: &mut Conn, key: ConnKey, head: &handshake::RequestHead, cx: &mut InputCx<'_>) {
    let (cors, auth) = match admit_plain(key, head, cx) {
        Ok((origin, auth)) => (origin.map(Box::<str>::from), auth),
        Err(rejection) => return refuse(conn, key, &rejection, cx),
    };
    let since = match crate::client::query::param(&head.path, "since") {
        None => None,
        Some(Ok(s)) => match s.parse::<Position>() {
            Ok(p) => Some(p),
            Err(_) => return refuse(conn, key, &bad_request("bad since: a position is EPOCH:SEQ"), cx),
        },
        Some(Err(())) => return refuse(conn, key, &bad_request("bad since: a position is EPOCH:SEQ"), cx),
    };
    let patterns = match requested_patterns(head, cx.settings, auth.as_deref(), true, cx.stats) {
        Ok(patterns) => patterns.filter(|p| !is_every_topic(p)),
        Err(rejection) => return refuse(conn, key, &rejection, cx),
    };
    let now = cx.position;
    if let Some(since) = since {
        if let Some(body) = poll_history::answer(cx.topics, patterns.as_deref(), since, now) {
            cx.stats.opened(Transport::Poll); // and closed by its answer at once
            return answer_poll(conn, key, body, cors.as_deref(), cx);
        }
    }
    if cx.held.len() >= cx.settings.poll_max_held {
        let admission = &cx.shared.admission;
        cx.stats.refused_for_load(LoadRefusal::PollHeld);
        admission.log_refusal("poll_max_held reached: long-poll refused with 503");
        let response = admission::busy_response("too many held long-poll requests", admission.retry_after_s);
        return respond(conn, key, &response, cx);
    }
    conn.phase = Phase::Open;
    conn.held_poll = true;
    cx.stats.opened(Transport::Poll); // closed by its answer, or by the reap phase while held
    access::attach(conn, key, auth, cx.auth_expiries); // answered (empty) early if the token expires first
    let since_seq = since.map_or(now.seq, |s| s.seq);
    cx.held.push(HeldPoll { key, since_seq, patterns: patterns.map(Vec::into_boxed_slice), cors });
    cx.poll_deadlines.push(std::time::Instant::now(), key);
}

/// Answers a long-poll request with `body`; the connection closes once it is written.
pub fn answer_poll(conn: &mut Conn, key: ConnKey, body: Vec<u8>, cors: Option<&str>, cx: &mut InputCx<'_>) {
    conn.held_poll = false;
    cx.stats.closed(Transport::Poll);
    let mut headers = String::from("Cache-Control: no-store\r\n");
    if let Some(origin) = cors {
        headers.push_str(&format!("Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n"));
    }
    respond(conn, key, &handshake::http_response_with(200, "application/json", &headers, &body), cx);
}

/// The connection is open and reads `stream` from its head on (after what its private buffer already holds).
fn subscribe(conn: &mut Conn, key: ConnKey, stream: StreamId, cx: &mut InputCx<'_>) {
    conn.phase = Phase::Open;
    conn.stream_id = stream;
    let stream = &mut cx.streams[usize::from(stream)];
    conn.cursor = stream.log.head();
    conn.sub_index = stream.subscribers.add(key.0);
    cx.stats.opened(if conn.sse { Transport::Sse } else { Transport::Ws });
    mark_dirty(conn, key, cx.dirty);
}

/// Nothing but what is queued will be written now; the connection lets go of the broadcast log at once, or,
/// with a send in flight, when that send completes. It has the linger time to write what is queued and hear the
/// peer hang up; then it is cut, whatever state it is in (a client that stops reading cannot keep it).
fn start_closing(conn: &mut Conn, key: ConnKey, cx: &mut InputCx<'_>) {
    conn.phase = Phase::Closing;
    conn.close_queued = true;
    if !conn.send_in_flight {
        release_log(conn, key, cx.streams, cx.topics, cx.pins, cx.stats, cx.dead);
    }
    cx.linger.push(std::time::Instant::now(), key);
    mark_dirty(conn, key, cx.dirty);
}

/// A closing connection stops reading the broadcast log, so it can never hold the log back, whatever it does
/// next. If it is in the middle of a frame, it keeps that one chunk ([`Pins::pin`]) so that its close frame can
/// follow a whole frame. The loop's pins are bounded in bytes (each chunk counted once however many connections
/// share it; `pinned_bytes`); past the budget the connection is cut without its close frame (counted in
/// `closing_cut`). Must not be called while a send is in flight.
pub fn release_log(
    conn: &mut Conn,
    key: ConnKey,
    streams: &[Stream],
    topics: &Topics,
    pins: &mut Pins,
    stats: &ShardStats,
    dead: &mut Vec<ConnKey>,
) {
    debug_assert!(!conn.send_in_flight, "the kernel may still read the log for this connection");
    if !conn.reads_log() {
        return;
    }
    conn.log_released = true;
    if conn.phase == Phase::Dead || conn.pinned.is_some() {
        return; // it writes nothing more, or already has the one chunk it may need
    }
    // The one log a frame may be in the middle of: the whole-feed stream's, or the topic a short write stopped in.
    let (log, cursor) = match conn.topics.as_deref() {
        None => (&streams[usize::from(conn.stream_id)].log, conn.cursor),
        Some(subs) => {
            let partial = subs.partial.and_then(|t| {
                let log = &topics.get(t)?.log(subs.encoding)?.log;
                Some((log, subs.subs[subs.find(t)?].cursor))
            });
            match partial {
                Some(found) => found,
                None => return,
            }
        }
    };
    match pins.pin(log, cursor) {
        Ok(Some(pin)) => {
            conn.pinned = Some(Box::new(pin));
            conn.cursor = cursor;
        }
        Ok(None) => {}
        Err(_) => {
            ShardStats::add(&stats.closing_cut, 1);
            tracing::debug!(?key, "closing connection in the middle of a frame cut: pinned-chunk budget spent");
            kill(conn, key, dead);
        }
    }
    stats.pinned_bytes.store(pins.bytes(), Relaxed);
}

/// Drops the chunk a closing connection had pinned (the connection is being freed).
pub fn unpin(conn: &mut Conn, pins: &mut Pins, stats: &ShardStats) {
    if let Some(pin) = conn.pinned.take() {
        pins.unpin(&pin);
        stats.pinned_bytes.store(pins.bytes(), Relaxed);
    }
}

/// Drops the pinned chunk once the frame it was kept for is written (never with a send in flight).
pub fn unpin_if_written(conn: &mut Conn, pins: &mut Pins, stats: &ShardStats) {
    if !conn.send_in_flight && conn.pinned.as_ref().is_some_and(|pin| conn.cursor >= pin.end()) {
        unpin(conn, pins, stats);
    }
}

/// Most control messages of one connection waiting to be applied; more get `rate_limited`.
pub const MAX_PENDING_CONTROLS: u8 = 16;

/// Queues a parsed control message for the loop to apply (it needs other connections and the topics).
fn queue_control(conn: &mut Conn, key: ConnKey, request: Control, cx: &mut InputCx<'_>) {
    if conn.pending_controls >= MAX_PENDING_CONTROLS {
        let e = ControlError {
            id: request.id().map(str::to_string),
            code: ErrorCode::RateLimited,
            message: format!("more than {MAX_PENDING_CONTROLS} requests waiting: wait for the replies"),
        };
        return reply_error(conn, key, &e, cx);
    }
    conn.pending_controls += 1;
    cx.controls.push_back((key, request));
}

/// Queues an `error` reply (a JSON text frame) for `conn`.
pub fn reply_error(conn: &mut Conn, key: ConnKey, e: &ControlError, cx: &mut InputCx<'_>) {
    let mut json = Vec::new();
    encode::error(e.id.as_deref(), e.code.as_str(), &e.message, &mut json);
    encode_frame_into(private(&mut conn.outbuf, cx.pool), OpCode::Text, &json);
    mark_dirty(conn, key, cx.dirty);
}

/// `/ws?topics=A,B-*[&since=E:S][&snapshot=true]`: the subscription a client asks for at connect, as a
/// `subscribe` request (no id); `None` without `topics=`.
fn subscription_at_connect(
    head: &handshake::RequestHead,
    settings: &Settings,
    auth: Option<&Authenticated>,
    stats: &ShardStats,
) -> Result<Option<Control>, Rejection> {
    let Some(patterns) = requested_patterns(head, settings, auth, false, stats)? else {
        return Ok(None);
    };
    let since = match crate::client::query::param(&head.path, "since") {
        None => None,
        Some(Ok(s)) => Some(s.parse::<Position>().map_err(|_| bad_request("bad since: a position is EPOCH:SEQ"))?),
        Some(Err(())) => return Err(bad_request("bad since: a position is EPOCH:SEQ")),
    };
    let snapshot = match crate::client::query::param(&head.path, "snapshot").as_ref().map(|r| r.as_deref()) {
        None | Some(Ok("false" | "0")) => false,
        Some(Ok("true" | "1" | "")) => true,
        Some(_) => return Err(bad_request("bad snapshot: true or false")),
    };
    Ok(Some(Control::Subscribe { id: None, patterns, since, snapshot }))
}

/// The live-ticker page (`GET /`): static, in the binary; it uses the browser's WebSocket and EventSource.
const LIVE_PAGE: &[u8] = include_bytes!("static/index.html");

/// The whole feed in the raw format (what clients that ask for no subprotocol get).
pub const RAW_ALL: StreamId = 0;
/// The whole feed as JSON envelopes (`wsgate.v1.json`).
pub const JSON_ALL: StreamId = 1;
/// The whole feed as Server-Sent Events (`/sse`).
pub const SSE_ALL: StreamId = 2;
/// How many streams a loop has.
pub const STREAMS: usize = 3;

/// The stream a client in `format` reads.
pub fn stream_for(format: Format) -> StreamId {
    match format {
        Format::Raw => RAW_ALL,
        Format::Json => JSON_ALL,
    }
}

/// Marks `conn` for the reap phase, the only place connections are freed.
pub fn kill(conn: &mut Conn, key: ConnKey, dead: &mut Vec<ConnKey>) {
    if conn.phase != Phase::Dead {
        conn.phase = Phase::Dead;
        dead.push(key);
    }
}

pub fn mark_dirty(conn: &mut Conn, key: ConnKey, dirty: &mut Vec<ConnKey>) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(key);
    }
}

/// The connection's private output buffer, borrowed from the pool on first use.
pub fn private<'b>(outbuf: &'b mut Vec<u8>, pool: &mut BufPool) -> &'b mut Vec<u8> {
    if outbuf.capacity() == 0 {
        *outbuf = pool.take();
    }
    outbuf
}
