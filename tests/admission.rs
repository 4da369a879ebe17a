//! Admission (`docs/client-protocol.md`, "Keepalive and limits"): connections per client address and new
//! connections per second per address are refused with `503` and `Retry-After` before any upgrade, counted over
//! every loop thread together, without touching other addresses (clients bind 127.0.0.x source addresses); a
//! client that floods control messages is closed with 1008; over a memory mark the gateway refuses upgrades
//! with `503` (still answering `/healthz`), and over the shedding mark it closes open clients with 1013.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::json::Value;
use common::raw::{read_head, Frame, Head, RawWs, Request, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use common::{Gateway, IO_TIMEOUT};

/// A TCP connection to `addr` from source address `from` (any 127.0.0.0/8 address is local on Linux).
fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((from, 0)).into()).unwrap_or_else(|e| panic!("bind {from:?}: {e}"));
    sock.connect_timeout(&addr.into(), IO_TIMEOUT).unwrap_or_else(|e| panic!("connect from {from:?}: {e}"));
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// An upgrade request to `path` from `from`: the response head, and the open WebSocket when it is a 101.
fn request_from(from: [u8; 4], addr: SocketAddr, path: &str) -> (Head, Option<RawWs>) {
    let mut s = connect_from(from, addr);
    s.write_all(&Request::upgrade(addr).path(path).bytes()).unwrap();
    let (head, rest) = read_head(&mut s);
    let ws = (head.status == 101).then(|| RawWs::from_parts(s, rest));
    (head, ws)
}

fn upgrade_from(from: [u8; 4], addr: SocketAddr) -> (Head, Option<RawWs>) {
    request_from(from, addr, "/ws")
}

fn assert_busy(head: &Head, retry_after: &str, context: &str) {
    assert_eq!(head.status, 503, "{context}: {head:?}");
    assert_eq!(head.header("retry-after"), Some(retry_after), "{context}: {head:?}");
}

#[test]
fn connections_per_address_are_capped_over_every_loop_thread() {
    let gw = Gateway::start_with_config("max_connections_per_ip = 3\nretry_after = 2000\n", &["--threads", "4"]);
    // Ten tries from one address over four loop threads: exactly three are let in (a per-loop count would let in
    // up to twelve).
    let mut held = Vec::new();
    for i in 0..10 {
        match upgrade_from([127, 0, 0, 2], gw.ws_addr) {
            (_, Some(ws)) => held.push(ws),
            (head, None) => assert_busy(&head, "2", &format!("try {i}")),
        }
    }
    assert_eq!(held.len(), 3, "connections admitted from one address with max_connections_per_ip = 3");
    // Other addresses are unaffected.
    let others: Vec<RawWs> = (3..6).map(|last| upgrade_from([127, 0, 0, last], gw.ws_addr).1.expect("101")).collect();
    // A refused request of another kind is refused the same way (a long-poll counts as a connection too).
    let (head, _) = request_from([127, 0, 0, 2], gw.ws_addr, "/poll");
    assert_busy(&head, "2", "a long-poll from the full address");
    // One leaves: its place is free again.
    drop(held.pop());
    let again = common::poll_until(Duration::from_secs(5), || upgrade_from([127, 0, 0, 2], gw.ws_addr).1.is_some());
    assert!(again, "the address got no place back after one of its connections closed");
    let refused = common::poll_until(Duration::from_secs(3), || gw.stderr().contains("too many connections from"));
    assert!(refused, "no (rate-limited) log line for the refusals");
    drop(others);
}

#[test]
fn new_connections_per_second_per_address_are_limited() {
    let gw = Gateway::start_with_config("connection_rate_per_ip = 4\n", &[]);
    for i in 0..4 {
        let (head, ws) = upgrade_from([127, 0, 0, 7], gw.ws_addr);
        assert!(ws.is_some(), "connection {i} within the burst: {head:?}");
    }
    let (head, _) = upgrade_from([127, 0, 0, 7], gw.ws_addr);
    assert_busy(&head, "1", "the fifth connection within a second");
    let (head, ws) = upgrade_from([127, 0, 0, 8], gw.ws_addr);
    assert!(ws.is_some(), "another address has its own rate: {head:?}");
    // A token comes back every 250 ms.
    std::thread::sleep(Duration::from_millis(300));
    let (head, ws) = upgrade_from([127, 0, 0, 7], gw.ws_addr);
    assert!(ws.is_some(), "a new token after 1/rate s: {head:?}");
}

/// Reads until the server's close frame, answering pings; returns it.
fn read_until_close(ws: &mut RawWs) -> Frame {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let f = ws
            .try_read_frame(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|end| panic!("no close frame: {end:?}"));
        if f.opcode == OP_CLOSE {
            return f;
        }
    }
}

#[test]
fn a_control_message_flood_is_closed_with_1008_and_a_polite_client_is_not() {
    let gw = Gateway::start_with_config("client_message_rate = 20\n", &[]);
    let mut polite = RawWs::connect(gw.ws_addr);
    let mut flood = RawWs::connect(gw.ws_addr);
    let mut burst = Vec::new();
    for i in 0..200 {
        let msg = format!(r#"{{"op":"unsubscribe","id":{i},"topics":["T"]}}"#);
        burst.extend_from_slice(&common::raw::client_frame(OP_TEXT, msg.as_bytes()));
    }
    let _ = flood.send_raw(&burst); // the gateway may close before reading it all
    let close = read_until_close(&mut flood);
    assert_eq!(close.close_code(), Some(1008), "{close:?}");
    let reason = String::from_utf8_lossy(&close.payload[2..]).into_owned();
    assert!(reason.contains("more than 20 messages per second"), "{reason}");
    // 15 per second for 1.5 s stays within the limit: every request gets its reply.
    for i in 0..22 {
        polite.send(OP_TEXT, format!(r#"{{"op":"unsubscribe","id":{i},"topics":["T"]}}"#).as_bytes());
        let reply = polite.read_frame();
        assert_eq!(reply.opcode, OP_TEXT, "request {i}: {reply:?}");
        std::thread::sleep(Duration::from_millis(66));
    }
    // A ping flood counts too.
    let mut pinger = RawWs::connect(gw.ws_addr);
    let pings: Vec<u8> = (0..100).flat_map(|_| common::raw::client_frame(OP_PING, b"p")).collect();
    let _ = pinger.send_raw(&pings);
    let close = read_until_close(&mut pinger);
    assert_eq!(close.close_code(), Some(1008), "{close:?}");
    polite.send(OP_PING, b"ok");
    assert_eq!(polite.read_frame().opcode, OP_PONG);
}

#[test]
fn overloaded_the_gateway_refuses_upgrades_but_answers_healthz() {
    // A mark every process is above: always overloaded.
    let gw = Gateway::start_with_config("overload_memory_bytes = 1\nretry_after = 3000\n", &[]);
    std::thread::sleep(Duration::from_millis(300)); // a loop thread reads the memory at its first sweep
    let refused = common::poll_until(Duration::from_secs(5), || {
        let (head, _) = upgrade_from([127, 0, 0, 1], gw.ws_addr);
        head.status == 503
    });
    assert!(refused, "an upgrade was let in although memory is over overload_memory_bytes");
    for path in ["/ws", "/sse", "/poll"] {
        let (head, _) = request_from([127, 0, 0, 1], gw.ws_addr, path);
        assert_busy(&head, "3", path);
    }
    assert_eq!(gw.health().get("status").and_then(Value::as_str), Some("ok"), "/healthz is still answered");
}

/// What the allocator holds, as `/healthz` says.
fn heap_live(gw: &Gateway) -> u64 {
    let h = gw.health();
    h.get("heap_live_bytes").and_then(Value::as_u64).or_else(|| h.get("rss_bytes").and_then(Value::as_u64)).unwrap()
}

#[test]
fn over_the_shedding_mark_open_clients_are_closed_with_1013() {
    // The mark: what an idle gateway holds, plus 48 MiB; history per topic is 1 MiB on each of 2 loop threads,
    // so 64 topics of it push any gateway far over.
    let base = heap_live(&Gateway::start(&[]));
    let mark = base + (48 << 20);
    let cfg = format!("shed_memory_bytes = {mark}\nping_interval = 0\n");
    let gw = Gateway::start_with_config(&cfg, &["--ingest", "127.0.0.1:0"]);
    // Clients of a topic that stays quiet: they read nothing, so none of them is a slow consumer.
    let mut clients: Vec<RawWs> =
        (0..3).map(|_| request_from([127, 0, 0, 1], gw.ws_addr, "/ws?topics=quiet").1.expect("101")).collect();
    let mut p = gw.publisher();
    let line = "x".repeat(1000);
    let mut batch = String::new();
    for i in 0..64 * 1100 {
        batch.push_str(&format!("{{\"topic\":\"t{}\",\"v\":\"{line}\"}}\n", i % 64));
    }
    common::write_all(&mut p, batch.as_bytes());
    for (i, ws) in clients.iter_mut().enumerate() {
        let close = read_until_close(ws);
        assert_eq!(close.close_code(), Some(1013), "client {i}: {close:?}");
        let reason = String::from_utf8_lossy(&close.payload[2..]).into_owned();
        assert!(reason.contains("try again later"), "{reason}");
    }
    let (head, _) = upgrade_from([127, 0, 0, 1], gw.ws_addr);
    assert_busy(&head, "5", "a new client while shedding");
    assert!(heap_live(&gw) >= mark, "memory fell below the mark: the test proves nothing");
}

#[test]
fn max_connections_refusals_carry_retry_after() {
    let gw = Gateway::start_with_config("max_connections = 2\nretry_after = 4000\n", &["--threads", "1"]);
    let _held: Vec<RawWs> = (0..2).map(|_| RawWs::connect(gw.ws_addr)).collect();
    let (head, _) = upgrade_from([127, 0, 0, 1], gw.ws_addr);
    assert_busy(&head, "4", "over max_connections");
}

#[test]
fn a_loop_thread_behind_the_feed_refuses_upgrades_until_it_catches_up() {
    let cfg = "overload_feed_queue_percent = 50\nfeed_queue_batches = 64\nping_interval = 0\n";
    let gw = Gateway::start_with_config(cfg, &["--threads", "1", "--ingest", "127.0.0.1:0"]);
    // A JSON client and an event stream make the loop encode envelopes and events for every message (which the
    // feed thread does not): under a flood it falls behind, and its queue fills.
    let mut json = {
        let stream = common::tcp_connect(gw.ws_addr);
        let mut req = tungstenite::client::IntoClientRequest::into_client_request(gw.ws_url()).unwrap();
        req.headers_mut().insert("Sec-WebSocket-Protocol", "wsgate.v1.json".parse().unwrap());
        tungstenite::client(req, stream).expect("json client").0
    };
    let mut sse = connect_from([127, 0, 0, 1], gw.ws_addr);
    sse.write_all(format!("GET /sse HTTP/1.1\r\nHost: {}\r\n\r\n", gw.ws_addr).as_bytes()).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sink = vec![0u8; 1 << 16];
            sse.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            json.get_mut().set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = json.read();
                let _ = std::io::Read::read(&mut sse, &mut sink);
            }
        })
    };
    let flood = {
        let mut p = gw.publisher();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut chunk = String::new();
            for i in 0..2000 {
                chunk.push_str(&format!(
                    "{{\"topic\":\"T{}\",\"px\":{i}.5,\"q\":[1,2,3],\"s\":\"abcdefgh\"}}\n",
                    i % 50
                ));
            }
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if p.write_all(chunk.as_bytes()).is_err() {
                    break;
                }
            }
        })
    };
    let mut busy = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while busy.is_none() && Instant::now() < deadline {
        let (head, _) = upgrade_from([127, 0, 0, 1], gw.ws_addr);
        if head.status == 503 {
            busy = Some(head);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let busy = busy.expect("the loop never fell behind a flood it had to encode twice (or was not refused)");
    assert_busy(&busy, "1", "behind the feed");
    flood.join().unwrap();
    readers.join().unwrap();
    // Caught up: upgrades are let in again.
    let ok = common::poll_until(Duration::from_secs(20), || upgrade_from([127, 0, 0, 1], gw.ws_addr).1.is_some());
    assert!(ok, "upgrades still refused after the flood ended");
}
