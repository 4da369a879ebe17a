//! Integration tests: the real `wsgate` binary, fed by an in-test publisher, measured by the real
//! `wsgate-loadgen` binary over loopback.
//!
//! Finding `wsgate`: `CARGO_BIN_EXE_*` only names binaries of this package, so the test asks cargo to build
//! `wsgate` into the same target directory and profile as `wsgate-loadgen` (`$CARGO build -p wsgate --bin
//! wsgate`, a no-op when fresh; cargo holds no build lock while tests run) and runs it from beside the
//! loadgen binary. If that build fails (no cargo at hand), an existing binary there is used.

#[path = "../src/msg.rs"]
#[allow(dead_code)]
mod msg;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const LOADGEN: &str = env!("CARGO_BIN_EXE_wsgate-loadgen");

fn wsgate_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let profile_dir = Path::new(LOADGEN).parent().expect("binary has a directory");
        let target_dir = profile_dir.parent().expect("profile directory has a parent");
        let bin = profile_dir.join("wsgate");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_string(),
            Some(other) => other.to_string(),
            None => "dev".to_string(),
        };
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "wsgate", "--bin", "wsgate", "--profile", &profile])
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => eprintln!("cargo build -p wsgate failed ({other:?}); using {} if it exists", bin.display()),
        }
        assert!(bin.exists(), "no wsgate binary at {}", bin.display());
        bin
    })
}

struct Gateway {
    child: Child,
    ws_url: String,
    ingest: Option<String>,
}

impl Gateway {
    fn start(extra: &[&str]) -> Gateway {
        let mut child = Command::new(wsgate_binary())
            .args(["--listen", "127.0.0.1:0", "--threads", "1", "--log-level", "warn"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start wsgate");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let want_ingest = extra.contains(&"--ingest");
        let (mut ws_url, mut ingest) = (None, None);
        while ws_url.is_none() || (want_ingest && ingest.is_none()) {
            let line = lines.next().expect("wsgate printed its addresses").expect("utf-8 line");
            if let Some(url) = line.strip_prefix("wsgate: listening on ").and_then(|rest| rest.split(' ').next()) {
                ws_url = Some(url.trim().to_string());
            } else if let Some(addr) = line.strip_prefix("wsgate: ingest listening on ") {
                ingest = Some(addr.trim().to_string());
            }
        }
        Gateway { child, ws_url: ws_url.expect("set"), ingest }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("wsgate-loadgen-test-{}-{name}", std::process::id()))
}

fn run_loadgen(args: &[&str]) -> (serde_json::Value, String) {
    let json = temp_path(&format!("{}.json", args[0]));
    let hgrm = temp_path(&format!("{}.hgrm", args[0]));
    let out = Command::new(LOADGEN)
        .args(args)
        .args(["--quiet", "--json", json.to_str().unwrap(), "--hgrm", hgrm.to_str().unwrap()])
        .output()
        .expect("run wsgate-loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "loadgen failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("json written")).unwrap();
    let hgrm_text = std::fs::read_to_string(&hgrm).expect("hgrm written");
    let _ = std::fs::remove_file(json);
    let _ = std::fs::remove_file(hgrm);
    eprintln!("{stdout}");
    (report, hgrm_text)
}

fn u(report: &serde_json::Value, key: &str) -> u64 {
    report[key].as_u64().unwrap_or_else(|| panic!("{key} missing or not an integer in {report:#}"))
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
