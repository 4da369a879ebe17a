//! Who a connection comes from (`docs/client-address.md`): the PROXY protocol header, consumed from the raw
//! input before anything else, and the trusted forwarding headers of the request head. Applies the pure
//! decisions of `proto::cidr`, `proto::proxy_protocol` and `proto::forwarded` to the connection's address state
//! (`conn::AddrState`), its charge on its client address (`admission::charge`) and the counters.
//!
//! Call order on one connection: [`screen`] (at accept, before it takes a slot), [`accepted`] (right after),
//! `shard::preface` (while its state is `AwaitingPreface`: its first raw bytes, before HTTP — and before TLS when
//! that comes; it calls [`from`] with what the header named), [`at_head`] (once its request head is parsed,
//! before routing). The handshake deadline (`handshake_timeout`) covers the PROXY header too: the loop's deadline
//! phase closes a connection still waiting for it (counted as `timeout`).
//!
//! Precedence: a PROXY header names the client; when what it names (or, without the PROXY protocol, the TCP
//! peer) is itself a trusted proxy, the forwarding headers decide (`proto::forwarded`), else they are ignored.
//!
//! Not here: the parsers, the per-address table (`admission`), what a refusal for load looks like.

use std::net::{IpAddr, SocketAddr, TcpStream};

use super::admission::{self, Admission};
use super::input::{self, kill, InputCx};
use super::stats::{ProxyRefusal, ShardStats};
use super::Settings;
use crate::conn::{AddrSource, AddrState, Conn, ConnKey};
use crate::proto::forwarded::{self, Header};
use crate::proto::handshake::{self, RequestHead};

/// The first look at a new connection, before it takes a slot: its peer address when anything needs it (the
/// PROXY protocol, trusted proxies, per-address limits), or `Err` when it is refused: with `proxy_protocol`, a
/// peer outside `trusted_proxies` (or one already gone). The caller then drops the socket, which closes it;
/// nothing is written, since such a peer gets no say at all.
pub fn screen(
    stream: &TcpStream,
    settings: &Settings,
    admission: &Admission,
    stats: &ShardStats,
) -> Result<Option<SocketAddr>, ()> {
    let needed = settings.proxy_protocol || !settings.trusted_proxies.is_empty() || admission.limits_per_address();
    if !needed {
        return Ok(None);
    }
    let peer = stream.peer_addr().ok();
    if settings.proxy_protocol && !peer.is_some_and(|p| settings.trusted_proxies.contains(p.ip())) {
        stats.proxy_refused.add(ProxyRefusal::Untrusted as usize, 1);
        let who = peer.map_or_else(|| "a peer already gone".to_string(), |p| p.ip().to_string());
        admission.log_refusal(&format!("PROXY protocol: {who} is not in trusted_proxies: closed"));
        return Err(());
    }
    Ok(peer)
}

/// A connection that just took its slot, with its peer from [`screen`]: it waits for its PROXY header, waits for
/// its request head (from a trusted proxy), or is its own client and is charged on its peer now.
pub fn accepted(conn: &mut Conn, key: ConnKey, peer: Option<SocketAddr>, cx: &mut InputCx<'_>) {
    match peer {
        _ if cx.settings.proxy_protocol => conn.client_addr = AddrState::AwaitingPreface,
        Some(peer) => from(conn, key, peer.ip(), AddrSource::Peer, cx),
        // Nothing needs the address (or the peer is already gone: its first read says so).
        None => {
            known(conn, key, None, AddrSource::Peer, false, cx);
        }
    }
}

/// The request came from `ip` (the TCP peer, or the client a PROXY header named): a trusted proxy leaves the
/// address to the request head; anyone else is the client.
pub(super) fn from(conn: &mut Conn, key: ConnKey, ip: IpAddr, source: AddrSource, cx: &mut InputCx<'_>) {
    if cx.settings.trusted_proxies.contains(ip) {
        let proxied = source == AddrSource::ProxyProtocol;
        conn.client_addr = AddrState::AwaitingHead { proxied };
        if proxied {
            cx.proxied_from.insert(key, ip);
        }
    } else {
        // Refused for load: answered and closing (on a TLS listener, closed: no handshake yet).
        known(conn, key, Some(ip), source, false, cx);
    }
}

/// The client address is `ip` (`None`: not needed), from `source`: counted, and charged on. Returns whether it
/// was admitted (else it is answered `503` and closing). `head_read`: known from the request head, so a TLS
/// client has finished its handshake and can read the answer.
fn known(
    conn: &mut Conn,
    key: ConnKey,
    ip: Option<IpAddr>,
    source: AddrSource,
    head_read: bool,
    cx: &mut InputCx<'_>,
) -> bool {
    conn.client_addr = AddrState::Known(source);
    cx.stats.proxied_clients.add(source as usize, 1);
    let Some(ip) = ip else { return true };
    if source != AddrSource::Peer {
        tracing::debug!(?key, client = %ip, ?source, "client address");
    }
    let answered = head_read || cx.settings.tls.is_none();
    admission::charge(conn, key, ip, answered, cx)
}

/// Once the request head is parsed, before routing: for a request from a trusted proxy, the client its
/// forwarding headers name (or the proxy itself when they name none), charged on. Returns whether the request
/// goes on; if not, it was answered — `400` for a malformed forwarding header, `503` for the per-address
/// limits — and the connection is closing.
pub fn at_head(conn: &mut Conn, key: ConnKey, head: &RequestHead, cx: &mut InputCx<'_>) -> bool {
    let AddrState::AwaitingHead { proxied } = conn.client_addr else { return true };
    let proxy = match proxied {
        true => cx.proxied_from.remove(&key),
        false => conn.stream.peer_addr().ok().map(|a| a.ip()),
    };
    conn.client_addr = AddrState::Known(AddrSource::Peer); // no longer in `proxied_from`, whatever follows
    let Some(proxy) = proxy else {
        kill(conn, key, cx.dead); // gone already
        return false;
    };
    let fallback = if proxied { AddrSource::ProxyProtocol } else { AddrSource::Peer };
    match forwarded::client_from_headers(head, proxy, &cx.settings.trusted_proxies) {
        Ok(Some((client, header))) => known(conn, key, Some(client), source_of(header), true, cx),
        Ok(None) => known(conn, key, Some(proxy), fallback, true, cx),
        Err(e) => {
            ShardStats::add(&cx.stats.forwarded_refused, 1);
            cx.stats.refused(400);
            tracing::debug!(?key, %proxy, error = %e, "forwarding header refused");
            let body = format!("{e}\n");
            input::respond(conn, key, &handshake::http_response(400, "text/plain", body.as_bytes()), cx);
            false
        }
    }
}

fn source_of(header: Header) -> AddrSource {
    match header {
        Header::Forwarded => AddrSource::Forwarded,
        Header::XForwardedFor => AddrSource::XForwardedFor,
        Header::XRealIp => AddrSource::XRealIp,
    }
}
