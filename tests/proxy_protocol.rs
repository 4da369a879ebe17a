//! The client address behind proxies (`docs/client-address.md`): PROXY protocol v1 and v2 headers sent by hand
//! before a WebSocket handshake, `LOCAL` health checks, refusals (no header, an untrusted peer, garbage, a
//! header that never completes), a header split over many writes, and trusted forwarding headers
//! (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`) — each observed through the per-address limit
//! (`max_connections_per_ip = 1`: a second connection for the same client gets `503`, another client gets in)
//! and through the `/metrics` counters. Metrics are read on the admin listener, which speaks no PROXY protocol.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::raw::{read_head, Head, RawWs, Request, OP_TEXT};
use common::{Gateway, IO_TIMEOUT};
use wsgate::proto::proxy_protocol::{encode_v1, encode_v2};

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn client(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// `preface` then an upgrade request (with `headers` added) on one connection: the response head, and the open
/// WebSocket on a 101.
fn upgrade_with(gw: &Gateway, preface: &[u8], headers: &[(&str, &str)]) -> (Head, Option<RawWs>) {
    let mut s = connect(gw.ws_addr);
    let mut req = Request::upgrade(gw.ws_addr);
    for (n, v) in headers {
        req = req.add(n, v);
    }
    let mut bytes = preface.to_vec();
    bytes.extend_from_slice(&req.bytes());
    s.write_all(&bytes).unwrap();
    let (head, rest) = read_head(&mut s);
    let ws = (head.status == 101).then(|| RawWs::from_parts(s, rest));
    (head, ws)
}

fn v2(src: SocketAddr, gw: &Gateway) -> Vec<u8> {
    encode_v2(Some(src), gw.ws_addr, &[])
}

fn v1(src: SocketAddr, gw: &Gateway) -> Vec<u8> {
    encode_v1(Some(src), gw.ws_addr)
}

fn echo_round_trip(ws: &mut RawWs, text: &str) {
    ws.send(OP_TEXT, text.as_bytes());
    let frame = ws.read_frame();
    assert_eq!(frame.opcode, OP_TEXT);
    assert_eq!(frame.payload, text.as_bytes());
}

/// Reads until the peer closes; returns what arrived (a reset counts as closed).
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        assert!(Instant::now() < deadline, "not closed within {IO_TIMEOUT:?}; got {:?}", String::from_utf8_lossy(&got));
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => return got,
        }
    }
}

fn metric(gw: &Gateway, name: &str, with: &[(&str, &str)]) -> f64 {
    gw.scrape().sum(name, with)
}

/// Polls `/metrics` until `name{with}` reaches `at_least`.
fn wait_metric(gw: &Gateway, name: &str, with: &[(&str, &str)], at_least: f64) {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let v = metric(gw, name, with);
        if v >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "{name}{with:?} = {v}, expected at least {at_least}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn proxied_gateway(extra: &[&str]) -> Gateway {
    let mut args = vec!["--proxy-protocol", "--trusted-proxies", "127.0.0.1/32,::1/128", "--echo"];
    args.extend_from_slice(&["--admin-listen", "127.0.0.1:0"]);
    args.extend_from_slice(extra);
    Gateway::start(&args)
}

#[test]
fn v1_and_v2_headers_then_websocket_messages() {
    let gw = proxied_gateway(&[]);
    let (head, ws) = upgrade_with(&gw, &v1(client([192, 0, 2, 7], 40000), &gw), &[]);
    assert_eq!(head.status, 101, "{head:?}");
    echo_round_trip(&mut ws.unwrap(), "through v1");
    let (head, ws) = upgrade_with(&gw, &v2(client([192, 0, 2, 8], 40001), &gw), &[]);
    assert_eq!(head.status, 101, "{head:?}");
    echo_round_trip(&mut ws.unwrap(), "through v2");
    // IPv6 clients over an IPv4 hop, and TLVs, are fine too.
    let v6 = encode_v2(Some("[2001:db8::9]:5".parse().unwrap()), "[2001:db8::1]:80".parse().unwrap(), &[4, 0, 1, 0]);
    let (head, ws) = upgrade_with(&gw, &v6, &[]);
    assert_eq!(head.status, 101, "{head:?}");
    echo_round_trip(&mut ws.unwrap(), "v6");
    wait_metric(&gw, "wsgate_proxied_clients_total", &[("source", "proxy_protocol")], 3.0);
    assert_eq!(metric(&gw, "wsgate_proxy_refused_total", &[]), 0.0);
}

#[test]
fn local_is_the_proxy_itself_and_unknown_too() {
    let gw = proxied_gateway(&[]);
    for preface in [encode_v2(None, gw.ws_addr, &[]), encode_v1(None, gw.ws_addr)] {
        let mut s = connect(gw.ws_addr);
        let mut bytes = preface;
        bytes.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        s.write_all(&bytes).unwrap();
        let (head, _) = read_head(&mut s);
        assert_eq!(head.status, 404, "health checks are on the admin listener here: {head:?}");
    }
    let (head, ws) = upgrade_with(&gw, &encode_v2(None, gw.ws_addr, &[]), &[]);
    assert_eq!(head.status, 101, "{head:?}");
    echo_round_trip(&mut ws.unwrap(), "local");
    wait_metric(&gw, "wsgate_proxied_clients_total", &[("source", "peer")], 3.0);
}

#[test]
fn a_connection_without_a_header_or_with_garbage_gets_400_and_is_closed() {
    let gw = proxied_gateway(&[]);
    for (bytes, reason) in [
        (Request::upgrade(gw.ws_addr).bytes(), "missing"),
        (b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\nGET /ws HTTP/1.1\r\n\r\n".to_vec(), "malformed"),
        (b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c0123456789ab".to_vec(), "malformed"),
        (format!("PROXY UNKNOWN {}\r\n", "x".repeat(200)).into_bytes(), "malformed"),
    ] {
        let mut s = connect(gw.ws_addr);
        let _ = s.write_all(&bytes);
        let got = String::from_utf8_lossy(&read_to_close(&mut s)).into_owned();
        assert!(got.starts_with("HTTP/1.1 400 "), "{reason}: {got:?}");
        assert!(got.contains("PROXY"), "{reason}: the answer says why: {got:?}");
    }
    wait_metric(&gw, "wsgate_proxy_refused_total", &[("reason", "missing")], 1.0);
    wait_metric(&gw, "wsgate_proxy_refused_total", &[("reason", "malformed")], 3.0);
    // Still serving.
    let (head, _) = upgrade_with(&gw, &v1(client([192, 0, 2, 7], 1), &gw), &[]);
    assert_eq!(head.status, 101);
}

#[test]
fn a_peer_outside_trusted_proxies_is_closed_without_a_word() {
    let gw = Gateway::start(&["--proxy-protocol", "--trusted-proxies", "10.0.0.0/8", "--admin-listen", "127.0.0.1:0"]);
    let mut s = connect(gw.ws_addr);
    let mut bytes = v1(client([192, 0, 2, 7], 1), &gw);
    bytes.extend_from_slice(&Request::upgrade(gw.ws_addr).bytes());
    let _ = s.write_all(&bytes);
    assert_eq!(read_to_close(&mut s), b"", "nothing is written to an untrusted peer");
    wait_metric(&gw, "wsgate_proxy_refused_total", &[("reason", "untrusted")], 1.0);
    assert_eq!(metric(&gw, "wsgate_proxied_clients_total", &[]), 0.0);
}

#[test]
fn a_header_split_over_many_writes_is_put_together() {
    let gw = proxied_gateway(&[]);
    for preface in [v1(client([192, 0, 2, 7], 1), &gw), v2(client([192, 0, 2, 8], 2), &gw)] {
        let mut s = connect(gw.ws_addr);
        let mut bytes = preface;
        bytes.extend_from_slice(&Request::upgrade(gw.ws_addr).bytes());
        for piece in bytes.chunks(3) {
            s.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        let (head, rest) = read_head(&mut s);
        assert_eq!(head.status, 101, "{head:?}");
        echo_round_trip(&mut RawWs::from_parts(s, rest), "pieces");
    }
}

#[test]
fn a_header_that_never_completes_is_cut_at_the_handshake_deadline() {
    let gw = proxied_gateway(&["--handshake-timeout", "300"]);
    let mut s = connect(gw.ws_addr);
    s.write_all(b"PROXY TCP4 192.0.2.7").unwrap();
    let started = Instant::now();
    assert_eq!(read_to_close(&mut s), b"", "no HTTP answer: no protocol was spoken yet");
    assert!(started.elapsed() < Duration::from_secs(3), "cut after {:?}", started.elapsed());
    wait_metric(&gw, "wsgate_proxy_refused_total", &[("reason", "timeout")], 1.0);
}

#[test]
fn the_per_address_limit_is_keyed_on_the_proxy_protocol_client() {
    let gw = proxied_gateway(&["--max-connections-per-ip", "1"]);
    let (head, first) = upgrade_with(&gw, &v2(client([192, 0, 2, 7], 1), &gw), &[]);
    assert_eq!(head.status, 101, "{head:?}");
    let (head, _) = upgrade_with(&gw, &v1(client([192, 0, 2, 7], 2), &gw), &[]);
    assert_eq!(head.status, 503, "the same client through the same proxy: {head:?}");
    assert!(head.header("retry-after").is_some(), "{head:?}");
    let (head, other) = upgrade_with(&gw, &v2(client([192, 0, 2, 8], 3), &gw), &[]);
    assert_eq!(head.status, 101, "another client through the same proxy: {head:?}");
    wait_metric(&gw, "wsgate_load_refused_total", &[("reason", "per_ip")], 1.0);
    // The refusal's log line names the client, not the proxy.
    let log = gw.stderr();
    assert!(log.contains("refused 192.0.2.7 with 503"), "{log}");
    // Its place is free again once it leaves.
    drop(first);
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let (head, _) = upgrade_with(&gw, &v2(client([192, 0, 2, 7], 4), &gw), &[]);
        if head.status == 101 {
            break;
        }
        assert!(Instant::now() < deadline, "192.0.2.7 never admitted again: {head:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(other);
}

#[test]
fn forwarding_headers_count_from_a_trusted_peer_only() {
    let gw = Gateway::start(&[
        "--trusted-proxies",
        "127.0.0.1/32",
        "--max-connections-per-ip",
        "1",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    // Two clients behind one trusted proxy (here: loopback), named three ways.
    let (h1, _a) = upgrade_with(&gw, b"", &[("X-Forwarded-For", "203.0.113.66, 192.0.2.7")]);
    let (h2, _b) = upgrade_with(&gw, b"", &[("Forwarded", "for=\"[2001:db8::9]:4711\";proto=http")]);
    let (h3, _c) = upgrade_with(&gw, b"", &[("X-Real-IP", "192.0.2.9")]);
    assert_eq!((h1.status, h2.status, h3.status), (101, 101, 101), "{h1:?} {h2:?} {h3:?}");
    // The same client again: refused on its own address (not on the proxy's, which is not charged).
    let (h, _) = upgrade_with(&gw, b"", &[("X-Forwarded-For", "192.0.2.7")]);
    assert_eq!(h.status, 503, "{h:?}");
    // Forwarded wins over X-Forwarded-For.
    let (h, _) = upgrade_with(&gw, b"", &[("X-Forwarded-For", "192.0.2.100"), ("Forwarded", "for=192.0.2.9")]);
    assert_eq!(h.status, 503, "Forwarded names 192.0.2.9, already connected: {h:?}");
    let s = gw.scrape();
    assert_eq!(s.sum("wsgate_proxied_clients_total", &[("source", "x_forwarded_for")]), 2.0);
    assert_eq!(s.sum("wsgate_proxied_clients_total", &[("source", "forwarded")]), 2.0);
    assert_eq!(s.sum("wsgate_proxied_clients_total", &[("source", "x_real_ip")]), 1.0);
    // A malformed header from the trusted proxy: 400, counted.
    let (h, _) = upgrade_with(&gw, b"", &[("X-Forwarded-For", "192.0.2.1, not-an-address")]);
    assert_eq!(h.status, 400, "{h:?}");
    wait_metric(&gw, "wsgate_forwarded_refused_total", &[], 1.0);

    // The same headers from a peer that is not trusted are ignored: every request is charged on 127.0.0.1.
    let untrusting = Gateway::start(&[
        "--trusted-proxies",
        "10.0.0.0/8",
        "--max-connections-per-ip",
        "1",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let (h1, _d) = upgrade_with(&untrusting, b"", &[("X-Forwarded-For", "192.0.2.7")]);
    let (h2, _) = upgrade_with(&untrusting, b"", &[("X-Forwarded-For", "192.0.2.8")]);
    assert_eq!((h1.status, h2.status), (101, 503), "{h1:?} {h2:?}");
    let (h3, _) = upgrade_with(&untrusting, b"", &[("X-Forwarded-For", "garbage")]);
    assert_eq!(h3.status, 503, "an untrusted peer's headers are not even read: {h3:?}");
    let s = untrusting.scrape();
    assert_eq!(s.sum("wsgate_proxied_clients_total", &[("source", "x_forwarded_for")]), 0.0);
    assert_eq!(s.sum("wsgate_forwarded_refused_total", &[]), 0.0);
}

#[test]
fn a_proxy_protocol_client_that_is_a_trusted_proxy_passes_on_its_headers() {
    // An L4 balancer (PROXY v2) in front of an HTTP proxy in 10.0.0.0/8 that adds X-Forwarded-For.
    let gw = proxied_gateway(&["--trusted-proxies", "127.0.0.1/32,10.0.0.0/8", "--max-connections-per-ip", "1"]);
    let via = v2(client([10, 1, 2, 3], 1), &gw);
    let (h1, _a) = upgrade_with(&gw, &via, &[("X-Forwarded-For", "192.0.2.7")]);
    let (h2, _b) = upgrade_with(&gw, &via, &[("X-Forwarded-For", "192.0.2.8")]);
    let (h3, _) = upgrade_with(&gw, &via, &[("X-Forwarded-For", "192.0.2.7")]);
    assert_eq!((h1.status, h2.status, h3.status), (101, 101, 503), "{h1:?} {h2:?} {h3:?}");
    // Without a header the HTTP proxy itself is the client.
    let (h4, _c) = upgrade_with(&gw, &via, &[]);
    let (h5, _) = upgrade_with(&gw, &via, &[]);
    assert_eq!((h4.status, h5.status), (101, 503), "{h4:?} {h5:?}");
    // A PROXY client that is not a trusted proxy: its headers are ignored.
    let direct = v2(client([192, 0, 2, 50], 1), &gw);
    let (h6, _d) = upgrade_with(&gw, &direct, &[("X-Forwarded-For", "192.0.2.60")]);
    let (h7, _) = upgrade_with(&gw, &direct, &[("X-Forwarded-For", "192.0.2.61")]);
    assert_eq!((h6.status, h7.status), (101, 503), "{h6:?} {h7:?}");
}
