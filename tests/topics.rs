//! Topic subscriptions over WebSocket (`docs/client-protocol.md`): at connect and with control messages, prefix
//! patterns, replies and every error code, history and resume (exactly once across reconnects under a running
//! feed, a `gap` when history no longer reaches back or the epoch differs), snapshots, thousands of topics.
//! Driven with tungstenite clients against the real binary, fed through `--ingest`.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::json::{self, Value};
use common::{ws_expect_silence, ws_read_text, Gateway};
use tungstenite::WebSocket;

type Ws = WebSocket<TcpStream>;

/// A client on `path` (e.g. `/ws?topics=A`) that asks for `protocol` (or nothing).
fn connect(gw: &Gateway, path: &str, protocol: Option<&str>) -> Ws {
    use tungstenite::client::IntoClientRequest;
    let url = format!("ws://{}{path}", gw.ws_addr);
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut().insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let (ws, _) = tungstenite::client(req, common::tcp_connect(gw.ws_addr)).expect("handshake");
    ws
}

fn json_client(gw: &Gateway, path: &str) -> Ws {
    connect(gw, path, Some("wsgate.v1.json"))
}

fn read_json(ws: &mut Ws) -> Value {
    let text = ws_read_text(ws);
    json::parse(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn send(ws: &mut Ws, text: &str) {
    ws.send(tungstenite::Message::Text(text.into())).unwrap();
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or_else(|| panic!("no {key} in {v:?}"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_else(|| panic!("no {key} in {v:?}"))
}

/// The next reply or notice (a JSON object with the reserved key), skipping data messages.
fn next_reply(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let v = read_json(ws);
        if let Some(k) = v.get("wsgate").and_then(Value::as_str) {
            assert_eq!(k, kind, "{v:?}");
            return v;
        }
    }
}

fn publish(p: &mut TcpStream, lines: &[String]) {
    let mut all = String::new();
    for l in lines {
        all.push_str(l);
        all.push('\n');
    }
    common::write_all(p, all.as_bytes());
}

fn line(topic: &str, n: u64) -> String {
    format!("{{\"topic\":\"{topic}\",\"n\":{n}}}")
}

/// A publisher writing numbered lines (`n` = 1, 2, …) in batches of `batch` every 2 ms, each to `topic_of(n)`,
/// until stopped.
struct RunningFeed {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl RunningFeed {
    fn start(mut p: TcpStream, batch: u64, topic_of: fn(u64) -> &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let running = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !running.load(Ordering::Relaxed) {
                let mut lines = String::new();
                for _ in 0..batch {
                    n += 1;
                    lines.push_str(&line(topic_of(n), n));
                    lines.push('\n');
                }
                p.write_all(lines.as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        RunningFeed { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
    }
}

#[test]
fn subscribe_at_connect_delivers_only_those_topics() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0"]);
    let mut raw = connect(&gw, "/ws?topics=AAA,BB-*", None);
    let mut everything = gw.ws_connect();
    let reply = next_reply(&mut raw, "subscribed");
    let topics: Vec<&str> =
        reply.get("topics").and_then(Value::as_array).unwrap().iter().map(|t| str_of(t, "topic")).collect();
    assert_eq!(topics, ["AAA", "BB-*"]);
    let mut p = gw.publisher();
    let lines = [line("AAA", 1), line("CC", 2), line("BB-1", 3), line("BBX", 4), line("BB-2", 5), line("AAA", 6)];
    publish(&mut p, &lines);
    // Raw data frames carry the payload exactly, in feed order across the connection's topics.
    let got: Vec<String> = (0..4).map(|_| ws_read_text(&mut raw)).collect();
    assert_eq!(got, [lines[0].clone(), lines[2].clone(), lines[4].clone(), lines[5].clone()]);
    ws_expect_silence(&mut raw, Duration::from_millis(300));
    // A client that subscribed to nothing still gets every topic.
    for want in &lines {
        assert_eq!(&ws_read_text(&mut everything), want);
    }
}

#[test]
fn control_messages_subscribe_and_unsubscribe_with_replies() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0", "--threads", "2"]);
    let epoch = num(&gw.health(), "epoch");
    let mut ws = json_client(&gw, "/ws");
    send(&mut ws, r#"{"op":"subscribe","id":"r1","topics":["X"]}"#);
    let reply = next_reply(&mut ws, "subscribed");
    assert_eq!(str_of(&reply, "id"), "r1");
    let position = &reply.get("topics").and_then(Value::as_array).unwrap()[0];
    assert_eq!(str_of(position, "topic"), "X");
    assert_eq!(num(position.get("position").unwrap(), "epoch"), epoch);
    let mut p = gw.publisher();
    publish(&mut p, &[line("Y", 1), line("X", 2), line("Y", 3), line("X", 4)]);
    let a = read_json(&mut ws);
    let b = read_json(&mut ws);
    assert_eq!((str_of(&a, "topic"), str_of(&b, "topic")), ("X", "X"));
    assert_eq!(num(&b, "prev"), num(&a, "seq"), "prev links the topic's messages");
    assert_eq!(num(a.get("data").unwrap(), "n"), 2);
    ws_expect_silence(&mut ws, Duration::from_millis(200));
    // Numeric ids are echoed as numbers.
    send(&mut ws, r#"{"op":"unsubscribe","id":7,"topics":["X"]}"#);
    let reply = next_reply(&mut ws, "unsubscribed");
    assert_eq!(num(&reply, "id"), 7);
    let listed = &reply.get("topics").and_then(Value::as_array).expect("topics")[0];
    assert_eq!(str_of(listed, "topic"), "X");
    assert_eq!(num(listed.get("position").expect("position"), "seq"), num(&b, "seq"), "nothing of X after it");
    publish(&mut p, &[line("X", 5)]);
    ws_expect_silence(&mut ws, Duration::from_millis(300));
    // Subscribed again, it gets what comes next.
    send(&mut ws, r#"{"op":"subscribe","topics":["X"]}"#);
    next_reply(&mut ws, "subscribed");
    publish(&mut p, &[line("X", 6)]);
    assert_eq!(num(read_json(&mut ws).get("data").unwrap(), "n"), 6);
}

#[test]
fn every_bad_control_message_gets_an_error_code_and_the_connection_stays() {
    let gw = Gateway::start_with_config(
        "max_subscriptions = 3\nallowed_topics = [\"OK-*\", \"ALSO\"]\n",
        &["--ingest", "127.0.0.1:0"],
    );
    let mut ws = json_client(&gw, "/ws");
    let cases: &[(&str, &str)] = &[
        ("not json", "bad_json"),
        ("[1,2]", "bad_json"),
        (r#"{"op":"dance"}"#, "unknown_op"),
        (r#"{"topics":["OK-1"]}"#, "bad_request"),
        (r#"{"op":"subscribe","topics":"OK-1"}"#, "bad_request"),
        (r#"{"op":"subscribe","topics":["OK-1"],"extra":1}"#, "bad_request"),
        (r#"{"op":"subscribe","topics":["OK 1"]}"#, "bad_topic"),
        (r#"{"op":"subscribe","topics":["OK-*-x*"]}"#, "bad_topic"),
        (r#"{"op":"subscribe","topics":["OK-1"],"since":{"epoch":1}}"#, "bad_position"),
        (r#"{"op":"subscribe","topics":["OK-1"],"since":{"epoch":1,"seq":9007199254740993}}"#, "bad_position"),
        (r#"{"op":"subscribe","topics":["OK-1","OK-2","OK-3","OK-4"]}"#, "too_many_subscriptions"),
        (r#"{"op":"subscribe","topics":["SECRET"]}"#, "unknown_topic"),
        (r#"{"op":"subscribe","topics":["*"]}"#, "unknown_topic"),
        (r#"{"op":"publish","topic":"OK-1","data":"hi"}"#, "publish_denied"),
    ];
    for (i, (request, code)) in cases.iter().enumerate() {
        send(&mut ws, request);
        let reply = next_reply(&mut ws, "error");
        assert_eq!(str_of(&reply, "code"), *code, "request {i}: {request}");
        assert!(!str_of(&reply, "message").is_empty());
    }
    // Binary control messages are refused the same way.
    ws.send(tungstenite::Message::Binary(vec![1, 2, 3])).unwrap();
    assert_eq!(str_of(&next_reply(&mut ws, "error"), "code"), "bad_json");
    // The per-connection limit counts what is already subscribed.
    send(&mut ws, r#"{"op":"subscribe","topics":["OK-1","ALSO"]}"#);
    next_reply(&mut ws, "subscribed");
    send(&mut ws, r#"{"op":"subscribe","id":"two-more","topics":["OK-2","OK-3"]}"#);
    let reply = next_reply(&mut ws, "error");
    assert_eq!((str_of(&reply, "code"), str_of(&reply, "id")), ("too_many_subscriptions", "two-more"));
    // A position ahead of the feed is refused; the connection still serves.
    let epoch = num(&gw.health(), "epoch");
    send(&mut ws, &format!(r#"{{"op":"subscribe","topics":["OK-9"],"since":{{"epoch":{epoch},"seq":999999}}}}"#));
    assert_eq!(str_of(&next_reply(&mut ws, "error"), "code"), "bad_position");
    let mut p = gw.publisher();
    publish(&mut p, &[line("OK-1", 1)]);
    assert_eq!(str_of(&read_json(&mut ws), "topic"), "OK-1");
    // Bad subscriptions at connect are refused before the upgrade.
    // (400 when malformed, 403 when not offered.)
    for (path, status) in [
        ("/ws?topics=a%20b", "400"),
        ("/ws?topics=", "400"),
        ("/ws?topics=OK-1&since=x", "400"),
        ("/ws?topics=OK-1&snapshot=maybe", "400"),
        ("/ws?topics=SECRET", "403"),
    ] {
        let mut s = common::tcp_connect(gw.ws_addr);
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut head = [0u8; 12];
        std::io::Read::read_exact(&mut s, &mut head).unwrap();
        assert_eq!(head, format!("HTTP/1.1 {status}").as_bytes(), "{path}");
    }
}

/// Resume with `since` gives exactly the messages after the position — none twice, none missing — while the
/// feed keeps running during the replay; across several reconnects and both loop threads.
#[test]
fn resume_is_exactly_once_across_reconnects_under_a_running_feed() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0", "--threads", "2"]);
    let epoch = num(&gw.health(), "epoch");
    let p = gw.publisher();
    let feeder = RunningFeed::start(p, 20, |n| if n.is_multiple_of(3) { "OTHER" } else { "T" });
    let mut seen: Vec<u64> = Vec::new(); // the `n` of every T message received, in order
    let mut last: Option<(u64, u64)> = None; // (seq, n) of the last T message
    for round in 0..8 {
        let mut ws = json_client(&gw, "/ws");
        let since = match last {
            Some((seq, _)) => format!(r#","since":{{"epoch":{epoch},"seq":{seq}}}"#),
            None => String::new(),
        };
        send(&mut ws, &format!(r#"{{"op":"subscribe","topics":["T"]{since}}}"#));
        // Until its subscription is applied a client gets the whole feed; the reply marks the switch.
        next_reply(&mut ws, "subscribed");
        let mut got = 0;
        while got < 150 {
            let v = read_json(&mut ws);
            assert!(v.get("wsgate").is_none(), "round {round}: no gap may be reported: {v:?}");
            assert_eq!(str_of(&v, "topic"), "T");
            let (seq, prev, n) = (num(&v, "seq"), num(&v, "prev"), num(v.get("data").unwrap(), "n"));
            if let Some((last_seq, _)) = last {
                assert_eq!(prev, last_seq, "round {round}: a hole or a duplicate at seq {seq}");
            }
            last = Some((seq, n));
            seen.push(n);
            got += 1;
        }
        // Gone without a goodbye, mid-stream, now and then.
        if round % 2 == 0 {
            drop(ws);
        } else {
            let _ = ws.close(None);
        }
        // Away for a while: the replay has hundreds of messages, and the feed keeps running during it.
        std::thread::sleep(Duration::from_millis(10 * round));
    }
    feeder.stop();
    // Every T message between the first and the last received, exactly once, in order.
    let first = seen[0];
    let want: Vec<u64> = (first..=*seen.last().unwrap()).filter(|n| !n.is_multiple_of(3)).collect();
    assert_eq!(seen, want);
}

/// A connection with several topics receives their messages in seq order (feed order), so the position of the
/// last message it received is one resume point for all of them: reconnecting with it (at connect, through a
/// pattern) gives every message of every topic exactly once, under a running feed.
#[test]
fn several_topics_arrive_in_feed_order_and_resume_from_one_position() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0", "--threads", "2"]);
    let epoch = num(&gw.health(), "epoch");
    let mut p = gw.publisher();
    // The topics exist before the first subscription (a pattern covers the topics a loop knows, and new ones).
    publish(&mut p, &["M-0", "M-1", "M-2", "M-3"].map(|t| line(t, 0)));
    // Uneven: M-0 busiest, some messages in no subscribed topic.
    let feeder = RunningFeed::start(p, 40, |n| ["M-0", "M-0", "M-1", "M-2", "M-3", "X"][(n % 6) as usize]);
    let mut seen: Vec<u64> = Vec::new(); // the `n` of every message received, in order
    let mut last_seq: Option<u64> = None;
    for round in 0..8 {
        let path = match last_seq {
            Some(seq) => format!("/ws?topics=M-*&since={epoch}:{seq}"),
            None => "/ws?topics=M-*".to_string(),
        };
        let mut ws = json_client(&gw, &path);
        next_reply(&mut ws, "subscribed");
        for _ in 0..300 {
            let v = read_json(&mut ws);
            assert!(v.get("wsgate").is_none(), "round {round}: no gap may be reported: {v:?}");
            assert!(str_of(&v, "topic").starts_with("M-"), "{v:?}");
            let seq = num(&v, "seq");
            if let Some(last) = last_seq {
                assert!(seq > last, "round {round}: seq {seq} after {last}: out of feed order or twice");
            }
            last_seq = Some(seq);
            let n = num(v.get("data").unwrap(), "n");
            if n > 0 {
                seen.push(n);
            }
        }
        drop(ws);
        std::thread::sleep(Duration::from_millis(5 * round));
    }
    feeder.stop();
    let first = seen[0];
    let want: Vec<u64> = (first..=*seen.last().unwrap()).filter(|n| n % 6 != 5).collect();
    assert_eq!(seen.len(), want.len(), "messages missing or repeated");
    assert_eq!(seen, want);
}

#[test]
fn resume_past_the_history_or_from_another_epoch_reports_a_gap() {
    let gw = Gateway::start_with_config("history_messages = 5\n", &["--ingest", "127.0.0.1:0", "--threads", "1"]);
    let epoch = num(&gw.health(), "epoch");
    let mut p = gw.publisher();
    let lines: Vec<String> = (1..=20).map(|n| line("H", n)).collect();
    publish(&mut p, &lines);
    common::poll_until(Duration::from_secs(5), || num(&gw.health(), "feed_seq") == 20);
    std::thread::sleep(Duration::from_millis(100));
    // Seq 1..20 are H's messages; only 16..20 are kept.
    let mut ws = json_client(&gw, "/ws");
    send(&mut ws, &format!(r#"{{"op":"subscribe","topics":["H"],"since":{{"epoch":{epoch},"seq":3}}}}"#));
    next_reply(&mut ws, "subscribed");
    let gap = next_reply(&mut ws, "gap");
    assert_eq!(str_of(&gap, "topic"), "H");
    assert_eq!(str_of(&gap, "reason"), "history");
    assert_eq!(num(gap.get("from").unwrap(), "seq"), 3);
    assert_eq!(num(gap.get("to").unwrap(), "seq"), 16);
    for n in 16..=20 {
        assert_eq!(num(read_json(&mut ws).get("data").unwrap(), "n"), n);
    }
    ws_expect_silence(&mut ws, Duration::from_millis(200));
    // Within the history: no gap, exactly what came after.
    let mut ws = json_client(&gw, "/ws");
    send(&mut ws, &format!(r#"{{"op":"subscribe","topics":["H"],"since":{{"epoch":{epoch},"seq":17}}}}"#));
    next_reply(&mut ws, "subscribed");
    for n in 18..=20 {
        let v = read_json(&mut ws);
        assert!(v.get("wsgate").is_none(), "no notice expected: {v:?}");
        assert_eq!(num(v.get("data").unwrap(), "n"), n);
    }
    // Another epoch (a position from before a restart): a gap, then live.
    let other = if epoch == 1 { 2 } else { epoch - 1 };
    let mut ws = json_client(&gw, "/ws");
    send(&mut ws, &format!(r#"{{"op":"subscribe","topics":["H"],"since":{{"epoch":{other},"seq":17}}}}"#));
    next_reply(&mut ws, "subscribed");
    let gap = next_reply(&mut ws, "gap");
    assert_eq!(str_of(&gap, "reason"), "epoch");
    assert_eq!(num(gap.get("from").unwrap(), "epoch"), other);
    publish(&mut p, &[line("H", 21)]);
    assert_eq!(num(read_json(&mut ws).get("data").unwrap(), "n"), 21);
    // At connect, in the raw format: the notice is JSON with the reserved key; the data is the payload.
    let mut raw = connect(&gw, &format!("/ws?topics=H&since={epoch}:15"), None);
    next_reply(&mut raw, "subscribed");
    let gap = next_reply(&mut raw, "gap");
    assert_eq!(num(gap.get("to").unwrap(), "seq"), 17);
    for n in 17..=21 {
        assert_eq!(ws_read_text(&mut raw), line("H", n));
    }
}

#[test]
fn a_snapshot_starts_with_the_last_value() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0", "--threads", "1"]);
    let mut p = gw.publisher();
    publish(&mut p, &[line("S", 1), line("S", 2), line("Q", 3)]);
    common::poll_until(Duration::from_secs(5), || num(&gw.health(), "feed_seq") == 3);
    std::thread::sleep(Duration::from_millis(100));
    let mut ws = json_client(&gw, "/ws");
    send(&mut ws, r#"{"op":"subscribe","topics":["S","Q","NEVER"],"snapshot":true}"#);
    next_reply(&mut ws, "subscribed");
    let mut firsts: Vec<u64> = (0..2).map(|_| num(read_json(&mut ws).get("data").unwrap(), "n")).collect();
    firsts.sort();
    assert_eq!(firsts, [2, 3], "each topic's last value, once");
    ws_expect_silence(&mut ws, Duration::from_millis(200));
    publish(&mut p, &[line("NEVER", 4)]);
    assert_eq!(num(read_json(&mut ws).get("data").unwrap(), "n"), 4);
}

/// Thousands of topics; clients with a few topics and patterns each get exactly theirs, in order per topic.
#[test]
fn thousands_of_topics_and_patterns() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0", "--threads", "2"]);
    const TOPICS: u64 = 3000;
    let name = |t: u64| format!("sym-{:02}-{t}", t % 50);
    // Client i subscribes to topics i, i+100, i+200 and to pattern sym-0i-*.
    let mut clients: Vec<(Ws, Vec<String>, String)> = (0..10u64)
        .map(|i| {
            let topics = vec![name(i + 1000), name(i + 1100), name(i + 1200)];
            let pattern = format!("sym-{i:02}-");
            let mut ws = json_client(&gw, &format!("/ws?topics={},{},{},{pattern}*", topics[0], topics[1], topics[2]));
            next_reply(&mut ws, "subscribed");
            (ws, topics, pattern)
        })
        .collect();
    let mut p = gw.publisher();
    let started = Instant::now();
    let mut lines = Vec::new();
    for round in 0..2 {
        for t in 0..TOPICS {
            lines.push(format!("{{\"topic\":\"{}\",\"n\":{}}}", name(t), round * TOPICS + t));
        }
    }
    publish(&mut p, &lines);
    for (ws, topics, pattern) in &mut clients {
        let want: Vec<u64> = (0..2 * TOPICS)
            .filter(|n| {
                let topic = name(n % TOPICS);
                topics.contains(&topic) || topic.starts_with(pattern.as_str())
            })
            .collect();
        let got: Vec<u64> = want.iter().map(|_| num(read_json(ws).get("data").unwrap(), "n")).collect();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, want);
        // In order per topic.
        for t in topics.iter() {
            let per: Vec<u64> = got.iter().copied().filter(|n| &name(n % TOPICS) == t).collect();
            assert!(per.windows(2).all(|w| w[0] < w[1]), "{t}: {per:?}");
        }
        ws_expect_silence(ws, Duration::from_millis(100));
    }
    eprintln!("delivered in {:?}", started.elapsed());
    // Every loop thread keeps every topic (each sees the whole feed), reported once a second.
    assert!(common::poll_until(Duration::from_secs(3), || num(&gw.health(), "loop_topics") == 2 * TOPICS));
}
