//! Long-polling (`GET /poll?since=E:S[&topics=…]`): answered at once from the history when it holds messages
//! after the position (a gap notice where it no longer reaches back, or for another epoch), else held until a
//! message newer than the position arrives (in the topics asked for), then answered with the messages as
//! envelopes and the next position; answered empty at `poll_timeout`; bounded.

mod common;

use std::time::{Duration, Instant};

use common::json::{self, Value};
use common::raw::{http_exchange, read_head};
use common::Gateway;

fn get(gw: &Gateway, target: &str) -> common::raw::Response {
    http_exchange(gw.ws_addr, format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
}

fn body(resp: &common::raw::Response) -> Value {
    assert_eq!(resp.status, 200, "{resp:?}");
    json::parse(&resp.body_text()).unwrap_or_else(|e| panic!("{e}: {:?}", resp.body_text()))
}

fn epoch(gw: &Gateway) -> u64 {
    gw.health().get("epoch").and_then(Value::as_u64).unwrap()
}

#[test]
fn a_held_request_is_answered_by_the_next_messages() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0", "--threads", "1"]);
    let e = epoch(&gw);
    let addr = gw.ws_addr;
    let started = Instant::now();
    let waiter = std::thread::spawn(move || {
        http_exchange(addr, b"GET /poll HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n\r\n")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiter.is_finished(), "held while nothing is newer");
    let mut p = gw.publisher();
    common::write_all(&mut p, b"{\"topic\":\"BTC-USD\",\"px\":1}\n");
    let resp = waiter.join().unwrap();
    assert_eq!(resp.head.header("access-control-allow-origin"), Some("*"));
    let v = body(&resp);
    let msgs = v.get("messages").and_then(Value::as_array).unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].get("topic").and_then(Value::as_str), Some("BTC-USD"));
    assert_eq!(msgs[0].get("seq").and_then(Value::as_u64), Some(1));
    assert_eq!(v.get("next").and_then(Value::as_str), Some(format!("{e}:1").as_str()));
    assert!(started.elapsed() < Duration::from_secs(5));
    // Asking again from `next` waits for what comes after it.
    let addr = gw.ws_addr;
    let next = format!("/poll?since={e}:1");
    let waiter =
        std::thread::spawn(move || http_exchange(addr, format!("GET {next} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()));
    std::thread::sleep(Duration::from_millis(200));
    common::write_all(&mut p, b"two\n");
    let v = body(&waiter.join().unwrap());
    let msgs = v.get("messages").and_then(Value::as_array).unwrap();
    assert_eq!(msgs[0].get("text").and_then(Value::as_str), Some("two"));
    assert_eq!(msgs[0].get("seq").and_then(Value::as_u64), Some(2));
}

#[test]
fn positions_behind_are_served_from_history_or_get_a_gap_at_once() {
    let gw = Gateway::start_with_config("history_messages = 2\n", &["--ingest", "127.0.0.1:0", "--threads", "1"]);
    let e = epoch(&gw);
    let mut p = gw.publisher();
    common::write_all(&mut p, b"a\nb\nc\n");
    common::poll_until(Duration::from_secs(5), || gw.health().get("feed_seq").and_then(Value::as_u64) == Some(3));
    let kinds = |v: &Value| -> Vec<String> {
        let msgs = v.get("messages").and_then(Value::as_array).unwrap();
        msgs.iter()
            .map(|m| match m.get("wsgate").and_then(Value::as_str) {
                Some(_) => format!("gap:{}", m.get("reason").and_then(Value::as_str).unwrap()),
                None => m.get("text").and_then(Value::as_str).unwrap().to_string(),
            })
            .collect()
    };
    // Within the history (the last 2): exactly what came after.
    let v = body(&get(&gw, &format!("/poll?since={e}:1")));
    assert_eq!(kinds(&v), ["b", "c"]);
    assert_eq!(v.get("next").and_then(Value::as_str), Some(format!("{e}:3").as_str()));
    // Older than the history: the gap, then what is kept.
    let v = body(&get(&gw, &format!("/poll?since={e}:0")));
    assert_eq!(kinds(&v), ["gap:history", "b", "c"]);
    // Another epoch: the gap, and from now.
    let v = body(&get(&gw, "/poll?since=12:1"));
    assert_eq!(kinds(&v), ["gap:epoch"]);
    assert_eq!(v.get("next").and_then(Value::as_str), Some(format!("{e}:3").as_str()), "resume from now");
}

/// `topics=` polls only those topics: from history at once, and a held request is answered only by news in them.
#[test]
fn topic_polls_see_only_their_topics() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0", "--threads", "1"]);
    let e = epoch(&gw);
    let mut p = gw.publisher();
    common::write_all(&mut p, b"{\"topic\":\"A\",\"n\":1}\n{\"topic\":\"B\",\"n\":2}\n{\"topic\":\"A-2\",\"n\":3}\n");
    common::poll_until(Duration::from_secs(5), || gw.health().get("feed_seq").and_then(Value::as_u64) == Some(3));
    let v = body(&get(&gw, &format!("/poll?topics=A,A-*&since={e}:0")));
    let topics: Vec<&str> = v
        .get("messages")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|m| m.get("topic").and_then(Value::as_str).unwrap())
        .collect();
    assert_eq!(topics, ["A", "A-2"]);
    assert_eq!(v.get("next").and_then(Value::as_str), Some(format!("{e}:3").as_str()));
    // Held from there: B's news does not answer it, A's does.
    let addr = gw.ws_addr;
    let target = format!("/poll?topics=A&since={e}:3");
    let waiter =
        std::thread::spawn(move || http_exchange(addr, format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()));
    std::thread::sleep(Duration::from_millis(200));
    common::write_all(&mut p, b"{\"topic\":\"B\",\"n\":4}\n");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiter.is_finished(), "still held: B is not asked for");
    common::write_all(&mut p, b"{\"topic\":\"A\",\"n\":5}\n");
    let v = body(&waiter.join().unwrap());
    let msgs = v.get("messages").and_then(Value::as_array).unwrap();
    assert_eq!(msgs.len(), 1, "{v:?}");
    assert_eq!(msgs[0].get("seq").and_then(Value::as_u64), Some(5));
    assert_eq!(msgs[0].get("prev").and_then(Value::as_u64), Some(1));
}

#[test]
fn held_requests_time_out_empty_are_bounded_and_bad_ones_refused() {
    let gw = Gateway::start_with_config(
        "poll_timeout = 300\npoll_max_held = 2\n",
        &["--ingest", "127.0.0.1:0", "--threads", "1"],
    );
    let e = epoch(&gw);
    let started = Instant::now();
    let v = body(&get(&gw, "/poll"));
    assert!(started.elapsed() >= Duration::from_millis(250), "held until the timeout");
    assert_eq!(v.get("messages").and_then(Value::as_array).map(|m| m.len()), Some(0));
    assert_eq!(v.get("next").and_then(Value::as_str), Some(format!("{e}:0").as_str()));
    // Two held at once is the limit: the third gets 503 at once.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let mut s = common::tcp_connect(gw.ws_addr);
            std::io::Write::write_all(&mut s, b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let refused = get(&gw, "/poll");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.head.header("Retry-After"), Some("5"), "like every refusal for load");
    for mut s in held {
        assert_eq!(read_head(&mut s).0.status, 200, "the held ones are answered at their timeout");
    }
    for target in ["/poll?since=nonsense", "/poll?since=1:2:3", "/poll?topics=a%20b", "/poll?topics="] {
        assert_eq!(get(&gw, target).status, 400, "{target}");
    }
    let resp = http_exchange(gw.ws_addr, b"POST /poll HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(resp.status, 405);
}

/// Polling again from `next` under a running feed: every message arrives once and in order (what arrived between
/// two polls comes from the history), never a silent hole; a gap notice would be allowed only past the history.
#[test]
fn consecutive_polls_from_next_miss_nothing_silently() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0", "--threads", "1"]);
    let e = epoch(&gw);
    let addr = gw.ws_addr;
    let poller = std::thread::spawn(move || {
        let (mut seqs, mut gaps) = (Vec::new(), Vec::new());
        let mut since = format!("{e}:0");
        while seqs.last().copied().max(gaps.last().map(|&(_, to)| to)).unwrap_or(0) < 600 {
            let resp = http_exchange(addr, format!("GET /poll?since={since} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
            let v = json::parse(&resp.body_text()).unwrap();
            for m in v.get("messages").and_then(Value::as_array).unwrap() {
                match m.get("wsgate").and_then(Value::as_str) {
                    Some("gap") => {
                        let seq = |k: &str| m.get(k).and_then(|p| p.get("seq")).and_then(Value::as_u64).unwrap();
                        gaps.push((seq("from"), seq("to")));
                    }
                    _ => seqs.push(m.get("seq").and_then(Value::as_u64).unwrap()),
                }
            }
            since = v.get("next").and_then(Value::as_str).unwrap().to_string();
        }
        (seqs, gaps)
    });
    std::thread::sleep(Duration::from_millis(200));
    let mut p = gw.publisher();
    let line = format!("{}\n", "m".repeat(1000));
    for _ in 0..6 {
        common::write_all(&mut p, line.repeat(100).as_bytes());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (seqs, gaps) = poller.join().expect("the poller saw the feed through");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, no duplicate");
    for n in 1..=600u64 {
        let covered = seqs.contains(&n) || gaps.iter().any(|&(from, to)| n > from && n <= to);
        assert!(covered, "message {n} neither delivered nor covered by a gap notice; gaps {gaps:?}");
    }
    assert!(gaps.is_empty(), "the default history covers 600 messages: {gaps:?}");
}

#[test]
fn a_held_poll_is_answered_when_the_gateway_shuts_down() {
    let mut gw = Gateway::start(&["--ingest", "127.0.0.1:0", "--threads", "1"]);
    let mut s = common::tcp_connect(gw.ws_addr);
    std::io::Write::write_all(&mut s, b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    gw.signal(libc::SIGTERM);
    let (head, _) = read_head(&mut s);
    assert_eq!(head.status, 200, "an HTTP answer, not a WebSocket close frame");
    gw.wait_exit(Duration::from_secs(10)).expect("the gateway exits");
}

/// An answer from history stops after 64 KiB of messages; polling on from `next` gets the rest, each message once
/// and in feed order across topics.
#[test]
fn a_long_history_comes_in_bounded_answers() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0", "--threads", "1"]);
    let e = epoch(&gw);
    let mut p = gw.publisher();
    let pad = "x".repeat(1000);
    let lines: String =
        (1..=300).map(|n| format!("{{\"topic\":\"T{}\",\"n\":{n},\"p\":\"{pad}\"}}\n", n % 3)).collect();
    common::write_all(&mut p, lines.as_bytes());
    common::poll_until(Duration::from_secs(5), || gw.health().get("feed_seq").and_then(Value::as_u64) == Some(300));
    let (mut seen, mut answers, mut since) = (Vec::new(), 0, format!("{e}:0"));
    while seen.len() < 300 {
        let v = body(&get(&gw, &format!("/poll?topics=T*&since={since}")));
        let msgs = v.get("messages").and_then(Value::as_array).unwrap();
        assert!(!msgs.is_empty() && msgs.len() < 100, "bounded, never empty while history remains: {}", msgs.len());
        seen.extend(msgs.iter().map(|m| m.get("seq").and_then(Value::as_u64).unwrap()));
        since = v.get("next").and_then(Value::as_str).unwrap().to_string();
        answers += 1;
    }
    assert_eq!(seen, (1..=300).collect::<Vec<u64>>());
    assert!(answers >= 4, "300 KiB in answers of at most 64 KiB: {answers}");
    assert_eq!(since, format!("{e}:300"));
}
