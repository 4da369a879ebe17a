//! Integration tests: the real `wsgate` binary, fed by an in-test publisher, measured by the real
//! `wsgate-loadgen` binary over loopback.
//!
//! The gateway and the loadgen runs: `common/`.

#[path = "../src/msg.rs"]
#[allow(dead_code)]
mod msg;

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{run_loadgen, u, Gateway, LOADGEN};

/// Publishes `msg` lines at `rate` per second (open loop: each stamped with its scheduled time) until dropped.
struct Publisher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Publisher {
    fn start(addr: &str, rate: u64) -> Publisher {
        let mut stream = TcpStream::connect(addr).expect("connect to ingest");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let t0 = msg::monotonic_ns();
            let interval = 1_000_000_000 / rate;
            let mut seq = 0u64;
            let mut buf = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let now = msg::monotonic_ns();
                buf.clear();
                while t0 + seq * interval <= now {
                    msg::write_message(&mut buf, seq, t0 + seq * interval, None, 128);
                    seq += 1;
                }
                stream.write_all(&buf).expect("publish");
                std::thread::sleep(Duration::from_millis(1));
            }
            seq
        });
        Publisher { stop, thread: Some(thread) }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().expect("running").join().expect("publisher thread")
    }
}

#[test]
fn subscribe_accounts_for_every_message() {
    const CONNECTIONS: u64 = 500;
    const RATE: u64 = 50;
    const DURATION_S: f64 = 2.0;
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0"]);
    let publisher = Publisher::start(gw.ingest.as_deref().expect("ingest address"), RATE);
    let pid = gw.child.id().to_string();
    let (report, hgrm) = run_loadgen(&[
        "subscribe",
        "--url",
        &gw.ws_url,
        "--connections",
        &CONNECTIONS.to_string(),
        "--procs",
        "2",
        "--warmup",
        "0.5",
        "--duration",
        &DURATION_S.to_string(),
        "--grace",
        "1",
        "--server-pid",
        &pid,
    ]);
    let published = publisher.stop();
    assert!(published > 0);

    for key in [
        "connections_ok",
        "connections_failed",
        "handshakes_per_s",
        "messages_received",
        "messages_expected",
        "messages_lost",
        "latency_us",
        "server_cpu_ns_per_msg",
        "server_rss_bytes_per_conn",
        "server_cpu_us_per_conn_opened",
        "connect_server_cpu_cores",
        "connect_loadgen_cpu_cores",
        "loadgen_cpu_ns_per_msg",
        "duration_s",
        "messages_per_s",
        "gaps",
        "duplicates",
        "reorders",
    ] {
        assert!(report.get(key).is_some(), "{key} missing from {report:#}");
    }
    for key in ["p50", "p90", "p99", "p999", "p9999", "max"] {
        assert!(report["latency_us"][key].as_f64().is_some(), "latency_us.{key} missing");
    }
    assert_eq!(u(&report, "connections_ok"), CONNECTIONS);
    assert_eq!(u(&report, "connections_failed"), 0);
    assert_eq!(u(&report, "messages_lost"), 0, "{report:#}");
    assert_eq!(u(&report, "messages_received"), u(&report, "messages_expected"));
    assert_eq!((u(&report, "gaps"), u(&report, "duplicates"), u(&report, "reorders")), (0, 0, 0));
    // Every connection saw every message of the window: each got RATE × DURATION messages, give or take one at
    // each edge of the window (a connection's first message in the window depends on when its copy arrived).
    let per_window = (RATE as f64 * DURATION_S) as u64;
    let expected = u(&report, "messages_expected");
    assert!(
        expected >= CONNECTIONS * (per_window - 2) && expected <= CONNECTIONS * (per_window + 2),
        "expected {expected}, want about {}",
        CONNECTIONS * per_window
    );
    // Latency samples: every accounted message, except late ones above their own process's window maximum.
    let samples = report["latency_us"]["count"].as_u64().unwrap();
    let received = u(&report, "messages_received");
    assert!(samples <= received && samples + CONNECTIONS >= received, "{samples} samples, {received} received");
    assert!(report["server_cpu_ns_per_msg"].as_f64().unwrap() > 0.0);
    // The opening: 500 connections cost the gateway well under a second of CPU (10 ms ticks: it may read 0),
    // and the loadgen's workers spent some CPU starting and connecting.
    let opened_us = report["server_cpu_us_per_conn_opened"].as_f64().unwrap();
    assert!((0.0..2000.0).contains(&opened_us), "{opened_us} µs per connection opened");
    assert!(report["connect_loadgen_cpu_cores"].as_f64().unwrap() > 0.0, "{report:#}");
    assert!(report["latency_us"]["p50"].as_f64().unwrap() > 0.0);
    assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"), "{hgrm}");
    assert!(hgrm.contains("#[Mean    ="), "{hgrm}");
    assert!(hgrm.contains(&format!("Total count    = {samples:>12}]")), "{hgrm}");
}

#[test]
fn echo_round_trips_are_all_answered() {
    let gw = Gateway::start(&["--echo"]);
    let (report, _) = run_loadgen(&[
        "echo",
        "--url",
        &gw.ws_url,
        "--connections",
        "100",
        "--rate",
        "20",
        "--size",
        "200",
        "--warmup",
        "0.3",
        "--duration",
        "1",
    ]);
    assert_eq!(u(&report, "connections_ok"), 100);
    // Sends are scheduled on a fixed grid: exactly rate × duration per connection fall in the window.
    assert_eq!(u(&report, "messages_expected"), 100 * 20);
    assert_eq!(u(&report, "messages_received"), 100 * 20, "{report:#}");
    assert_eq!(u(&report, "messages_lost"), 0);
    assert_eq!(u(&report, "sends_dropped"), 0);
}

#[test]
fn refused_connections_are_counted_with_their_reason() {
    // A port nobody listens on: take one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (report, _) =
        run_loadgen(&["subscribe", "--url", &url, "--connections", "20", "--warmup", "0", "--duration", "0.2"]);
    assert_eq!(u(&report, "connections_ok"), 0);
    assert_eq!(u(&report, "connections_failed"), 20);
    assert_eq!(report["failure_reasons"]["refused"].as_u64(), Some(20), "{report:#}");
}

#[test]
fn refuses_a_worker_share_above_the_open_files_limit() {
    // `ulimit -n` in sh lowers both limits, so the child cannot raise them back.
    let out = Command::new("sh")
        .args(["-c", "ulimit -n 500 && exec \"$0\" \"$@\"", LOADGEN])
        .args(["subscribe", "--url", "ws://127.0.0.1:9/ws", "--connections", "1000", "--procs", "1"])
        .output()
        .expect("run sh");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("open-files hard limit is 500") && stderr.contains("--procs"), "{stderr}");
}
