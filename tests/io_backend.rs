//! The I/O backends: `--io auto` falls back to epoll with one log line, `--io uring` refuses to start where
//! io_uring is unavailable, and each backend's own edge cases keep data intact: io_uring's provided receive
//! buffers running out (ENOBUFS), and sends the kernel takes only part of.
//!
//! `WSGATE_IO_FORCE_FALLBACK=REASON` makes the gateway's io_uring probe fail with REASON, so the fallback paths
//! run everywhere. Tests that need a working io_uring print `SKIP: REASON` and pass where there is none.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::json::Value;
use common::{Gateway, IO_TIMEOUT};
use tungstenite::Message;

/// Environment variable that makes the gateway's io_uring probe fail with its value as the reason.
const FORCE_FALLBACK: &str = "WSGATE_IO_FORCE_FALLBACK";
const REASON: &str = "forced-by-test";

/// A `/healthz` counter, or a panic naming it.
fn counter(h: &Value, key: &str) -> u64 {
    h.get(key).and_then(Value::as_u64).unwrap_or_else(|| panic!("/healthz without numeric {key}: {h:?}"))
}

/// Joins worker threads and lists what went wrong: each error they returned, and each that panicked.
fn join_failures(workers: Vec<std::thread::JoinHandle<Result<(), String>>>, what: &str) -> Vec<String> {
    workers
        .into_iter()
        .enumerate()
        .filter_map(|(i, w)| match w.join() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!("{what} {i} panicked")),
        })
        .collect()
}

/// `Ok` where io_uring works; otherwise prints why the calling test is skipped.
fn require_uring(test: &str) -> bool {
    match common::uring_available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIP: {test}: {why}");
            false
        }
    }
}

/// With the probe failing, `--io auto` runs on epoll, says why exactly once, and serves clients normally.
#[test]
fn auto_falls_back_to_epoll_with_one_log_line() {
    let gw = Gateway::start_with_env(
        &[(FORCE_FALLBACK, REASON)],
        &["--io", "auto", "--ingest", "127.0.0.1:0", "--threads", "2"],
    );
    assert_eq!(gw.io, "epoll", "--io auto with a failing io_uring probe must run on epoll");

    let mut ws = gw.ws_connect();
    gw.wait_connections(">= 2 (our client and this /healthz request)", IO_TIMEOUT, |n| n >= 2);
    let mut publisher = gw.publisher();
    common::write_all(&mut publisher, b"{\"after\":\"fallback\"}\n");
    assert_eq!(
        common::ws_read_text(&mut ws),
        "{\"after\":\"fallback\"}",
        "the epoll fallback did not deliver the line"
    );
    assert_eq!(gw.health().get("io").and_then(Value::as_str), Some("epoll"), "/healthz io after the fallback");

    // One line with the reason, however many loop threads there are.
    let stderr = gw.stderr();
    let wanted = format!("io backend: epoll (io_uring unavailable: {REASON}");
    assert_eq!(stderr.matches(&wanted).count(), 1, "expected exactly one {wanted:?} line on stderr:\n{stderr}");
    assert_eq!(stderr.matches(REASON).count(), 1, "the reason {REASON:?} is logged more than once:\n{stderr}");
}

/// `--io uring` where io_uring is unavailable is a start-up error naming the reason, not a silent fallback.
#[test]
fn uring_refuses_to_start_when_unavailable() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["--listen", "127.0.0.1:0", "--threads", "1", "--io", "uring"])
        .env(FORCE_FALLBACK, REASON)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the wsgate binary");
    let limit = Duration::from_secs(5);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait on wsgate") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wsgate --io uring with io_uring unavailable was still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!status.success(), "wsgate --io uring started although io_uring is unavailable; stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("io_uring unavailable: {REASON}")),
        "stderr does not name the reason {REASON:?}:\n{stderr}"
    );
    assert!(!stdout.contains("listening"), "printed a listening line although it refused to start: {stdout:?}");
}

/// Where io_uring works, `--io auto` uses it.
#[test]
fn auto_picks_uring_where_available() {
    if !require_uring("auto_picks_uring_where_available") {
        return;
    }
    let gw = Gateway::start(&["--io", "auto", "--threads", "1"]);
    assert_eq!(gw.io, "uring", "--io auto ran on {} although wsgate --check-io says io_uring is available", gw.io);
    assert_eq!(gw.health().get("io").and_then(Value::as_str), Some("uring"), "/healthz io");
}

/// The bytes of message `msg` of client `client`: a header naming both, then xorshift noise seeded by both, so
/// that a byte from another client, another message or another offset would not match.
fn echo_payload(client: usize, msg: usize, len: usize) -> Vec<u8> {
    let mut out = format!("client {client} message {msg}:").into_bytes();
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ ((client as u64) << 16 | msg as u64);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// io_uring with 4 receive buffers of 64 bytes: 50 clients sending 10 KiB messages at once run the buffer ring
/// dry again and again. Every echo must still come back byte-identical and in order, and `/healthz` must show
/// that receives did hit ENOBUFS (so the test exercised the re-arm path).
#[test]
fn enobufs_rearms_without_losing_bytes() {
    if !require_uring("enobufs_rearms_without_losing_bytes") {
        return;
    }
    const THREADS: usize = 5;
    const CLIENTS_PER_THREAD: usize = 10;
    const MESSAGES: usize = 5;
    const LEN: usize = 10 * 1024;
    let gw = Gateway::start(&[
        "--io",
        "uring",
        "--threads",
        "1",
        "--uring-recv-buffers",
        "4",
        "--uring-recv-buffer-size",
        "64",
        "--echo",
    ]);
    let url = gw.ws_url();
    let barrier = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (url, addr, barrier) = (url.clone(), gw.ws_addr, barrier.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let ids: Vec<usize> = (t * CLIENTS_PER_THREAD..(t + 1) * CLIENTS_PER_THREAD).collect();
                let mut clients: Vec<_> = ids
                    .iter()
                    .map(|id| {
                        let stream = common::tcp_connect(addr);
                        tungstenite::client(url.as_str(), stream)
                            .map(|(ws, _)| ws)
                            .map_err(|e| format!("client {id}: handshake: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
                // All 50 clients start sending at the same moment, interleaved message by message.
                barrier.wait();
                for msg in 0..MESSAGES {
                    for (ws, &id) in clients.iter_mut().zip(&ids) {
                        ws.send(Message::Binary(echo_payload(id, msg, LEN)))
                            .map_err(|e| format!("client {id}: sending message {msg}: {e}"))?;
                    }
                }
                for (ws, &id) in clients.iter_mut().zip(&ids) {
                    for msg in 0..MESSAGES {
                        let got = loop {
                            match ws.read() {
                                Ok(Message::Binary(b)) => break b,
                                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                                Ok(other) => return Err(format!("client {id}: echo {msg}: unexpected {other:?}")),
                                Err(e) => return Err(format!("client {id}: reading echo {msg}: {e}")),
                            }
                        };
                        let want = echo_payload(id, msg, LEN);
                        if got != want {
                            let first = got.iter().zip(&want).position(|(a, b)| a != b);
                            return Err(format!(
                                "client {id}: echo {msg} differs: {} bytes (want {LEN}), first difference at {first:?}, \
                                 starts {:?}",
                                got.len(),
                                String::from_utf8_lossy(&got[..got.len().min(32)])
                            ));
                        }
                    }
                }
                Ok(())
            })
        })
        .collect();
    let failures = join_failures(workers, "client thread");
    assert!(failures.is_empty(), "echo through exhausted receive buffers failed:\n{}", failures.join("\n"));

    let h = gw.health();
    let enobufs = counter(&h, "io_recv_enobufs");
    eprintln!("{} echoes of {LEN} bytes intact; io_recv_enobufs = {enobufs}", THREADS * CLIENTS_PER_THREAD * MESSAGES);
    assert!(enobufs > 0, "no receive hit ENOBUFS, so the re-arm path did not run: {h:?}");
}

/// A stream that hands tungstenite at most 1 KiB per read and sleeps 1 ms first: a slow reader whose small
/// receive window makes the gateway's sends partial.
struct SlowReader(TcpStream);

impl Read for SlowReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(1));
        let n = buf.len().min(1024);
        self.0.read(&mut buf[..n])
    }
}

impl Write for SlowReader {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Line `seq` of the short-send test: `seq=NNNNNN:` then a fill that depends on the sequence number and offset.
fn big_line(seq: usize, len: usize) -> String {
    let mut s = format!("seq={seq:06}:");
    s.extend((s.len()..len).map(|i| (b'a' + ((seq * 7 + i) % 26) as u8) as char));
    s
}

/// A subscriber with a 4 KiB receive buffer that reads slowly: nearly every send to it is partial (or would
/// block), on whichever backend `WSGATE_TEST_IO` selects. Every 16 KiB line must still arrive as one whole,
/// correct text frame, in order.
#[test]
fn short_sends_keep_frames_whole() {
    const LINES: usize = 150;
    const LEN: usize = 16 * 1024;
    // 150 × 16 KiB ≈ 2.4 MB may be queued for the slow reader: far below this limit, so it is never closed as a
    // slow consumer.
    let gw = Gateway::start_with_config("max_lag_bytes = 67108864\n", &["--ingest", "127.0.0.1:0", "--threads", "1"]);

    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect_timeout(&gw.ws_addr.into(), IO_TIMEOUT).unwrap_or_else(|e| panic!("connect to {}: {e}", gw.ws_addr));
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let (mut ws, _) = tungstenite::client(gw.ws_url(), SlowReader(stream))
        .unwrap_or_else(|e| panic!("WebSocket handshake with {} failed: {e}", gw.ws_url()));
    gw.wait_connections(">= 2 (our client and this /healthz request)", IO_TIMEOUT, |n| n >= 2);

    let mut publisher = gw.publisher();
    let feeder = std::thread::spawn(move || {
        for seq in 0..LINES {
            let mut line = big_line(seq, LEN);
            line.push('\n');
            common::write_all(&mut publisher, line.as_bytes());
        }
        publisher
    });

    let start = Instant::now();
    for seq in 0..LINES {
        let got = match ws.read() {
            Ok(Message::Text(t)) => t,
            Ok(other) => panic!("line {seq}: expected a text message, got {other:?}"),
            Err(e) => panic!("line {seq}: read failed after {:?}: {e}", start.elapsed()),
        };
        if got != big_line(seq, LEN) {
            let want = big_line(seq, LEN);
            let first = got.bytes().zip(want.bytes()).position(|(a, b)| a != b);
            panic!(
                "line {seq} arrived wrong: {} bytes (want {LEN}), starts {:?}, first difference at {first:?}",
                got.len(),
                &got[..got.len().min(16)]
            );
        }
    }
    let publisher = feeder.join().expect("publisher thread");
    let h = gw.health();
    eprintln!(
        "{LINES} lines of {LEN} bytes read slowly in {:?} (io: {}, io_sends_deferred = {})",
        start.elapsed(),
        gw.io,
        counter(&h, "io_sends_deferred")
    );
    assert_eq!(counter(&h, "slow_consumers"), 0, "the slow reader was closed as a slow consumer: {h:?}");
    drop(publisher);
}

/// io_uring with a single send slot, taken over and over by `/healthz` responses (private bytes, no broadcast
/// cursor) while lines are published: subscribers whose multi-slice sends find no free slot are deferred again
/// and again. A deferred subscriber stands behind the fan-out position, so it must still hold the broadcast log
/// back: every subscriber must receive every line, in order, and stay connected.
#[test]
fn deferred_sends_keep_their_frames() {
    if !require_uring("deferred_sends_keep_their_frames") {
        return;
    }
    const SUBSCRIBERS: usize = 20;
    const HEALTH_THREADS: usize = 4;
    const LINES: usize = 2000;
    let gw = Gateway::start_with_config(
        "uring_send_slots = 1\n",
        &["--io", "uring", "--ingest", "127.0.0.1:0", "--threads", "1"],
    );
    let line = |seq: usize| format!("{{\"seq\":{seq},\"pad\":\"{}\"}}", "x".repeat(100));

    let readers: Vec<_> = (0..SUBSCRIBERS)
        .map(|id| {
            let (url, addr) = (gw.ws_url(), gw.ws_addr);
            let stream = common::tcp_connect(addr);
            let (mut ws, _) = tungstenite::client(url.as_str(), stream)
                .unwrap_or_else(|e| panic!("subscriber {id}: handshake with {url}: {e}"));
            std::thread::spawn(move || -> Result<(), String> {
                for seq in 0..LINES {
                    match ws.read() {
                        Ok(Message::Text(t)) if t == line(seq) => {}
                        Ok(other) => return Err(format!("subscriber {id}: line {seq}: got {other:?}")),
                        Err(e) => return Err(format!("subscriber {id}: line {seq}: {e}")),
                    }
                }
                Ok(())
            })
        })
        .collect();
    gw.wait_connections(">= subscribers", IO_TIMEOUT, |n| n >= SUBSCRIBERS as u64);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let health: Vec<_> = (0..HEALTH_THREADS)
        .map(|_| {
            let (addr, stop) = (gw.ws_addr, stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut s = common::tcp_connect(addr);
                    common::write_all(&mut s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
                    let _ = s.read_to_end(&mut Vec::new());
                }
            })
        })
        .collect();

    let mut publisher = gw.publisher();
    for seq in 0..LINES {
        common::write_all(&mut publisher, format!("{}\n", line(seq)).as_bytes());
        // Bursts of a few lines, so that subscribers have several chunks (slices) pending at once.
        if seq % 3 == 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let failures = join_failures(readers, "subscriber");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in health {
        h.join().expect("health thread");
    }
    let h = gw.health();
    eprintln!("{SUBSCRIBERS} subscribers × {LINES} lines; io_sends_deferred = {}", counter(&h, "io_sends_deferred"));
    assert!(failures.is_empty(), "subscribers lost lines behind deferred sends:\n{}", failures.join("\n"));
    assert!(counter(&h, "io_sends_deferred") > 0, "no send was deferred, so the test did not exercise the path: {h:?}");
}
