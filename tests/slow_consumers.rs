//! Slow consumers (`docs/client-protocol.md`, "Slow consumers"): one gateway, three topic families with the three
//! policies (`D.*` disconnect, `P.*` drop — the default —, `C.*` conflate), a reader that keeps up with all of
//! them (the truth: every message in feed order), and for each policy one client that stops reading (tiny receive
//! buffer, reads only once the feed is over) and one that reads slowly, plus a whole-feed client that stops
//! reading (policy `drop`: skips with topic `*`). Checked:
//! - `disconnect`: the slow clients are closed with 1008 (whole frames before it), counted in `slow_consumers`;
//! - `drop`: every message a client misses lies inside a `gap` notice of its topic whose range is exact (`from`+1
//!   and `to`−1 are the first and last messages skipped), and live messages follow up to the last one;
//! - `conflate`: the same, and after each gap the client receives exactly `to`, the newest message of the topic
//!   when it was conflated, with its true `seq` and `prev`;
//! - the reader that keeps up gets every message once, in order, with no gap;
//! - the gateway's logs stay bounded throughout, and its RSS grows by far less than the data fed through.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::json::{self, Value};
use common::Gateway;
use tungstenite::WebSocket;

type Ws = WebSocket<TcpStream>;

const FAMILIES: [&str; 3] = ["D", "P", "C"];
/// Lines published, round-robin over the three families' topics; about 1 KiB each.
const LINES: u64 = 30_000;
const MAX_LAG: u64 = 1 << 20;

/// What a client received, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Msg { topic: String, seq: u64, prev: u64 },
    Gap { topic: String, from: u64, to: u64, reason: String },
}

fn topic_of(n: u64) -> String {
    format!("{}.x", FAMILIES[(n % 3) as usize])
}

/// The last line of a family (line `n` gets seq `n`: nothing else is published).
fn last_of(family: &str) -> u64 {
    (1..=LINES).rev().find(|&n| topic_of(n).starts_with(family)).unwrap()
}

/// A JSON-format client on `path`, with a receive buffer of `rcvbuf` bytes (small: the gateway's sends block soon).
fn client(gw: &Gateway, path: &str, rcvbuf: Option<usize>) -> Ws {
    use tungstenite::client::IntoClientRequest;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(n) = rcvbuf {
        socket.set_recv_buffer_size(n).unwrap();
    }
    socket.connect(&gw.ws_addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.set_write_timeout(Some(common::IO_TIMEOUT)).unwrap();
    let mut req = format!("ws://{}{path}", gw.ws_addr).into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", "wsgate.v1.json".parse().unwrap());
    let (ws, _) = tungstenite::client(req, stream).expect("handshake");
    ws
}

/// Parses one text message into an [`Item`] (`None` for other replies, e.g. `subscribed`).
fn item(text: &str) -> Option<Item> {
    let v = json::parse(text).unwrap_or_else(|e| panic!("a frame that is not whole JSON ({e}): {text:?}"));
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or_else(|| panic!("no {k}: {text}"));
    match v.get("wsgate").and_then(Value::as_str) {
        None => Some(Item::Msg {
            topic: v.get("topic").and_then(Value::as_str).expect("topic").to_string(),
            seq: num(&v, "seq"),
            prev: num(&v, "prev"),
        }),
        Some("gap") => Some(Item::Gap {
            topic: v.get("topic").and_then(Value::as_str).unwrap().to_string(),
            from: num(v.get("from").unwrap(), "seq"),
            to: num(v.get("to").unwrap(), "seq"),
            reason: v.get("reason").and_then(Value::as_str).unwrap().to_string(),
        }),
        Some(_) => None,
    }
}

/// How a client's reading ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// It received the message with this seq (the last one it waited for).
    Last,
    /// A close frame with this code.
    Closed(u16),
    /// The stream ended (or was reset) without a close frame.
    Cut,
}

/// Reads until the message `last_seq` (of any topic it reads) or a gap past it (skipped to live after the feed's
/// last message), a close, or the end; sleeping `pause` per message.
fn read_all(ws: &mut Ws, last_seq: u64, pause: Duration, items: &mut Vec<Item>) -> End {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                if let Some(it) = item(&t) {
                    let done = match &it {
                        Item::Msg { seq, .. } => *seq >= last_seq,
                        Item::Gap { to, reason, .. } => reason == "skipped" && *to > last_seq,
                    };
                    items.push(it);
                    if done {
                        return End::Last;
                    }
                }
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
            Ok(tungstenite::Message::Close(f)) => return End::Closed(f.map_or(1005, |f| u16::from(f.code))),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                panic!("no message for 20 s; {} received, last {:?}", items.len(), items.last())
            }
            Err(_) => return End::Cut,
        }
    }
}

/// Checks a client's `items` against `truth` (every message of the feed, in order): per topic (`*`: a whole-feed
/// client's gaps cover every topic), each message missing between two received ones lies inside a gap received
/// between them, each gap's range is exact (its `from`+1 and `to`−1 are messages of the topic that the client
/// did not receive; for `conflated`, `to` is the next message received), and messages come in feed order, each
/// once. Returns how many gaps there were.
fn verify(truth: &[(String, u64, u64)], items: &[Item], whole_feed: bool, what: &str) -> usize {
    let key = |t: &str| if whole_feed { "*".to_string() } else { t.to_string() };
    let mut per_topic: HashMap<String, Vec<u64>> = HashMap::new();
    for (t, seq, _) in truth {
        per_topic.entry(key(t)).or_default().push(*seq);
    }
    let prevs: HashMap<u64, u64> = truth.iter().map(|(_, s, p)| (*s, *p)).collect();
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut pending: HashMap<String, Vec<(u64, u64, String)>> = HashMap::new();
    let mut last_seq = 0;
    let mut gaps = 0;
    for it in items {
        match it {
            Item::Gap { topic, from, to, reason } => {
                gaps += 1;
                assert!(matches!(reason.as_str(), "skipped" | "conflated"), "{what}: {it:?}");
                let all = &per_topic[topic];
                let after = last.get(topic).copied().unwrap_or(0);
                assert!(*from >= after, "{what}: {it:?} starts before the last message received ({after})");
                let has = |s: u64| all.binary_search(&s).is_ok();
                assert!(has(from + 1), "{what}: {it:?}: from+1 is not a message of the topic");
                // The last skipped: `to`-1 (drop); the topic's message before `to`, the newest (conflate).
                let last_skipped = if reason == "conflated" {
                    all[..all.partition_point(|&s| s < *to)].last().copied()
                } else {
                    Some(to - 1)
                };
                assert!(
                    last_skipped.is_some_and(|s| has(s) && s > *from),
                    "{what}: {it:?}: to-1 is not the last message skipped"
                );
                pending.entry(topic.clone()).or_default().push((*from, *to, reason.clone()));
            }
            Item::Msg { topic, seq, prev } => {
                assert!(*seq > last_seq, "{what}: seq {seq} after {last_seq}: out of order or repeated");
                last_seq = *seq;
                let t = key(topic);
                assert_eq!(Some(prev), prevs.get(seq), "{what}: seq {seq} with a wrong prev");
                let before = last.get(&t).copied().unwrap_or(0);
                let gaps_here = pending.remove(&t).unwrap_or_default();
                let all = &per_topic[&t];
                let missing = &all[all.partition_point(|&s| s <= before)..all.partition_point(|&s| s < *seq)];
                for &s in missing {
                    if before == 0 && gaps_here.is_empty() {
                        continue; // before its first message: it joined live
                    }
                    assert!(
                        gaps_here.iter().any(|(from, to, _)| *from < s && s < *to),
                        "{what}: seq {s} of {t} missing without a gap (between {before} and {seq}; gaps {gaps_here:?})"
                    );
                }
                if let Some((_, to, reason)) = gaps_here.last() {
                    if reason == "conflated" {
                        assert_eq!(*to, *seq, "{what}: after a conflation the newest message ({to}) comes next");
                    } else {
                        assert!(*seq >= *to, "{what}: {seq} delivered inside a gap ending at {to}");
                    }
                }
                last.insert(t, *seq);
            }
        }
    }
    gaps
}

#[test]
fn slow_consumers_get_their_policy_and_the_others_everything() {
    let config = format!(
        "max_lag_bytes = {MAX_LAG}\nlag_policy = \"drop\"\nlag_policies = [\"D.*=disconnect\", \"C.*=conflate\"]\n\
         history_messages = 100\nhistory_bytes = 131072\n"
    );
    let gw = Gateway::start_with_config(&config, &["--ingest", "127.0.0.1:0", "--threads", "1"]);
    let rss_before = gw.health().get("rss_bytes").and_then(Value::as_u64);

    // The reader that keeps up: every topic, everything.
    let mut fast = client(&gw, "/ws?topics=D.*,P.*,C.*", None);
    // Per family: one that stops reading, one that reads slowly. And a whole-feed client that stops reading.
    let mut stalled: Vec<(String, Ws)> =
        FAMILIES.iter().map(|f| (f.to_string(), client(&gw, &format!("/ws?topics={f}.*"), Some(4096)))).collect();
    stalled.push(("whole feed".into(), client(&gw, "/ws", Some(4096))));
    let slow: Vec<(String, Ws)> =
        FAMILIES.iter().map(|f| (f.to_string(), client(&gw, &format!("/ws?topics={f}.*"), Some(4096)))).collect();
    gw.wait_connections("8 clients", Duration::from_secs(5), |n| n >= 8);
    std::thread::sleep(Duration::from_millis(200)); // the subscriptions are applied

    // Memory: sampled while the feed runs.
    let done = Arc::new(AtomicBool::new(false));
    let peak_logs = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak_logs.clone());
        let addr = gw.ws_addr;
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let resp = common::raw::http_exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
                if let Ok(h) = json::parse(&resp.body_text()) {
                    let n = |k: &str| h.get(k).and_then(Value::as_u64).unwrap_or(0);
                    peak.fetch_max(n("log_bytes") + n("topic_log_bytes") + n("pinned_bytes"), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let slow_threads: Vec<_> = slow
        .into_iter()
        .map(|(family, mut ws)| {
            std::thread::spawn(move || {
                let mut items = Vec::new();
                let end = read_all(&mut ws, last_of(&family), Duration::from_millis(2), &mut items);
                (family, end, items)
            })
        })
        .collect();

    let mut publisher = gw.publisher();
    let pad = "y".repeat(1000);
    let writer = std::thread::spawn(move || {
        // Paced (about 64 KB every 12 ms): the reader that keeps up never falls far behind, even on a busy machine.
        let mut batch = String::new();
        for n in 1..=LINES {
            batch.push_str(&format!("{{\"topic\":\"{}\",\"n\":{n},\"pad\":\"{pad}\"}}\n", topic_of(n)));
            if batch.len() >= 64 * 1024 {
                common::write_all(&mut publisher, batch.as_bytes());
                batch.clear();
                std::thread::sleep(Duration::from_millis(12));
            }
        }
        common::write_all(&mut publisher, batch.as_bytes());
        publisher
    });

    let mut truth_items = Vec::new();
    assert_eq!(read_all(&mut fast, LINES, Duration::ZERO, &mut truth_items), End::Last);
    let _publisher = writer.join().unwrap();
    let truth: Vec<(String, u64, u64)> = truth_items
        .iter()
        .map(|it| match it {
            Item::Msg { topic, seq, prev } => (topic.clone(), *seq, *prev),
            other => panic!("the reader that keeps up got {other:?}"),
        })
        .collect();
    assert_eq!(truth.len() as u64, LINES, "the reader that keeps up missed messages");
    assert_eq!(truth.iter().map(|t| t.1).collect::<Vec<_>>(), (1..=LINES).collect::<Vec<_>>(), "seq = line");

    // The ones that stopped reading read now.
    for (family, mut ws) in stalled {
        let mut items = Vec::new();
        let whole = family == "whole feed";
        let last = if whole { LINES } else { last_of(&family) };
        let end = read_all(&mut ws, last, Duration::ZERO, &mut items);
        let what = format!("stalled {family}");
        match family.as_str() {
            "D" => {
                // Closed 1008; or, if the linger time passed before it read, cut — never a frame cut in half
                // (each item parsed whole above).
                assert!(matches!(end, End::Closed(1008) | End::Cut), "{what}: {end:?}");
                assert!(!items.iter().any(|i| matches!(i, Item::Gap { .. })), "{what}: no skipping under disconnect");
            }
            _ => {
                assert_eq!(end, End::Last, "{what}: live messages up to the last one");
                let gaps = verify(&truth, &items, whole, &what);
                assert!(gaps >= 1, "{what}: never skipped: {} items", items.len());
                let reason = if family == "C" { "conflated" } else { "skipped" };
                assert!(
                    items.iter().all(|i| !matches!(i, Item::Gap { reason: r, .. } if r != reason)),
                    "{what}: gaps of another policy"
                );
            }
        }
    }
    for t in slow_threads {
        let (family, end, items) = t.join().unwrap();
        let what = format!("slow {family}");
        match family.as_str() {
            "D" => assert_eq!(end, End::Closed(1008), "{what}: {} items", items.len()),
            _ => {
                assert_eq!(end, End::Last, "{what}");
                verify(&truth, &items, false, &what);
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();

    let h = gw.health();
    let n = |k: &str| h.get(k).and_then(Value::as_u64).unwrap_or_else(|| panic!("no {k} in /healthz: {h:?}"));
    assert!(n("slow_consumers") >= 2, "stalled and slow D clients closed: {h:?}");
    assert!(n("lag_skips") >= 2, "stalled P and whole-feed clients skipped: {h:?}");
    assert!(n("lag_conflations") >= 1, "{h:?}");
    assert!(n("lag_messages_skipped") > 0, "{h:?}");
    // Bounded: the logs held at most the lag of a few clients plus history, whatever the stalled clients did.
    let peak = peak_logs.load(Ordering::Relaxed);
    assert!(peak < 16 * MAX_LAG, "logs peaked at {peak} bytes");
    // RSS may legitimately grow by what the lagging clients may hold (about `MAX_LAG` each, per encoding they
    // read) plus history and buffers, about 8 MiB here, whatever the load; keeping what was fed would be 30 MB.
    if let (Some(before), Some(after)) = (rss_before, h.get("rss_bytes").and_then(Value::as_u64)) {
        let fed = LINES * 1030;
        let bound = 12 * MAX_LAG;
        assert!(fed > 2 * bound, "the test feeds well past the bound");
        assert!(after.saturating_sub(before) < bound, "RSS grew from {before} to {after} for {fed} bytes fed");
    }
}

/// A raw-format client that stops reading, with `drop`: when it reads again it finds whole frames, a `gap`
/// notice (a JSON text frame, as every notice of the raw format) and then the live messages.
#[test]
fn raw_clients_get_the_gap_as_a_json_notice() {
    let gw = Gateway::start_with_config(
        &format!("max_lag_bytes = {MAX_LAG}\nlag_policy = \"drop\"\n"),
        &["--ingest", "127.0.0.1:0", "--threads", "1"],
    );
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&gw.ws_addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (mut raw, _) = tungstenite::client(gw.ws_url(), stream).expect("handshake");
    gw.wait_connections("1 client", Duration::from_secs(5), |n| n >= 1);
    let mut publisher = gw.publisher();
    let pad = "z".repeat(1000);
    let lines = 8_000u64;
    for chunk in (1..=lines).collect::<Vec<_>>().chunks(64) {
        let text: String = chunk.iter().map(|n| format!("{n} {pad}\n")).collect();
        common::write_all(&mut publisher, text.as_bytes());
        std::thread::sleep(Duration::from_millis(4));
    }
    let (mut last, mut gaps, mut n_gap) = (0u64, 0, None::<(u64, u64)>);
    loop {
        let text = common::ws_read_text(&mut raw);
        if text.starts_with("{\"wsgate\":\"gap\"") {
            let v = json::parse(&text).unwrap();
            let seq = |k: &str| v.get(k).and_then(|p| p.get("seq")).and_then(Value::as_u64).unwrap();
            assert_eq!(v.get("topic").and_then(Value::as_str), Some("*"), "{text}");
            assert_eq!(seq("from"), last, "the gap starts right after the last line received: {text}");
            n_gap = Some((seq("from"), seq("to")));
            gaps += 1;
            continue;
        }
        let n: u64 = text.split(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("not a whole line: {text:.40}"));
        match n_gap.take() {
            Some((_, to)) => assert_eq!(n, to, "after the gap, the first live line is `to`"),
            None => assert_eq!(n, last + 1, "a line missing without a gap"),
        }
        last = n;
        if n == lines {
            break;
        }
    }
    assert!(gaps >= 1, "the stalled raw client was never skipped");
    let mut rest = Vec::new();
    raw.get_mut().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let _ = raw.get_mut().read_to_end(&mut rest);
}

/// A loop thread that cannot keep up with the feed (`feed_overflow = drop`, a tiny queue, a burst of tiny
/// messages that the loop encodes as envelopes and topic logs: more work per message than the feed thread's):
/// the batches dropped for it are counted, and its client gets a `gap` notice (topic `*`, reason `overload`)
/// whose range is exactly the messages it missed — never a silent hole.
#[test]
fn a_loop_that_misses_feed_batches_tells_its_clients() {
    let gw = Gateway::start_with_config(
        "feed_overflow = \"drop\"\nfeed_queue_bytes = 262144\nfeed_queue_batches = 8\nmax_lag_bytes = 67108864\npoll_timeout = 1000\n",
        &["--ingest", "127.0.0.1:0", "--threads", "1"],
    );
    let mut ws = client(&gw, "/ws", None);
    let mut topic_ws = client(&gw, "/ws?topics=t0", None);
    gw.wait_connections("2 clients", Duration::from_secs(5), |n| n >= 2);
    std::thread::sleep(Duration::from_millis(100)); // the subscription is applied
    let stop = Arc::new(AtomicBool::new(false));
    let poller = std::thread::spawn(poll_whole_feed(&gw, stop.clone()));
    let mut publisher = gw.publisher();
    let mut sent = 0u64;
    let (mut items, mut topic_items) = (Vec::new(), Vec::new());
    let started = std::time::Instant::now();
    // Bursts of 100,000 tiny lines until the loop has missed some (bounded: a machine fast enough to never drop
    // fails here, loudly).
    let dropped = loop {
        let burst: String =
            (sent + 1..=sent + 100_000).map(|n| format!("{{\"topic\":\"t{}\",\"n\":{n}}}\n", n % 7)).collect();
        sent += 100_000;
        common::write_all(&mut publisher, burst.as_bytes());
        // Then, once the queue has drained, one more line (the burst's last ones may have been dropped).
        let drained = |h: &Value| h.get("feed_queue_bytes").and_then(Value::as_u64) == Some(0);
        let waited = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        while !drained(&gw.health()) && waited.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        sent += 1;
        common::write_all(&mut publisher, format!("{{\"topic\":\"t0\",\"n\":{sent}}}\n").as_bytes());
        assert_eq!(read_all(&mut ws, sent, Duration::ZERO, &mut items), End::Last, "the line after the burst");
        assert_eq!(read_all(&mut topic_ws, sent, Duration::ZERO, &mut topic_items), End::Last, "topic t0");
        let h = gw.health();
        let n = |k: &str| h.get(k).and_then(Value::as_u64).unwrap_or(0);
        if n("feed_batches_dropped") > 0 {
            assert!(n("feed_holes") > 0, "batches dropped without a hole noticed: {h:?}");
            break n("feed_batches_dropped");
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no feed batch was ever dropped: {h:?}");
    };
    let (mut last, mut gaps, mut pending_to) = (0u64, 0, None::<u64>);
    for it in &items {
        match it {
            Item::Gap { topic, from, to, reason } => {
                assert_eq!((topic.as_str(), reason.as_str()), ("*", "overload"), "{it:?}");
                assert_eq!(*from, last, "the gap starts right after the last message received: {it:?}");
                gaps += 1;
                pending_to = Some(*to);
            }
            Item::Msg { seq, .. } => {
                match pending_to.take() {
                    Some(to) => assert_eq!(*seq, to, "after the gap, the first message is `to`"),
                    None if last > 0 => assert_eq!(*seq, last + 1, "a message missing without a gap"),
                    None => {}
                }
                last = *seq;
            }
        }
    }
    assert!(gaps > 0, "{dropped} batches dropped but no gap notice");
    // The topic reader: its topic's notices, in order; a message whose `prev` it did not receive comes after one.
    let (mut last, mut gap_since, mut topic_gaps) = (0u64, false, 0);
    for it in &topic_items {
        match it {
            Item::Gap { topic, from, to, reason } => {
                assert_eq!((topic.as_str(), reason.as_str()), ("t0", "overload"), "{it:?}");
                assert!(*from >= last && to > from, "{it:?} after {last}");
                gap_since = true;
                topic_gaps += 1;
            }
            Item::Msg { topic, seq, prev } => {
                assert_eq!(topic, "t0");
                assert!(last == 0 || *prev == last || gap_since, "seq {seq} (prev {prev}) after {last} without a gap");
                (last, gap_since) = (*seq, false);
            }
        }
    }
    assert!(topic_gaps > 0, "the topic reader got no gap notice");
    stop.store(true, Ordering::Relaxed);
    let (answers, polled_gaps) = poller.join().expect("the long-poller never saw a silent hole");
    assert!(answers > 0 && polled_gaps > 0, "long-poll: {answers} answers, {polled_gaps} gap notices");
}

/// A whole-feed long-poller, from `next` to `next` until `stop`: each answer's messages in order, and each jump
/// past the position it stood at explained by a `gap` notice in that answer (whether the request waited for the
/// batch after a hole or was answered from what the history kept). Returns the answers and gap notices seen.
fn poll_whole_feed(gw: &Gateway, stop: Arc<AtomicBool>) -> impl FnOnce() -> (u64, u64) {
    let (addr, epoch) = (gw.ws_addr, gw.health().get("epoch").and_then(Value::as_u64).unwrap());
    move || {
        let (mut since, mut answers, mut gaps) = (0u64, 0u64, 0u64);
        while !stop.load(Ordering::Relaxed) {
            let request = format!("GET /poll?since={epoch}:{since} HTTP/1.1\r\nHost: x\r\n\r\n");
            let resp = common::raw::http_exchange(addr, request.as_bytes());
            assert_eq!(resp.status, 200, "{resp:?}");
            let v = json::parse(&resp.body_text()).unwrap();
            let mut covered_to = 0;
            let mut last = since;
            for m in v.get("messages").and_then(Value::as_array).unwrap() {
                let seq = |k: &str| m.get(k).and_then(|p| p.get("seq")).and_then(Value::as_u64).unwrap();
                if m.get("wsgate").and_then(Value::as_str) == Some("gap") {
                    covered_to = covered_to.max(seq("to"));
                    gaps += 1;
                    continue;
                }
                let n = m.get("seq").and_then(Value::as_u64).unwrap();
                assert!(n > last, "long-poll: {n} after {last}");
                assert!(n == last + 1 || n <= covered_to, "long-poll: a silent hole between {last} and {n}");
                last = n;
            }
            let next = v.get("next").and_then(Value::as_str).unwrap();
            since = next.rsplit(':').next().unwrap().parse().unwrap();
            answers += 1;
        }
        (answers, gaps)
    }
}

/// Clients that ping and never read the pongs: each stays under `max_private_bytes`, but together they pass
/// `max_loop_private_bytes`, and the loop closes those holding the most (1008, counted) — the per-connection
/// limit is not multiplied by the number of such clients. A well-behaved client keeps being served.
#[test]
fn the_loops_private_bytes_are_capped_over_all_connections() {
    let gw = Gateway::start_with_config(
        // No message rate limit: it would close the flooders long before their pongs add up.
        "max_private_bytes = 4194304\nmax_loop_private_bytes = 4194304\nclient_message_rate = 0\n",
        &["--ingest", "127.0.0.1:0", "--threads", "1"],
    );
    let mut witness = client(&gw, "/ws", None);
    let flooders: Vec<_> = (0..6)
        .map(|_| {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            socket.connect(&gw.ws_addr.into()).unwrap();
            let stream: TcpStream = socket.into();
            stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut ws = common::raw::RawWs::from_parts(stream, Vec::new());
            let key = "dGhlIHNhbXBsZSBub25jZQ==";
            let req = format!(
                "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            );
            ws.send_raw(req.as_bytes()).unwrap();
            std::thread::spawn(move || {
                // About 16 MB of pings each (more than the kernel buffers take), never reading a pong; one pass of
                // the loop reads at most 256 KiB of them per connection, far below `max_private_bytes`.
                let ping = common::raw::client_frame(0x9, &[7u8; 125]);
                let burst: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 512).collect();
                for _ in 0..256 {
                    if ws.send_raw(&burst).is_err() {
                        break; // closed by the gateway
                    }
                }
            })
        })
        .collect();
    for f in flooders {
        f.join().unwrap();
    }
    let closed = common::poll_until(Duration::from_secs(10), || {
        gw.health().get("private_budget_closes").and_then(Value::as_u64).unwrap_or(0) > 0
    });
    let h = gw.health();
    assert!(closed, "no connection closed for the loop's private-bytes budget: {h:?}");
    let private = h.get("loop_private_bytes").and_then(Value::as_u64).unwrap();
    assert!(private <= 4194304 + 6 * 300_000, "loop_private_bytes {private}");
    // The witness is still served.
    let mut publisher = gw.publisher();
    common::write_all(&mut publisher, b"{\"topic\":\"w\",\"n\":1}\n");
    let mut items = Vec::new();
    assert_eq!(read_all(&mut witness, 1, Duration::ZERO, &mut items), End::Last);
}

/// The backlog is bounded in messages too: tiny messages, far below `max_lag_bytes`, still close a client that
/// stops reading once it is `max_lag_messages` behind (policy `disconnect`), while a reader that keeps up gets all.
#[test]
fn the_backlog_is_bounded_in_messages_too() {
    let gw = Gateway::start_with_config(
        // 20,000 messages (about 2 MB here): room for the reader that keeps up on a busy machine, far below
        // what the stalled client falls behind.
        "max_lag_bytes = 268435456\nmax_lag_messages = 20000\n",
        &["--ingest", "127.0.0.1:0", "--threads", "1"],
    );
    let mut reader = client(&gw, "/ws?topics=t", None);
    let _stalled = client(&gw, "/ws?topics=t", Some(4096));
    gw.wait_connections("2 clients", Duration::from_secs(5), |n| n >= 2);
    std::thread::sleep(Duration::from_millis(100));
    let mut publisher = gw.publisher();
    let lines = 150_000u64; // ~15 MB of envelopes: more than the kernel buffers take
    let writer = std::thread::spawn(move || {
        for chunk in (1..=lines).collect::<Vec<_>>().chunks(100) {
            let text: String = chunk.iter().map(|n| format!("{{\"topic\":\"t\",\"n\":{n}}}\n")).collect();
            common::write_all(&mut publisher, text.as_bytes());
            std::thread::sleep(Duration::from_millis(2));
        }
        publisher
    });
    let mut items = Vec::new();
    assert_eq!(read_all(&mut reader, lines, Duration::ZERO, &mut items), End::Last);
    let _publisher = writer.join().unwrap();
    assert_eq!(items.len() as u64, lines, "the reader that keeps up lost messages");
    let closed = common::poll_until(Duration::from_secs(5), || {
        gw.health().get("slow_consumers").and_then(Value::as_u64) == Some(1)
    });
    assert!(closed, "the stalled client was not closed for its message backlog: {:?}", gw.health());
}
