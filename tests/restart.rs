//! Graceful shutdown and zero-downtime restart, on the real binary:
//! - a handoff (`handoff_socket`) from a running process to a new one while a client connects every few
//!   milliseconds: no connection is refused or reset, old clients get 1012 spread over `shutdown_spread`, the
//!   old process exits 0, and a client resuming from an old position gets an honest `gap` (reason `epoch`);
//! - SIGTERM: 1001 closes spread over the window (not all at once), event streams get `retry:` and end, held
//!   long-polls are answered, exit within the deadline; SIGUSR1: the same with 1012;
//! - systemd socket activation: the passed socket is served, nothing is bound.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{json, Gateway, IO_TIMEOUT};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

/// A close as a client saw it: when, code, reason, and whether a `closing` notice came first.
#[derive(Debug, Clone)]
struct SeenClose {
    at: Instant,
    code: u16,
    reason: String,
    notice: Option<json::Value>,
}

/// A client on `path` (with a subprotocol); the error says which step failed.
fn ws_client(addr: SocketAddr, path: &str, protocol: Option<&str>) -> Result<WebSocket<TcpStream>, String> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut().insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    tungstenite::client(req, stream).map(|(ws, _)| ws).map_err(|e| format!("upgrade: {e}"))
}

/// Threads each reading one client until its close.
type Closing = Vec<std::thread::JoinHandle<Result<SeenClose, String>>>;

/// Reads until the server's close; returns it (with a `closing` notice if one came), or why not.
fn read_until_close(ws: &mut WebSocket<TcpStream>) -> Result<SeenClose, String> {
    let mut notice = None;
    loop {
        match ws.read() {
            Ok(Message::Text(t)) if t.starts_with("{\"wsgate\":\"closing\"") => {
                notice = Some(json::parse(&t).map_err(|e| format!("bad notice {t:?}: {e}"))?);
            }
            Ok(Message::Close(Some(cf))) => {
                let seen =
                    SeenClose { at: Instant::now(), code: cf.code.into(), reason: cf.reason.to_string(), notice };
                // Answer it (tungstenite queued the reply; reading on sends it and sees the end).
                while ws.read().is_ok() {}
                return Ok(seen);
            }
            Ok(Message::Close(None)) => return Err("close without a code".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read failed before the close: {e}")),
        }
    }
}

/// The suggested delay in `"…: retry after N ms"`.
fn retry_hint(reason: &str) -> Option<u64> {
    reason.split_once(": retry after ")?.1.strip_suffix(" ms")?.parse().ok()
}

/// Checks closes seen by many clients: all `code`, with a hint within the window, spread over it.
fn check_spread(closes: &[SeenClose], code: u16, prefix: &str, window: Duration) {
    for c in closes {
        assert_eq!(c.code, code, "{c:?}");
        assert!(c.reason.starts_with(prefix), "{c:?}");
        let hint = retry_hint(&c.reason).unwrap_or_else(|| panic!("no retry hint in {:?}", c.reason));
        assert!(hint <= window.as_millis() as u64, "{c:?}");
    }
    let first = closes.iter().map(|c| c.at).min().unwrap();
    let last = closes.iter().map(|c| c.at).max().unwrap();
    let span = last - first;
    assert!(span >= window / 2, "closes not spread over the {window:?} window: all within {span:?}");
    assert!(span <= window + Duration::from_millis(700), "closes took {span:?}, beyond the {window:?} window");
    // Not in one burst: no 100 ms holds more than half of them.
    let busiest = closes
        .iter()
        .map(|a| closes.iter().filter(|b| b.at >= a.at && b.at - a.at < Duration::from_millis(100)).count())
        .max()
        .unwrap();
    assert!(busiest <= closes.len() / 2, "{busiest} of {} closes came within 100 ms", closes.len());
}

/// `n` clients on `path`, each on its own thread reading until its close.
fn clients_awaiting_close(
    addr: SocketAddr,
    path: &str,
    protocol: Option<&str>,
    n: usize,
) -> (Closing, Vec<Option<(u64, u64)>>) {
    let mut handles = Vec::new();
    let mut positions = Vec::new();
    for _ in 0..n {
        let mut ws = ws_client(addr, path, protocol).expect("connect a client");
        // With a feed, each reads one message first (JSON: its position).
        let mut position = None;
        if protocol == Some("wsgate.v1.json") {
            let text = common::ws_read_text(&mut ws);
            let v = json::parse(&text).unwrap();
            position = Some((v.get("epoch").unwrap().as_u64().unwrap(), v.get("seq").unwrap().as_u64().unwrap()));
        }
        positions.push(position);
        ws.get_ref().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        handles.push(std::thread::spawn(move || read_until_close(&mut ws)));
    }
    (handles, positions)
}

/// One short-lived client: connect, upgrade, receive a message, close. Any failure is a failed connection.
fn churn_once(addr: SocketAddr) -> Result<(), String> {
    let mut ws = ws_client(addr, "/ws", None)?;
    match ws.read() {
        Ok(Message::Text(_) | Message::Binary(_)) => {}
        other => return Err(format!("first message: {other:?}")),
    }
    let _ = ws.close(None);
    let _ = ws.flush();
    Ok(())
}

/// `n` clients at once (connected back to back, so that some wait in the accept queue), then each upgraded and
/// given its first message.
fn churn_batch(addr: SocketAddr, n: usize) -> Vec<Result<(), String>> {
    let streams: Vec<_> = (0..n).map(|_| TcpStream::connect_timeout(&addr, IO_TIMEOUT)).collect();
    streams
        .into_iter()
        .map(|s| {
            let s = s.map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let (mut ws, _) = tungstenite::client(format!("ws://{addr}/ws"), s).map_err(|e| format!("upgrade: {e}"))?;
            match ws.read() {
                Ok(Message::Text(_) | Message::Binary(_)) => {}
                other => return Err(format!("first message: {other:?}")),
            }
            let _ = ws.close(None);
            let _ = ws.flush();
            Ok(())
        })
        .collect()
}

#[test]
fn handoff_loses_no_connection_and_drains_the_old_process_with_1012() {
    handoff(&[], &["--threads", "3"]);
}

/// A successor on the other I/O backend: the listeners' blocking mode (shared by both processes) flips at the
/// switch, and neither process may hang or lose a connection over it.
#[test]
fn handoff_between_io_backends() {
    if let Err(why) = common::uring_available() {
        eprintln!("skipped: {why}");
        return;
    }
    handoff(&["--io", "epoll"], &["--io", "uring"]);
    handoff(&["--io", "uring"], &["--io", "epoll", "--threads", "1"]);
}

/// Runs the switch: `old_args` for the running process, `new_args` for its successor.
fn handoff(old_args: &[&str], new_args: &[&str]) {
    let path = common::unique_temp_path("handoff.sock");
    let spread = Duration::from_millis(1000);
    let toml = format!(
        "handoff_socket = {:?}\nshutdown_spread = {}\nshutdown_timeout = 4000\ndemo = true\ndemo_rate = 1000\n",
        path.to_str().unwrap(),
        spread.as_millis()
    );
    let mut old = Gateway::start_with_config(&toml, old_args);
    let addr = old.ws_addr;

    // Long-lived clients of the old process: JSON ones (they get a notice), raw ones.
    let (json_clients, positions) = clients_awaiting_close(addr, "/ws", Some("wsgate.v1.json"), 10);
    let (raw_clients, _) = clients_awaiting_close(addr, "/ws", None, 10);

    // New clients every ~2 ms from two threads, all through the switch.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    // Two threads connect one client at a time, one a burst of 8 at once (some of them wait in an accept queue).
    let churners: Vec<_> = [1, 1, 8]
        .into_iter()
        .map(|burst| {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let results = if burst == 1 { vec![churn_once(addr)] } else { churn_batch(addr, burst) };
                    for r in results {
                        match r {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                failures.lock().unwrap().push(e);
                                0
                            }
                        };
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = ok.load(Ordering::Relaxed);

    // The successor (with more loop threads than sockets, it binds more on the same address; with fewer, it
    // runs one per socket).
    let new = Gateway::start_with_config(&toml, new_args);
    assert_eq!(new.ws_addr, addr, "the successor serves the handed-over sockets");
    let t_new = Instant::now();

    let mut closes = Vec::new();
    for (i, h) in json_clients.into_iter().enumerate() {
        let c = h.join().unwrap().unwrap_or_else(|e| panic!("JSON client {i}: {e}"));
        let notice = c.notice.as_ref().unwrap_or_else(|| panic!("JSON client {i}: no closing notice: {c:?}"));
        assert_eq!(notice.get("code").and_then(json::Value::as_u64), Some(1012), "{notice:?}");
        assert_eq!(notice.get("retry_after_ms").and_then(json::Value::as_u64), retry_hint(&c.reason), "{c:?}");
        closes.push(c);
    }
    for (i, h) in raw_clients.into_iter().enumerate() {
        let c = h.join().unwrap().unwrap_or_else(|e| panic!("raw client {i}: {e}"));
        assert!(c.notice.is_none(), "raw clients get no notice frame: {c:?}");
        closes.push(c);
    }
    check_spread(&closes, 1012, "server restarting: retry after ", spread);

    let status = old.wait_exit(Duration::from_secs(6)).expect("the old process exits after its drain");
    assert!(status.success(), "old process exit status: {status:?}");
    eprintln!("old process exited {:?} after the successor started", t_new.elapsed());

    // Keep connecting a while after the old process is gone, then stop.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for c in churners {
        c.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    let total = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} connections failed across the switch: {:?}",
        failures.len(),
        total,
        &failures[..failures.len().min(5)]
    );
    assert!(total > before + 100, "too few connections during the switch: {before} before, {total} in all");
    eprintln!("{total} connections, none failed ({before} before the successor started)");

    // A client resuming from a position of the old process: the epoch changed, so an honest gap.
    let (epoch, seq) = positions[0].unwrap();
    let mut ws = ws_client(addr, &format!("/ws?topics=*&since={epoch}:{seq}"), Some("wsgate.v1.json")).unwrap();
    let mut gap = None;
    for _ in 0..50 {
        let text = common::ws_read_text(&mut ws);
        if text.starts_with("{\"wsgate\":\"gap\"") {
            gap = Some(json::parse(&text).unwrap());
            break;
        }
    }
    let gap = gap.expect("a resume across the restart gets a gap notice");
    assert_eq!(gap.get("reason").and_then(json::Value::as_str), Some("epoch"), "{gap:?}");
    let from = gap.get("from").unwrap();
    assert_eq!(from.get("epoch").and_then(json::Value::as_u64), Some(epoch), "{gap:?}");
    assert_eq!(from.get("seq").and_then(json::Value::as_u64), Some(seq), "{gap:?}");
    drop(ws);
    drop(new);
    assert!(!path.exists(), "the last process removes its handoff socket when it stops without a successor");
}

#[test]
fn sigterm_spreads_1001_over_the_window_ends_streams_answers_polls_and_exits_in_time() {
    let spread = Duration::from_millis(1000);
    let mut gw = Gateway::start_with_config("shutdown_spread = 1000\nshutdown_timeout = 3000\n", &[]);
    let (clients, _) = clients_awaiting_close(gw.ws_addr, "/ws", None, 20);

    // An event stream and a held long-poll (no feed: the poll waits).
    let mut sse = common::tcp_connect(gw.ws_addr);
    sse.write_all(format!("GET /sse HTTP/1.1\r\nHost: {}\r\n\r\n", gw.ws_addr).as_bytes()).unwrap();
    let mut poll = common::tcp_connect(gw.ws_addr);
    poll.write_all(format!("GET /poll HTTP/1.1\r\nHost: {}\r\n\r\n", gw.ws_addr).as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let readers: Vec<_> = [sse, poll]
        .into_iter()
        .map(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
            std::thread::spawn(move || {
                let mut all = Vec::new();
                let r = s.read_to_end(&mut all);
                (r.map_err(|e| e.to_string()), String::from_utf8_lossy(&all).into_owned())
            })
        })
        .collect();

    let t0 = Instant::now();
    gw.signal(libc::SIGTERM);
    let closes: Vec<SeenClose> = clients.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
    check_spread(&closes, 1001, "server shutting down: retry after ", spread);

    let mut readers = readers.into_iter();
    let (r, text) = readers.next().unwrap().join().unwrap();
    assert!(r.is_ok(), "event stream did not end cleanly: {r:?} {text:?}");
    let retries: Vec<&str> = text.lines().filter(|l| l.starts_with("retry: ")).collect();
    assert_eq!(retries.len(), 2, "the stream's first retry: and the drain's: {text:?}");
    let hint: u64 = retries[1]["retry: ".len()..].parse().unwrap();
    assert!(hint <= spread.as_millis() as u64, "{text:?}");
    let (r, text) = readers.next().unwrap().join().unwrap();
    assert!(r.is_ok() && text.starts_with("HTTP/1.1 200"), "held long-poll: {r:?} {text:?}");
    assert!(text.contains("\"messages\":[]"), "{text:?}");

    let status = gw.wait_exit(Duration::from_secs(5)).expect("exit within the deadline");
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() < Duration::from_millis(3000 + 1500), "took {:?}", t0.elapsed());
}

#[test]
fn sigusr1_drains_with_1012_and_exits_0() {
    let mut gw = Gateway::start_with_config("shutdown_spread = 0\n", &[]);
    let (clients, _) = clients_awaiting_close(gw.ws_addr, "/ws", None, 3);
    gw.signal(libc::SIGUSR1);
    for h in clients {
        let c = h.join().unwrap().unwrap();
        assert_eq!((c.code, c.reason.as_str()), (1012, "server restarting: retry after 0 ms"), "{c:?}");
    }
    let status = gw.wait_exit(Duration::from_secs(5)).expect("exit after SIGUSR1");
    assert!(status.success(), "{status:?}");
}

#[test]
fn systemd_socket_activation_serves_the_passed_socket() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let mut make = move |bin: &str| {
        // LISTEN_PID must be the pid of the process that reads it: the shell's, which `exec` keeps.
        let mut sh = Command::new("sh");
        sh.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"", bin]);
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl) on descriptors this process
        // owns; `fd` stays open in the parent until the child has started.
        unsafe {
            sh.pre_exec(move || {
                if fd == 3 {
                    let flags = libc::fcntl(3, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        sh
    };
    // `--listen` names another port: with a passed socket it is not used.
    let gw = Gateway::start_with_command(&mut make, &["--listen", "127.0.0.1:1", "--threads", "2"]);
    assert_eq!(gw.ws_addr, addr, "serves the passed socket");
    drop(listener);
    // Both loop threads share the one socket: every connection is served.
    for i in 0..20 {
        let mut ws = ws_client(addr, "/ws", None).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        ws.close(None).unwrap();
    }
    assert!(gw.stderr().contains("socket activation"), "{}", gw.stderr());
}

#[test]
fn handoff_passes_the_ingest_listener_and_publishers_reach_the_successor() {
    let path = common::unique_temp_path("handoff-ingest.sock");
    let toml = format!("handoff_socket = {:?}\nshutdown_spread = 500\n", path.to_str().unwrap());
    let mut old = Gateway::start_with_config(&toml, &["--ingest", "127.0.0.1:0"]);
    let ingest = old.ingest_addr.unwrap();
    let new = Gateway::start_with_config(&toml, &["--ingest", "127.0.0.1:0"]);
    assert_eq!(new.ingest_addr, Some(ingest), "the successor serves the handed-over ingest listener");
    assert_eq!(new.ws_addr, old.ws_addr);
    let status = old.wait_exit(Duration::from_secs(5)).expect("the old process exits");
    assert!(status.success(), "{status:?}");
    // A publisher connecting now reaches the successor's clients.
    let mut ws = new.ws_connect();
    let mut publisher = common::tcp_connect(ingest);
    common::write_all(&mut publisher, b"after the switch\n");
    assert_eq!(common::ws_read_text(&mut ws), "after the switch");
}
