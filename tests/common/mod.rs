//! Shared harness for the integration tests: runs the real `wsgate` binary on an ephemeral port and talks to it
//! over loopback.
//!
//! - [`Gateway`]: the process. Started with `--listen 127.0.0.1:0`, its ports read from stdout, stderr kept in a
//!   temporary file and printed when the owning test panics; stopped with SIGTERM (then SIGKILL) on drop.
//! - [`raw`]: hand-built frames and HTTP over a plain `TcpStream`, for malformed input.
//! - [`json`]: a small strict JSON parser, to check `/healthz` and feed messages without another dependency.
//! - tungstenite helpers: an independent, well-behaved client.
//!
//! Every read here has a timeout; every wait polls with a deadline and fails with what it last saw.
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod json;
pub mod prom;
pub mod raw;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tungstenite::protocol::WebSocket;

/// Timeout for single reads and writes on test sockets.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the gateway may take to print its listening lines.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Grace period after SIGTERM before SIGKILL when a test drops its gateway.
const DROP_GRACE: Duration = Duration::from_secs(7);

/// Environment variable selecting the I/O backend (`--io VALUE`) for every gateway the tests start.
pub const IO_ENV: &str = "WSGATE_TEST_IO";

/// A running `wsgate` process.
pub struct Gateway {
    child: Option<Child>,
    /// The WebSocket/HTTP listener (`ws://{ws_addr}/ws`).
    pub ws_addr: SocketAddr,
    /// The publisher listener, when started with `--ingest`.
    pub ingest_addr: Option<SocketAddr>,
    /// The admin listener (`/metrics`, `/healthz`), when started with `admin_listen`.
    pub admin_addr: Option<SocketAddr>,
    /// The I/O backend it reported (`epoll` or `uring`).
    pub io: String,
    stderr_path: PathBuf,
    config_path: Option<PathBuf>,
    args: Vec<String>,
}

impl Gateway {
    /// Starts `wsgate` with `args` plus `--listen 127.0.0.1:0` (unless given), `--threads 2` (unless given) and
    /// `--io $WSGATE_TEST_IO` (when set). Waits for the listening line(s) on stdout.
    pub fn start(args: &[&str]) -> Gateway {
        Self::launch(None, &[], args, None)
    }

    /// Like [`Gateway::start`], with the command built by `make` from the binary's path (a wrapper, a
    /// `pre_exec` hook: e.g. systemd socket activation), then given the usual arguments.
    pub fn start_with_command(make: &mut dyn FnMut(&str) -> Command, args: &[&str]) -> Gateway {
        Self::launch(None, &[], args, Some(make))
    }

    /// Like [`Gateway::start`], with the process's open-files limit (soft and hard) set to `limit` first.
    pub fn start_with_open_files_limit(limit: Option<u32>, args: &[&str]) -> Gateway {
        Self::launch(limit, &[], args, None)
    }

    /// Like [`Gateway::start`], with `env` added to the process's environment (e.g. `WSGATE_IO_FORCE_FALLBACK`).
    pub fn start_with_env(env: &[(&str, &str)], args: &[&str]) -> Gateway {
        Self::launch(None, env, args, None)
    }

    /// Spawns the gateway (see [`Gateway::start`]) and waits for its listening line(s).
    fn launch(
        limit: Option<u32>,
        env: &[(&str, &str)],
        args: &[&str],
        make: Option<&mut dyn FnMut(&str) -> Command>,
    ) -> Gateway {
        let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if !full.iter().any(|a| a == "--listen") {
            full.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        if !full.iter().any(|a| a == "--threads") {
            full.extend(["--threads".into(), "2".into()]);
        }
        if let Ok(io) = std::env::var(IO_ENV) {
            if !io.is_empty() && !full.iter().any(|a| a == "--io") {
                full.extend(["--io".into(), io]);
            }
        }
        let wants_ingest = full.iter().any(|a| a == "--ingest");

        let stderr_path = unique_temp_path("stderr.log");
        let stderr = File::create(&stderr_path).expect("create the gateway's stderr file");
        let mut command = match (limit, make) {
            (_, Some(make)) => make(env!("CARGO_BIN_EXE_wsgate")),
            (None, None) => Command::new(env!("CARGO_BIN_EXE_wsgate")),
            (Some(n), None) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), env!("CARGO_BIN_EXE_wsgate")]);
                sh
            }
        };
        let mut child = command
            .args(&full)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn the wsgate binary");

        // Stdout is read on a thread so that startup has a deadline and the pipe never fills later.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });

        let mut gw = Gateway {
            child: Some(child),
            ws_addr: "0.0.0.0:0".parse().unwrap(),
            ingest_addr: None,
            admin_addr: None,
            io: String::new(),
            stderr_path,
            config_path: None,
            args: full,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut seen = Vec::new();
        let mut ws_addr = None;
        while ws_addr.is_none() || (wants_ingest && gw.ingest_addr.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let listening = line
                        .strip_prefix("wsgate: listening on ws://")
                        .or_else(|| line.strip_prefix("wsgate: listening on wss://"));
                    if let Some(rest) = listening {
                        let (url, io) = rest.split_once(" (io: ").unwrap_or_else(|| panic!("no backend in {line:?}"));
                        gw.io = io.trim_end_matches(')').to_string();
                        let addr =
                            url.strip_suffix("/ws").unwrap_or_else(|| panic!("listening line without /ws: {line:?}"));
                        ws_addr =
                            Some(addr.parse::<SocketAddr>().unwrap_or_else(|e| panic!("bad address in {line:?}: {e}")));
                    } else if let Some(rest) = line.strip_prefix("wsgate: admin listening on http://") {
                        gw.admin_addr =
                            Some(rest.trim().parse().unwrap_or_else(|e| panic!("bad address in {line:?}: {e}")));
                    } else if let Some(rest) = line.strip_prefix("wsgate: ingest listening on ") {
                        gw.ingest_addr =
                            Some(rest.trim().parse().unwrap_or_else(|e| panic!("bad address in {line:?}: {e}")));
                    }
                    seen.push(line);
                }
                Err(e) => {
                    let why = match e {
                        mpsc::RecvTimeoutError::Timeout => {
                            format!("did not print its listening line(s) within {STARTUP_TIMEOUT:?}")
                        }
                        mpsc::RecvTimeoutError::Disconnected => {
                            "closed stdout before printing its listening line(s)".into()
                        }
                    };
                    // Give an exiting process a moment so that its status can be reported.
                    let status = gw.wait_exit(Duration::from_millis(500));
                    panic!(
                        "wsgate {:?} {why} (exit status: {status:?}); \
                         stdout so far: {seen:?}\n--- stderr ---\n{}",
                        gw.args,
                        gw.stderr()
                    );
                }
            }
        }
        gw.ws_addr = ws_addr.unwrap();
        // A backend asked for by name must be the one running: a silent fallback must not pass the suite.
        if let Some(io) = gw.args.iter().position(|a| a == "--io").map(|i| gw.args[i + 1].clone()) {
            if io != "auto" {
                assert_eq!(gw.io, io, "wsgate runs on {} although --io {io} was asked for", gw.io);
            }
        }
        gw
    }

    /// Like [`Gateway::start`], with `--config FILE` holding `toml` (kept until the gateway is dropped).
    pub fn start_with_config(toml: &str, args: &[&str]) -> Gateway {
        let path = unique_temp_path("config.toml");
        std::fs::write(&path, toml).expect("write the test config file");
        let path_str = path.to_str().expect("UTF-8 temp path").to_string();
        let mut full = vec!["--config", path_str.as_str()];
        full.extend_from_slice(args);
        let mut gw = Gateway::start(&full);
        gw.config_path = Some(path);
        gw
    }

    /// `ws://127.0.0.1:PORT/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.ws_addr)
    }

    /// Everything the gateway has written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path)
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.stderr_path.display()))
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("gateway already stopped").id() as i32
    }

    /// Sends `sig` to the gateway.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped), so it cannot name another process.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed: {}", self.pid(), std::io::Error::last_os_error());
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`. Once it has exited, the
    /// gateway is stopped: no further signals are sent to its (reaped) pid.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("gateway already stopped");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait on the gateway") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status; panics (after SIGKILL) if it does not exit.
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_exit(timeout) {
            Some(status) => status,
            None => {
                let child = self.child.as_mut().unwrap();
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!("wsgate did not exit within {timeout:?} of SIGTERM\n--- stderr ---\n{}", self.stderr());
            }
        }
    }

    /// One `GET /healthz`, parsed.
    pub fn health(&self) -> json::Value {
        let resp = self.get("/healthz");
        assert_eq!(resp.status, 200, "/healthz status; response: {resp:?}");
        json::parse(&resp.body_text())
            .unwrap_or_else(|e| panic!("/healthz body is not JSON ({e}): {:?}", resp.body_text()))
    }

    /// Where `/metrics` and `/healthz` are served: the admin listener when there is one.
    pub fn admin(&self) -> SocketAddr {
        self.admin_addr.unwrap_or(self.ws_addr)
    }

    /// `GET path` on the admin listener (or the public one without it).
    pub fn get(&self, path: &str) -> raw::Response {
        get(self.admin(), path)
    }

    /// One `GET /metrics`, checked by the strict parser of [`prom`].
    pub fn scrape(&self) -> prom::Scrape {
        let resp = self.get("/metrics");
        assert_eq!(resp.status, 200, "/metrics: {resp:?}");
        let ctype = resp.head.header("content-type").unwrap_or_default().to_string();
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "/metrics Content-Type {ctype:?}");
        let text = resp.body_text();
        prom::parse(&text).unwrap_or_else(|e| panic!("/metrics is not valid exposition text: {e}\n{text}"))
    }

    /// The `connections` count of `/healthz`.
    pub fn connections(&self) -> u64 {
        let h = self.health();
        h.get("connections")
            .and_then(json::Value::as_u64)
            .unwrap_or_else(|| panic!("/healthz without numeric connections: {h:?}"))
    }

    /// Polls `/healthz` until `connections` satisfies `pred`; panics with the last value after `timeout`.
    pub fn wait_connections(&self, what: &str, timeout: Duration, pred: impl Fn(u64) -> bool) -> u64 {
        let mut last = 0;
        let ok = poll_until(timeout, || {
            last = self.connections();
            pred(last)
        });
        assert!(ok, "/healthz connections never became {what} within {timeout:?}; last value: {last}");
        last
    }

    /// Polls `/healthz` until its `upstream` field equals `state`.
    pub fn wait_upstream(&self, state: &str, timeout: Duration) {
        let mut last = String::new();
        let ok = poll_until(timeout, || {
            let h = self.health();
            last = h.get("upstream").and_then(json::Value::as_str).unwrap_or("<missing>").to_string();
            last == state
        });
        assert!(ok, "/healthz upstream never became {state:?} within {timeout:?}; last value: {last:?}");
    }

    /// A tungstenite client on `/ws`, with read and write timeouts.
    pub fn ws_connect(&self) -> WebSocket<TcpStream> {
        let stream = tcp_connect(self.ws_addr);
        let (ws, resp) = tungstenite::client(self.ws_url(), stream)
            .unwrap_or_else(|e| panic!("WebSocket handshake with {} failed: {e}", self.ws_url()));
        assert_eq!(resp.status(), 101);
        ws
    }

    /// A publisher connection to `--ingest`.
    pub fn publisher(&self) -> TcpStream {
        tcp_connect(self.ingest_addr.expect("gateway started without --ingest"))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + DROP_GRACE;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                    _ => {
                        eprintln!("wsgate did not exit within {DROP_GRACE:?} of SIGTERM; sending SIGKILL");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- wsgate {:?} stderr ({}) ---\n{}--- end of wsgate stderr ---",
                self.args,
                self.stderr_path.display(),
                self.stderr()
            );
        }
        let _ = std::fs::remove_file(&self.stderr_path);
        if let Some(p) = &self.config_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Whether io_uring can be used here, as `wsgate --check-io` (run with this process's environment) sees it:
/// `Err` carries its `io_uring: unavailable: REASON` line.
pub fn uring_available() -> Result<(), String> {
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("--check-io")
        .stdin(Stdio::null())
        .output()
        .expect("run wsgate --check-io");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match out.status.code() {
        Some(0) => Ok(()),
        Some(3) => Err(stdout),
        _ => panic!(
            "wsgate --check-io exited with {} (expected 0 or 3); stdout {stdout:?}, stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A path in the temp directory no other test (or test process) uses.
pub fn unique_temp_path(suffix: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    std::env::temp_dir().join(format!("wsgate-test-{}-{n}-{nanos}-{suffix}", std::process::id()))
}

/// A TCP socket bound to a free loopback port but not listening: connections to it are refused, and no other
/// test can take the port. `listen` on it later turns it into the upstream.
pub fn refused_port() -> (socket2::Socket, SocketAddr) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    (sock, addr)
}

/// `GET path` on `addr` (HTTP/1.1, then the server closes).
pub fn get(addr: SocketAddr, path: &str) -> raw::Response {
    raw::http_exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
}

/// Calls `f` every 10 ms until it returns true (→ true) or `timeout` passes (→ false).
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A TCP connection with read/write timeouts and `TCP_NODELAY`.
pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads the next data message from a tungstenite client, skipping pings/pongs; panics on close, error or timeout.
pub fn ws_read_text(ws: &mut WebSocket<TcpStream>) -> String {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => return t,
            Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => continue,
            Ok(other) => panic!("expected a text message, got {other:?}"),
            Err(e) => panic!("expected a text message, read failed: {e}"),
        }
    }
}

/// Asserts that no data message arrives within `wait` (used only after a message that must follow the one that
/// must not arrive, so it cannot pass merely because the gateway is slow).
pub fn ws_expect_silence(ws: &mut WebSocket<TcpStream>, wait: Duration) {
    ws.get_mut().set_read_timeout(Some(wait)).unwrap();
    match ws.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
        Ok(m) => panic!("expected no further message, got {m:?}"),
        Err(e) => panic!("expected no further message, read failed: {e}"),
    }
    ws.get_mut().set_read_timeout(Some(IO_TIMEOUT)).unwrap();
}

/// Writes all of `data`, then flushes.
pub fn write_all(stream: &mut TcpStream, data: &[u8]) {
    stream.write_all(data).unwrap_or_else(|e| panic!("write of {} bytes failed: {e}", data.len()));
    stream.flush().unwrap();
}

/// Closes our side for writing and drains until EOF (a polite publisher hang-up).
pub fn finish(mut stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 1024];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}
