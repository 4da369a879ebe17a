//! The HTTP/1.1 upgrade (RFC 6455 §4), server side, plus the small client side the load generator
//! needs ([`client`]).
//!
//! Server flow: call [`parse_request`] with everything read so far until it is `Complete`
//! (`consumed` bytes are the head; anything after them is already WebSocket data and must be kept
//! for the session), then [`accept_upgrade`]: write `Accepted::response`, or `Rejection::to_response`
//! and close. Parsing is stateless and incremental: re-call with the grown buffer.
//!
//! Decisions (see also `docs/protocol.md`):
//! - HTTP/1.0 requests **parse** (so a plain `/healthz` probe from an HTTP/1.0 client can be
//!   answered) but are **refused as upgrades** with 400 by `accept_upgrade`; any other version is
//!   malformed (400) at parse time.
//! - A missing `Host` header is refused (400): RFC 6455 §4.1 makes it mandatory.
//! - With an origin allow-list configured, a request without `Origin` is refused (403).
//! - Duplicate `Sec-WebSocket-Key` / `-Version` headers are joined with ", " like any list header,
//!   so they fail validation (400 / 426) instead of one copy silently winning.

use std::fmt::Write as _;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

pub mod client;

pub use client::{
    client_request, client_request_with, generate_key, parse_response, parse_response_with, HandshakeError,
};

/// RFC 6455 §1.3: appended to the client's key before hashing.
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Most header lines parsed in one request; more is refused with 431.
pub const MAX_HEADERS: usize = 64;

/// Server-side handshake settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// Largest request head (request line + headers + blank line) accepted; beyond it, 431.
    pub max_header_bytes: usize,
    /// Subprotocols the server speaks. The first one the *client* lists that appears here is chosen.
    pub subprotocols: Vec<String>,
    /// Allowed `Origin` values (compared ASCII case-insensitively); `None` allows any, including none.
    pub allowed_origins: Option<Vec<String>>,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig { max_header_bytes: 8192, subprotocols: Vec::new(), allowed_origins: None }
    }
}

/// An owned copy of a parsed request head. Its `Debug` form leaves out credentials ([`redact_target`],
/// [`SECRET_HEADERS`]), so a head may be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// Request target as sent, including any `?query`.
    pub path: String,
    /// 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub minor_version: u8,
    pub host: Option<String>,
    /// All `Upgrade` header values joined with ", ".
    pub upgrade: Option<String>,
    /// All `Connection` header values joined with ", ".
    pub connection: Option<String>,
    /// `Sec-WebSocket-Key` (joined with ", " if repeated, which makes it invalid).
    pub key: Option<String>,
    /// `Sec-WebSocket-Version` (joined with ", " if repeated).
    pub version: Option<String>,
    /// Subprotocols offered, in the client's order, across all `Sec-WebSocket-Protocol` headers.
    pub protocols: Vec<String>,
    pub origin: Option<String>,
    /// Every header as (name, value), in order. Values that are not UTF-8 are converted lossily.
    pub headers: Vec<(String, String)>,
}

/// Query parameters whose values never appear in a log line (a bearer token may ride in the query:
/// `auth::TOKEN_PARAM`).
pub const SECRET_PARAMS: &[&str] = &["token", "access_token"];
/// Headers whose values never appear in a log line.
pub const SECRET_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];

/// `target` with the value of each [`SECRET_PARAMS`] parameter replaced by `<redacted>`: a request target as it
/// may appear in a log line.
pub fn redact_target(target: &str) -> std::borrow::Cow<'_, str> {
    let Some((path, query)) = target.split_once('?') else { return target.into() };
    let secret = |pair: &str| SECRET_PARAMS.contains(&pair.split_once('=').map_or(pair, |(k, _)| k));
    if !query.split('&').any(secret) {
        return target.into();
    }
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if secret(pair) => format!("{k}=<redacted>"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}?{}", pairs.join("&")).into()
}

impl std::fmt::Debug for RequestHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| {
                let secret = SECRET_HEADERS.iter().any(|s| n.eq_ignore_ascii_case(s));
                (n.as_str(), if secret { "<redacted>" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("RequestHead")
            .field("method", &self.method)
            .field("path", &redact_target(&self.path))
            .field("minor_version", &self.minor_version)
            .field("host", &self.host)
            .field("origin", &self.origin)
            .field("protocols", &self.protocols)
            .field("headers", &headers)
            .finish_non_exhaustive()
    }
}

impl RequestHead {
    /// The first value of header `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The path without its `?query`.
    pub fn path_only(&self) -> &str {
        self.path.split_once('?').map_or(&self.path, |(p, _)| p)
    }
}

/// Result of [`parse_request`].
// Short-lived, once per connection: not worth a Box (and the agreed API has `head: RequestHead`).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// No complete head yet: read more and call again with the whole buffer.
    Partial,
    /// `consumed` = length of the head including the blank line; bytes after it are not ours.
    Complete { head: RequestHead, consumed: usize },
}

/// A refused request: send [`to_response`](Self::to_response) and close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    /// Short text, sent as the response body.
    pub reason: &'static str,
}

impl Rejection {
    const fn new(status: u16, reason: &'static str) -> Self {
        Rejection { status, reason }
    }

    /// Complete HTTP/1.1 response: status line, `Content-Type: text/plain`, `Content-Length`,
    /// `Connection: close`, `WWW-Authenticate: Bearer` (401), `Allow: GET` (405) or `Upgrade` + `Sec-WebSocket-Version: 13` (426),
    /// body = reason + "\n".
    pub fn to_response(&self) -> Vec<u8> {
        let mut extra = String::new();
        match self.status {
            // RFC 7235 §3.1: a 401 names the scheme; nothing more (no reason that would help an attacker).
            401 => extra.push_str("WWW-Authenticate: Bearer realm=\"wsgate\"\r\n"),
            405 => extra.push_str("Allow: GET\r\n"),
            426 => extra.push_str("Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"),
            _ => {}
        }
        let mut body = Vec::with_capacity(self.reason.len() + 1);
        body.extend_from_slice(self.reason.as_bytes());
        body.push(b'\n');
        response_with(self.status, "text/plain", &extra, &body)
    }
}

/// The reason phrase for the status codes this crate produces.
pub fn status_text(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Like [`http_response`], with `extra_headers` (complete `Name: value\r\n` lines) added to the head.
pub fn http_response_with(status: u16, content_type: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    response_with(status, content_type, extra_headers, body)
}

fn response_with(status: u16, content_type: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut head = String::with_capacity(128 + extra_headers.len());
    let _ = write!(
        head,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n{extra_headers}\r\n",
        status_text(status),
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A plain HTTP/1.1 response with `Content-Type`, `Content-Length` and `Connection: close` (the
/// gateway answers one request per plain-HTTP connection), e.g. for `/healthz` or a 404.
pub fn http_response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    response_with(status, content_type, "", body)
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha.digest().bytes())
}

fn join_into(slot: &mut Option<String>, value: &str) {
    match slot {
        Some(s) => {
            s.push_str(", ");
            s.push_str(value);
        }
        None => *slot = Some(value.to_owned()),
    }
}

/// Items of a comma-separated header list, trimmed, empty items skipped.
fn list_items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(|t| t.trim_matches([' ', '\t'])).filter(|t| !t.is_empty())
}

fn has_token(list: Option<&str>, token: &str) -> bool {
    list.is_some_and(|l| list_items(l).any(|t| t.eq_ignore_ascii_case(token)))
}

/// Parse the request head at the start of `buf` (everything received so far).
///
/// - `Ok(Partial)`: no complete head yet and still under `max_header_bytes`.
/// - `Ok(Complete { head, consumed })`: the head ends at `consumed`; later bytes are untouched.
/// - `Err(431)`: `max_header_bytes` reached without a complete head, or more than
///   [`MAX_HEADERS`] headers. `Err(400)`: malformed request, or an HTTP version other than 1.0/1.1.
///
/// Only the first `max_header_bytes` bytes are ever examined, so a long pipelined frame after a
/// small head is fine, and answers do not depend on how the bytes were chunked.
pub fn parse_request(buf: &[u8], cfg: &HandshakeConfig) -> Result<Parsed, Rejection> {
    let window = &buf[..buf.len().min(cfg.max_header_bytes)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= cfg.max_header_bytes {
                Err(Rejection::new(431, "request header too large"))
            } else {
                Ok(Parsed::Partial)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Rejection::new(431, "too many request headers")),
        Err(httparse::Error::Version) => return Err(Rejection::new(400, "malformed HTTP version")),
        Err(_) => return Err(Rejection::new(400, "malformed HTTP request")),
    };
    // Complete: httparse guarantees method, path and version are set.
    let (Some(method), Some(path), Some(minor_version)) = (req.method, req.path, req.version) else {
        return Err(Rejection::new(400, "malformed HTTP request"));
    };
    let mut head = RequestHead {
        method: method.to_owned(),
        path: path.to_owned(),
        minor_version,
        host: None,
        upgrade: None,
        connection: None,
        key: None,
        version: None,
        protocols: Vec::new(),
        origin: None,
        headers: Vec::with_capacity(req.headers.len()),
    };
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        let value = value.trim_matches([' ', '\t']);
        let name = h.name;
        let slot = if name.eq_ignore_ascii_case("host") {
            Some(&mut head.host)
        } else if name.eq_ignore_ascii_case("upgrade") {
            Some(&mut head.upgrade)
        } else if name.eq_ignore_ascii_case("connection") {
            Some(&mut head.connection)
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            Some(&mut head.key)
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            Some(&mut head.version)
        } else if name.eq_ignore_ascii_case("origin") {
            Some(&mut head.origin)
        } else {
            if name.eq_ignore_ascii_case("sec-websocket-protocol") {
                head.protocols.extend(list_items(value).map(str::to_owned));
            }
            None
        };
        if let Some(slot) = slot {
            join_into(slot, value);
        }
        head.headers.push((name.to_owned(), value.to_owned()));
    }
    Ok(Parsed::Complete { head, consumed })
}

/// The outcome of a valid upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The complete `101 Switching Protocols` response.
    pub response: Vec<u8>,
    /// The subprotocol chosen (also in the response), if any.
    pub subprotocol: Option<String>,
}

/// Validate an upgrade request (RFC 6455 §4.2.1) and build the 101 response.
///
/// Checks, in this order: method GET (405 + `Allow: GET`); HTTP/1.1 or later (400); `Host`
/// present (400); `Upgrade` lists `websocket` (400); `Connection` lists `upgrade` (400);
/// `Sec-WebSocket-Version: 13` (426 + `Sec-WebSocket-Version: 13`); `Sec-WebSocket-Key` present
/// and 16 bytes once base64-decoded (400); `Origin` allowed (403). Tokens are compared ASCII
/// case-insensitively. The subprotocol is the first one the client offers that the server
/// supports; none is echoed if none matches (the client then decides whether to proceed).
pub fn accept_upgrade(head: &RequestHead, cfg: &HandshakeConfig) -> Result<Accepted, Rejection> {
    if head.method != "GET" {
        return Err(Rejection::new(405, "WebSocket upgrade requires GET"));
    }
    if head.minor_version < 1 {
        return Err(Rejection::new(400, "WebSocket upgrade requires HTTP/1.1"));
    }
    if head.host.is_none() {
        return Err(Rejection::new(400, "missing Host header"));
    }
    if !has_token(head.upgrade.as_deref(), "websocket") {
        return Err(Rejection::new(400, "missing Upgrade: websocket"));
    }
    if !has_token(head.connection.as_deref(), "upgrade") {
        return Err(Rejection::new(400, "missing Connection: upgrade"));
    }
    if head.version.as_deref() != Some("13") {
        return Err(Rejection::new(426, "unsupported Sec-WebSocket-Version (need 13)"));
    }
    let Some(key) = head.key.as_deref() else {
        return Err(Rejection::new(400, "missing Sec-WebSocket-Key"));
    };
    if !BASE64.decode(key).is_ok_and(|k| k.len() == 16) {
        return Err(Rejection::new(400, "invalid Sec-WebSocket-Key"));
    }
    if let Some(allowed) = &cfg.allowed_origins {
        let ok = head.origin.as_deref().is_some_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)));
        if !ok {
            return Err(Rejection::new(403, "origin not allowed"));
        }
    }
    let subprotocol = head.protocols.iter().find(|offered| cfg.subprotocols.iter().any(|s| s == *offered)).cloned();
    let mut response = String::with_capacity(160);
    let _ = write!(
        response,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        accept_key(key)
    );
    if let Some(p) = &subprotocol {
        let _ = write!(response, "Sec-WebSocket-Protocol: {p}\r\n");
    }
    response.push_str("\r\n");
    Ok(Accepted { response: response.into_bytes(), subprotocol })
}

#[cfg(test)]
mod tests;
