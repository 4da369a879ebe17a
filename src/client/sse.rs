//! Server-Sent Events framing (WHATWG HTML, "server-sent events"), sans-IO: the response head, events with an
//! `id:` and `data:` lines, comment heartbeats, and where a reconnecting client wants to resume.
//!
//! Data is split into one `data:` line per line of the payload, on CR, LF or CRLF, so that the browser puts the
//! same text back together (it joins `data:` lines with LF). Events carry no `event:` field unless named: the
//! browser's `EventSource.onmessage` sees only unnamed events, so data is unnamed and notices (gaps) are named.

use std::io::Write;

use super::position::{BadPosition, Position};
use super::query;

/// The `text/event-stream` response head, the `retry:` hint (how long a browser waits before reconnecting), and
/// CORS when `allow_origin` is given.
pub fn response_head(allow_origin: Option<&str>, retry_ms: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\
          X-Accel-Buffering: no\r\n",
    );
    if let Some(origin) = allow_origin {
        let _ = write!(out, "Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n");
    }
    let _ = write!(out, "\r\nretry: {retry_ms}\n\n");
}

/// Appends one event: `event:` when named, `id:` when given, one `data:` line per line of `data`, and the blank
/// line that ends it.
pub fn event(id: Option<Position>, name: Option<&str>, data: &[u8], out: &mut Vec<u8>) {
    if let Some(name) = name {
        let _ = writeln!(out, "event: {name}");
    }
    if let Some(id) = id {
        let _ = writeln!(out, "id: {id}");
    }
    let mut rest = data;
    loop {
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r').unwrap_or(rest.len());
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&rest[..end]);
        out.push(b'\n');
        if end == rest.len() {
            break;
        }
        let skip = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') { 2 } else { 1 };
        rest = &rest[end + skip..];
    }
    out.push(b'\n');
}

/// The name of the event that carries an `error` notice (a request at connect that cannot be served; the stream
/// then ends). Not `error`: `EventSource` fires its own `error` event on every disconnect.
pub const ERROR_EVENT: &str = "wsgate-error";

/// A comment line that keeps idle connections (and proxies' timers) alive.
pub const HEARTBEAT: &[u8] = b":\n\n";

/// Where a client wants to resume: the `Last-Event-ID` header (set by a reconnecting `EventSource`), else the
/// `since` query parameter. An empty `Last-Event-ID` means none.
pub fn resume_point(target: &str, last_event_id: Option<&str>) -> Result<Option<Position>, BadPosition> {
    if let Some(id) = last_event_id.map(str::trim).filter(|id| !id.is_empty()) {
        return id.parse().map(Some);
    }
    match query::param(target, "since") {
        None => Ok(None),
        Some(Ok(since)) => since.parse().map(Some),
        Some(Err(())) => Err(BadPosition),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(data: &str) -> String {
        let mut out = Vec::new();
        event(Some(Position { epoch: 7, seq: 9 }), None, data.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    /// What a browser's event-stream parser makes of one event: its data lines joined with LF.
    fn browser_data(stream: &str) -> String {
        let lines: Vec<&str> = stream.split('\n').filter_map(|l| l.strip_prefix("data: ")).collect();
        lines.join("\n")
    }

    #[test]
    fn events_split_data_on_every_line_ending() {
        assert_eq!(ev("{\"a\":1}"), "id: 7:9\ndata: {\"a\":1}\n\n");
        assert_eq!(ev("a\nb"), "id: 7:9\ndata: a\ndata: b\n\n");
        assert_eq!(ev("a\r\nb\rc\n"), "id: 7:9\ndata: a\ndata: b\ndata: c\ndata: \n\n");
        assert_eq!(ev(""), "id: 7:9\ndata: \n\n");
        for data in ["x", "a\nb", "a\r\nb", "\r\r\n\n", "end\n"] {
            let normalized = data.replace("\r\n", "\n").replace('\r', "\n");
            assert_eq!(browser_data(&ev(data)), normalized, "{data:?}");
        }
        let mut out = Vec::new();
        event(None, Some("gap"), b"{}", &mut out);
        assert_eq!(out, b"event: gap\ndata: {}\n\n");
    }

    #[test]
    fn the_head_and_resume_points() {
        let mut out = Vec::new();
        response_head(Some("https://app.example"), 3000, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"));
        assert!(text.contains("Access-Control-Allow-Origin: https://app.example\r\n"));
        assert!(text.ends_with("\r\n\r\nretry: 3000\n\n"));
        let p = Position { epoch: 1, seq: 2 };
        assert_eq!(resume_point("/sse", Some("1:2")), Ok(Some(p)));
        assert_eq!(resume_point("/sse?since=5:6", Some("1:2")), Ok(Some(p)), "the header wins");
        assert_eq!(resume_point("/sse?since=1%3A2", None), Ok(Some(p)));
        assert_eq!(resume_point("/sse?since=1:2", Some(" ")), Ok(Some(p)), "an empty header is none");
        assert_eq!(resume_point("/sse", None), Ok(None));
        assert_eq!(resume_point("/sse", Some("garbage")), Err(BadPosition));
        assert_eq!(resume_point("/sse?since=x", None), Err(BadPosition));
    }
}
