//! The gateway behind a real nginx and a real HAProxy (`tests/edge/`), each run from the configuration that
//! `docs/deployment.md` shows (`docs/deployment/`), on loopback, through its plain and its TLS listener (TLS
//! terminated at the proxy, a self-signed certificate the clients trust):
//! - WebSocket upgrade and 50 subscribers receiving a broadcast in order; an event stream and long-polls over
//!   the same messages; a resume within the history (replay, no gap); the close handshake from the client;
//! - idle connections kept open across the proxy's 3 s timeout by the gateway's pings (1 s) and SSE heartbeats,
//!   and a held long-poll answered by the gateway (`poll_timeout` 2 s) before the proxy gives up;
//! - a gateway restart behind the proxy: the close (1001, with its retry hint) reaches the clients through the
//!   proxy, they reconnect through it to the new process and resume with their last position, which does not
//!   survive a restart: an honest `gap` (reason `epoch`), then the new process's messages;
//! - two gateways behind one proxy: clients spread over both, each resuming on its own (the hash on the client's
//!   address in the templates);
//! - TLS at the gateway behind each proxy's TCP pass-through (HAProxy `mode tcp`, nginx's stream module), with
//!   a PROXY protocol header naming each client: the broadcast, idle and restart checks above, and the client
//!   address applied to the per-address limit;
//! - as the control, each proxy does cut a WebSocket whose backend sends no pings at its timeout; and
//!   `docs/deployment.md` shows the configurations verbatim.
//!
//! Nothing is skipped: without nginx, HAProxy or openssl the tests fail and say to run
//! `scripts/install-test-deps.sh`.

mod common;
mod edge;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::json::{self, Value};
use common::raw::{read_head, Head};
use common::{Gateway, IO_TIMEOUT};
use edge::{Entry, Kind, Options, Proxy, Stream, TestCertificate};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocket};
use tungstenite::Message;

/// The proxies' idle timeout: shorter than the idle phase, longer than the gateway's keepalives below.
const PROXY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the idle connections stay silent (but for keepalives): twice the proxy's timeout.
const IDLE: Duration = Duration::from_secs(6);
/// Subscribers of one broadcast, per entry point.
const SUBSCRIBERS: usize = 50;
/// Messages of one broadcast.
const MESSAGES: u64 = 100;

/// The gateway's settings here: keepalives (pings every second, answered within 0.9 s; SSE heartbeats every second;
/// held polls answered after 2 s) well inside the proxy's timeout, and a short shutdown spread.
const GATEWAY_ARGS: &[&str] = &[
    "--ingest",
    "127.0.0.1:0",
    "--ping-interval",
    "1000",
    "--pong-timeout",
    "900",
    "--sse-heartbeat",
    "1000",
    "--poll-timeout",
    "2000",
    "--shutdown-spread",
    "300",
];

/// A gateway on a fixed port (so that a restarted one is where the proxy expects it) behind `kind`.
struct Edge {
    gw: Gateway,
    proxy: Proxy,
    listen: String,
    /// The gateway's flags beyond `GATEWAY_ARGS` (a restarted one gets them too).
    gateway_args: Vec<String>,
    publisher: TcpStream,
    /// Where the gateway's certificate lives, with TLS at the gateway (behind a pass-through proxy).
    certificate_dir: Option<TempDir>,
}

impl Edge {
    /// TLS (if any) at the proxy, which speaks HTTP to the gateway.
    fn start(kind: Kind) -> Edge {
        let listen = format!("127.0.0.1:{}", edge::free_port());
        let gw = start_gateway(&listen, &[]);
        let proxy =
            Proxy::start(kind, &Options { gateways: vec![gw.ws_addr], timeout: PROXY_TIMEOUT, send_proxy: false });
        let publisher = gw.publisher();
        Edge { gw, proxy, listen, gateway_args: Vec::new(), publisher, certificate_dir: None }
    }

    /// TLS at the gateway: the proxy's TCP pass-through configuration forwards the encrypted bytes after a PROXY
    /// protocol header, which the gateway requires (`--proxy-protocol`) from the proxy's address only.
    fn start_passthrough(kind: Kind) -> Edge {
        let dir = TempDir::new("gateway-tls");
        let certificate = TestCertificate::make(&dir.0);
        let mut gateway_args = certificate.gateway_args();
        gateway_args.extend(PASSTHROUGH_ARGS.iter().map(|s| s.to_string()));
        let listen = format!("127.0.0.1:{}", edge::free_port());
        let gw = start_gateway(&listen, &gateway_args);
        let proxy = Proxy::start_passthrough(kind, &[gw.ws_addr], PROXY_TIMEOUT, &certificate);
        let publisher = gw.publisher();
        Edge { gw, proxy, listen, gateway_args, publisher, certificate_dir: Some(dir) }
    }

    /// The gateway's epoch, from its `/healthz`: through the proxy behind a pass-through proxy (that gateway
    /// requires a PROXY header of every connection), so only while the proxy routes to it.
    fn epoch(&self) -> u64 {
        let health = match self.certificate_dir {
            None => self.gw.health(),
            Some(_) => {
                let (head, body) = get(&self.proxy.entries()[0], "/healthz");
                assert_eq!(head.status, 200, "/healthz through the proxy: {head:?} {body}");
                json::parse(&body).unwrap()
            }
        };
        health.get("epoch").and_then(Value::as_u64).expect("/healthz epoch")
    }

    /// Publishes `{"topic":T,"n":N}` for each `n`.
    fn publish(&mut self, topic: &str, ns: impl IntoIterator<Item = u64>) {
        let lines: String = ns.into_iter().map(|n| format!("{{\"topic\":\"{topic}\",\"n\":{n}}}\n")).collect();
        common::write_all(&mut self.publisher, lines.as_bytes());
    }
}

/// The gateway's flags behind a pass-through proxy (beside its certificate): the PROXY protocol required, from
/// loopback only. Its `/healthz` and `/metrics` are then reached through the proxy, as HAProxy's checks do.
const PASSTHROUGH_ARGS: &[&str] = &["--proxy-protocol", "--trusted-proxies", "127.0.0.1/32"];

fn start_gateway(listen: &str, extra: &[String]) -> Gateway {
    let mut args = vec!["--listen", listen];
    args.extend_from_slice(GATEWAY_ARGS);
    args.extend(extra.iter().map(String::as_str));
    Gateway::start(&args)
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = common::unique_temp_path(name);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `wsgate.v1.json` WebSocket client on `path` through `entry`; the error says what failed (an HTTP refusal
/// as `HTTP 503 (Retry-After: 5)`).
fn ws(entry: &Entry, path: &str) -> Result<WebSocket<Stream>, String> {
    let stream = entry.connect_from(None).map_err(|e| format!("connect: {e}"))?;
    ws_over(entry, stream, path)
}

fn ws_over(entry: &Entry, stream: Stream, path: &str) -> Result<WebSocket<Stream>, String> {
    ws_with_headers(entry, stream, path, &[])
}

/// [`ws_over`] with extra request headers.
fn ws_with_headers(
    entry: &Entry,
    stream: Stream,
    path: &str,
    headers: &[(&'static str, &str)],
) -> Result<WebSocket<Stream>, String> {
    let mut req = format!("{}://{}{path}", entry.ws_scheme(), entry.addr).into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", "wsgate.v1.json".parse().unwrap());
    for (name, value) in headers {
        req.headers_mut().insert(*name, value.parse().unwrap());
    }
    match tungstenite::client(req, stream) {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101);
            Ok(ws)
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap_or("?").to_string());
            Err(format!("HTTP {} (Retry-After: {})", resp.status().as_u16(), retry.as_deref().unwrap_or("none")))
        }
        Err(e) => Err(format!("upgrade: {e}")),
    }
}

/// The next JSON text message (pings and pongs skipped).
fn read_json(ws: &mut WebSocket<Stream>) -> Value {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return json::parse(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t:?}")),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => panic!("expected a JSON text message, got {other:?}"),
            Err(e) => panic!("expected a JSON text message, read failed: {e}"),
        }
    }
}

/// The next reply or notice, which must be `kind` (`subscribed`, `gap`, …).
fn read_reply(ws: &mut WebSocket<Stream>, kind: &str) -> Value {
    let v = read_json(ws);
    assert_eq!(v.get("wsgate").and_then(Value::as_str), Some(kind), "expected a {kind:?} reply: {v:?}");
    v
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or_else(|| panic!("no numeric {key:?} in {v:?}"))
}

/// A data envelope's `(seq, n)`.
fn message(v: &Value) -> (u64, u64) {
    assert!(v.get("wsgate").is_none(), "expected a message, got a notice: {v:?}");
    (num(v, "seq"), num(v.get("data").unwrap_or_else(|| panic!("no data in {v:?}")), "n"))
}

/// Reads `count` messages that must be `first_n, first_n + 1, …` in feed order (seq rising, each `prev` the
/// seq before it); returns their seqs.
fn read_in_order(ws: &mut WebSocket<Stream>, first_n: u64, count: u64, context: &str) -> Vec<u64> {
    let mut seqs: Vec<u64> = Vec::new();
    for i in 0..count {
        let v = read_json(ws);
        let (seq, n) = message(&v);
        assert_eq!(n, first_n + i, "{context}: message {i} out of order: {v:?}");
        if let Some(&last) = seqs.last() {
            assert!(seq > last, "{context}: seq went from {last} to {seq}");
            assert_eq!(num(&v, "prev"), last, "{context}: prev is not the seq before: {v:?}");
        }
        seqs.push(seq);
    }
    seqs
}

/// An HTTP GET through `entry` (with `Connection: close`): the response head and what followed it so far.
fn open_get(entry: &Entry, target: &str, headers: &str) -> (Stream, Head, Vec<u8>) {
    open_get_from(entry, None, target, headers)
}

/// [`open_get`] from `source` (a loopback address; `None`: any).
fn open_get_from(entry: &Entry, source: Option<[u8; 4]>, target: &str, headers: &str) -> (Stream, Head, Vec<u8>) {
    let mut s = entry.connect_from(source).unwrap_or_else(|e| panic!("connect to {entry:?} from {source:?}: {e}"));
    write!(s, "GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n").unwrap();
    s.flush().unwrap();
    let (head, rest) = read_head(&mut s);
    (s, head, rest)
}

/// An HTTP GET through `entry` whose whole body is read (by `Content-Length`, or until the end).
fn get(entry: &Entry, target: &str) -> (Head, String) {
    get_from(entry, None, target)
}

/// [`get`] from `source` (a loopback address; `None`: any).
fn get_from(entry: &Entry, source: Option<[u8; 4]>, target: &str) -> (Head, String) {
    let (s, head, rest) = open_get_from(entry, source, target, "");
    let len = head.header("content-length").map(|l| l.parse::<usize>().expect("Content-Length"));
    let mut body = Body::new(s, &head, rest);
    let deadline = Instant::now() + IO_TIMEOUT;
    while len.is_none_or(|len| body.buf.len() < len) && body.fill(Duration::from_millis(200)) {
        assert!(Instant::now() < deadline, "GET {target} via {entry:?}: body incomplete: {:?}", body.buf);
    }
    (head, String::from_utf8(body.buf).expect("UTF-8 body"))
}

/// A response body as it arrives: as sent, or decoded from `Transfer-Encoding: chunked` (nginx re-frames a
/// streamed HTTP/1.1 answer so).
struct Body {
    s: Stream,
    /// Bytes read, not yet decoded (chunked only).
    raw: Vec<u8>,
    chunked: bool,
    /// The last chunk came.
    done: bool,
    /// The decoded body not yet consumed.
    buf: Vec<u8>,
}

impl Body {
    fn new(s: Stream, head: &Head, rest: Vec<u8>) -> Body {
        let chunked = head.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        let mut body = Body { s, raw: Vec::new(), chunked, done: false, buf: Vec::new() };
        body.take(&rest);
        body
    }

    fn take(&mut self, bytes: &[u8]) {
        if !self.chunked {
            self.buf.extend_from_slice(bytes);
            return;
        }
        self.raw.extend_from_slice(bytes);
        while !self.done {
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else { return };
            let line = std::str::from_utf8(&self.raw[..eol]).unwrap();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|e| panic!("bad chunk size {line:?}: {e}"));
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            self.buf.extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
            self.raw.drain(..eol + 2 + size + 2);
            self.done = size == 0;
        }
    }

    /// Reads once more (waiting at most `wait`); false at the end of the body.
    fn fill(&mut self, wait: Duration) -> bool {
        if self.done {
            return false;
        }
        self.s.tcp().set_read_timeout(Some(wait.max(Duration::from_millis(1)))).unwrap();
        let mut chunk = [0u8; 16384];
        match self.s.read(&mut chunk) {
            Ok(0) => false,
            Ok(k) => {
                self.take(&chunk[..k]);
                true
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => true,
            Err(_) => false,
        }
    }
}

/// An event stream through a proxy: the events (blank-line terminated blocks) as they come.
struct Sse {
    body: Body,
}

impl Sse {
    /// Opens the stream and reads its first event, the `retry:` hint.
    fn open(entry: &Entry, target: &str, headers: &str) -> Sse {
        let (s, head, rest) = open_get(entry, target, headers);
        assert_eq!(head.status, 200, "GET {target} via {entry:?}: {head:?}");
        assert_eq!(head.header("content-type"), Some("text/event-stream"), "{head:?}");
        let mut sse = Sse { body: Body::new(s, &head, rest) };
        let first = sse.next_event();
        assert!(first.starts_with("retry: "), "the first event via {entry:?}: {first:?}");
        sse
    }

    /// The next event; `None` when the stream ended. Panics if none comes within `timeout`.
    fn next(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let buf = &mut self.body.buf;
            if let Some(at) = buf.windows(2).position(|w| w == b"\n\n") {
                let event = String::from_utf8(buf.drain(..at + 2).collect()).unwrap();
                return Some(event.trim_end().to_string());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no complete event within {timeout:?}: {:?}", String::from_utf8_lossy(buf));
            if !self.body.fill(left.min(Duration::from_millis(200))) {
                return None;
            }
        }
    }

    /// The next event that is not a heartbeat comment; panics if the stream ends.
    fn next_event(&mut self) -> String {
        loop {
            let e = self.next(IO_TIMEOUT).expect("the event stream ended");
            if !e.starts_with(':') {
                return e;
            }
        }
    }
}

/// An event's `name: value` fields.
fn field<'a>(event: &'a str, name: &str) -> Option<&'a str> {
    event.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
}

/// 50 WebSocket subscribers, an event stream and long-polls through `entry` see the same broadcast in the same
/// order; a client that comes back with a position within the history gets the rest replayed, no gap; a close
/// from the client is answered through the proxy.
fn broadcast(e: &mut Edge, entry: &Entry, topic: &str) {
    let epoch = e.epoch();
    let path = format!("/ws?topics={topic}");
    let mut clients: Vec<WebSocket<Stream>> = (0..SUBSCRIBERS)
        .map(|i| ws(entry, &path).unwrap_or_else(|err| panic!("client {i} via {entry:?}: {err}")))
        .collect();
    let mut since = 0;
    for ws in &mut clients {
        let reply = read_reply(ws, "subscribed");
        let topics = reply.get("topics").and_then(Value::as_array).unwrap();
        since = num(topics[0].get("position").unwrap(), "seq");
    }
    let mut sse = Sse::open(entry, &format!("/sse?topics={topic}"), "");

    e.publish(topic, 0..MESSAGES);
    // Each client reads on its own thread, as a real one would, so that it answers the gateway's pings in time.
    let seen: Vec<Vec<u64>> = std::thread::scope(|s| {
        let readers: Vec<_> = clients
            .iter_mut()
            .enumerate()
            .map(|(i, ws)| s.spawn(move || read_in_order(ws, 0, MESSAGES, &format!("client {i} via {entry:?}"))))
            .collect();
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    // Done with them: closed now rather than left unread (the gateway would close them for missing pongs).
    drop(clients);
    let seqs = seen[0].clone();
    for (i, got) in seen.iter().enumerate() {
        assert_eq!(got, &seqs, "client {i} via {entry:?} saw other positions than client 0");
    }
    for (i, seq) in seqs.iter().enumerate() {
        let event = sse.next_event();
        assert_eq!(field(&event, "id"), Some(format!("{epoch}:{seq}").as_str()), "SSE event {i}: {event:?}");
        let data = json::parse(field(&event, "data").unwrap()).unwrap();
        assert_eq!(message(&data), (*seq, i as u64), "SSE event {i} via {entry:?}");
    }

    // Long-polls: from before the broadcast, all of it in one answer; from its end, held until the next message.
    let (head, body) = get(entry, &format!("/poll?topics={topic}&since={epoch}:{since}"));
    assert_eq!(head.status, 200, "poll via {entry:?}: {head:?} {body}");
    let answer = json::parse(&body).unwrap();
    let polled: Vec<(u64, u64)> =
        answer.get("messages").and_then(Value::as_array).unwrap().iter().map(message).collect();
    let expected: Vec<(u64, u64)> = seqs.iter().copied().zip(0..).collect();
    assert_eq!(polled, expected, "poll via {entry:?}");
    let next = answer.get("next").and_then(Value::as_str).unwrap().to_string();
    assert_eq!(next, format!("{epoch}:{}", seqs.last().unwrap()));

    // A client that comes back with the position of message 89 gets 90..99 from the history, then live ones.
    let resume = seqs[89];
    let mut back = ws(entry, &format!("{path}&since={epoch}:{resume}")).unwrap();
    read_reply(&mut back, "subscribed");
    let replayed = read_in_order(&mut back, 90, 10, &format!("resume via {entry:?}"));
    assert_eq!(replayed, seqs[90..]);
    let held = std::thread::scope(|s| {
        let held = s.spawn(|| get(entry, &format!("/poll?topics={topic}&since={next}")));
        std::thread::sleep(Duration::from_millis(300));
        e.publish(topic, [MESSAGES]);
        held.join().unwrap()
    });
    let held = json::parse(&held.1).unwrap();
    let first = &held.get("messages").and_then(Value::as_array).unwrap()[0];
    assert_eq!(message(first).1, MESSAGES, "the held poll via {entry:?} got the next message: {held:?}");
    assert_eq!(read_in_order(&mut back, MESSAGES, 1, "live after the replay").len(), 1);

    // The close handshake from the client: the gateway's answer comes back through the proxy.
    let ws = &mut back;
    ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).unwrap();
    let echoed = loop {
        match ws.read() {
            Ok(Message::Close(frame)) => break frame,
            Ok(_) => continue,
            Err(err) => panic!("no close answer via {entry:?}: {err}"),
        }
    };
    assert_eq!(echoed.map(|f| f.code), Some(CloseCode::Normal), "the gateway's close answer via {entry:?}");
    assert!(matches!(ws.read(), Err(tungstenite::Error::ConnectionClosed)), "closed cleanly via {entry:?}");
}

/// What an idle client saw: keepalives, then (after the idle time) the one message published.
#[derive(Debug)]
struct Idle {
    keepalives: usize,
    n: u64,
}

/// Reads pings only (answering them) until `until`, then the next message.
fn idle_ws(mut ws: WebSocket<Stream>, until: Instant) -> Idle {
    let mut pings = 0;
    while Instant::now() < until {
        ws.get_ref().tcp().set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(m) => panic!("an idle client received {m:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("an idle WebSocket was cut after {pings} pings: {e}"),
        }
    }
    ws.get_ref().tcp().set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    Idle { keepalives: pings, n: message(&read_json(&mut ws)).1 }
}

/// Reads heartbeat comments only until `until`, then the next event (which must not come earlier).
fn idle_sse(mut sse: Sse, until: Instant) -> Idle {
    let mut beats = 0;
    loop {
        match sse.next(IDLE + IO_TIMEOUT) {
            Some(e) if e.starts_with(':') => beats += 1,
            Some(e) => {
                assert!(Instant::now() >= until, "an idle event stream received {e:?}");
                let n = message(&json::parse(field(&e, "data").unwrap()).unwrap()).1;
                return Idle { keepalives: beats, n };
            }
            None => panic!("an idle event stream was cut after {beats} heartbeats"),
        }
    }
}

/// WebSocket clients and event streams on every entry point stay silent for twice the proxy's timeout (the
/// gateway's keepalives are all that crosses), then still receive.
fn idle_across_the_proxy_timeout(e: &mut Edge, topic: &str) {
    let entries = e.proxy.entries();
    let until = Instant::now() + IDLE;
    let seen: Vec<(String, Idle)> = std::thread::scope(|s| {
        let mut threads = Vec::new();
        for entry in &entries {
            let mut client = ws(entry, &format!("/ws?topics={topic}")).unwrap();
            read_reply(&mut client, "subscribed");
            threads.push((format!("WebSocket via {entry:?}"), s.spawn(move || idle_ws(client, until))));
            let sse = Sse::open(entry, &format!("/sse?topics={topic}"), "");
            threads.push((format!("SSE via {entry:?}"), s.spawn(move || idle_sse(sse, until))));
        }
        std::thread::sleep(until.saturating_duration_since(Instant::now()) + Duration::from_millis(500));
        e.publish(topic, [7]);
        threads.into_iter().map(|(name, t)| (name, t.join().unwrap())).collect()
    });
    for (name, idle) in seen {
        // Pings and heartbeats every second: at least 4 in 6 s, whatever the scheduling.
        assert!(idle.keepalives >= 4, "{name}: only {} keepalives in {IDLE:?}", idle.keepalives);
        assert_eq!(idle.n, 7, "{name}");
    }
    // A held long-poll outlives no proxy timeout: the gateway answers it (empty) first.
    let entry = &entries[0];
    let started = Instant::now();
    let (head, body) = get(entry, &format!("/poll?topics={topic}-NONE"));
    assert_eq!(head.status, 200, "a held poll via {entry:?}: {head:?} {body}");
    assert!(started.elapsed() >= Duration::from_millis(1900), "answered after {:?}", started.elapsed());
    assert_eq!(json::parse(&body).unwrap().get("messages").and_then(Value::as_array).map(<[_]>::len), Some(0));
}

/// Reads until the server's close frame (answering it); returns its code and reason.
fn read_until_close(mut ws: WebSocket<Stream>) -> (u16, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => {
                while ws.read().is_ok() {}
                return (f.code.into(), f.reason.to_string());
            }
            Ok(_) => continue,
            Err(e) => panic!("no close frame from the gateway: {e}"),
        }
    }
}

/// A gateway restart behind the proxy: the closes reach the clients through it; they come back through it to
/// the new process with their last position and get an honest gap (positions do not survive a restart), then
/// the new process's messages.
fn restart(e: &mut Edge, topic: &str) {
    let entries = e.proxy.entries();
    let old_epoch = e.epoch();
    let mut clients = Vec::new();
    let mut streams = Vec::new();
    for entry in &entries {
        let mut client = ws(entry, &format!("/ws?topics={topic}")).unwrap();
        read_reply(&mut client, "subscribed");
        clients.push(client);
        let sse = Sse::open(entry, &format!("/sse?topics={topic}"), "");
        streams.push(sse);
    }
    e.publish(topic, 0..5);
    let mut last = 0;
    for (client, sse) in clients.iter_mut().zip(&mut streams) {
        last = *read_in_order(client, 0, 5, "before the restart").last().unwrap();
        for _ in 0..5 {
            sse.next_event();
        }
    }

    let (closes, ends) = std::thread::scope(|s| {
        let closes: Vec<_> = clients.into_iter().map(|c| s.spawn(move || read_until_close(c))).collect();
        let ends: Vec<_> = streams
            .into_iter()
            .map(|mut sse| {
                s.spawn(move || {
                    let mut events = Vec::new();
                    while let Some(event) = sse.next(Duration::from_secs(10)) {
                        events.push(event);
                    }
                    events
                })
            })
            .collect();
        let stopping = Instant::now();
        let status = e.gw.stop(Duration::from_secs(10));
        assert!(status.success(), "the gateway's exit: {status:?}");
        // A closed connection lingers up to 2 s for the client's answer to the close (then it is cut), so without
        // answers the exit comes at least 2 s after SIGTERM; right after the 300 ms spread, it shows the answers
        // came back through the proxy.
        let took = stopping.elapsed();
        assert!(took < Duration::from_millis(1800), "the gateway took {took:?} to exit: close answers lost?");
        let closes: Vec<_> = closes.into_iter().map(|t| t.join().unwrap()).collect();
        let ends: Vec<_> = ends.into_iter().map(|t| t.join().unwrap()).collect();
        (closes, ends)
    });
    for (code, reason) in closes {
        assert_eq!(code, 1001, "{reason:?}");
        assert!(reason.starts_with("server shutting down: retry after "), "{reason:?}");
    }
    for events in ends {
        assert!(events.iter().any(|e| e.starts_with("retry: ")), "the stream's last events: {events:?}");
    }

    e.gw = start_gateway(&e.listen, &e.gateway_args);
    e.publisher = e.gw.publisher();
    let mut back = Vec::new();
    for entry in &entries {
        // The proxy may still answer 502/503 for a moment (HAProxy: until its next health check).
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            match ws(entry, &format!("/ws?topics={topic}&since={old_epoch}:{last}")) {
                Ok(c) => break c,
                Err(err) if Instant::now() < deadline => {
                    assert!(err.contains("50") || err.starts_with("connect") || err.starts_with("upgrade"), "{err}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(err) => panic!("no reconnect via {entry:?} within 20 s: {err}"),
            }
        };
        let sse = Sse::open(entry, &format!("/sse?topics={topic}"), &format!("Last-Event-ID: {old_epoch}:{last}\r\n"));
        back.push((entry.clone(), client, sse));
    }
    // Read now that the proxy routes to the new process again (through it, behind a pass-through proxy).
    let new_epoch = e.epoch();
    assert_ne!(new_epoch, old_epoch);
    e.publish(topic, [5]);
    for (entry, client, sse) in &mut back {
        read_reply(client, "subscribed");
        let gap = read_reply(client, "gap");
        assert_eq!(gap.get("reason").and_then(Value::as_str), Some("epoch"), "{gap:?}");
        let from = gap.get("from").unwrap();
        assert_eq!((num(from, "epoch"), num(from, "seq")), (old_epoch, last), "via {entry:?}: {gap:?}");
        let v = read_json(client);
        assert_eq!((num(&v, "epoch"), message(&v).1), (new_epoch, 5), "via {entry:?}");

        let gap = sse.next_event();
        assert_eq!(field(&gap, "event"), Some("gap"), "via {entry:?}: {gap:?}");
        let gap = json::parse(field(&gap, "data").unwrap()).unwrap();
        assert_eq!(gap.get("reason").and_then(Value::as_str), Some("epoch"), "{gap:?}");
        let event = sse.next_event();
        assert_eq!(message(&json::parse(field(&event, "data").unwrap()).unwrap()).1, 5, "via {entry:?}");
    }
}

fn through(kind: Kind) {
    let mut e = Edge::start(kind);
    for (i, entry) in e.proxy.entries().iter().enumerate() {
        broadcast(&mut e, entry, &format!("B{i}"));
    }
    idle_across_the_proxy_timeout(&mut e, "IDLE");
    restart(&mut e, "R");
}

#[test]
fn websocket_sse_and_polls_through_nginx_plain_and_tls_idle_and_restart() {
    through(Kind::Nginx);
}

#[test]
fn websocket_sse_and_polls_through_haproxy_plain_and_tls_idle_and_restart() {
    through(Kind::Haproxy);
}

/// TLS at the gateway behind the proxy's TCP pass-through (HAProxy `mode tcp` with `send-proxy-v2`, nginx's
/// stream module with `proxy_protocol on`): the same broadcast, idle and restart checks, the clients trusting
/// the gateway's certificate through the proxy.
fn through_passthrough(kind: Kind) {
    let mut e = Edge::start_passthrough(kind);
    let entry = &e.proxy.entries()[0];
    broadcast(&mut e, entry, "T");
    idle_across_the_proxy_timeout(&mut e, "IDLE");
    restart(&mut e, "R");
    // Every client connection came with a PROXY header naming its own address (HAProxy's health checks with
    // a LOCAL one), and the proxy's bytes went to the gateway's TLS unread.
    let (head, text) = get(entry, "/metrics");
    assert_eq!(head.status, 200, "/metrics through the proxy: {head:?} {text}");
    let scrape = common::prom::parse(&text).unwrap();
    let proxied = scrape.sum("wsgate_proxied_clients_total", &[("source", "proxy_protocol")]);
    assert!(proxied > 0.0, "no client address from a PROXY header");
    assert_eq!(scrape.sum("wsgate_proxy_refused_total", &[]), 0.0, "PROXY headers refused");
    assert!(scrape.sum("wsgate_tls_handshakes_total", &[("result", "ok")]) > 0.0);
}

#[test]
fn tls_at_the_gateway_through_haproxy_tcp_passthrough_idle_and_restart() {
    through_passthrough(Kind::Haproxy);
}

#[test]
fn tls_at_the_gateway_through_nginx_stream_passthrough_idle_and_restart() {
    through_passthrough(Kind::Nginx);
}

/// A stand-in for a gateway that never sends anything after the upgrade (no pings): answers an upgrade with
/// 101, any other request (HAProxy's health check) with 200, then holds the connection silently.
fn silent_backend() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && matches!(conn.read(&mut byte), Ok(1)) {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head);
                let upgrade = head.to_ascii_lowercase().contains("upgrade: websocket");
                // HAProxy sends header names in lower case.
                let key = head
                    .lines()
                    .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-key")))
                    .map(|(_, v)| v.trim());
                let answer = match key.filter(|_| upgrade) {
                    Some(key) => format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                         Sec-WebSocket-Protocol: wsgate.v1.json\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                        common::raw::accept_for(key)
                    ),
                    None => "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                };
                let _ = conn.write_all(answer.as_bytes());
                // Hold it: read until the proxy hangs up.
                conn.set_read_timeout(None).unwrap();
                let mut sink = [0u8; 1024];
                while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// The control for the idle test: behind a backend that sends no pings, each proxy (from the same template)
/// does cut an upgraded connection after its 3 s timeout, so it is the gateway's pings that keep them open.
#[test]
fn without_pings_each_proxy_cuts_an_idle_websocket_at_its_timeout() {
    let backend = silent_backend();
    for kind in [Kind::Nginx, Kind::Haproxy] {
        let proxy = Proxy::start(kind, &Options { gateways: vec![backend], timeout: PROXY_TIMEOUT, send_proxy: false });
        let entry = &proxy.entries()[0];
        let started = Instant::now();
        let mut ws = ws(entry, "/ws").unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        ws.get_ref().tcp().set_read_timeout(Some(IDLE + IO_TIMEOUT)).unwrap();
        let end = ws.read();
        let after = started.elapsed();
        assert!(!matches!(end, Ok(Message::Text(_) | Message::Binary(_))), "{kind:?}: {end:?}");
        assert!(
            after >= PROXY_TIMEOUT - Duration::from_millis(200) && after < IDLE,
            "{kind:?} cut a silent WebSocket after {after:?} (timeout {PROXY_TIMEOUT:?}): {end:?}"
        );
    }
}

/// Two gateways behind one proxy (the same template, one `server` line each): clients from 32 source addresses
/// are spread over both, and each comes back to its own gateway (the hash on the client's address), where its
/// position resumes without a gap.
fn several_gateways(kind: Kind) {
    let mut gateways: Vec<(Gateway, TcpStream)> = (0..2)
        .map(|_| {
            let gw = start_gateway("127.0.0.1:0", &[]);
            let publisher = gw.publisher();
            (gw, publisher)
        })
        .collect();
    let addrs = gateways.iter().map(|(gw, _)| gw.ws_addr).collect();
    let proxy = Proxy::start(kind, &Options { gateways: addrs, timeout: PROXY_TIMEOUT, send_proxy: false });
    let entry = &proxy.entries()[0];
    let mut publish = |n: u64| {
        for (_, p) in &mut gateways {
            common::write_all(p, format!("{{\"topic\":\"S\",\"n\":{n}}}\n").as_bytes());
        }
    };
    // 32 addresses: even a lopsided hash ring (nginx hashes the servers' ports, new each run) splits them.
    let sources: Vec<[u8; 4]> = (2..34).map(|i| [127, 0, 0, i]).collect();
    let connect = |source: [u8; 4], path: &str| {
        let stream = entry.connect_from(Some(source)).unwrap_or_else(|e| panic!("connect from {source:?}: {e}"));
        let mut ws = ws_over(entry, stream, path).unwrap_or_else(|e| panic!("{kind:?} from {source:?}: {e}"));
        let reply = read_reply(&mut ws, "subscribed");
        let epoch = num(reply.get("topics").and_then(Value::as_array).unwrap()[0].get("position").unwrap(), "epoch");
        (ws, epoch)
    };
    let mut clients: Vec<_> = sources.iter().map(|&src| connect(src, "/ws?topics=S")).collect();
    let epochs: std::collections::HashSet<u64> = clients.iter().map(|(_, e)| *e).collect();
    assert_eq!(epochs.len(), 2, "{kind:?} sent 32 source addresses all to one gateway");
    publish(0);
    publish(1);
    let last: Vec<u64> = sources
        .iter()
        .zip(&mut clients)
        .map(|(source, (ws, _))| *read_in_order(ws, 0, 2, &format!("{kind:?} from {source:?}")).last().unwrap())
        .collect();
    publish(2);
    // Each comes back with the position of message 1: message 2 is replayed from its gateway's history.
    for ((source, (_, epoch)), seq) in sources.iter().zip(&clients).zip(last) {
        let (mut back, again) = connect(*source, &format!("/ws?topics=S&since={epoch}:{seq}"));
        assert_eq!(again, *epoch, "{kind:?}: {source:?} came back to another gateway");
        let v = read_json(&mut back);
        assert_eq!(message(&v), (seq + 1, 2), "{kind:?} from {source:?}: resumed without a gap: {v:?}");
    }
}

#[test]
fn several_gateways_behind_nginx_each_client_resumes_on_its_own() {
    several_gateways(Kind::Nginx);
}

#[test]
fn several_gateways_behind_haproxy_each_client_resumes_on_its_own() {
    several_gateways(Kind::Haproxy);
}

/// `docs/deployment.md` shows the files the tests and `scripts/check-deployment.sh` run, verbatim, so the
/// guide cannot drift from what is exercised.
#[test]
fn the_deployment_guide_shows_the_tested_files_verbatim() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("docs/deployment.md")).expect("read docs/deployment.md");
    for file in [
        edge::NGINX_TEMPLATE,
        edge::HAPROXY_TEMPLATE,
        edge::NGINX_PASSTHROUGH_TEMPLATE,
        edge::HAPROXY_PASSTHROUGH_TEMPLATE,
        "docs/deployment/sysctl-wsgate.conf",
        "docs/deployment/wsgate-container.toml",
        "Dockerfile",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
        let block = format!("\n{}\n```\n", text.trim_end_matches('\n'));
        assert!(guide.contains(&block), "docs/deployment.md does not show {file} verbatim in a code block");
    }
}

/// The gateway sees each client's own address through the proxy (HAProxy: PROXY protocol v2; nginx:
/// `X-Forwarded-For`), so `max_connections_per_ip 1` admits one client from 127.0.0.2 and one from 127.0.0.3 and
/// refuses a second from 127.0.0.2 with its own `503` (with `Retry-After`, which the proxies' own 503s lack),
/// even when that client names another address in forwarding headers of its own. Through the plain and the TLS
/// listener, with the gateway's per-address refusals counted. With `passthrough`, through the proxy's TCP
/// pass-through to a gateway that terminates TLS (a PROXY header from either proxy).
fn client_address(kind: Kind, passthrough: bool) {
    let certificate_dir = TempDir::new("gateway-tls");
    let certificate = TestCertificate::make(&certificate_dir.0);
    let mut args: Vec<String> = ["--listen", "127.0.0.1:0", "--max-connections-per-ip", "1"].map(String::from).into();
    if passthrough {
        args.extend(certificate.gateway_args());
        args.extend(PASSTHROUGH_ARGS.iter().map(|s| s.to_string()));
    } else {
        args.extend(["--trusted-proxies", "127.0.0.1/32"].map(String::from));
        if kind == Kind::Haproxy {
            args.push("--proxy-protocol".into());
        }
    }
    args.extend(GATEWAY_ARGS.iter().map(|s| s.to_string()));
    let gw = Gateway::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let proxy = if passthrough {
        Proxy::start_passthrough(kind, &[gw.ws_addr], PROXY_TIMEOUT, &certificate)
    } else {
        let opts = Options { gateways: vec![gw.ws_addr], timeout: PROXY_TIMEOUT, send_proxy: kind == Kind::Haproxy };
        Proxy::start(kind, &opts)
    };
    let forged = [("Forwarded", "for=127.0.0.77"), ("X-Forwarded-For", "127.0.0.78"), ("X-Real-IP", "127.0.0.79")];
    for (i, entry) in proxy.entries().iter().enumerate() {
        // Other source addresses per listener: the first listener's clients may still be closing.
        let (a, b) = ([127, 0, 0, 2 + 2 * i as u8], [127, 0, 0, 3 + 2 * i as u8]);
        let from = |src: [u8; 4], headers: &[(&'static str, &str)]| {
            let stream = entry.connect_from(Some(src)).unwrap_or_else(|e| panic!("connect from {src:?}: {e}"));
            ws_with_headers(entry, stream, "/ws", headers)
        };
        let _first =
            from(a, &[]).unwrap_or_else(|e| panic!("{kind:?} via {entry:?}: the first client from {a:?}: {e}"));
        let _other =
            from(b, &[]).unwrap_or_else(|e| panic!("{kind:?} via {entry:?}: the first client from {b:?}: {e}"));
        for headers in [&[][..], &forged[..]] {
            let err = from(a, headers).map(|_| ()).expect_err("a second client from the same address was admitted");
            if passthrough {
                // The PROXY header names the client before the TLS handshake: a refusal then is a close, as the
                // client could not read a plain 503 (docs/tls.md); the count below shows it was the gateway's.
                assert!(!err.starts_with("HTTP "), "{kind:?} via {entry:?} {headers:?}: {err}");
            } else {
                assert!(err.starts_with("HTTP 503 (Retry-After: "), "{kind:?} via {entry:?} {headers:?}: {err}");
                assert!(!err.ends_with("none)"), "a 503 without Retry-After is the proxy's, not the gateway's: {err}");
            }
        }
    }
    // Scraped through the proxy: with the PROXY protocol on, the listener takes nothing without a header.
    // From an address of its own: HAProxy's health checks are charged to 127.0.0.1, and one address may hold
    // one connection here.
    let (head, text) = get_from(&proxy.entries()[0], Some([127, 0, 0, 99]), "/metrics");
    assert_eq!(head.status, 200, "/metrics via {kind:?}: {head:?} {text}");
    let scrape = common::prom::parse(&text).unwrap_or_else(|e| panic!("/metrics via {kind:?}: {e}"));
    let refused = scrape.sum("wsgate_load_refused_total", &[("reason", "per_ip")]);
    assert_eq!(refused, 2.0 * proxy.entries().len() as f64, "per-address refusals counted by the gateway");
}

#[test]
fn haproxy_proxy_protocol_v2_gives_the_gateway_the_client_address() {
    client_address(Kind::Haproxy, false);
}

#[test]
fn nginx_x_forwarded_for_gives_the_gateway_the_client_address() {
    client_address(Kind::Nginx, false);
}

#[test]
fn haproxy_tcp_passthrough_gives_a_tls_gateway_the_client_address() {
    client_address(Kind::Haproxy, true);
}

#[test]
fn nginx_stream_passthrough_gives_a_tls_gateway_the_client_address() {
    client_address(Kind::Nginx, true);
}
