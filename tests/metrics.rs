//! `GET /metrics`: the Prometheus text format, read by a strict parser (`common::prom`); counters that move with
//! traffic; histograms with buckets; the admin listener; the Grafana dashboard's queries.

mod common;

use std::time::Duration;

use common::{get, poll_until, ws_read_text, Gateway};

#[test]
fn counters_move_with_traffic_and_histograms_have_buckets() {
    let gw = Gateway::start(&["--demo", "--demo-rate", "200"]);
    let before = gw.scrape();
    for name in ["wsgate_loop_pass_seconds", "wsgate_publish_to_socket_seconds"] {
        assert_eq!(before.families.get(name).map(String::as_str), Some("histogram"), "{name}");
    }
    assert_eq!(before.families.get("wsgate_feed_messages_total").map(String::as_str), Some("counter"));
    assert_eq!(before.families.get("wsgate_open_connections").map(String::as_str), Some("gauge"));
    // One series per loop thread (--threads 2 by default in tests).
    assert_eq!(before.matching("wsgate_connections", &[]).count(), 2);

    let mut ws = gw.ws_connect();
    for _ in 0..20 {
        ws_read_text(&mut ws);
    }
    let _ = get(gw.ws_addr, "/nope"); // a 404
    let mut after = gw.scrape();
    poll_until(Duration::from_secs(5), || {
        after = gw.scrape();
        after.sum("wsgate_http_refused_total", &[("status", "404")]) >= 1.0
    });
    assert_eq!(after.sum("wsgate_open_connections", &[("transport", "ws")]), 1.0, "one WebSocket open");
    assert!(after.sum("wsgate_opened_connections_total", &[("transport", "ws")]) >= 1.0);
    assert_eq!(after.sum("wsgate_http_refused_total", &[("status", "404")]), 1.0);
    let grew = |name: &str| after.sum(name, &[]) > before.sum(name, &[]);
    for name in [
        "wsgate_feed_messages_total",
        "wsgate_deliveries_total",
        "wsgate_io_sent_bytes_total",
        "wsgate_io_received_bytes_total",
        "wsgate_loop_pass_seconds_count",
        "wsgate_publish_to_socket_seconds_count",
        "wsgate_feed_messages_published_total",
    ] {
        assert!(grew(name), "{name} did not grow: {} -> {}", before.sum(name, &[]), after.sum(name, &[]));
    }
    // The feed reached the client: at least as many deliveries as messages it read.
    assert!(after.sum("wsgate_deliveries_total", &[]) >= 20.0);
    assert!(after.sum("wsgate_publish_to_socket_seconds_bucket", &[("le", "+Inf")]) >= 1.0);
    assert_eq!(after.sum("wsgate_health_status", &[("status", "ok")]), 1.0);
    assert_eq!(after.sum("wsgate_upstream_state", &[("state", "disabled")]), 1.0, "no --upstream");

    drop(ws);
    assert!(
        poll_until(Duration::from_secs(5), || gw.scrape().sum("wsgate_open_connections", &[("transport", "ws")])
            == 0.0),
        "the closed WebSocket still counted open"
    );
}

#[test]
fn sse_and_long_poll_are_counted_by_transport() {
    let gw = Gateway::start(&["--demo", "--demo-rate", "50"]);
    let mut sse = common::tcp_connect(gw.ws_addr);
    use std::io::Write;
    sse.write_all(format!("GET /sse HTTP/1.1\r\nHost: {}\r\n\r\n", gw.ws_addr).as_bytes()).unwrap();
    let _ = common::raw::read_head(&mut sse);
    let mut poll = common::tcp_connect(gw.ws_addr);
    poll.write_all(format!("GET /poll HTTP/1.1\r\nHost: {}\r\n\r\n", gw.ws_addr).as_bytes()).unwrap();
    let ok = poll_until(Duration::from_secs(5), || {
        let s = gw.scrape();
        s.sum("wsgate_open_connections", &[("transport", "sse")]) == 1.0
            && s.sum("wsgate_opened_connections_total", &[("transport", "poll")]) == 1.0
    });
    assert!(ok, "SSE stream and long-poll request not counted");
}

#[test]
fn the_admin_listener_serves_metrics_and_health_and_the_public_one_does_not() {
    let gw = Gateway::start_with_config("admin_listen = \"127.0.0.1:0\"\n", &[]);
    let admin = gw.admin_addr.expect("the admin listener's address is printed at start");
    assert_ne!(admin, gw.ws_addr);
    for path in ["/metrics", "/healthz"] {
        assert_eq!(get(gw.ws_addr, path).status, 404, "public {path} with an admin listener");
        assert_eq!(get(admin, path).status, 200, "admin {path}");
    }
    assert_eq!(get(admin, "/ws").status, 404);
    let post = common::raw::http_exchange(admin, format!("POST /metrics HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes());
    assert_eq!(post.status, 405);
    let huge = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nX-Pad: {}\r\n\r\n", "a".repeat(10_000));
    assert_eq!(common::raw::http_exchange(admin, huge.as_bytes()).status, 431, "head over 8 KiB");
    // A client that says nothing is cut after the request timeout and does not block the next scrape for long.
    let _silent = common::tcp_connect(admin);
    let started = std::time::Instant::now();
    let scrape = gw.scrape();
    assert!(started.elapsed() < Duration::from_secs(4), "a silent client held the admin listener");
    assert!(scrape.has("wsgate_connections"));
    // The public listener still serves clients.
    let _ws = gw.ws_connect();
}

/// Every metric the Grafana dashboard queries is one the gateway exports.
#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana-wsgate.json");
    let text = std::fs::read_to_string(path).expect("docs/grafana-wsgate.json");
    let dashboard = common::json::parse(&text).unwrap_or_else(|e| panic!("the dashboard is not JSON: {e}"));
    assert!(dashboard.is_object());
    let mut names: Vec<String> = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("\"expr\"") {
        rest = &rest[i + 6..];
        let line = rest.split('\n').next().unwrap();
        let mut s = line;
        while let Some(j) = s.find("wsgate_") {
            let name: String = s[j..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            s = &s[j + name.len()..];
            names.push(name);
        }
    }
    names.sort();
    names.dedup();
    assert!(names.len() >= 15, "the dashboard queries few metrics: {names:?}");
    let gw = Gateway::start(&["--demo"]);
    let scrape = gw.scrape();
    let missing: Vec<&String> = names.iter().filter(|n| !scrape.has(n)).collect();
    assert!(missing.is_empty(), "the dashboard queries metrics the gateway does not export: {missing:?}");
}

/// A subscriber that stops reading shows up in the worst-lag gauges of its loop; none shows when all read.
#[test]
fn a_stalled_subscriber_shows_in_the_lag_gauges() {
    use std::io::Write;
    let gw = Gateway::start_with_config("max_lag_bytes = 67108864\n", &["--ingest", "127.0.0.1:0", "--threads", "1"]);
    let stalled = common::raw::RawWs::connect(gw.ws_addr);
    socket2::SockRef::from(&stalled.stream).set_recv_buffer_size(4096).unwrap();
    assert_eq!(gw.scrape().sum("wsgate_lagging_subscribers", &[]), 0.0);
    // ~16 MiB: more than the socket buffers between the gateway and the stalled client hold.
    let pad = "x".repeat(1000);
    let mut publisher = gw.publisher();
    let mut batch = String::new();
    for i in 0..16_000 {
        batch.push_str(&format!("{i} {pad}\n"));
        if batch.len() > 64 * 1024 {
            publisher.write_all(batch.as_bytes()).unwrap();
            batch.clear();
        }
    }
    publisher.write_all(batch.as_bytes()).unwrap();
    let mut last = (0.0, 0.0);
    let ok = poll_until(Duration::from_secs(10), || {
        let s = gw.scrape();
        last = (s.sum("wsgate_lag_max_bytes", &[]), s.sum("wsgate_lagging_subscribers", &[]));
        last.0 > 1_000_000.0 && last.1 == 1.0
    });
    assert!(ok, "(lag_max_bytes, lagging_subscribers) = {last:?}");
    drop(stalled);
    let ok = poll_until(Duration::from_secs(10), || gw.scrape().sum("wsgate_lag_max_bytes", &[]) == 0.0);
    assert!(ok, "the lag stays after the stalled client left");
}
