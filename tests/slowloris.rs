//! Slowloris: 10,000 connections that send a request head a byte at a time and never finish it must not keep a
//! new, valid client from being served (upgraded and receiving the feed) within a second, and
//! `handshake_timeout` must reap every one of them.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::json::Value;
use common::Gateway;

/// Half-open handshakes held (the test process may open 20,000 files here).
const HALF_OPEN: usize = 10_000;
/// Each half-open connection sends one more byte of its head this often.
const TRICKLE: Duration = Duration::from_millis(500);

fn connections(gw: &Gateway) -> u64 {
    gw.health().get("connections").and_then(Value::as_u64).expect("connections in /healthz")
}

#[test]
fn ten_thousand_half_open_handshakes_neither_delay_a_new_client_nor_outlive_the_handshake_timeout() {
    let gw = Gateway::start_with_config("handshake_timeout = 6000\n", &["--demo", "--demo-rate", "200"]);
    let opening = Instant::now();
    let mut held = Vec::with_capacity(HALF_OPEN);
    for i in 0..HALF_OPEN {
        let mut s = TcpStream::connect_timeout(&gw.ws_addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("half-open connection {i}: {e}"));
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
        s.set_nonblocking(true).unwrap();
        held.push(s);
    }
    let all_in = common::poll_until(Duration::from_secs(10), || connections(&gw) >= HALF_OPEN as u64);
    assert!(all_in, "the gateway holds {} of {HALF_OPEN} half-open handshakes", connections(&gw));
    eprintln!("{HALF_OPEN} half-open handshakes held after {:?}", opening.elapsed());

    // They keep trickling while new clients come.
    let stop = Arc::new(AtomicBool::new(false));
    let trickler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let round = Instant::now();
                for s in &mut held {
                    let _ = s.write(b"a"); // a reaped one fails: fine
                }
                std::thread::sleep(TRICKLE.saturating_sub(round.elapsed()));
            }
            held
        })
    };
    for attempt in 0..5 {
        let started = Instant::now();
        let mut ws = gw.ws_connect();
        let first = common::ws_read_text(&mut ws);
        let served = started.elapsed();
        assert!(!first.is_empty());
        assert!(
            served < Duration::from_secs(1),
            "attempt {attempt}: a new client waited {served:?} for its first message"
        );
        eprintln!("attempt {attempt}: upgraded and first message after {served:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let mut held = trickler.join().expect("trickler");

    // The handshake timeout (6 s after each accept) reaps them all; a new client is still served after it.
    let reaped = common::poll_until(Duration::from_secs(15), || connections(&gw) <= 1);
    assert!(reaped, "{} connections still held after the handshake timeout", connections(&gw));
    let mut timed_out = 0;
    for s in held.iter_mut().step_by(100) {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut answer = Vec::new();
        match s.read_to_end(&mut answer) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {} // closed with our trickled bytes unread
            Err(e) => panic!("a half-open connection was not closed: {e}"),
        }
        if answer.starts_with(b"HTTP/1.1 408") {
            timed_out += 1;
        }
    }
    assert!(timed_out > 0, "no reaped connection got its 408");
    let mut ws = gw.ws_connect();
    common::ws_read_text(&mut ws);
}
