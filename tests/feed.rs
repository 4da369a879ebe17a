//! The feed side: lines from `--upstream` (with reconnect), from `--ingest` publishers, and from `--demo`, and
//! what happens to lines that are not UTF-8.

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::json::Value;
use common::{ws_expect_silence, ws_read_text, Gateway};

/// Accepts one connection on `listener` within `timeout` (the listener is polled, so this never hangs).
fn accept_within(listener: &TcpListener, timeout: Duration, what: &str) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_write_timeout(Some(common::IO_TIMEOUT)).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "{what}: the gateway did not connect to the upstream within {timeout:?}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{what}: accept failed: {e}"),
        }
    }
}

#[test]
fn upstream_lines_are_broadcast_and_reconnect_after_drop() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = listener.local_addr().unwrap();
    let gw = Gateway::start(&["--upstream", &up_addr.to_string()]);
    let mut ws = gw.ws_connect();

    let mut up = accept_within(&listener, Duration::from_secs(5), "first connection");
    gw.wait_upstream("connected", Duration::from_secs(5));
    common::write_all(&mut up, b"first-1\nfirst-2\n");
    assert_eq!(ws_read_text(&mut ws), "first-1");
    assert_eq!(ws_read_text(&mut ws), "first-2");

    // The upstream hangs up (FIN); the gateway reconnects to the same address.
    drop(up);
    let mut up = accept_within(&listener, Duration::from_secs(5), "reconnect after FIN");
    gw.wait_upstream("connected", Duration::from_secs(5));
    common::write_all(&mut up, b"second-1\n");
    assert_eq!(ws_read_text(&mut ws), "second-1");

    // The upstream resets the connection; again the gateway comes back.
    socket2::SockRef::from(&up).set_linger(Some(Duration::ZERO)).unwrap();
    drop(up);
    let mut up = accept_within(&listener, Duration::from_secs(5), "reconnect after RST");
    gw.wait_upstream("connected", Duration::from_secs(5));
    common::write_all(&mut up, b"third-1\nthird-2\n");
    assert_eq!(ws_read_text(&mut ws), "third-1");
    assert_eq!(ws_read_text(&mut ws), "third-2");

    // A client that joins later gets only what is published after it joined.
    let mut late = gw.ws_connect();
    common::write_all(&mut up, b"fourth-1\n");
    assert_eq!(ws_read_text(&mut ws), "fourth-1");
    assert_eq!(ws_read_text(&mut late), "fourth-1");
}

#[test]
fn upstream_reconnects_after_being_refused() {
    // Nothing listens yet: the gateway is refused and backs off, then connects once a listener appears.
    let (sock, up_addr) = common::refused_port();
    let gw = Gateway::start(&["--upstream", &up_addr.to_string()]);
    let state = gw.health().get("upstream").and_then(Value::as_str).map(str::to_string);
    assert!(matches!(state.as_deref(), Some("connecting" | "backoff")), "upstream state while refused: {state:?}");
    sock.listen(16).unwrap();
    let listener: TcpListener = sock.into();
    let mut ws = gw.ws_connect();
    let mut up = accept_within(&listener, Duration::from_secs(10), "connection after refusals");
    gw.wait_upstream("connected", Duration::from_secs(5));
    common::write_all(&mut up, b"hello after backoff\n");
    assert_eq!(ws_read_text(&mut ws), "hello after backoff");
}

#[test]
fn ingest_lines_arrive_in_order_whatever_the_write_boundaries() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0"]);
    let mut a = gw.ws_connect();
    let mut b = gw.ws_connect();
    let mut p = gw.publisher();
    common::write_all(&mut p, b"one\ntwo\nth");
    common::write_all(&mut p, b"ree\n");
    for byte in b"four\n" {
        p.write_all(&[*byte]).unwrap();
    }
    common::write_all(&mut p, "ünïcødé ✓ 𝄞\n".as_bytes());
    for ws in [&mut a, &mut b] {
        for want in ["one", "two", "three", "four", "ünïcødé ✓ 𝄞"] {
            assert_eq!(ws_read_text(ws), want);
        }
    }
    // Two publishers: each one's lines stay in order.
    let mut q = gw.publisher();
    common::write_all(&mut p, b"p-1\n");
    common::write_all(&mut q, b"q-1\n");
    common::write_all(&mut p, b"p-2\n");
    common::write_all(&mut q, b"q-2\n");
    for ws in [&mut a, &mut b] {
        let got: Vec<String> = (0..4).map(|_| ws_read_text(ws)).collect();
        let ps: Vec<&str> = got.iter().filter(|s| s.starts_with("p-")).map(String::as_str).collect();
        let qs: Vec<&str> = got.iter().filter(|s| s.starts_with("q-")).map(String::as_str).collect();
        assert_eq!((ps, qs), (vec!["p-1", "p-2"], vec!["q-1", "q-2"]), "got {got:?}");
    }
    common::finish(p);
    common::finish(q);
}

#[test]
fn invalid_utf8_lines_are_dropped_and_the_next_line_arrives() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0"]);
    let mut ws = gw.ws_connect();
    let mut p = gw.publisher();
    let mut feed = Vec::new();
    feed.extend_from_slice(b"ok-1\n");
    feed.extend_from_slice(b"\xff\xfe not utf-8\n");
    feed.extend_from_slice(b"ok-2\n");
    feed.extend_from_slice(b"caf\xc3\n"); // truncated code point at the end of the line
    feed.extend_from_slice(b"\xc0\xaf overlong\n");
    feed.extend_from_slice(b"\xed\xa0\x80 surrogate\n");
    feed.extend_from_slice(b"ok-3\n");
    common::write_all(&mut p, &feed);
    // tungstenite rejects invalid UTF-8 text, so an invalid line that got through fails here too.
    assert_eq!(ws_read_text(&mut ws), "ok-1");
    assert_eq!(ws_read_text(&mut ws), "ok-2");
    assert_eq!(ws_read_text(&mut ws), "ok-3");
    common::write_all(&mut p, b"ok-4\n");
    assert_eq!(ws_read_text(&mut ws), "ok-4");
    ws_expect_silence(&mut ws, Duration::from_millis(200));
}

#[test]
fn invalid_utf8_from_upstream_is_dropped_too() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let gw = Gateway::start(&["--upstream", &listener.local_addr().unwrap().to_string()]);
    let mut ws = gw.ws_connect();
    let mut up = accept_within(&listener, Duration::from_secs(5), "upstream");
    common::write_all(&mut up, b"good-1\nbad \x80\x80\ngood-2\n");
    assert_eq!(ws_read_text(&mut ws), "good-1");
    assert_eq!(ws_read_text(&mut ws), "good-2");
}

#[test]
fn demo_feed_sends_json_ticks_within_two_seconds() {
    let gw = Gateway::start(&["--demo", "--demo-rate", "50"]);
    let mut ws = gw.ws_connect();
    ws.get_mut().set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let start = Instant::now();
    for i in 0..3 {
        let text = match ws.read() {
            Ok(tungstenite::Message::Text(t)) => t,
            Ok(other) => panic!("demo message {i}: expected text, got {other:?}"),
            Err(e) => panic!("demo message {i}: nothing within 2 s ({:?} since connect): {e}", start.elapsed()),
        };
        let v = common::json::parse(&text).unwrap_or_else(|e| panic!("demo message {text:?} is not JSON: {e}"));
        assert!(v.is_object(), "demo message is not a JSON object: {text}");
    }
    assert!(start.elapsed() < Duration::from_secs(2), "3 demo ticks at 50/s took {:?}", start.elapsed());
}

#[test]
fn long_lines_cross_every_frame_length_class() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0"]);
    let mut ws = gw.ws_connect();
    let mut p = gw.publisher();
    let lens = [1usize, 125, 126, 127, 1000, 65_000];
    let mut feed = String::new();
    for (i, len) in lens.iter().enumerate() {
        let line: String = (0..*len).map(|j| char::from(b'a' + ((i + j) % 26) as u8)).collect();
        feed.push_str(&line);
        feed.push('\n');
    }
    common::write_all(&mut p, feed.as_bytes());
    for (i, len) in lens.iter().enumerate() {
        let got = ws_read_text(&mut ws);
        let want: String = (0..*len).map(|j| char::from(b'a' + ((i + j) % 26) as u8)).collect();
        assert!(got == want, "line {i} of {len} bytes came back as {} bytes", got.len());
    }
}

#[test]
fn partial_lines_are_never_glued_across_connections() {
    // Ingest: each publisher has its own line buffer.
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0"]);
    let mut ws = gw.ws_connect();
    let mut p = gw.publisher();
    let mut q = gw.publisher();
    common::write_all(&mut p, b"AAA");
    // Make sure the gateway has read p's partial line before q's line arrives.
    std::thread::sleep(Duration::from_millis(50));
    common::write_all(&mut q, b"BBB\n");
    assert_eq!(ws_read_text(&mut ws), "BBB", "a publisher's partial line leaked into another's");
    common::write_all(&mut p, b"CCC\n");
    assert_eq!(ws_read_text(&mut ws), "AAACCC");

    // A publisher that leaves mid-line: its fragment must not prefix the next publisher's line.
    common::write_all(&mut p, b"dangling");
    std::thread::sleep(Duration::from_millis(50));
    drop(p);
    let mut r = gw.publisher();
    common::write_all(&mut r, b"fresh\n");
    let got = ws_read_text(&mut ws);
    if got == "dangling" {
        // Delivering the fragment as a line of its own at EOF is acceptable.
        assert_eq!(ws_read_text(&mut ws), "fresh");
    } else {
        assert_eq!(got, "fresh", "a departed publisher's partial line was glued to the next line");
    }
    drop((q, r));
}

#[test]
fn upstream_partial_line_is_not_glued_to_the_next_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let gw = Gateway::start(&["--upstream", &listener.local_addr().unwrap().to_string()]);
    let mut ws = gw.ws_connect();
    let mut up = accept_within(&listener, Duration::from_secs(5), "first connection");
    common::write_all(&mut up, b"whole\nhalf-a-li");
    assert_eq!(ws_read_text(&mut ws), "whole");
    drop(up);
    let mut up = accept_within(&listener, Duration::from_secs(5), "reconnect");
    common::write_all(&mut up, b"next\n");
    let got = ws_read_text(&mut ws);
    if got == "half-a-li" {
        assert_eq!(ws_read_text(&mut ws), "next");
    } else {
        assert_eq!(got, "next", "the partial line of the old upstream connection was glued to the new one's");
    }
}

fn feed_dropped(h: &Value, reason: &str) -> u64 {
    h.get("feed_dropped")
        .and_then(|d| d.get(reason))
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("/healthz without feed_dropped.{reason}: {h:?}"))
}

/// Tab-framed publishers: `TOPIC<TAB>payload` lines are forwarded as their payload; lines without a tab or with a
/// bad topic are dropped and counted by reason; positions count every forwarded message once.
#[test]
fn tab_framing_routes_and_counts_bad_records() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0", "--ingest-framing", "tab"]);
    let mut ws = gw.ws_connect();
    let epoch = gw.health().get("epoch").and_then(Value::as_u64).expect("an epoch");
    assert!(epoch > 0 && epoch < 1 << 53, "epoch {epoch}");
    let mut p = gw.publisher();
    common::write_all(&mut p, b"BTC-USD\t{\"px\":1}\nno tab\nBAD*\tx\nETH-USD\ttwo\tparts\nBTC-USD\t\n");
    assert_eq!(ws_read_text(&mut ws), "{\"px\":1}");
    assert_eq!(ws_read_text(&mut ws), "two\tparts");
    ws_expect_silence(&mut ws, Duration::from_millis(200));
    let h = gw.health();
    assert_eq!(feed_dropped(&h, "no_tab"), 1);
    assert_eq!(feed_dropped(&h, "bad_topic"), 1);
    assert_eq!(feed_dropped(&h, "empty_payload"), 1);
    assert_eq!(h.get("feed_seq").and_then(Value::as_u64), Some(2));
    assert_eq!(h.get("topics").and_then(Value::as_u64), Some(2));
    assert_eq!(h.get("epoch").and_then(Value::as_u64), Some(epoch), "one epoch per process");
}

/// Binary-framed publishers: length-prefixed records are forwarded as binary messages, byte for byte; a record
/// over max_line_bytes is skipped without losing step.
#[test]
fn binary_framing_forwards_binary_messages() {
    let gw = Gateway::start_with_config(
        "max_line_bytes = 1000\n",
        &["--ingest", "127.0.0.1:0", "--ingest-framing", "binary"],
    );
    let mut ws = gw.ws_connect();
    let record = |topic: &[u8], payload: &[u8]| {
        let mut r = vec![topic.len() as u8];
        r.extend_from_slice(topic);
        r.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        r.extend_from_slice(payload);
        r
    };
    let mut stream = record(b"book", &[0, 159, 146, 150, 255]);
    stream.extend(record(b"book", &[7u8; 1001]));
    stream.extend(record(b"trades", b"\x01\x02"));
    let mut p = gw.publisher();
    // Byte by byte for the first record: framing does not depend on how the stream is cut.
    for b in &stream[..12] {
        common::write_all(&mut p, &[*b]);
    }
    common::write_all(&mut p, &stream[12..]);
    for want in [&[0u8, 159, 146, 150, 255][..], b"\x01\x02"] {
        match ws.read().expect("a message") {
            tungstenite::Message::Binary(got) => assert_eq!(&got[..], want),
            other => panic!("expected a binary message, got {other:?}"),
        }
    }
    ws_expect_silence(&mut ws, Duration::from_millis(200));
    assert_eq!(feed_dropped(&gw.health(), "too_long"), 1);
}

/// Auto framing (the default): JSON lines are routed by their topic field and plain lines go to the default
/// topic, both forwarded unchanged; a topic field that is not a string drops the line.
#[test]
fn auto_framing_keeps_plain_lines_working() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0"]);
    let mut ws = gw.ws_connect();
    let mut p = gw.publisher();
    common::write_all(&mut p, b"plain line\n{\"topic\":\"BTC-USD\",\"px\":2}\n{\"topic\":5}\n{\"px\":3}\n");
    assert_eq!(ws_read_text(&mut ws), "plain line");
    assert_eq!(ws_read_text(&mut ws), "{\"topic\":\"BTC-USD\",\"px\":2}");
    assert_eq!(ws_read_text(&mut ws), "{\"px\":3}");
    let h = gw.health();
    assert_eq!(feed_dropped(&h, "topic_not_string"), 1);
    assert_eq!(h.get("topics").and_then(Value::as_u64), Some(2), "default and BTC-USD");
}
