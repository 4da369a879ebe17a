//! Graceful shutdown: SIGTERM/SIGINT close every client with 1001 and the process exits 0 within a few seconds.

mod common;

use std::time::{Duration, Instant};

use common::raw::{RawWs, OP_CLOSE};
use common::Gateway;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

/// A new connection is refused, or at least never upgraded.
fn assert_not_accepting(gw: &Gateway) {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&gw.ws_addr, Duration::from_secs(2)) else { return };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = s.write_all(&common::raw::Request::upgrade(gw.ws_addr).bytes());
    let mut buf = [0u8; 512];
    if let Ok(n) = std::io::Read::read(&mut s, &mut buf) {
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(!text.contains(" 101 "), "a connection made after SIGTERM was upgraded: {text:?}");
    }
}

#[test]
fn sigterm_sends_1001_to_clients_and_exits_0() {
    let mut gw = Gateway::start(&[]);
    let mut ws = gw.ws_connect();
    let mut raw = RawWs::connect(gw.ws_addr);

    let t0 = Instant::now();
    gw.signal(libc::SIGTERM);

    match ws.read() {
        Ok(Message::Close(Some(cf))) => assert_eq!(cf.code, CloseCode::Away, "tungstenite client: close {cf:?}"),
        other => panic!("tungstenite client: expected close 1001 after SIGTERM, got {other:?}"),
    }
    // tungstenite has queued its close reply; reading on sends it and then sees the server close the TCP stream.
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed) => {}
        other => panic!("tungstenite client: expected a clean close after the close handshake, got {other:?}"),
    }
    raw.expect_close(1001, "raw client after SIGTERM");
    // Both clients have seen the server's FIN; like real clients, they now close their sockets.
    drop(ws);
    drop(raw);

    let status = gw.wait_exit(Duration::from_secs(5)).unwrap_or_else(|| {
        panic!("wsgate still running {:?} after SIGTERM although every client answered the close", t0.elapsed())
    });
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    assert!(t0.elapsed() < Duration::from_secs(3), "shutdown with cooperative clients took {:?}", t0.elapsed());
}

#[test]
fn sigterm_waits_only_for_close_frames_not_for_tcp_close() {
    // The spec: on SIGTERM the gateway "sends close 1001 to every client, waits up to 5 s for close frames".
    // This client answers with its close frame at once but keeps its socket open (as tungstenite does until
    // the application drops it). With every close frame in, the gateway has nothing left to wait for.
    let mut gw = Gateway::start(&[]);
    let mut ws = RawWs::connect(gw.ws_addr);
    let t0 = Instant::now();
    gw.signal(libc::SIGTERM);
    let f = ws.read_frame();
    assert_eq!((f.opcode, f.close_code()), (OP_CLOSE, Some(1001)), "{f:?}");
    ws.send(OP_CLOSE, &1001u16.to_be_bytes());
    let status = gw.wait_exit(Duration::from_secs(8)).expect("wsgate exits after SIGTERM");
    assert!(status.success(), "exit status: {status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "wsgate took {:?} to exit although the only client answered the close at once",
        t0.elapsed()
    );
    drop(ws);
}

#[test]
fn sigterm_exits_0_even_if_a_client_never_answers_the_close() {
    // One loop thread, so that the close above proves the only listener has been dropped.
    let mut gw = Gateway::start(&["--threads", "1"]);
    let mut silent = RawWs::connect(gw.ws_addr);
    let t0 = Instant::now();
    gw.signal(libc::SIGTERM);
    let f = silent.read_frame();
    assert_eq!((f.opcode, f.close_code()), (OP_CLOSE, Some(1001)), "{f:?}");
    // While it waits for the silent client, the gateway accepts no one new.
    assert_not_accepting(&gw);
    // No reply: the gateway gives up after its 5 s grace period.
    let status = gw
        .wait_exit(Duration::from_secs(8))
        .unwrap_or_else(|| panic!("wsgate still running {:?} after SIGTERM with a silent client", t0.elapsed()));
    assert!(status.success(), "exit status: {status:?}");
    silent.expect_eof("silent client after the gateway exited");
}

#[test]
fn sigint_with_no_clients_exits_0_promptly() {
    let mut gw = Gateway::start(&["--ingest", "127.0.0.1:0"]);
    let t0 = Instant::now();
    gw.signal(libc::SIGINT);
    let status =
        gw.wait_exit(Duration::from_secs(3)).unwrap_or_else(|| panic!("wsgate still running 3 s after SIGINT"));
    assert!(status.success(), "exit status after SIGINT: {status:?}");
    eprintln!("exited {:?} after SIGINT", t0.elapsed());
}

#[test]
fn sigterm_during_broadcast_still_delivers_close_1001() {
    let mut gw = Gateway::start(&["--ingest", "127.0.0.1:0"]);
    let mut ws = gw.ws_connect();
    let mut publisher = gw.publisher();
    let mut batch = String::new();
    for i in 0..2000 {
        batch.push_str(&format!("line {i}\n"));
    }
    common::write_all(&mut publisher, batch.as_bytes());
    assert_eq!(common::ws_read_text(&mut ws), "line 0");
    gw.signal(libc::SIGTERM);
    // Whatever part of the feed was already queued may come first; then the close.
    let mut last = 0;
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let n: u32 = t.strip_prefix("line ").and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{t:?}"));
                assert_eq!(n, last + 1, "feed order before the close");
                last = n;
            }
            Ok(Message::Close(Some(cf))) => {
                assert_eq!(cf.code, CloseCode::Away, "{cf:?}");
                break;
            }
            other => panic!("expected feed lines then close 1001, got {other:?} after line {last}"),
        }
    }
    while ws.read().is_ok() {}
    drop(ws);
    let status = gw.wait_exit(Duration::from_secs(5)).expect("wsgate exits within 5 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    drop(publisher);
}
