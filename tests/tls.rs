//! TLS on the listener (`--tls-cert`, `--tls-key`): wss:// and https:// with an independent rustls client, on the
//! backend `WSGATE_TEST_IO` names. A client that does not trust the CA fails; plain HTTP to the TLS port is
//! refused (counted) while the gateway goes on serving; a handshake that stalls is closed at
//! `handshake_timeout`; SIGHUP reloads the certificate and the client CA file without dropping connections;
//! `tls_client_ca` requires client certificates.

mod common;
#[path = "common/tls.rs"]
mod tls_client;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::Gateway;
use tls_client::Pki;
use tungstenite::Message;

/// A TLS gateway with a publisher port and `/metrics` on a plain admin listener.
fn start(pki: &Pki, extra: &[&str]) -> Gateway {
    let mut args = vec!["--admin-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    start_serving_healthz(pki, &args)
}

/// A TLS gateway with a publisher port, serving `/healthz` and `/metrics` on its TLS listener.
fn start_serving_healthz(pki: &Pki, extra: &[&str]) -> Gateway {
    let mut args: Vec<String> = pki.args();
    args.extend(["--ingest", "127.0.0.1:0"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Gateway::start(&args)
}

fn handshakes(gw: &Gateway, result: &str) -> f64 {
    gw.scrape().sum("wsgate_tls_handshakes_total", &[("result", result)])
}

#[test]
fn wss_clients_receive_the_broadcast_in_order() {
    let pki = Pki::new();
    let gw = start(&pki, &[]);
    let config = pki.client(None);
    let mut clients: Vec<_> = (0..3).map(|_| tls_client::wss_connect(gw.ws_addr, &config)).collect();
    gw.wait_connections("3", Duration::from_secs(5), |n| n >= 3);
    let mut p = gw.publisher();
    let lines: String = (0..500).map(|i| format!("line {i} {}\n", "x".repeat(i % 300))).collect();
    common::write_all(&mut p, lines.as_bytes());
    for ws in &mut clients {
        for i in 0..500 {
            match ws.read().unwrap() {
                Message::Text(t) => assert_eq!(t, format!("line {i} {}", "x".repeat(i % 300))),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    // A clean close: our close frame, theirs, then close_notify.
    let mut ws = clients.pop().unwrap();
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close: {e}"),
        }
    }
    assert!(handshakes(&gw, "ok") >= 3.0);
}

#[test]
fn topic_subscribers_over_wss_get_their_topics_in_order_past_the_send_budget() {
    let pki = Pki::new();
    let gw = start(&pki, &[]);
    let mut ws = tls_client::wss_connect_to(gw.ws_addr, &pki.client(None), "/ws?topics=A");
    match ws.read().unwrap() {
        Message::Text(t) => assert!(t.contains("subscribed"), "{t}"),
        other => panic!("unexpected {other:?}"),
    }
    let mut p = gw.publisher();
    // ~600 KiB for A, interleaved with B: many times the 64 KiB encrypted per round.
    let pad = "y".repeat(1000);
    let lines: String =
        (0..1200).map(|i| format!("{{\"topic\":\"{}\",\"n\":{i},\"p\":\"{pad}\"}}\n", ["A", "B"][i % 2])).collect();
    common::write_all(&mut p, lines.as_bytes());
    for i in (0..1200).step_by(2) {
        match ws.read().unwrap() {
            Message::Text(t) => {
                assert!(t.contains(&format!("\"n\":{i},")), "expected n={i}: {}", &t[..60.min(t.len())])
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn a_tls_reader_that_pauses_gets_everything_after_the_socket_filled() {
    let pki = Pki::new();
    let gw = start(&pki, &["--max-lag-bytes", "67108864"]);
    let mut ws = tls_client::wss_connect(gw.ws_addr, &pki.client(None));
    gw.wait_connections("1", Duration::from_secs(5), |n| n >= 1);
    let mut p = gw.publisher();
    // 12 MiB while the client does not read: the socket fills, the connection blocks (epoll: waits for
    // writability; io_uring: its send stays in flight), and goes on where it stopped.
    let pad = "z".repeat(4000);
    let writer = std::thread::spawn(move || {
        for i in 0..3000 {
            common::write_all(&mut p, format!("{i} {pad}\n").as_bytes());
        }
        p
    });
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..3000 {
        match ws.read().unwrap() {
            Message::Text(t) => assert!(t.starts_with(&format!("{i} ")), "expected {i}: {}", &t[..20]),
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(writer.join().unwrap());
}

/// Skips (with a message) where `python3` or its `websockets` package is missing
/// (`scripts/install-test-deps.sh` installs it).
#[test]
fn a_python_ssl_websockets_client_receives_the_broadcast() {
    use std::io::BufRead;
    let probe = std::process::Command::new("python3").args(["-c", "import websockets"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: python3 with the websockets package is not available (scripts/install-test-deps.sh)");
        return;
    }
    let pki = Pki::new();
    let gw = start(&pki, &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/wss_client.py");
    let url = format!("wss://localhost:{}/ws", gw.ws_addr.port());
    let mut child = std::process::Command::new("python3")
        .args([script, &url, pki.ca_file.to_str().unwrap(), "200"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(out.next().unwrap().unwrap(), "connected");
    gw.wait_connections("1", Duration::from_secs(5), |n| n >= 1);
    let mut p = gw.publisher();
    let lines: String = (0..200).map(|i| format!("py {i}\n")).collect();
    common::write_all(&mut p, lines.as_bytes());
    assert_eq!(out.next().unwrap().unwrap(), "ok");
    assert!(child.wait().unwrap().success());
}

#[test]
fn https_healthz_and_an_event_stream() {
    let pki = Pki::new();
    let gw = start_serving_healthz(&pki, &[]);
    let config = pki.client(None);
    // read_to_end succeeds only if the gateway ends with close_notify.
    let health = tls_client::https_get(gw.ws_addr, &config, "/healthz").unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"status\""), "{health}");

    let mut s = tls_client::connect(gw.ws_addr, &config);
    write!(s, "GET /sse HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut p = gw.publisher();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut published = false;
    while !text.contains("\"text\":\"two\"") {
        assert!(Instant::now() < deadline, "no events over TLS: {text:?}");
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap_or_else(|e| panic!("{e}; so far: {text:?}"));
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        if !published && text.contains("\r\n\r\n") {
            published = true;
            common::write_all(&mut p, b"one\ntwo\n");
        }
    }
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.find("\"text\":\"one\"").unwrap() < text.find("\"text\":\"two\"").unwrap());
}

#[test]
fn a_client_that_does_not_trust_the_ca_fails() {
    let pki = Pki::new();
    let gw = start_serving_healthz(&pki, &[]);
    let stranger = Pki::new(); // another CA
    let mut s = tls_client::connect(gw.ws_addr, &stranger.client(None));
    let err = tls_client::handshake(&mut s).unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer") || err.to_string().contains("certificate"), "{err}");
    // The gateway goes on serving.
    assert!(tls_client::https_get(gw.ws_addr, &pki.client(None), "/healthz").unwrap().starts_with("HTTP/1.1 200"));
}

#[test]
fn plain_http_to_the_tls_port_is_refused_and_the_gateway_goes_on() {
    let pki = Pki::new();
    let gw = start(&pki, &[]);
    for _ in 0..20 {
        let mut s = common::tcp_connect(gw.ws_addr);
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got); // an alert, then the end (or a reset)
        assert!(!String::from_utf8_lossy(&got).contains("HTTP/1.1"), "a plain answer on the TLS port: {got:?}");
    }
    assert!(common::poll_until(Duration::from_secs(5), || handshakes(&gw, "failed") >= 20.0));
    let logged = gw.stderr().matches("TLS failed").count();
    assert!((1..20).contains(&logged), "the failure log is rate-limited: {logged} lines");
    let mut ws = tls_client::wss_connect(gw.ws_addr, &pki.client(None));
    let mut p = gw.publisher();
    gw.wait_connections("1", Duration::from_secs(5), |n| n >= 1);
    common::write_all(&mut p, b"still here\n");
    assert_eq!(ws.read().unwrap(), Message::Text("still here".into()));
}

#[test]
fn a_stalled_tls_handshake_is_closed_at_the_deadline() {
    let pki = Pki::new();
    let gw = start(&pki, &["--handshake-timeout", "500"]);
    // Nothing at all, then half a ClientHello.
    let mut silent = common::tcp_connect(gw.ws_addr);
    let mut partial = common::tcp_connect(gw.ws_addr);
    partial.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    let started = Instant::now();
    for s in [&mut silent, &mut partial] {
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("unexpected bytes {:?}", &buf[..n]),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(4), "closed after {waited:?}");
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_connections() {
    let mut pki = Pki::new();
    let gw = start(&pki, &[]);
    let config = pki.client(None);
    let mut old = tls_client::wss_connect(gw.ws_addr, &config);
    let subject = |s: &tls_client::TlsStream| {
        let der = s.conn.peer_certificates().unwrap()[0].clone();
        der.as_ref().windows(6).any(|w| w == b"second")
    };
    assert!(!subject(old.get_ref()));

    pki.write_server_cert("second");
    gw.signal(libc::SIGHUP);
    assert!(common::poll_until(Duration::from_secs(5), || gw.stderr().contains("TLS certificate reloaded")));
    let mut s = tls_client::connect(gw.ws_addr, &config);
    tls_client::handshake(&mut s).unwrap();
    assert!(subject(&s), "a new connection gets the new certificate");

    // A bad new certificate: logged, the old one stays.
    std::fs::write(&pki.key_file, "not a key").unwrap();
    gw.signal(libc::SIGHUP);
    assert!(common::poll_until(Duration::from_secs(5), || gw.stderr().contains("TLS reload failed")));
    let mut s = tls_client::connect(gw.ws_addr, &config);
    tls_client::handshake(&mut s).unwrap();
    assert!(subject(&s));

    // The connection from before the reloads still works.
    let mut p = gw.publisher();
    common::write_all(&mut p, b"after reload\n");
    assert_eq!(old.read().unwrap(), Message::Text("after reload".into()));
}

/// Whether the gateway refuses this client: TLS 1.3 clients learn of a refused certificate at their first read
/// after the handshake.
fn refused(stream: &mut tls_client::TlsStream) -> bool {
    tls_client::handshake(stream)
        .and_then(|()| write!(stream, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
        .and_then(|()| stream.read(&mut [0u8; 64]).map(|_| ()))
        .is_err()
}

#[test]
fn client_certificates_are_required_with_tls_client_ca() {
    let pki = Pki::new();
    let ca = pki.ca_file.to_str().unwrap().to_string();
    let gw = start_serving_healthz(&pki, &["--tls-client-ca", &ca]);
    let mut anonymous = tls_client::connect(gw.ws_addr, &pki.client(None));
    assert!(refused(&mut anonymous), "served without a client certificate");

    let stranger = Pki::new();
    let mut other = tls_client::connect(gw.ws_addr, &pki.client(Some(stranger.client_identity())));
    assert!(refused(&mut other), "served with a certificate of another CA");

    let config = pki.client(Some(pki.client_identity()));
    assert!(tls_client::https_get(gw.ws_addr, &config, "/healthz").unwrap().starts_with("HTTP/1.1 200"));
}

#[test]
fn sighup_reloads_the_client_ca_file_and_keeps_connections() {
    let pki = Pki::new();
    let next = Pki::new();
    let client_ca = common::unique_temp_path("client-ca.pem");
    std::fs::copy(&pki.ca_file, &client_ca).unwrap();
    let gw = start_serving_healthz(&pki, &["--tls-client-ca", client_ca.to_str().unwrap()]);
    let first = pki.client(Some(pki.client_identity()));
    let second = pki.client(Some(next.client_identity()));
    let mut old = tls_client::wss_connect(gw.ws_addr, &first);
    assert!(refused(&mut tls_client::connect(gw.ws_addr, &second)), "the next CA is not trusted yet");

    // The CA file now names the next CA only.
    std::fs::copy(&next.ca_file, &client_ca).unwrap();
    gw.signal(libc::SIGHUP);
    assert!(common::poll_until(Duration::from_secs(5), || gw.stderr().contains("TLS certificate reloaded")));
    assert!(tls_client::https_get(gw.ws_addr, &second, "/healthz").unwrap().starts_with("HTTP/1.1 200"));
    assert!(refused(&mut tls_client::connect(gw.ws_addr, &first)), "a certificate of the old CA is refused");

    // A CA file with no certificate: logged, the last good configuration stays.
    std::fs::write(&client_ca, "not a certificate").unwrap();
    gw.signal(libc::SIGHUP);
    assert!(common::poll_until(Duration::from_secs(5), || gw.stderr().contains("TLS reload failed")));
    assert!(gw.stderr().contains("tls_client_ca"), "the log names the setting: {}", gw.stderr());
    assert!(tls_client::https_get(gw.ws_addr, &second, "/healthz").unwrap().starts_with("HTTP/1.1 200"));

    // The connection made under the first CA is not dropped by either reload.
    let mut p = gw.publisher();
    common::write_all(&mut p, b"after reload\n");
    assert_eq!(old.read().unwrap(), Message::Text("after reload".into()));
}

/// A measurement, not a check (run with `--ignored --nocapture`): the gateway's live heap and RSS per idle TLS
/// connection (upgraded, handshake done, nothing pending), against as many plain ones.
#[test]
#[ignore]
fn idle_memory_per_tls_connection() {
    const N: u64 = 500;
    let pki = Pki::new();
    let gw = start(&pki, &[]);
    let read = |gw: &Gateway, key: &str| gw.health().get(key).and_then(common::json::Value::as_u64).unwrap();
    let (heap0, rss0) = (read(&gw, "heap_live_bytes"), read(&gw, "rss_bytes"));
    let config = pki.client(None);
    let clients: Vec<_> = (0..N).map(|_| tls_client::wss_connect(gw.ws_addr, &config)).collect();
    gw.wait_connections("all", Duration::from_secs(20), |n| n >= N);
    std::thread::sleep(Duration::from_millis(300));
    let (heap1, rss1) = (read(&gw, "heap_live_bytes"), read(&gw, "rss_bytes"));
    println!(
        "TLS idle: {} B live heap, {} B RSS per connection ({N} connections)",
        (heap1 - heap0) / N,
        rss1.saturating_sub(rss0) / N
    );
    drop(clients);
    let plain = Gateway::start(&["--admin-listen", "127.0.0.1:0"]);
    let (heap0, rss0) = (read(&plain, "heap_live_bytes"), read(&plain, "rss_bytes"));
    let clients: Vec<_> = (0..N).map(|_| plain.ws_connect()).collect();
    plain.wait_connections("all", Duration::from_secs(20), |n| n >= N);
    std::thread::sleep(Duration::from_millis(300));
    let (heap1, rss1) = (read(&plain, "heap_live_bytes"), read(&plain, "rss_bytes"));
    println!(
        "plain idle: {} B live heap, {} B RSS per connection ({N} connections)",
        (heap1 - heap0) / N,
        rss1.saturating_sub(rss0) / N
    );
    drop(clients);
}

#[test]
fn sigterm_closes_wss_clients_with_1001_then_close_notify() {
    let pki = Pki::new();
    let mut gw = start(&pki, &["--shutdown-spread", "0"]);
    let mut ws = tls_client::wss_connect(gw.ws_addr, &pki.client(None));
    gw.wait_connections("1", Duration::from_secs(5), |n| n >= 1);
    gw.signal(libc::SIGTERM);
    match ws.read() {
        Ok(Message::Close(Some(cf))) => assert_eq!(u16::from(cf.code), 1001, "{cf:?}"),
        other => panic!("expected close 1001, got {other:?}"),
    }
    // Our close reply goes out; then the stream ends with close_notify (without it, rustls reports an
    // unexpected end of file, which tungstenite passes on as an I/O error).
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed) => {}
        other => panic!("expected a clean TLS close, got {other:?}"),
    }
    drop(ws);
    let status = gw.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status:?}");
}

/// A PROXY protocol header comes before the TLS handshake (what HAProxy's `send-proxy-v2` does in front of a TLS
/// gateway): the gateway takes it off the raw bytes, then speaks TLS, and keys the per-address limit on the client
/// the header names.
#[test]
fn a_proxy_protocol_header_comes_before_the_tls_handshake() {
    use wsgate::proto::proxy_protocol::encode_v2;
    let pki = Pki::new();
    let gw = start(&pki, &["--proxy-protocol", "--trusted-proxies", "127.0.0.1/32", "--max-connections-per-ip", "1"]);
    let config = pki.client(None);
    let through_proxy = |client: &str| {
        let mut tcp = common::tcp_connect(gw.ws_addr);
        tcp.write_all(&encode_v2(Some(client.parse().unwrap()), gw.ws_addr, &[])).unwrap();
        let conn = rustls::ClientConnection::new(config.clone(), "localhost".try_into().unwrap()).unwrap();
        let stream = rustls::StreamOwned::new(conn, tcp);
        match tungstenite::client(format!("wss://localhost:{}/ws", gw.ws_addr.port()), stream) {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(e.to_string()),
            Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("blocking sockets do not interrupt"),
        }
    };
    let mut first = through_proxy("192.0.2.7:1000").expect("wss after a PROXY header");
    // The same client again: refused (on a TLS listener a refusal decided before the TLS handshake is a close:
    // the client could not read a plain 503; docs/tls.md), counted as a per-address refusal.
    assert!(through_proxy("192.0.2.7:1001").is_err(), "the same client twice was upgraded");
    let scraped = || gw.scrape().sum("wsgate_load_refused_total", &[("reason", "per_ip")]);
    assert!(common::poll_until(Duration::from_secs(5), || scraped() == 1.0), "per_ip refusals: {}", scraped());
    let _other = through_proxy("192.0.2.8:1000").expect("another client through the same proxy");
    let log = gw.stderr();
    assert!(
        log.contains("refused 192.0.2.7 by a close (TLS listener"),
        "the log names the client and the close: {log}"
    );
    let mut p = gw.publisher();
    gw.wait_connections("2", Duration::from_secs(5), |n| n >= 2);
    common::write_all(&mut p, b"through the proxy\n");
    assert_eq!(first.read().unwrap(), Message::Text("through the proxy".into()));
    // Without the header (a ClientHello straight away) the connection is refused before any TLS: closed (the TLS
    // client behind could not read the plain 400 a plain listener writes), counted.
    let mut s = common::tcp_connect(gw.ws_addr);
    s.write_all(b"\x16\x03\x01\x00\x05hello").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty(), "{got:?}");
    let missing = || gw.scrape().sum("wsgate_proxy_refused_total", &[("reason", "missing")]);
    assert!(common::poll_until(Duration::from_secs(5), || missing() == 1.0), "missing: {}", missing());
}
