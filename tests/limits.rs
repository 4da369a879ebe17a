//! Resource limits and their named policies: file-descriptor exhaustion backs off instead of spinning,
//! `max_connections` answers 503, a slow handshake gets 408, and a subscriber that stops reading is closed as a
//! slow consumer (1008) while the others keep receiving.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::raw::{read_head, RawWs};
use common::{tcp_connect, Gateway};

fn upgrade_request() -> &'static [u8] {
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Waits up to `timeout` for a response head on `stream`; None if nothing arrived.
fn try_status(stream: &mut TcpStream, timeout: Duration) -> Option<u16> {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 12];
    match stream.read(&mut buf) {
        Ok(n) if n >= 12 => std::str::from_utf8(&buf[9..12]).ok()?.parse().ok(),
        _ => None,
    }
}

#[test]
fn accept_backs_off_when_out_of_file_descriptors() {
    let gw = Gateway::start_with_open_files_limit(Some(64), &["--threads", "1"]);
    // More clients than descriptors: the rest wait in the listen backlog.
    let mut clients: Vec<TcpStream> = (0..90)
        .map(|_| {
            let mut s = tcp_connect(gw.ws_addr);
            s.write_all(upgrade_request()).unwrap();
            s
        })
        .collect();
    let mut upgraded = Vec::new();
    let mut waiting = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        match try_status(c, Duration::from_millis(if upgraded.is_empty() { 2000 } else { 300 })) {
            Some(101) => upgraded.push(i),
            Some(other) => panic!("client {i}: unexpected status {other}"),
            None => waiting.push(i),
        }
    }
    assert!(upgraded.len() >= 30, "only {} clients were accepted under a 64-descriptor limit", upgraded.len());
    assert!(!waiting.is_empty(), "all 90 clients were accepted under a 64-descriptor limit?");

    // While out of descriptors the loop must not spin on accept().
    let before = cpu_ticks(gw.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(gw.pid()) - before;
    assert!(used < 25, "gateway used {used} ticks of CPU in 1 s while out of descriptors: accept loop spinning?");
    assert!(gw.stderr().contains("out of file descriptors"), "no log line about fd exhaustion");

    // Freeing descriptors lets the waiting clients in, without any new connection to trigger an accept.
    let freed = 20.min(upgraded.len());
    for &i in &upgraded[..freed] {
        clients[i].shutdown(std::net::Shutdown::Both).unwrap();
    }
    let mut admitted = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    for &i in &waiting {
        if admitted == freed.min(waiting.len()) || Instant::now() > deadline {
            break;
        }
        if try_status(&mut clients[i], Duration::from_secs(3)) == Some(101) {
            admitted += 1;
        }
    }
    assert!(admitted >= freed.min(waiting.len()) / 2, "only {admitted} waiting clients admitted after {freed} left");
}

#[test]
fn max_connections_refuses_with_503() {
    let gw = Gateway::start_with_config("max_connections = 3\n", &["--threads", "1"]);
    let held: Vec<RawWs> = (0..3).map(|_| RawWs::connect(gw.ws_addr)).collect();
    let mut extra = tcp_connect(gw.ws_addr);
    extra.write_all(upgrade_request()).unwrap();
    let (head, _) = read_head(&mut extra);
    assert_eq!(head.status, 503, "{head:?}");
    let logged = common::poll_until(Duration::from_secs(2), || gw.stderr().contains("max_connections reached"));
    assert!(logged, "no log line for the refusal");
    drop(held);
    // Capacity frees up once the held connections are gone.
    let ok = common::poll_until(Duration::from_secs(5), || {
        let mut s = tcp_connect(gw.ws_addr);
        s.write_all(upgrade_request()).unwrap();
        read_head(&mut s).0.status == 101
    });
    assert!(ok, "no upgrade possible after the held connections closed");
}

#[test]
fn incomplete_request_head_times_out_with_408() {
    let gw = Gateway::start_with_config("handshake_timeout = 300\n", &[]);
    let mut slow = tcp_connect(gw.ws_addr);
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    let (head, _) = read_head(&mut slow);
    assert_eq!(head.status, 408, "{head:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "408 took {:?}", started.elapsed());
    // A complete handshake right away is unaffected by the timeout.
    let _ok = RawWs::connect(gw.ws_addr);
}

#[test]
fn subscriber_that_stops_reading_is_closed_as_slow_consumer() {
    let gw = Gateway::start_with_config("max_lag_bytes = 1048576\n", &["--ingest", "127.0.0.1:0", "--threads", "1"]);
    let mut reader = gw.ws_connect();
    let stalled = RawWs::connect(gw.ws_addr);
    gw.wait_connections("2 clients", Duration::from_secs(5), |n| n >= 2);

    let mut publisher = gw.publisher();
    let pad = "y".repeat(1000);
    let lines = 16_000; // 16 MB: far more than the lag limit plus both kernel socket buffers (tcp_wmem/rmem max)
    let writer = std::thread::spawn(move || {
        // Paced (about 64 KB every 5 ms) so that the reading client never falls 1 MiB behind.
        let mut batch = String::new();
        for i in 0..lines {
            batch.push_str(&format!("{i} {pad}\n"));
            if batch.len() >= 64 * 1024 {
                common::write_all(&mut publisher, batch.as_bytes());
                batch.clear();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        common::write_all(&mut publisher, batch.as_bytes());
        publisher
    });
    for i in 0..lines {
        let got = common::ws_read_text(&mut reader);
        assert!(got.starts_with(&format!("{i} ")), "reader: message {i} was {:?}", &got[..got.len().min(20)]);
    }
    let _publisher = writer.join().unwrap();
    let slow = gw.health().get("slow_consumers").and_then(|v| v.as_u64()).unwrap_or(0);
    assert_eq!(slow, 1, "the stalled subscriber was not counted as a slow consumer");

    // When it finally reads, it finds whole text frames and then either our close 1008 or (if it read only
    // after the linger time) the end of the stream: never a frame cut in half.
    let mut stream = stalled.stream;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes); // EOF, or a reset after the linger time
    let mut pos = 0;
    let mut last = None;
    while pos < bytes.len() {
        let (opcode, len, header) = match bytes[pos + 1] & 0x7f {
            126 if pos + 4 <= bytes.len() => {
                (bytes[pos] & 0x0f, u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]) as usize, 4)
            }
            127 => panic!("no broadcast frame here is that large"),
            n if n < 126 => (bytes[pos] & 0x0f, n as usize, 2),
            _ => break,
        };
        if pos + header + len > bytes.len() {
            break; // a partial frame at the end: only acceptable if the stream was cut by a reset
        }
        last = Some((opcode, bytes[pos + header..pos + header + len].to_vec()));
        pos += header + len;
    }
    if let Some((8, payload)) = &last {
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1008, "close code");
        assert_eq!(pos, bytes.len(), "nothing after the close frame");
    }
}

/// Upgrades with a 4 KiB receive buffer, so that the gateway's writes to it block early.
fn small_buffer_client(addr: std::net::SocketAddr) -> RawWs {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(common::IO_TIMEOUT)).unwrap();
    stream.write_all(&common::raw::Request::upgrade(addr).bytes()).unwrap();
    let (head, rest) = read_head(&mut stream);
    assert_eq!(head.status, 101, "{head:?}");
    RawWs::from_parts(stream, rest)
}

fn health_u64(gw: &Gateway, key: &str) -> u64 {
    gw.health().get(key).and_then(|v| v.as_u64()).unwrap_or_else(|| panic!("/healthz without {key}"))
}

/// A subscriber whose socket is full of its own replies (echoes) when a broadcast arrives still gets the
/// broadcast once it reads (found in review: it had left the list of connections holding the log, and the log
/// was trimmed past it).
#[test]
fn a_subscriber_blocked_on_its_own_replies_still_gets_the_broadcast() {
    let gw = Gateway::start_with_config(
        "max_private_bytes = 67108864\n",
        &["--ingest", "127.0.0.1:0", "--echo", "--threads", "1"],
    );
    let mut ws = small_buffer_client(gw.ws_addr);
    let payload = vec![b'e'; 60_000];
    for _ in 0..200 {
        ws.send(0x2, &payload);
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut publisher = gw.publisher();
    publisher.write_all(b"hello\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut echoes = 0;
    loop {
        let frame = ws.read_frame();
        match frame.opcode {
            0x2 => echoes += 1,
            0x1 => {
                assert_eq!(frame.payload, b"hello");
                break;
            }
            op => panic!("after {echoes} echoes: opcode {op}"),
        }
    }
    assert_eq!(echoes, 200, "every echo, then the broadcast");
}

/// Clients that close while the gateway is in the middle of a frame to them (a send blocked or in flight), and
/// then never read: their closing connections are cut after the linger time instead of staying for good, and
/// keep nothing pinned.
#[test]
fn closing_clients_that_never_read_are_cut_after_the_linger_time() {
    let gw = Gateway::start_with_config("max_lag_bytes = 67108864\n", &["--ingest", "127.0.0.1:0", "--threads", "1"]);
    let mut clients: Vec<RawWs> = (0..10).map(|_| small_buffer_client(gw.ws_addr)).collect();
    gw.wait_connections("the clients", Duration::from_secs(5), |n| n == 11);
    let mut publisher = gw.publisher();
    let mut line = vec![b'x'; 60_000];
    line.push(b'\n');
    for _ in 0..100 {
        publisher.write_all(&line).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(health_u64(&gw, "log_bytes") > 0, "the clients are behind: the test would test nothing");
    for c in &mut clients {
        c.send(0x8, &1000u16.to_be_bytes());
    }
    let started = Instant::now();
    gw.wait_connections("only the /healthz request", Duration::from_secs(5), |n| n == 1);
    eprintln!("closing clients gone after {:?}", started.elapsed());
    assert_eq!(health_u64(&gw, "pinned_bytes"), 0);
    assert_eq!(health_u64(&gw, "log_bytes"), 0);
    assert_eq!(health_u64(&gw, "slow_consumers"), 0);
}
