//! Raw TCP: hand-built upgrade requests and frames, and a strict reader of what the server sends back.
//!
//! Nothing here is lenient on the server's behalf: server frames must be unmasked with RSV bits clear, HTTP
//! responses must parse, and every read has a deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::{tcp_connect, IO_TIMEOUT};

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The RFC 6455 section 1.3 sample nonce and its accept value.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 section 4.2.2), computed independently of the gateway.
pub fn accept_for(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// A different, non-trivial masking key for every frame, so that unmasking is exercised at every key value.
pub fn next_mask() -> [u8; 4] {
    static STATE: AtomicU32 = AtomicU32::new(0x9E37_79B9);
    let mut x = STATE.fetch_add(0x6D2B_79F5, Ordering::Relaxed);
    x ^= x >> 15;
    x = x.wrapping_mul(0x2C1B_3C6D);
    x ^= x >> 12;
    x.to_be_bytes()
}

/// One frame on the wire. `rsv` is the three RSV bits (0..=7); `mask` adds a masking key and masks the payload.
pub fn encode_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = encode_header(fin, rsv, opcode, payload.len() as u64, mask);
    match mask {
        Some(key) => out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4])),
        None => out.extend_from_slice(payload),
    }
    out
}

/// Only the header of a frame that announces `len` payload bytes (used to claim more than we send).
pub fn encode_header(fin: bool, rsv: u8, opcode: u8, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.push((u8::from(fin) << 7) | ((rsv & 7) << 4) | (opcode & 0x0F));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
    out
}

/// A masked client frame with FIN and no RSV bits.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(true, 0, opcode, payload, Some(next_mask()))
}

/// A close payload: code plus reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// A frame received from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The close code, if this is a close frame with one.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// How reading from the server ended, when it produced no frame.
#[derive(Debug)]
pub enum ReadEnd {
    /// Orderly EOF (or a reset after the server closed).
    Closed(String),
    /// Nothing complete arrived before the deadline; carries the bytes buffered so far.
    Timeout(Vec<u8>),
}

/// Parses one complete server frame from the front of `buf`, asserting server-side framing rules.
fn parse_server_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (b0, b1) = (buf[0], buf[1]);
    assert_eq!(b1 & 0x80, 0, "server frame is masked (RFC 6455 5.1 forbids it): header {:02x?}", &buf[..2]);
    assert_eq!(b0 & 0x70, 0, "server frame has RSV bits set without an extension: header {:02x?}", &buf[..2]);
    let (len, hdr) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            (u64::from_be_bytes(buf[2..10].try_into().unwrap()), 10)
        }
        n => (u64::from(n), 2),
    };
    let total = hdr + usize::try_from(len).expect("frame length fits usize");
    if buf.len() < total {
        return None;
    }
    Some((Frame { fin: b0 & 0x80 != 0, opcode: b0 & 0x0F, payload: buf[hdr..total].to_vec() }, total))
}

/// A WebSocket connection driven by hand.
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Connects to `/ws` and completes a valid handshake (checks 101 and the accept value).
    pub fn connect(addr: SocketAddr) -> RawWs {
        let mut stream = tcp_connect(addr);
        let req = Request::upgrade(addr).bytes();
        stream.write_all(&req).unwrap();
        let (head, rest) = read_head(&mut stream);
        assert_eq!(head.status, 101, "upgrade refused: {head:?}");
        assert_eq!(head.header("sec-websocket-accept"), Some(SAMPLE_ACCEPT), "bad accept value: {head:?}");
        RawWs { stream, buf: rest }
    }

    /// Wraps a stream whose handshake already happened; `leftover` are bytes read past the response head.
    pub fn from_parts(stream: TcpStream, leftover: Vec<u8>) -> RawWs {
        RawWs { stream, buf: leftover }
    }

    /// Writes bytes as they are. A write error means the server already closed; tests that send garbage may
    /// expect that, so it is returned rather than asserted.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends a masked frame with FIN and no RSV bits; panics if the write fails.
    pub fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.send_frame(true, opcode, payload);
    }

    /// Sends a masked frame; panics if the write fails.
    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let frame = encode_frame(fin, 0, opcode, payload, Some(next_mask()));
        self.send_raw(&frame)
            .unwrap_or_else(|e| panic!("sending opcode {opcode:#x} ({} bytes) failed: {e}", payload.len()));
    }

    /// The next frame, or how the stream ended, within `timeout`.
    pub fn try_read_frame(&mut self, timeout: Duration) -> Result<Frame, ReadEnd> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok(frame);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadEnd::Timeout(self.buf.clone()));
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ReadEnd::Closed(format!("EOF with {} unparsed bytes buffered", self.buf.len()))),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadEnd::Closed(format!("read error: {e}"))),
            }
        }
    }

    /// The next frame; panics on timeout or close.
    pub fn read_frame(&mut self) -> Frame {
        match self.try_read_frame(IO_TIMEOUT) {
            Ok(f) => f,
            Err(end) => panic!("expected a frame from the server, got {end:?}"),
        }
    }

    /// The next frame must be a close frame with `code`; we then answer with a close (as a client does) and the
    /// server must close the TCP connection.
    pub fn expect_close(&mut self, code: u16, context: &str) {
        let f = self.read_frame();
        assert_eq!(f.opcode, OP_CLOSE, "{context}: expected close {code}, got frame {f:?}");
        assert_eq!(f.close_code(), Some(code), "{context}: expected close {code}, got close payload {:?}", f.payload);
        assert!(std::str::from_utf8(&f.payload[2..]).is_ok(), "{context}: close reason is not UTF-8: {:?}", f.payload);
        // The server may already have closed; a failed reply is fine.
        let _ = self.send_raw(&client_frame(OP_CLOSE, &code.to_be_bytes()));
        self.expect_eof(context);
    }

    /// The server must close the TCP connection (EOF or reset) without sending another frame.
    pub fn expect_eof(&mut self, context: &str) {
        match self.try_read_frame(IO_TIMEOUT) {
            Err(ReadEnd::Closed(_)) => {}
            Ok(f) => panic!("{context}: expected the server to close the connection, got frame {f:?}"),
            Err(ReadEnd::Timeout(b)) => {
                panic!("{context}: server did not close the TCP connection within {IO_TIMEOUT:?} (buffered {b:?})")
            }
        }
    }
}

/// A parsed HTTP response head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of `name` (case-insensitive).
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
}

/// A complete HTTP response, read until the server closed the connection.
#[derive(Debug, Clone)]
pub struct Response {
    pub head: Head,
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses a response head from `buf` if complete: (head, bytes used).
fn parse_head(buf: &[u8]) -> Option<(Head, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let head = Head {
                status: resp.code.unwrap(),
                reason: resp.reason.unwrap_or("").to_string(),
                headers: resp
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).trim().to_string()))
                    .collect(),
            };
            Some((head, n))
        }
        Ok(httparse::Status::Partial) => None,
        Err(e) => panic!("server sent an unparsable HTTP response ({e}): {:?}", String::from_utf8_lossy(buf)),
    }
}

/// A stream whose reads can time out: a `TcpStream`, or TLS over one (`tests/edge/`).
pub trait TimedRead: Read {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()>;
}

impl TimedRead for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

/// Reads a response head; returns it and any bytes read past it.
pub fn read_head(stream: &mut impl TimedRead) -> (Head, Vec<u8>) {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = Vec::new();
    loop {
        if let Some((head, n)) = parse_head(&buf) {
            return (head, buf[n..].to_vec());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no complete HTTP response head within {IO_TIMEOUT:?}; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => panic!(
                "connection closed before a complete HTTP response head; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) => {
                panic!("read error before a complete HTTP response head ({e}); got {:?}", String::from_utf8_lossy(&buf))
            }
        }
    }
}

/// Sends `request` (write errors ignored: the server may answer and close before reading it all), then reads
/// the response until the server closes the connection. Panics if it does not close within the timeout.
pub fn http_exchange(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = tcp_connect(addr);
    let _ = stream.write_all(request);
    let (head, mut body) = read_head(&mut stream);
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "server did not close the connection within {IO_TIMEOUT:?} after its response {head:?} (body so far {:?})",
            String::from_utf8_lossy(&body)
        );
        stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            // A reset after the response: the body is what arrived.
            Err(_) => break,
        }
    }
    if let Some(len) = head.header("content-length") {
        let len: usize = len.parse().unwrap_or_else(|_| panic!("bad Content-Length in {head:?}"));
        assert_eq!(
            body.len(),
            len,
            "body length differs from Content-Length in {head:?}: {:?}",
            String::from_utf8_lossy(&body)
        );
    }
    Response { status: head.status, head, body }
}

/// An HTTP request built header by header (so that tests can drop or alter exactly one thing).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// A valid upgrade request for `/ws` with the RFC sample key.
    pub fn upgrade(addr: SocketAddr) -> Request {
        Request {
            method: "GET".into(),
            path: "/ws".into(),
            version: "HTTP/1.1".into(),
            headers: vec![
                ("Host".into(), addr.to_string()),
                ("Upgrade".into(), "websocket".into()),
                ("Connection".into(), "Upgrade".into()),
                ("Sec-WebSocket-Key".into(), SAMPLE_KEY.into()),
                ("Sec-WebSocket-Version".into(), "13".into()),
            ],
        }
    }

    /// Replaces every `name` header with one `value` (appends if absent).
    pub fn set(mut self, name: &str, value: &str) -> Request {
        self = self.remove(name);
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Appends a header line (a repeated header stays repeated).
    pub fn add(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Removes every `name` header.
    pub fn remove(mut self, name: &str) -> Request {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    pub fn method(mut self, m: &str) -> Request {
        self.method = m.into();
        self
    }

    pub fn path(mut self, p: &str) -> Request {
        self.path = p.into();
        self
    }

    pub fn version(mut self, v: &str) -> Request {
        self.version = v.into();
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut s = format!("{} {} {}\r\n", self.method, self.path, self.version);
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    }
}
