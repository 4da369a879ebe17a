//! `GET /healthz` and plain-HTTP paths other than `/ws`.

mod common;

use std::time::Duration;

use common::json::Value;
use common::raw::{http_exchange, Request};
use common::Gateway;

#[test]
fn healthz_returns_json_status_and_closes() {
    let gw = Gateway::start(&["--threads", "2"]);
    let resp = http_exchange(gw.ws_addr, format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", gw.ws_addr).as_bytes());
    assert_eq!(resp.status, 200, "{resp:?}");
    let ctype = resp.head.header("content-type").unwrap_or_else(|| panic!("no Content-Type: {resp:?}"));
    assert!(ctype.to_ascii_lowercase().starts_with("application/json"), "Content-Type {ctype:?}");

    let body = resp.body_text();
    let v = common::json::parse(&body).unwrap_or_else(|e| panic!("/healthz body is not JSON ({e}): {body:?}"));
    assert!(v.is_object(), "/healthz body is not an object: {body}");
    assert_eq!(v.get("status").and_then(Value::as_str), Some("ok"), "{body}");
    assert_eq!(v.get("threads").and_then(Value::as_u64), Some(2), "threads should match --threads 2: {body}");
    assert_eq!(v.get("upstream").and_then(Value::as_str), Some("disabled"), "no --upstream given: {body}");
    let conns = v.get("connections").and_then(Value::as_u64).unwrap_or_else(|| panic!("connections: {body}"));
    assert!(conns <= 1, "no WebSocket client is connected, yet connections = {conns}: {body}");
}

#[test]
fn healthz_counts_websocket_connections() {
    let gw = Gateway::start(&[]);
    let base = gw.connections();
    let mut clients: Vec<_> = (0..3).map(|_| gw.ws_connect()).collect();
    gw.wait_connections("base + 3", Duration::from_secs(5), |n| n == base + 3);

    // Closing two of them brings the count back down.
    for mut ws in clients.drain(..2) {
        ws.close(None).unwrap();
        // Drive the close handshake to its end so the server sees a clean close.
        while ws.read().is_ok() {}
    }
    gw.wait_connections("base + 1", Duration::from_secs(5), |n| n == base + 1);
    drop(clients);
}

#[test]
fn healthz_with_upstream_reports_its_state() {
    // An upstream nobody listens on: the gateway keeps retrying, so the state is not "connected".
    let (_reserved, addr) = common::refused_port();
    let gw = Gateway::start(&["--upstream", &addr.to_string()]);
    let v = gw.health();
    let state = v.get("upstream").and_then(Value::as_str).unwrap_or_else(|| panic!("upstream: {v:?}"));
    assert!(matches!(state, "connecting" | "backoff"), "upstream state with a refused upstream: {state:?}");
}

#[test]
fn other_paths_get_404_and_close() {
    let gw = Gateway::start(&[]);
    for path in ["/nope", "/wsx", "/healthzz", "/ws/extra", "/index.htm"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", gw.ws_addr);
        let resp = http_exchange(gw.ws_addr, req.as_bytes());
        assert_eq!(resp.status, 404, "GET {path}: {resp:?}");
        assert!(!resp.body.is_empty(), "GET {path}: 404 without a body");
    }
    // An upgrade request on another path is a 404 too, not a WebSocket.
    let resp = http_exchange(gw.ws_addr, &Request::upgrade(gw.ws_addr).path("/other").bytes());
    assert_eq!(resp.status, 404, "upgrade on /other: {resp:?}");
}

#[test]
fn the_root_serves_the_live_page() {
    let gw = Gateway::start(&[]);
    for path in ["/", "/index.html"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", gw.ws_addr);
        let resp = http_exchange(gw.ws_addr, req.as_bytes());
        assert_eq!(resp.status, 200, "GET {path}");
        assert_eq!(resp.head.header("content-type"), Some("text/html; charset=utf-8"));
        let page = resp.body_text();
        assert!(page.contains("live ticker") && page.contains("EventSource") && page.contains("wsgate.v1.json"));
    }
}

/// A fake upstream: a listener the gateway connects to (`upstream = ADDR`), and the accepted connection.
struct Upstream {
    listener: std::net::TcpListener,
}

impl Upstream {
    fn new() -> Self {
        Self { listener: std::net::TcpListener::bind("127.0.0.1:0").unwrap() }
    }
    fn addr(&self) -> String {
        self.listener.local_addr().unwrap().to_string()
    }
    fn accept(&self) -> std::net::TcpStream {
        self.listener.set_nonblocking(false).unwrap();
        let (s, _) = self.listener.accept().unwrap();
        s
    }
}

fn status_of(v: &Value) -> String {
    v.get("status").and_then(Value::as_str).unwrap_or("<none>").to_string()
}

#[test]
fn healthz_is_degraded_while_the_upstream_is_silent_and_ok_once_it_speaks() {
    use std::io::Write;
    let upstream = Upstream::new();
    let toml = format!("upstream = \"{}\"\nupstream_silence = 400\n", upstream.addr());
    let gw = Gateway::start_with_config(&toml, &[]);
    let mut feed = upstream.accept();
    feed.write_all(b"{\"topic\":\"a\",\"px\":1}\n").unwrap();
    assert!(common::poll_until(Duration::from_secs(5), || status_of(&gw.health()) == "ok"), "{:?}", gw.health());
    // Silent past upstream_silence: degraded, still 200 (gw.health() checks the status), with a reason.
    assert!(
        common::poll_until(Duration::from_secs(5), || status_of(&gw.health()) == "degraded"),
        "never degraded: {:?}",
        gw.health()
    );
    let h = gw.health();
    assert!(matches!(h.get("upstream_silent"), Some(Value::Bool(true))), "{h:?}");
    assert!(h.get("reason").and_then(Value::as_str).is_some_and(|r| r.contains("silent")), "{h:?}");
    let scrape = gw.scrape();
    assert_eq!(scrape.sum("wsgate_upstream_silent", &[]), 1.0);
    assert_eq!(scrape.sum("wsgate_upstream_silences_total", &[]), 1.0);
    assert_eq!(scrape.sum("wsgate_health_status", &[("status", "degraded")]), 1.0);
    assert!(gw.stderr().contains("upstream silent"), "logged once:\n{}", gw.stderr());
    // It speaks again: ok.
    feed.write_all(b"{\"topic\":\"a\",\"px\":2}\n").unwrap();
    assert!(common::poll_until(Duration::from_secs(5), || status_of(&gw.health()) == "ok"), "{:?}", gw.health());
    assert_eq!(gw.scrape().sum("wsgate_upstream_silent", &[]), 0.0);
    assert_eq!(gw.stderr().matches("upstream silent").count(), 1, "one log line per silence");
}

#[test]
fn healthz_is_degraded_while_the_upstream_is_down() {
    let (_reserved, addr) = common::refused_port();
    let gw = Gateway::start(&["--upstream", &addr.to_string()]);
    let v = gw.health();
    assert_eq!(status_of(&v), "degraded", "{v:?}");
}

#[test]
fn healthz_answers_503_draining_from_the_moment_shutdown_starts() {
    use std::io::Write;
    // A client that never answers our close keeps the gateway in its shutdown window (shutdown_timeout).
    let mut gw = Gateway::start_with_config("admin_listen = \"127.0.0.1:0\"\nshutdown_timeout = 3000\n", &[]);
    let admin = gw.admin_addr.expect("admin listener");
    let mut stuck = common::tcp_connect(gw.ws_addr);
    stuck.write_all(&common::raw::Request::upgrade(gw.ws_addr).bytes()).unwrap();
    let _ = common::raw::read_head(&mut stuck);
    gw.wait_connections("1", Duration::from_secs(5), |n| n == 1);
    assert_eq!(common::get(admin, "/healthz").status, 200);
    gw.signal(libc::SIGTERM);
    let mut last = None;
    let drained = common::poll_until(Duration::from_secs(2), || {
        let resp = common::get(admin, "/healthz");
        let draining = resp.status == 503 && resp.body_text().contains("\"status\":\"draining\"");
        last = Some(resp);
        draining
    });
    assert!(drained, "no 503 draining during the shutdown window: {last:?}");
    // /metrics still answers during the window, saying so.
    let metrics = common::get(admin, "/metrics");
    assert!(metrics.body_text().contains("wsgate_health_status{status=\"draining\"} 1"));
    let status = gw.wait_exit(Duration::from_secs(10)).expect("exits after shutdown_timeout");
    assert!(status.success(), "{status:?}");
}
