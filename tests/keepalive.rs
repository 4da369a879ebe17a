//! Keepalive and connection deadlines (`docs/client-protocol.md`, "Keepalive and limits"): the server's pings
//! arrive at the interval, a client that never answers one is closed with 1001 at the pong deadline, a silent
//! client at the idle timeout, an unsubscribed one (under `require_subscription`) at the subscribe deadline with
//! 1008, and every connection at its maximum lifetime after a `notice` (an SSE stream gets an `event: notice` and
//! ends). Pings queued while the feed runs land between frames.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::json::{self, Value};
use common::raw::{client_frame, Frame, RawWs, ReadEnd, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use common::{tcp_connect, Gateway};

/// The next frame other than a ping (answered with a pong when `pong` is set), within `timeout`.
fn next_non_ping(ws: &mut RawWs, timeout: Duration, pong: bool) -> Result<Frame, ReadEnd> {
    let deadline = Instant::now() + timeout;
    loop {
        let frame = ws.try_read_frame(deadline.saturating_duration_since(Instant::now()))?;
        if frame.opcode != OP_PING {
            return Ok(frame);
        }
        if pong {
            ws.send(OP_PONG, &frame.payload);
        }
    }
}

/// Answers the server's close and expects it to hang up.
fn answer_close(ws: &mut RawWs) {
    let _ = ws.send_raw(&client_frame(OP_CLOSE, &1000u16.to_be_bytes()));
    ws.expect_eof("after the close handshake");
}

/// A close frame's code and reason.
fn close_of(frame: &Frame) -> (u16, String) {
    assert_eq!(frame.opcode, OP_CLOSE, "expected a close frame, got {frame:?}");
    let code = frame.close_code().expect("a close code");
    (code, String::from_utf8(frame.payload[2..].to_vec()).expect("UTF-8 reason"))
}

#[test]
fn pings_arrive_at_the_interval_and_a_client_that_answers_stays() {
    let gw = Gateway::start_with_config("ping_interval = 300\npong_timeout = 200\n", &[]);
    let mut ws = RawWs::connect(gw.ws_addr);
    let opened = Instant::now();
    let mut pings = Vec::new();
    while opened.elapsed() < Duration::from_millis(1650) {
        match ws.try_read_frame(Duration::from_millis(100)) {
            Ok(f) if f.opcode == OP_PING => {
                assert!(f.payload.is_empty(), "the gateway's pings carry no payload: {f:?}");
                pings.push(opened.elapsed());
                ws.send(OP_PONG, &f.payload);
            }
            Ok(f) => panic!("unexpected frame {f:?}"),
            Err(ReadEnd::Timeout(_)) => {}
            Err(end) => panic!("connection ended although every ping was answered: {end:?}"),
        }
    }
    assert!((4..=6).contains(&pings.len()), "pings at {pings:?} in 1.65 s with a 300 ms interval");
    assert!(pings[0] >= Duration::from_millis(250), "first ping after {:?}", pings[0]);
    for w in pings.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap >= Duration::from_millis(250) && gap < Duration::from_millis(700), "pings at {pings:?}");
    }
    // Still open: a text message gets its reply.
    ws.send(OP_TEXT, b"{\"op\":\"nope\"}");
    let reply = next_non_ping(&mut ws, Duration::from_secs(5), true).expect("a reply");
    assert_eq!(reply.opcode, OP_TEXT, "{reply:?}");
}

#[test]
fn a_client_that_never_pongs_is_closed_at_the_pong_deadline() {
    let gw = Gateway::start_with_config("ping_interval = 400\npong_timeout = 250\n", &[]);
    let mut ws = RawWs::connect(gw.ws_addr);
    let ping = ws.read_frame();
    assert_eq!(ping.opcode, OP_PING, "{ping:?}");
    let pinged = Instant::now();
    let close = ws.read_frame();
    let waited = pinged.elapsed();
    let (code, reason) = close_of(&close);
    assert_eq!(code, 1001, "{reason}");
    assert!(reason.contains("no pong within 250 ms"), "{reason}");
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_millis(1200),
        "closed {waited:?} after the ping"
    );
    answer_close(&mut ws);
}

#[test]
fn a_silent_client_is_closed_at_the_idle_timeout_and_a_talking_one_is_not() {
    let gw = Gateway::start_with_config("ping_interval = 0\nidle_timeout = 400\n", &[]);
    let mut silent = RawWs::connect(gw.ws_addr);
    let mut talking = RawWs::connect(gw.ws_addr);
    let opened = Instant::now();
    // The talking client sends a ping every 150 ms and reads its pongs.
    let mut closed_after = None;
    while opened.elapsed() < Duration::from_millis(1500) {
        talking.send(OP_PING, b"hi");
        let pong = talking.read_frame();
        assert_eq!(pong.opcode, OP_PONG, "{pong:?}");
        if closed_after.is_none() {
            if let Ok(f) = silent.try_read_frame(Duration::from_millis(150)) {
                let (code, reason) = close_of(&f);
                assert_eq!(code, 1001, "{reason}");
                assert!(reason.contains("idle"), "{reason}");
                closed_after = Some(opened.elapsed());
            }
        } else {
            std::thread::sleep(Duration::from_millis(150));
        }
    }
    let after = closed_after.expect("the silent client was not closed within 1.5 s of a 400 ms idle timeout");
    assert!(after >= Duration::from_millis(380) && after < Duration::from_millis(1300), "closed after {after:?}");
    silent.expect_eof("the silent client after its close");
    talking.send(OP_PING, b"still");
    assert_eq!(talking.read_frame().opcode, OP_PONG, "the talking client is still served");
}

#[test]
fn an_unsubscribed_client_is_closed_at_the_subscribe_deadline() {
    let cfg = "require_subscription = true\nsubscribe_timeout = 400\nping_interval = 0\n";
    let gw = Gateway::start_with_config(cfg, &[]);
    let mut lazy = RawWs::connect(gw.ws_addr);
    let mut by_request = RawWs::connect(gw.ws_addr);
    by_request.send(OP_TEXT, br#"{"op":"subscribe","id":1,"topics":["BTC-USD"]}"#);
    let reply = by_request.read_frame();
    assert!(String::from_utf8_lossy(&reply.payload).contains("\"subscribed\""), "{reply:?}");
    let mut at_connect = tcp_connect(gw.ws_addr);
    let req = common::raw::Request::upgrade(gw.ws_addr).path("/ws?topics=ETH-USD").bytes();
    at_connect.write_all(&req).unwrap();
    let (head, rest) = common::raw::read_head(&mut at_connect);
    assert_eq!(head.status, 101);
    let mut at_connect = RawWs::from_parts(at_connect, rest);
    let opened = Instant::now();

    let (code, reason) = close_of(&lazy.read_frame());
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("no subscription within 400 ms"), "{reason}");
    let waited = opened.elapsed();
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_millis(1500), "{waited:?}");
    answer_close(&mut lazy);
    // The subscribed ones are left alone past the deadline.
    std::thread::sleep(Duration::from_millis(500));
    for (name, ws) in [("by request", &mut by_request), ("at connect", &mut at_connect)] {
        match ws.try_read_frame(Duration::from_millis(100)) {
            Err(ReadEnd::Timeout(_)) => {}
            Ok(f) if f.opcode == OP_TEXT => {} // the subscribed reply of the one that subscribed at connect
            other => panic!("{name}: {other:?}"),
        }
        ws.send(OP_PING, b"x");
        let pong = next_non_ping(ws, Duration::from_secs(5), false).expect("a pong");
        assert_eq!(pong.opcode, OP_PONG, "{name}: {pong:?}");
    }
}

#[test]
fn at_its_lifetime_a_websocket_gets_a_notice_then_1001() {
    let cfg = "max_connection_lifetime = 1000\nlifetime_notice = 400\nlifetime_jitter = 0\nping_interval = 0\n";
    let gw = Gateway::start_with_config(cfg, &[]);
    let mut ws = RawWs::connect(gw.ws_addr);
    let opened = Instant::now();
    let notice = ws.read_frame();
    let noticed = opened.elapsed();
    assert_eq!(notice.opcode, OP_TEXT, "{notice:?}");
    let v = json::parse(std::str::from_utf8(&notice.payload).unwrap()).unwrap();
    assert_eq!(v.get("wsgate").and_then(Value::as_str), Some("notice"), "{v:?}");
    assert_eq!(v.get("code").and_then(Value::as_str), Some("lifetime"), "{v:?}");
    assert_eq!(v.get("close_in_ms").and_then(Value::as_u64), Some(400), "{v:?}");
    assert!(noticed >= Duration::from_millis(550) && noticed < Duration::from_millis(1000), "notice at {noticed:?}");
    let (code, reason) = close_of(&ws.read_frame());
    let closed = opened.elapsed();
    assert_eq!(code, 1001, "{reason}");
    assert!(reason.contains("lifetime"), "{reason}");
    assert!(closed >= Duration::from_millis(950) && closed < Duration::from_millis(1700), "closed at {closed:?}");
    answer_close(&mut ws);
}

#[test]
fn at_its_lifetime_an_event_stream_gets_a_notice_event_and_ends() {
    let cfg = "max_connection_lifetime = 800\nlifetime_notice = 300\nlifetime_jitter = 0\n";
    let gw = Gateway::start_with_config(cfg, &[]);
    let mut s = tcp_connect(gw.ws_addr);
    s.write_all(format!("GET /sse HTTP/1.1\r\nHost: {}\r\n\r\n", gw.ws_addr).as_bytes()).unwrap();
    let opened = Instant::now();
    let mut body = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_to_end(&mut body).expect("the stream ends by itself");
    let ended = opened.elapsed();
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("event: notice\ndata: {\"wsgate\":\"notice\",\"code\":\"lifetime\""), "{text}");
    assert!(ended >= Duration::from_millis(750) && ended < Duration::from_millis(2500), "ended after {ended:?}");
}

#[test]
fn pings_land_between_the_frames_of_a_busy_feed() {
    let gw = Gateway::start_with_config("ping_interval = 100\npong_timeout = 90\n", &["--demo", "--demo-rate", "3000"]);
    let mut ws = gw.ws_connect();
    let started = Instant::now();
    let (mut pings, mut data) = (0, 0);
    // tungstenite answers each ping itself (on its next read or write) and fails on any broken frame.
    while started.elapsed() < Duration::from_millis(1500) {
        match ws.read().expect("a well-formed stream: pings between whole frames") {
            tungstenite::Message::Ping(p) => {
                assert!(p.is_empty());
                pings += 1;
            }
            tungstenite::Message::Text(_) | tungstenite::Message::Binary(_) => data += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 8, "{pings} pings in 1.5 s at a 100 ms interval");
    assert!(data >= 1000, "{data} feed messages in 1.5 s at 3000/s");
}
