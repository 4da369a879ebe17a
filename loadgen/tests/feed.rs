//! `wsgate-loadgen feed`, driven as a binary: pacing, exact sizes, sequence numbers, scheduled stamps, topics,
//! `--connect`, several gateways, and the bounded backlog of a gateway that does not read.

#[allow(dead_code)]
#[path = "../src/msg.rs"]
mod msg;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_wsgate-loadgen");

/// A message as received: its bytes (newline included) and when the read that completed it returned.
struct Received {
    line: Vec<u8>,
    at_ns: u64,
}

struct Feed {
    child: Child,
    addr: String,
}

impl Drop for Feed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `feed --listen 127.0.0.1:0 ARGS…` and reads the address it prints.
fn listen(args: &[&str]) -> Feed {
    let mut child = Command::new(BIN)
        .args(["feed", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn wsgate-loadgen");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let addr = first.trim().strip_prefix("feed: listening on ").unwrap_or_else(|| panic!("got {first:?}")).to_string();
    Feed { child, addr }
}

/// Reads until EOF, splitting lines and timestamping each with the time its last byte arrived.
fn read_all(stream: &mut TcpStream) -> Vec<Received> {
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = Vec::new();
    let mut partial = Vec::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = stream.read(&mut buf).expect("read");
        let at_ns = msg::monotonic_ns();
        if n == 0 {
            assert!(partial.is_empty(), "stream ended inside a line");
            return out;
        }
        for &b in &buf[..n] {
            partial.push(b);
            if b == b'\n' {
                out.push(Received { line: std::mem::take(&mut partial), at_ns });
            }
        }
    }
}

fn parse(r: &Received) -> msg::Parsed<'_> {
    msg::parse_message(&r.line[..r.line.len() - 1])
        .unwrap_or_else(|| panic!("unparsable line {:?}", String::from_utf8_lossy(&r.line)))
}

/// Checks a 1000 msg/s, 128-byte, 2-second run without topics.
fn check_plain_run(lines: &[Received]) {
    assert!((1900..=2100).contains(&lines.len()), "{} messages, expected ~2000", lines.len());
    let t0 = parse(&lines[0]).scheduled_ns;
    for (n, r) in lines.iter().enumerate() {
        assert_eq!(r.line.len(), 128, "message {n} size");
        let p = parse(r);
        assert_eq!(p.seq, n as u64, "sequence numbers contiguous from 0");
        assert_eq!(p.topic, None);
        assert_eq!(p.scheduled_ns, t0 + n as u64 * 1_000_000, "message {n} scheduled exactly 1 ms apart");
        assert!(r.at_ns >= p.scheduled_ns, "message {n} arrived {} ns before its time", p.scheduled_ns - r.at_ns);
    }
}

#[test]
fn listen_paces_1000_per_second_on_schedule() {
    let json = temp_path("feed-1000.json");
    let feed = listen(&["--rate", "1000", "--size", "128", "--duration", "2", "--json", json.to_str().unwrap()]);
    let mut s = TcpStream::connect(&feed.addr).unwrap();
    let lines = read_all(&mut s);
    check_plain_run(&lines);
    let mut feed = feed;
    assert!(feed.child.wait().unwrap().success());
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(json);
    // Messages 1 ms apart with a 1 ms tick: the sender wakes at each due time, so its typical lag is the timer's
    // wake-up latency (tens of µs), far below a tick (a spurious early wake-up used to skip a tick).
    let lag_p50 = summary["lag_p50_ms"].as_f64().unwrap();
    assert!(lag_p50 < 0.5, "feed lag p50 {lag_p50} ms: {summary}");
    // Paced, not bursty: the stream took the run's length to arrive, and no 100 ms stretch came all at once.
    let span = lines.last().unwrap().at_ns - lines[0].at_ns;
    assert!(span > 1_800_000_000, "2000 messages arrived in {} ms", span / 1_000_000);
    let late: Vec<u64> = lines.iter().map(|r| r.at_ns - parse(r).scheduled_ns).collect();
    let median = {
        let mut l = late.clone();
        l.sort_unstable();
        l[l.len() / 2]
    };
    assert!(median < 50_000_000, "median arrival {} ms after schedule", median / 1_000_000);
}

#[test]
fn topics_have_their_own_contiguous_sequences() {
    let feed = listen(&["--rate", "1000", "--size", "128", "--duration", "1", "--topics", "3"]);
    let mut s = TcpStream::connect(&feed.addr).unwrap();
    let lines = read_all(&mut s);
    assert!((950..=1050).contains(&lines.len()), "{} messages", lines.len());
    let mut next: HashMap<Vec<u8>, u64> = HashMap::new();
    let t0 = parse(&lines[0]).scheduled_ns;
    for (n, r) in lines.iter().enumerate() {
        assert_eq!(r.line.len(), 128);
        let p = parse(r);
        let topic = p.topic.expect("every message has a topic").to_vec();
        assert_eq!(topic, format!("T000{}", n % 3).into_bytes(), "round-robin over T0000..T0002");
        let expected = next.entry(topic).or_insert(0);
        assert_eq!(p.seq, *expected, "message {n}: per-topic sequence");
        *expected += 1;
        assert_eq!(p.scheduled_ns, t0 + n as u64 * 1_000_000);
    }
    assert_eq!(next.len(), 3);
}

#[test]
fn connect_mode_pushes_into_a_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut child = Command::new(BIN)
        .args(["feed", "--connect", &addr, "--rate", "1000", "--size", "128", "--duration", "2"])
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (mut s, _) = listener.accept().unwrap();
    let lines = read_all(&mut s);
    assert!(child.wait().unwrap().success());
    check_plain_run(&lines);
}

#[test]
fn connect_mode_waits_for_the_gateway() {
    // Reserve a port, start the feed against it while nothing listens, then listen there.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .args(["feed", "--connect", &addr, "--rate", "200", "--size", "100", "--duration", "0.5"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let listener = TcpListener::bind(&addr).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    let lines = read_all(&mut s);
    assert!(child.wait().unwrap().success());
    assert_eq!(lines.len(), 100, "the schedule starts on connect: nothing lost before");
    assert_eq!(parse(&lines[0]).seq, 0);
}

#[test]
fn every_gateway_gets_every_message_and_may_come_and_go() {
    let json = temp_path("feed-multi.json");
    let feed = listen(&["--rate", "1000", "--size", "96", "--duration", "1.5", "--json", json.to_str().unwrap()]);
    let mut a = TcpStream::connect(&feed.addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut b = TcpStream::connect(&feed.addr).unwrap();
    // A third gateway connects and leaves at once: the others must not notice.
    drop(TcpStream::connect(&feed.addr).unwrap());
    let (la, lb) = std::thread::scope(|s| {
        let ha = s.spawn(|| read_all(&mut a));
        let hb = s.spawn(|| read_all(&mut b));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    assert_eq!(la.len(), 1500);
    assert!((1000..1400).contains(&lb.len()), "late joiner got {}", lb.len());
    let first_b = parse(&lb[0]).seq;
    for (i, r) in lb.iter().enumerate() {
        assert_eq!(parse(r).seq, first_b + i as u64, "the late joiner's stream is contiguous");
        assert_eq!(r.line, la[(first_b + i as u64) as usize].line, "same bytes to every gateway");
    }
    let mut feed = feed;
    assert!(feed.child.wait().unwrap().success());
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(summary["messages_sent"], 1500);
    assert_eq!(summary["gateways_connected"], 3);
    assert_eq!(summary["dropped"], 0);
    let _ = std::fs::remove_file(json);
}

#[test]
fn a_gateway_that_does_not_read_gets_a_bounded_backlog_then_counted_drops() {
    let json = temp_path("feed-slow.json");
    let feed = listen(&[
        "--rate",
        "100000",
        "--size",
        "128",
        "--duration",
        "1.5",
        "--buffer-mib",
        "1",
        "--drain",
        "10s",
        "--json",
        json.to_str().unwrap(),
    ]);
    let mut s = TcpStream::connect(&feed.addr).unwrap();
    // 12.8 MB/s for 1.5 s: far more than the socket buffers plus 1 MiB of backlog.
    std::thread::sleep(Duration::from_millis(1800));
    let lines = read_all(&mut s);
    let mut feed = feed;
    assert!(feed.child.wait().unwrap().success());
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let dropped = summary["dropped"].as_u64().unwrap();
    assert_eq!(summary["messages_sent"], 150_000);
    assert!(dropped > 0, "nothing dropped: {summary}");
    assert!(summary["max_backlog_bytes"].as_u64().unwrap() <= (1 << 20) + 128);
    assert!(summary["behind_ms"].as_f64().unwrap() > 100.0, "{summary}");
    // Every line is whole, sequence numbers only ever jump forward, and the gaps are exactly the drops.
    let mut expected = 0;
    let mut gaps = 0;
    for r in &lines {
        assert_eq!(r.line.len(), 128);
        let seq = parse(r).seq;
        assert!(seq >= expected, "reordered: {seq} after {expected}");
        gaps += seq - expected;
        expected = seq + 1;
    }
    gaps += 150_000 - expected; // the tail may have been dropped too
    assert_eq!(gaps, dropped);
    assert_eq!(lines.len() as u64 + dropped, 150_000);
    let _ = std::fs::remove_file(json);
}

#[test]
fn bad_arguments_are_refused_clearly() {
    for (args, needle) in [
        (vec!["--rate", "0", "--size", "128"], "--rate"),
        (vec!["--rate", "-5", "--size", "128"], "--rate"),
        (vec!["--rate", "10", "--size", "10"], "--size 10 is too small"),
        (vec!["--rate", "10", "--size", "70", "--topics", "1000"], "topics"),
        (vec!["--rate", "10", "--size", "128", "--duration", "soon"], "duration"),
    ] {
        let out = Command::new(BIN).args(["feed", "--listen", "127.0.0.1:0"]).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = Command::new(BIN).args(["feed", "--rate", "10", "--size", "128"]).output().unwrap();
    assert!(!out.status.success(), "neither --listen nor --connect");
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}-{name}", std::process::id()))
}
