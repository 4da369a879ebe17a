//! Misbehaving clients must not disturb the others: abrupt disconnects mid-frame or mid-handshake, and a client
//! that stops reading.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::raw::{encode_frame, encode_header, next_mask, RawWs, Request, OP_BINARY, OP_TEXT};
use common::{tcp_connect, ws_read_text, Gateway};

/// Drops `stream` with a reset (SO_LINGER 0) instead of a FIN.
fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
}

#[test]
fn abrupt_disconnects_mid_frame_do_not_disturb_other_clients() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0"]);
    let base = gw.connections();
    let mut good: Vec<_> = (0..3).map(|_| gw.ws_connect()).collect();
    gw.wait_connections("base + 3", Duration::from_secs(5), |n| n == base + 3);
    let mut publisher = gw.publisher();

    const ROUNDS: usize = 6;
    for round in 0..ROUNDS {
        common::write_all(&mut publisher, format!("before-{round}\n").as_bytes());
        let mut ws = RawWs::connect(gw.ws_addr);
        let frame = encode_frame(true, 0, OP_TEXT, &[b'z'; 300], Some(next_mask()));
        match round {
            // Half of a frame header, then FIN.
            0 => ws.send_raw(&frame[..1]).unwrap(),
            // Header and half the payload, then FIN.
            1 => ws.send_raw(&frame[..150]).unwrap(),
            // Header and half the payload, then RST.
            2 => {
                ws.send_raw(&frame[..150]).unwrap();
                reset(ws.stream);
                common::write_all(&mut publisher, format!("after-{round}\n").as_bytes());
                continue;
            }
            // A huge frame announced, a little sent, then RST.
            3 => {
                let mut b = encode_header(true, 0, OP_BINARY, 900_000, Some(next_mask()));
                b.extend_from_slice(&[0u8; 1000]);
                ws.send_raw(&b).unwrap();
                reset(ws.stream);
                common::write_all(&mut publisher, format!("after-{round}\n").as_bytes());
                continue;
            }
            // Half of a fragmented message, then FIN.
            4 => {
                ws.send_frame(false, OP_TEXT, b"first half");
                ws.send_raw(&frame[..10]).unwrap();
            }
            // Half an upgrade request, then RST.
            _ => {
                let mut s = tcp_connect(gw.ws_addr);
                s.write_all(&Request::upgrade(gw.ws_addr).bytes()[..40]).unwrap();
                reset(s);
            }
        }
        drop(ws);
        common::write_all(&mut publisher, format!("after-{round}\n").as_bytes());
    }
    common::write_all(&mut publisher, b"end\n");

    for (i, ws) in good.iter_mut().enumerate() {
        for round in 0..ROUNDS {
            for want in [format!("before-{round}"), format!("after-{round}")] {
                let got = ws_read_text(ws);
                assert_eq!(got, want, "good client {i}");
            }
        }
        assert_eq!(ws_read_text(ws), "end", "good client {i}");
    }
    // The dead connections are reaped.
    gw.wait_connections("back to base + 3", Duration::from_secs(5), |n| n == base + 3);
}

#[test]
fn a_client_that_stops_reading_does_not_hold_up_the_others() {
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0"]);
    let mut good: Vec<_> = (0..2).map(|_| gw.ws_connect()).collect();
    // Connected and upgraded, but never reads a byte: its receive window fills up.
    let stalled = RawWs::connect(gw.ws_addr);
    stalled.stream.set_nonblocking(true).unwrap();
    socket2::SockRef::from(&stalled.stream).set_recv_buffer_size(4096).unwrap();

    // ~8 MiB, more than any per-client backlog limit and the socket buffers together.
    let pad = "x".repeat(1000);
    let lines = 8_000;
    let mut publisher = gw.publisher();
    let writer = std::thread::spawn(move || {
        let mut batch = String::new();
        for i in 0..lines {
            batch.push_str(&format!("{i} {pad}\n"));
            if batch.len() > 64 * 1024 {
                common::write_all(&mut publisher, batch.as_bytes());
                batch.clear();
            }
        }
        common::write_all(&mut publisher, batch.as_bytes());
        publisher
    });
    // The good clients are read in lockstep so that neither of them lags behind.
    for i in 0..lines {
        for (c, ws) in good.iter_mut().enumerate() {
            let got = ws_read_text(ws);
            let n = got.split(' ').next().and_then(|s| s.parse::<usize>().ok());
            assert_eq!(n, Some(i), "good client {c}: message {i} was {:?}", &got[..got.len().min(40)]);
        }
    }
    let publisher = writer.join().expect("publisher thread");
    drop(publisher);
    drop(stalled);
}

#[test]
fn pongs_interleave_with_broadcast_only_at_frame_boundaries() {
    // A reader slower than the feed, with a fixed receive buffer, makes the gateway's writes block, mostly in
    // the middle of a broadcast frame; pongs (and echoes) queued meanwhile must wait for the frame in progress.
    // The raw reader fails on any corruption. (The buffer stays above the loopback MSS: a smaller one only
    // adds TCP persist-timer stalls.) About 2.5 MB in all, under the 4 MiB slow-consumer limit.
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0", "--echo"]);
    let mut ws = {
        let s = tcp_connect(gw.ws_addr);
        socket2::SockRef::from(&s).set_recv_buffer_size(256 * 1024).unwrap();
        let mut s = s;
        s.write_all(&Request::upgrade(gw.ws_addr).bytes()).unwrap();
        let (head, rest) = common::raw::read_head(&mut s);
        assert_eq!(head.status, 101);
        RawWs::from_parts(s, rest)
    };
    let lines = 3000usize;
    let mut publisher = gw.publisher();
    let writer = std::thread::spawn(move || {
        let mut batch = String::new();
        for i in 0..lines {
            batch.push_str(&format!("{i}:{}\n", "y".repeat(700 + i % 300)));
        }
        common::write_all(&mut publisher, batch.as_bytes());
        publisher
    });
    let mut next_line = 0usize;
    let mut pings_sent = 0u32;
    let mut pongs_seen = 0u32;
    let mut echoes_seen = 0u32;
    // First a burst while nothing has been read yet: the gateway's backlog for us is at its largest.
    let publisher = writer.join().expect("publisher thread");
    for _ in 0..5 {
        ws.send(common::raw::OP_PING, &pings_sent.to_be_bytes());
        ws.send(OP_TEXT, format!("echo-{pings_sent}").as_bytes());
        pings_sent += 1;
    }
    while next_line < lines || pongs_seen < pings_sent || echoes_seen < pings_sent {
        let f = ws.read_frame();
        match f.opcode {
            OP_TEXT => {
                let text = String::from_utf8(f.payload).expect("broadcast text is UTF-8");
                if let Some(n) = text.strip_prefix("echo-") {
                    assert_eq!(n.parse::<u32>().ok(), Some(echoes_seen), "echo order");
                    echoes_seen += 1;
                    continue;
                }
                let (n, body) =
                    text.split_once(':').unwrap_or_else(|| panic!("corrupt frame {:?}", &text[..40.min(text.len())]));
                assert_eq!(n.parse::<usize>().ok(), Some(next_line), "broadcast order");
                assert_eq!(body.len(), 700 + next_line % 300, "line {next_line} length");
                assert!(body.bytes().all(|b| b == b'y'), "line {next_line} corrupted");
                next_line += 1;
                if next_line.is_multiple_of(10) && next_line < lines {
                    ws.send(common::raw::OP_PING, &pings_sent.to_be_bytes());
                    ws.send(OP_TEXT, format!("echo-{pings_sent}").as_bytes());
                    pings_sent += 1;
                }
            }
            common::raw::OP_PONG => {
                assert_eq!(f.payload, pongs_seen.to_be_bytes(), "pong order");
                pongs_seen += 1;
            }
            op => panic!("unexpected opcode {op:#x}"),
        }
    }
    drop(publisher);
}
