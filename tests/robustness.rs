//! The robustness suite: every kind of abuse the issue names, at once, against one gateway that is broadcasting.
//! It must end still serving a fresh client, with a well-behaved client that was connected throughout having
//! received every message in order, and with no connection or file descriptor left behind.
//!
//! Abuse (each in its own thread): garbage after the handshake; resets in the middle of a frame; 1,000 rapid
//! connect/disconnect cycles (at every stage of a connection's life); oversized request heads and frames; floods
//! of pings and of control messages from clients that do not read.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::raw::{client_frame, encode_header, next_mask, read_head, Request};
use common::{tcp_connect, Gateway};
use tungstenite::Message;

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_PING: u8 = 0x9;

/// Drops the socket with SO_LINGER 0: the gateway sees a reset, not a FIN.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/PID/fd").count()
}

/// A connection upgraded by hand, with whatever followed the response head.
fn upgraded(addr: SocketAddr) -> TcpStream {
    let mut stream = tcp_connect(addr);
    stream.write_all(&Request::upgrade(addr).bytes()).unwrap();
    let (head, _) = read_head(&mut stream);
    assert_eq!(head.status, 101, "{head:?}");
    stream
}

/// Reads until the server closes (EOF or reset) or `timeout`; true if it closed.
fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 64 * 1024];
    while Instant::now() < deadline {
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

fn garbage_after_handshake(addr: SocketAddr) {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..200 {
        let mut stream = upgraded(addr);
        let garbage: Vec<u8> = (0..64 + i % 512)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = stream.write_all(&garbage);
        // Either a protocol error (close 1002/1007/1009) or a frame still incomplete: the gateway must not hang on
        // to a connection that sent an invalid frame; an incomplete one it may keep until the client goes.
        if i % 2 == 0 {
            reset(stream);
        }
    }
}

fn resets_mid_frame(addr: SocketAddr) {
    for i in 0..200usize {
        let mut stream = upgraded(addr);
        let payload = vec![b'x'; 1000 + i];
        let mut frame = encode_header(true, 0, OP_TEXT, payload.len() as u64, Some(next_mask()));
        frame.extend_from_slice(&payload[..payload.len() / 2]);
        let _ = stream.write_all(&frame);
        reset(stream);
    }
}

fn rapid_connect_disconnect(addr: SocketAddr) {
    for i in 0..1000 {
        match i % 5 {
            0 => drop(tcp_connect(addr)),
            1 => reset(tcp_connect(addr)),
            2 => {
                let mut s = tcp_connect(addr);
                let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgr");
            }
            3 => drop(upgraded(addr)),
            _ => reset(upgraded(addr)),
        }
    }
}

fn oversized_heads_and_frames(addr: SocketAddr) {
    for _ in 0..50 {
        let mut s = tcp_connect(addr);
        let head = format!("GET /ws HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "h".repeat(20_000));
        let _ = s.write_all(head.as_bytes());
        let (resp, _) = read_head(&mut s);
        assert_eq!(resp.status, 431, "oversized head: {resp:?}");
    }
    for _ in 0..50 {
        let mut s = upgraded(addr);
        // Announces 1 GiB: refused (1009) on the header alone, without the gateway waiting for or buffering it.
        let _ = s.write_all(&encode_header(true, 0, OP_BINARY, 1 << 30, Some(next_mask())));
        assert!(closed_within(&mut s, Duration::from_secs(5)), "a 1 GiB frame header did not end the connection");
    }
}

/// Clients that flood pings or control messages and never read what the gateway answers.
fn floods(addr: SocketAddr) -> Vec<TcpStream> {
    let mut kept = Vec::new();
    for i in 0..20 {
        let mut s = upgraded(addr);
        s.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
        let one = if i % 2 == 0 {
            client_frame(OP_PING, &[b'p'; 100])
        } else {
            client_frame(OP_TEXT, br#"{"op":"subscribe","topics":["flood-a","flood-b"]}"#)
        };
        let burst: Vec<u8> = one.iter().copied().cycle().take(one.len() * 2000).collect();
        for _ in 0..10 {
            // A write that times out means the gateway stopped reading this client (it is closing or pushing
            // back): both are fine, what matters is everyone else.
            if s.write_all(&burst).is_err() {
                break;
            }
        }
        kept.push(s); // still unread: the gateway must bound what it holds for them
    }
    kept
}

#[test]
fn abuse_of_every_kind_leaves_the_gateway_serving_everyone_else() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0", "--threads", "2", "--max-header-bytes", "8192"]);
    let baseline_fds = fd_count(gw.pid());

    // The witness: a well-behaved client that must see every message, in order.
    let mut witness = gw.ws_connect();
    witness.get_mut().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // `/healthz` counts the connection that asks too.
    gw.wait_connections("the witness", Duration::from_secs(5), |n| n == 2);

    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let mut publisher = gw.publisher();
    let feed = {
        let (stop, published) = (stop.clone(), published.clone());
        std::thread::spawn(move || {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut lines = String::new();
                for _ in 0..20 {
                    seq += 1;
                    lines.push_str(&format!("m {seq}\n"));
                }
                common::write_all(&mut publisher, lines.as_bytes());
                published.store(seq, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
            publisher
        })
    };
    let reader = std::thread::spawn(move || {
        let mut expected = 1u64;
        loop {
            match witness.read() {
                Ok(Message::Text(t)) => {
                    let n: u64 = t.strip_prefix("m ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{t:?}"));
                    assert_eq!(n, expected, "the witness lost or reordered messages");
                    expected += 1;
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                Ok(other) => panic!("witness got {other:?}"),
                Err(e) => return (expected - 1, e.to_string(), witness),
            }
        }
    });

    let addr = gw.ws_addr;
    let abusers: Vec<(&str, JoinHandle<()>)> = vec![
        ("garbage after the handshake", std::thread::spawn(move || garbage_after_handshake(addr))),
        ("resets mid-frame", std::thread::spawn(move || resets_mid_frame(addr))),
        ("1,000 connect/disconnect cycles", std::thread::spawn(move || rapid_connect_disconnect(addr))),
        ("oversized heads and frames", std::thread::spawn(move || oversized_heads_and_frames(addr))),
    ];
    let flooders = floods(addr);
    for (name, handle) in abusers {
        handle.join().unwrap_or_else(|_| panic!("abuse thread {name:?} failed"));
    }

    // A fresh client is served at once, and receives what is published next.
    let started = Instant::now();
    let mut fresh = gw.ws_connect();
    assert!(started.elapsed() < Duration::from_secs(1), "a fresh client waited {:?}", started.elapsed());
    fresh.get_mut().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    match fresh.read().expect("the fresh client receives the feed") {
        Message::Text(t) => assert!(t.starts_with("m "), "{t:?}"),
        other => panic!("fresh client got {other:?}"),
    }
    assert!(gw.health().get("connections").is_some(), "/healthz answers");

    // Stop the feed, and let the witness read the rest.
    stop.store(true, Ordering::Relaxed);
    let publisher = feed.join().unwrap();
    let last = published.load(Ordering::Relaxed);
    drop(flooders);
    drop(fresh);
    let (received, why, witness) = reader.join().expect("the witness saw every message in order");
    assert_eq!(received, last, "the witness stopped early: {why}");

    // Nothing left behind: the witness's connection only, descriptors back to where they were.
    gw.wait_connections("only the witness", Duration::from_secs(15), |n| n == 2);
    let leaked = common::poll_until(Duration::from_secs(10), || fd_count(gw.pid()) <= baseline_fds + 2);
    assert!(leaked, "descriptors: {} before, {} after", baseline_fds, fd_count(gw.pid()));
    drop((witness, publisher));
}
