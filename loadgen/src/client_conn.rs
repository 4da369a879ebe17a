//! One client connection: TCP connect → upgrade request → `101` → WebSocket frames, on the project's sans-IO
//! protocol core (`wsgate::proto`, client role). Plain data; the worker's event loop owns the sockets' readiness.
//!
//! Buffers: reads go into the worker's one large read buffer (many frames decoded per read); only the bytes of
//! an incomplete frame are kept per connection (`pending_in`), and only unsent bytes (`out`). Neither allocates
//! while a connection keeps up.
//!
//! `wss://`: a connection with a TLS session ([`crate::tls`]) reads plaintext through it into the same buffer
//! and hands `out` to it; `pending_in`, `out` and the frame decoding are the same as without TLS.

use std::io::{self, Read, Write};

use mio::net::TcpStream;
use rustls::ClientConnection;
use wsgate::proto::frame::{encode_masked_frame_into, OpCode};
use wsgate::proto::handshake::{generate_key, parse_response_with, HandshakeError};
use wsgate::proto::session::{encode_close_frame_into, Event, Limits, Role, Session};

use crate::recorder::Recorder;
use crate::seqtrack::SeqTrack;
use crate::topic_conn::TopicConn;

/// Most bytes queued for sending on one connection; beyond it echo sends are dropped (and counted).
pub const MAX_OUT_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started yet.
    Idle,
    /// TCP connect in progress.
    Connecting,
    /// Upgrade request sent, waiting for the `101`.
    Handshaking,
    Open,
    Closed,
}

pub struct Conn {
    pub stream: Option<TcpStream>,
    /// `wss://`: the TLS session over `stream` (boxed: a plain connection pays one pointer).
    pub tls: Option<Box<ClientConnection>>,
    pub state: State,
    /// The upgrade completed at some point (so a later close is a disconnect, and echo sends are expected).
    pub opened: bool,
    /// CLOCK_MONOTONIC of the connect attempt (for the handshake timeout).
    pub started_ns: u64,
    /// Global connection index (selects the source address and the key nonce).
    pub index: u64,
    pub session: Session,
    /// Bytes of an incomplete frame (or response head) carried to the next read.
    pub pending_in: Vec<u8>,
    /// Bytes not yet accepted by the socket (with TLS: plaintext not yet accepted by the TLS session).
    pub out: Vec<u8>,
    /// Sequence accounting per topic id (without `--topics`: every connection takes the whole feed).
    pub tracks: Vec<SeqTrack>,
    /// `subscribe --topics`: the connection's topics and their checkers (kept across reconnects).
    pub sub: Option<Box<TopicConn>>,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Eof,
    Io(String),
    Handshake(String),
    ServerClose(Option<u16>),
    Protocol(String),
}

impl Ended {
    pub fn reason(&self) -> String {
        match self {
            Ended::Eof => "reset".into(),
            Ended::Io(r) | Ended::Handshake(r) => r.clone(),
            Ended::ServerClose(Some(c)) => format!("closed by server ({c})"),
            Ended::ServerClose(None) => "closed by server".into(),
            Ended::Protocol(e) => format!("protocol error: {e}"),
        }
    }
}

/// What the worker learns from one readable event.
pub enum ReadOutcome {
    Ok,
    /// The upgrade completed during this read.
    Upgraded,
    Ended(Ended),
}

/// The `Sec-WebSocket-Key` of connection `index` (derived, so it need not be stored per connection).
pub fn key_for(index: u64, salt: u64) -> String {
    let a = splitmix64(index ^ salt);
    let b = splitmix64(a);
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&a.to_le_bytes());
    nonce[8..].copy_from_slice(&b.to_le_bytes());
    generate_key(nonce)
}

pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Conn {
    pub fn new(index: u64) -> Self {
        Conn {
            stream: None,
            tls: None,
            state: State::Idle,
            opened: false,
            started_ns: 0,
            index,
            session: Session::new(Role::Client),
            pending_in: Vec::new(),
            out: Vec::new(),
            tracks: Vec::new(),
            sub: None,
        }
    }

    /// Back to a fresh socket-less state for another attempt (a reconnect), keeping what outlives sockets: the
    /// index, whether it ever opened, the stream accounting and the topic checkers.
    pub fn reset_for_reconnect(&mut self) {
        self.stream = None;
        self.tls = None;
        self.state = State::Idle;
        self.session = Session::new(Role::Client);
        self.pending_in = Vec::new();
        self.out = Vec::new();
    }

    /// The TCP connect finished (writable or readable while `Connecting`): `Ok(true)` connected, `Ok(false)`
    /// still in progress (a spurious wake-up).
    pub fn check_connected(&mut self) -> io::Result<bool> {
        let Some(stream) = &self.stream else { return Ok(false) };
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        match stream.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Something is waiting to be written: bytes in `out`, or TLS records (handshake, encrypted `out`).
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty() || self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Writes as much of `out` as the socket takes (with TLS: through the session).
    pub fn flush(&mut self) -> io::Result<()> {
        let Some(stream) = &mut self.stream else { return Ok(()) };
        if let Some(tls) = &mut self.tls {
            return crate::tls::flush(tls, stream, &mut self.out);
        }
        let mut done = 0;
        while done < self.out.len() {
            match stream.write(&self.out[done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.drain(..done);
        Ok(())
    }

    /// Sends one complete frame: straight from `frame` when nothing is queued (and no TLS), else queued behind
    /// the rest. Returns `false` (nothing sent) when the queue is over [`MAX_OUT_BYTES`].
    pub fn send_frame(&mut self, frame: &[u8]) -> io::Result<bool> {
        if !self.out.is_empty() || self.tls.is_some() {
            if self.out.len() + frame.len() > MAX_OUT_BYTES {
                return Ok(false);
            }
            self.out.extend_from_slice(frame);
            self.flush()?;
            return Ok(true);
        }
        let Some(stream) = &mut self.stream else { return Ok(false) };
        let mut done = 0;
        while done < frame.len() {
            match stream.write(&frame[done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.extend_from_slice(&frame[done..]);
        Ok(true)
    }

    /// Reads everything available into `rbuf` (prefixed with the carried partial frame), completes the
    /// upgrade if pending (which must choose `protocol` when one was offered), and decodes every complete frame.
    /// `mask` supplies mask keys for replies.
    pub fn on_readable(
        &mut self,
        rbuf: &mut [u8],
        rec: &mut Recorder,
        salt: u64,
        protocol: Option<&str>,
        mask: &mut impl FnMut() -> [u8; 4],
    ) -> ReadOutcome {
        let Conn { stream, tls, state, opened, session, pending_in, out, tracks, sub, index, .. } = self;
        let Some(stream) = stream.as_mut() else { return ReadOutcome::Ok };
        let mut len = pending_in.len();
        rbuf[..len].copy_from_slice(pending_in);
        pending_in.clear();
        let mut upgraded = false;
        let mut ended = None;
        loop {
            let space = rbuf.len() - len;
            let read = match tls.as_deref_mut() {
                None => stream.read(&mut rbuf[len..]),
                Some(tls) => crate::tls::read_plaintext(tls, stream, &mut rbuf[len..]),
            };
            match read {
                Ok(0) => {
                    ended = Some(Ended::Eof);
                    break;
                }
                Ok(n) => {
                    len += n;
                    // One clock read per read(): every message in it was in the socket buffer at this moment.
                    let now = crate::msg::monotonic_ns();
                    let mut pos = 0;
                    if *state == State::Handshaking {
                        match parse_response_with(&rbuf[..len], &key_for(*index, salt), protocol) {
                            Ok(None) => {}
                            Ok(Some(consumed)) => {
                                pos = consumed;
                                *state = State::Open;
                                *opened = true;
                                upgraded = true;
                            }
                            Err(e) => {
                                ended = Some(Ended::Handshake(handshake_reason(&e)));
                                break;
                            }
                        }
                    }
                    if *state == State::Open {
                        let streams = Streams { tracks, sub: sub.as_deref_mut() };
                        match decode_frames(session, streams, out, &mut rbuf[pos..len], now, rec, mask) {
                            Ok(consumed) => pos += consumed,
                            Err(e) => {
                                ended = Some(e);
                                break;
                            }
                        }
                    }
                    rbuf.copy_within(pos..len, 0);
                    len -= pos;
                    // A short read drained the socket: with edge-triggered epoll, data arriving later raises a
                    // new edge, so the extra read() that would only return EAGAIN is skipped. (Not with TLS: a
                    // short plaintext read says nothing about the socket.)
                    if n < space && tls.is_none() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    ended = Some(Ended::Io(crate::addrs::error_reason(&e)));
                    break;
                }
            }
        }
        if ended.is_none() {
            pending_in.extend_from_slice(&rbuf[..len]);
        }
        if self.wants_write() {
            if let Err(e) = self.flush() {
                ended = ended.or(Some(Ended::Io(crate::addrs::error_reason(&e))));
            }
        }
        match ended {
            Some(e) => ReadOutcome::Ended(e),
            None if upgraded => ReadOutcome::Upgraded,
            None => ReadOutcome::Ok,
        }
    }
}

fn handshake_reason(e: &HandshakeError) -> String {
    match e {
        HandshakeError::Status(code) => format!("http {code}"),
        other => format!("bad handshake: {other}"),
    }
}

/// Where a connection's messages are accounted: its whole-feed streams, or its topic checkers.
struct Streams<'a> {
    tracks: &'a mut Vec<SeqTrack>,
    sub: Option<&'a mut TopicConn>,
}

/// Decodes every complete frame at the start of `buf`; returns the bytes consumed. Pings are answered and a
/// close is echoed into `out`; both end the decoding with `Err` for a close or a protocol error.
fn decode_frames(
    session: &mut Session,
    mut streams: Streams<'_>,
    out: &mut Vec<u8>,
    buf: &mut [u8],
    now: u64,
    rec: &mut Recorder,
    mask: &mut impl FnMut() -> [u8; 4],
) -> Result<usize, Ended> {
    let limits = Limits::DEFAULT;
    let mut pos = 0;
    loop {
        match session.handle_bytes(&mut buf[pos..], &limits) {
            Ok((0, None)) => return Ok(pos),
            Ok((n, event)) => {
                match event {
                    Some(Event::Message { payload, .. }) => match streams.sub.as_deref_mut() {
                        Some(tc) => crate::topic_rx::on_message(rec, tc, payload, now),
                        None => rec.on_message(streams.tracks, payload, now),
                    },
                    Some(Event::Ping(payload)) => encode_masked_frame_into(out, OpCode::Pong, payload, mask()),
                    Some(Event::Pong(_)) | None => {}
                    Some(Event::Close { code, .. }) => {
                        encode_close_frame_into(out, code, "", Some(mask()));
                        return Err(Ended::ServerClose(code));
                    }
                }
                pos += n;
            }
            Err(e) => {
                encode_close_frame_into(out, Some(e.close_code()), &e.to_string(), Some(mask()));
                return Err(Ended::Protocol(e.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_valid() {
        let a = key_for(1, 7);
        let b = key_for(2, 7);
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert_eq!(key_for(1, 7), a);
    }

    #[test]
    fn decodes_many_frames_answers_ping_and_stops_at_close() {
        let mut rec = Recorder::new(false);
        rec.set_window(0, u64::MAX / 2, 0);
        let mut wire = Vec::new();
        let mut payload = Vec::new();
        for seq in 0..3 {
            payload.clear();
            crate::msg::write_message(&mut payload, seq, 1, None, 64);
            wsgate::proto::frame::encode_frame_into(&mut wire, OpCode::Text, &payload[..payload.len() - 1]);
        }
        wsgate::proto::frame::encode_frame_into(&mut wire, OpCode::Ping, b"hi");
        let whole = wire.len();
        // A partial fourth message: left unconsumed.
        wsgate::proto::frame::encode_frame_into(&mut wire, OpCode::Text, &payload[..payload.len() - 1]);
        wire.truncate(whole + 10);
        let mut session = Session::new(Role::Client);
        let mut tracks = Vec::new();
        let mut out = Vec::new();
        let mut mask = || [1, 2, 3, 4];
        let streams = Streams { tracks: &mut tracks, sub: None };
        let consumed = decode_frames(&mut session, streams, &mut out, &mut wire, 10, &mut rec, &mut mask).unwrap();
        assert_eq!(consumed, whole);
        assert_eq!(rec.counters.messages_in_window, 3);
        assert_eq!(tracks[0].unique(), 3);
        assert_eq!(&out[..2], &[0x8A, 0x82]); // masked pong, 2 bytes

        let mut close = Vec::new();
        wsgate::proto::session::encode_close_frame_into(&mut close, Some(1001), "bye", None);
        let mut out = Vec::new();
        let streams = Streams { tracks: &mut tracks, sub: None };
        let r = decode_frames(&mut session, streams, &mut out, &mut close, 10, &mut rec, &mut mask);
        assert_eq!(r, Err(Ended::ServerClose(Some(1001))));
        assert_eq!(out[0], 0x88);
    }
}
