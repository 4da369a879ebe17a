//! Server-Sent Events (`GET /sse`): the whole feed or chosen topics as events with `id:` (the position) and
//! `data:` (the JSON envelope, split on line endings), the `retry:` hint, comment heartbeats, resume from
//! `Last-Event-ID` through the history (exactly once), a `gap` event where it cannot, refusals, and the
//! slow-consumer rule.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::json::{self, Value};
use common::raw::read_head;
use common::Gateway;

/// Opens `/sse` with extra header lines; returns the stream and what followed the response head.
fn open(gw: &Gateway, target: &str, headers: &str) -> (TcpStream, common::raw::Head, Vec<u8>) {
    let mut s = common::tcp_connect(gw.ws_addr);
    write!(s, "GET {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").unwrap();
    let (head, rest) = read_head(&mut s);
    (s, head, rest)
}

/// Reads until `n` events (blank-line terminated blocks) arrived; returns them as text.
fn events(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Vec<String> {
    let deadline = Instant::now() + common::IO_TIMEOUT;
    loop {
        let text = String::from_utf8_lossy(buf).into_owned();
        let blocks: Vec<String> = text.split("\n\n").map(str::to_string).collect();
        if blocks.len() > n {
            let used: usize = blocks[..n].iter().map(|b| b.len() + 2).sum();
            buf.drain(..used);
            return blocks[..n].to_vec();
        }
        assert!(Instant::now() < deadline, "only {} of {n} events: {text:?}", blocks.len() - 1);
        let mut chunk = [0u8; 65536];
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        match s.read(&mut chunk) {
            Ok(0) => panic!("the stream ended: {text:?}"),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(_) => {}
        }
    }
}

fn field<'a>(event: &'a str, name: &str) -> Vec<&'a str> {
    event.lines().filter_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": "))).collect()
}

#[test]
fn events_carry_positions_and_envelopes() {
    let gw = Gateway::start_with_config("sse_retry = 1500\n", &["--ingest", "127.0.0.1:0"]);
    let epoch = gw.health().get("epoch").and_then(Value::as_u64).unwrap();
    let (mut s, head, mut buf) = open(&gw, "/sse", "Origin: https://app.example\r\n");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(head.header("access-control-allow-origin"), Some("*"));
    assert_eq!(events(&mut s, &mut buf, 1), ["retry: 1500"]);
    let mut p = gw.publisher();
    // The second line is JSON with a CR in its whitespace: the event's data is split there.
    common::write_all(&mut p, b"{\"topic\":\"BTC-USD\",\"px\":1}\n{\"topic\":\"A\",\r\"px\":2}\nplain\n");
    let got = events(&mut s, &mut buf, 3);
    for (i, event) in got.iter().enumerate() {
        assert_eq!(field(event, "id"), [format!("{epoch}:{}", i + 1)], "{event:?}");
        let data = field(event, "data").join("\n");
        let envelope = json::parse(&data).unwrap_or_else(|e| panic!("{e}: {data:?}"));
        assert_eq!(envelope.get("seq").and_then(Value::as_u64), Some(i as u64 + 1));
    }
    assert_eq!(field(&got[1], "data").len(), 2, "data split on the CR: {:?}", got[1]);
    assert!(field(&got[0], "event").is_empty(), "data events are unnamed (onmessage sees them)");
}

#[test]
fn a_client_that_comes_back_gets_a_gap_event_and_heartbeats_keep_it_alive() {
    let gw = Gateway::start_with_config("sse_heartbeat = 200\n", &["--ingest", "127.0.0.1:0"]);
    let epoch = gw.health().get("epoch").and_then(Value::as_u64).unwrap();
    let mut p = gw.publisher();
    common::write_all(&mut p, b"one\ntwo\n");
    common::poll_until(Duration::from_secs(5), || gw.health().get("feed_seq").and_then(Value::as_u64) == Some(2));
    // From another process's epoch: a gap, reason epoch.
    let (mut s, head, mut buf) = open(&gw, "/sse", "Last-Event-ID: 12:34\r\n");
    assert_eq!(head.status, 200);
    let got = events(&mut s, &mut buf, 2);
    assert_eq!(field(&got[1], "event"), ["gap"], "{got:?}");
    let gap = json::parse(field(&got[1], "data")[0]).unwrap();
    assert_eq!(gap.get("wsgate").and_then(Value::as_str), Some("gap"));
    assert_eq!(gap.get("reason").and_then(Value::as_str), Some("epoch"));
    // Heartbeats: comment lines, then still live.
    let beat = events(&mut s, &mut buf, 1);
    assert_eq!(beat, [":"], "a comment heartbeat");
    // This epoch but behind: resumed from the history, no gap.
    let (mut s2, _, mut buf2) = open(&gw, &format!("/sse?since={epoch}:1"), "");
    let got = events(&mut s2, &mut buf2, 2);
    assert_eq!(field(&got[1], "id"), [format!("{epoch}:2")], "{got:?}");
    assert!(field(&got[1], "event").is_empty(), "{got:?}");
    // At the head: no gap; the next message is the first event.
    let (mut s3, _, mut buf3) = open(&gw, &format!("/sse?since={epoch}:2"), "");
    assert_eq!(events(&mut s3, &mut buf3, 1), ["retry: 3000"]);
    common::write_all(&mut p, b"three\n");
    let next = events(&mut s3, &mut buf3, 1);
    let first = if next[0] == ":" { events(&mut s3, &mut buf3, 1) } else { next };
    assert_eq!(field(&first[0], "id"), [format!("{epoch}:3")]);
}

#[test]
fn refusals_say_why() {
    let gw = Gateway::start_with_config("allowed_origins = [\"https://ok.example\"]\n", &["--ingest", "127.0.0.1:0"]);
    for (target, headers, status) in [
        ("/sse?topics=a%20b", "", 400),
        ("/sse?topics=", "", 400),
        ("/sse", "Last-Event-ID: nonsense\r\n", 400),
        ("/sse?since=1-2", "", 400),
        ("/sse", "Origin: https://evil.example\r\n", 403),
    ] {
        let (_, head, _) = open(&gw, target, headers);
        assert_eq!(head.status, status, "{target} {headers:?}");
    }
    let (_, head, _) = open(&gw, "/sse?topics=*", "Origin: https://ok.example\r\n");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("access-control-allow-origin"), Some("https://ok.example"));
    let resp = common::raw::http_exchange(gw.ws_addr, b"POST /sse HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(resp.status, 405);
}

#[test]
fn a_stalled_event_stream_is_cut_and_frees_its_memory() {
    let gw = Gateway::start_with_config("max_lag_bytes = 262144\n", &["--ingest", "127.0.0.1:0", "--threads", "1"]);
    let (stalled, head, _) = open(&gw, "/sse", "");
    assert_eq!(head.status, 200);
    let mut p = gw.publisher();
    let line = format!("{}\n", "s".repeat(1000));
    for _ in 0..16 {
        common::write_all(&mut p, line.repeat(1000).as_bytes());
    }
    let closed = common::poll_until(Duration::from_secs(5), || {
        gw.health().get("slow_consumers").and_then(Value::as_u64) == Some(1)
    });
    assert!(closed, "the stalled event stream was not cut");
    gw.wait_connections("only the /healthz request", Duration::from_secs(5), |n| n == 1);
    drop(stalled);
}

fn id_seq(event: &str) -> u64 {
    let id = field(event, "id");
    assert_eq!(id.len(), 1, "one id per data event: {event:?}");
    id[0].split_once(':').unwrap().1.parse().unwrap()
}

fn envelope(event: &str) -> Value {
    json::parse(&field(event, "data").join("\n")).unwrap_or_else(|e| panic!("{e}: {event:?}"))
}

/// `topics=` chooses topics (exact and prefix); a stream that reconnects with `Last-Event-ID` gets every message
/// of its topics after that position exactly once, in feed order; topic streams get heartbeats too.
#[test]
fn topic_streams_resume_from_last_event_id_exactly_once() {
    let gw = Gateway::start_with_config("sse_heartbeat = 300\n", &["--ingest", "127.0.0.1:0", "--threads", "2"]);
    let epoch = gw.health().get("epoch").and_then(Value::as_u64).unwrap();
    let mut p = gw.publisher();
    let batch = |from: u64, to: u64| -> String {
        (from..to)
            .map(|n| format!("{{\"topic\":\"{}\",\"n\":{n}}}\n", ["A", "B-1", "B-2", "C"][(n % 4) as usize]))
            .collect()
    };
    common::write_all(&mut p, batch(0, 4).as_bytes()); // every topic exists before the streams open
    common::poll_until(Duration::from_secs(5), || gw.health().get("feed_seq").and_then(Value::as_u64) == Some(4));
    // From position 4 exactly: a loop thread that has not pulled 1..=4 yet waits for them instead of starting
    // before them.
    let (mut s, head, mut buf) = open(&gw, &format!("/sse?topics=A,B-*&since={epoch}:4"), "");
    assert_eq!(head.status, 200);
    events(&mut s, &mut buf, 1); // retry:
    common::write_all(&mut p, batch(4, 44).as_bytes());
    let mut seen = Vec::new();
    let mut last = 0;
    for event in events(&mut s, &mut buf, 15) {
        let v = envelope(&event);
        assert_ne!(v.get("topic").and_then(Value::as_str), Some("C"), "{event:?}");
        let seq = id_seq(&event);
        assert!(seq > last, "feed order");
        last = seq;
        seen.push(v.get("data").unwrap().get("n").and_then(Value::as_u64).unwrap());
    }
    drop(s);
    // Away while more arrives; then back, as EventSource comes back, on whichever loop thread.
    common::write_all(&mut p, batch(44, 80).as_bytes());
    let (mut s, _, mut buf) = open(&gw, "/sse?topics=A,B-*", &format!("Last-Event-ID: {epoch}:{last}\r\n"));
    events(&mut s, &mut buf, 1);
    let want: Vec<u64> = (4..80).filter(|n| n % 4 != 3).collect();
    while seen.len() < want.len() {
        let event = events(&mut s, &mut buf, 1).remove(0);
        if event == ":" {
            continue;
        }
        assert!(field(&event, "event").is_empty(), "no gap: {event:?}");
        let seq = id_seq(&event);
        assert!(seq > last, "feed order, none twice");
        last = seq;
        seen.push(envelope(&event).get("data").unwrap().get("n").and_then(Value::as_u64).unwrap());
    }
    assert_eq!(seen, want);
    // Quiet now: the topic stream gets comment heartbeats.
    assert_eq!(events(&mut s, &mut buf, 1), [":"]);
}

/// Where the history does not reach back, a topic stream gets a `gap` event for that topic (reason history),
/// then what is kept; a position from another epoch gets reason epoch; topics outside `allowed_topics` are 403.
#[test]
fn topic_streams_report_gaps_and_refuse_what_is_not_offered() {
    let gw = Gateway::start_with_config(
        "history_messages = 3\nallowed_topics = [\"H\", \"K-*\"]\n",
        &["--ingest", "127.0.0.1:0", "--threads", "1"],
    );
    let epoch = gw.health().get("epoch").and_then(Value::as_u64).unwrap();
    let mut p = gw.publisher();
    let lines: String = (1..=10).map(|n| format!("{{\"topic\":\"H\",\"n\":{n}}}\n")).collect();
    common::write_all(&mut p, lines.as_bytes());
    common::poll_until(Duration::from_secs(5), || gw.health().get("feed_seq").and_then(Value::as_u64) == Some(10));
    let (mut s, _, mut buf) = open(&gw, &format!("/sse?topics=H&since={epoch}:2"), "");
    let got = events(&mut s, &mut buf, 5);
    assert_eq!(field(&got[1], "event"), ["gap"], "{got:?}");
    let gap = json::parse(field(&got[1], "data")[0]).unwrap();
    assert_eq!(gap.get("reason").and_then(Value::as_str), Some("history"));
    assert_eq!(gap.get("topic").and_then(Value::as_str), Some("H"));
    assert_eq!(got[2..].iter().map(|e| id_seq(e)).collect::<Vec<_>>(), [8, 9, 10], "the last 3 are kept");
    let (mut s, _, mut buf) = open(&gw, "/sse?topics=H&since=1:2", "");
    let got = events(&mut s, &mut buf, 2);
    let gap = json::parse(field(&got[1], "data")[0]).unwrap();
    assert_eq!(gap.get("reason").and_then(Value::as_str), Some("epoch"), "{got:?}");
    for target in ["/sse?topics=SECRET", "/sse?topics=*", "/sse?topics=H,K*"] {
        let (_, head, _) = open(&gw, target, "");
        assert_eq!(head.status, 403, "{target}");
    }
    let (_, head, _) = open(&gw, "/sse?topics=K-1,K-*", "");
    assert_eq!(head.status, 200);
}

/// With `sse_event_names`, data events are named by their topic (for `addEventListener(topic)`), on the whole
/// feed, on topic streams and in what a resume replays; notices keep their own names.
#[test]
fn named_events_carry_their_topic_when_configured() {
    let gw = Gateway::start_with_config("sse_event_names = true\n", &["--ingest", "127.0.0.1:0", "--threads", "1"]);
    let epoch = gw.health().get("epoch").and_then(Value::as_u64).unwrap();
    let (mut all, _, mut all_buf) = open(&gw, "/sse", "");
    let (mut some, _, mut some_buf) = open(&gw, "/sse?topics=B-*", "");
    events(&mut all, &mut all_buf, 1);
    events(&mut some, &mut some_buf, 1);
    let mut p = gw.publisher();
    common::write_all(&mut p, b"{\"topic\":\"A\",\"n\":1}\n{\"topic\":\"B-1\",\"n\":2}\n");
    let got = events(&mut all, &mut all_buf, 2);
    assert_eq!((field(&got[0], "event"), field(&got[1], "event")), (vec!["A"], vec!["B-1"]), "{got:?}");
    let got = events(&mut some, &mut some_buf, 1);
    assert_eq!(field(&got[0], "event"), ["B-1"], "{got:?}");
    // A resume replays from history, named too; an unknown epoch's notice is still `gap`.
    let (mut back, _, mut back_buf) = open(&gw, &format!("/sse?topics=A,B-1&since={epoch}:0"), "");
    let got = events(&mut back, &mut back_buf, 3);
    assert_eq!((field(&got[1], "event"), field(&got[2], "event")), (vec!["A"], vec!["B-1"]), "{got:?}");
    let (mut other, _, mut other_buf) = open(&gw, "/sse?topics=A&since=1:1", "");
    let got = events(&mut other, &mut other_buf, 2);
    assert_eq!(field(&got[1], "event"), ["gap"], "{got:?}");
}
