//! The PROXY protocol stage of a connection's input (`proxy_protocol`): the raw bytes a connection receives
//! before anything else, while its state is `AddrState::AwaitingPreface`. They are kept (in `Conn::inbuf`, at most
//! `proxy_protocol::MAX_HEADER` bytes: the parser refuses anything longer) until `proto::proxy_protocol::parse`
//! decides; the header is then dropped and what followed it in the same reads goes on to the next stage as if it
//! had just been received (`input::on_bytes`: HTTP today; a TLS stage would sit there, after this one).
//!
//! Applies the header's decision: the client it names goes to `shard::client`; a missing or malformed header is
//! answered `400` and the connection closed. Nothing else here: the deadline is the handshake's, the trust check
//! of the peer was made at accept (`client::screen`).

use super::client;
use super::input::{self, kill, InputCx};
use super::stats::ProxyRefusal;
use crate::conn::{AddrSource, AddrState, Conn, ConnKey, Phase};
use crate::proto::handshake;
use crate::proto::proxy_protocol::{self, Parsed};

/// Raw bytes of a connection waiting for its PROXY header.
pub fn on_bytes(conn: &mut Conn, key: ConnKey, data: &mut [u8], cx: &mut InputCx<'_>) {
    debug_assert_eq!(conn.client_addr, AddrState::AwaitingPreface);
    if conn.inbuf.is_empty() {
        match handle_preface(conn, key, data, cx) {
            Preface::NeedMore => {
                conn.inbuf = cx.pool.take();
                conn.inbuf.extend_from_slice(data);
            }
            Preface::Closed => {}
            Preface::Done(n) => after_preface(conn, key, &mut data[n..], cx),
        }
        return;
    }
    conn.inbuf.extend_from_slice(data);
    let mut buf = std::mem::take(&mut conn.inbuf);
    match handle_preface(conn, key, &buf, cx) {
        Preface::NeedMore => conn.inbuf = buf,
        Preface::Closed => cx.pool.give(&mut buf),
        Preface::Done(n) => {
            after_preface(conn, key, &mut buf[n..], cx);
            cx.pool.give(&mut buf);
        }
    }
}

/// What followed the header goes on as fresh input.
fn after_preface(conn: &mut Conn, key: ConnKey, rest: &mut [u8], cx: &mut InputCx<'_>) {
    if !rest.is_empty() {
        input::on_bytes(conn, key, rest, cx);
    }
}

/// What [`handle_preface`] made of the bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
enum Preface {
    /// No complete header yet: keep every byte and call again with more.
    NeedMore,
    /// The header took this many bytes; what follows is the request (or the TLS handshake).
    Done(usize),
    /// Refused (answered `400`, or cut): the rest of the input does not matter.
    Closed,
}

/// The PROXY header at the start of `buf`, the connection's input so far. A header naming a client hands it to
/// `client::from` (charged there unless it is itself a trusted proxy); `LOCAL`/`UNKNOWN` (the proxy's own
/// connection, e.g. a health check) leaves the TCP peer standing. Anything else is answered `400` and closed.
fn handle_preface(conn: &mut Conn, key: ConnKey, buf: &[u8], cx: &mut InputCx<'_>) -> Preface {
    match proxy_protocol::parse(buf) {
        Parsed::NeedMore => Preface::NeedMore,
        Parsed::Error(e) => {
            let reason = if e.is_missing() { ProxyRefusal::Missing } else { ProxyRefusal::Malformed };
            cx.stats.proxy_refused.add(reason as usize, 1);
            tracing::debug!(?key, error = %e, "PROXY protocol header refused");
            conn.client_addr = AddrState::Known(AddrSource::Peer);
            let body = format!("{e}: this listener expects the PROXY protocol\n");
            input::respond(conn, key, &handshake::http_response(400, "text/plain", body.as_bytes()), cx);
            Preface::Closed
        }
        Parsed::Done { consumed, source, local } => {
            match source {
                Some(client) => client::from(conn, key, client.ip(), AddrSource::ProxyProtocol, cx),
                None => {
                    tracing::debug!(?key, local, "PROXY header names no client: the proxy's own connection");
                    let Ok(peer) = conn.stream.peer_addr() else {
                        kill(conn, key, cx.dead);
                        return Preface::Closed;
                    };
                    client::from(conn, key, peer.ip(), AddrSource::Peer, cx);
                }
            }
            match conn.phase {
                Phase::Handshake => Preface::Done(consumed),
                _ => Preface::Closed, // refused for load on its client address
            }
        }
    }
}
