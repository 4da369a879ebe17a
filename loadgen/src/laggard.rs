//! `wsgate-loadgen laggard`: slow consumers on purpose, to measure what they cost everyone else
//! (`scripts/bench-slow.sh`). N connections upgrade (with a small receive buffer, so the gateway's sends block
//! soon), then either never read again (`--mode stop`) or read `--read-bytes` every `--every-ms` (`--mode
//! slow`), for `--duration` seconds. At the end one JSON line on stdout says what they got: bytes read, and how
//! each connection ended (still open, closed by the gateway with a close frame and its code, or cut).
//!
//! Blocking sockets, one thread per connection: a handful of laggards, not thousands.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::addrs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LagMode {
    /// Upgrade, then never read again.
    Stop,
    /// Read `--read-bytes` every `--every-ms`.
    Slow,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Gateway to connect to, `ws://HOST:PORT/PATH` (a query such as `?topics=A` subscribes at connect).
    #[arg(long)]
    pub url: String,
    /// Connections.
    #[arg(long, default_value_t = 1)]
    pub connections: u32,
    #[arg(long, value_enum, default_value = "stop")]
    pub mode: LagMode,
    /// Subprotocol to ask for (e.g. `wsgate.v1.json`); none: the raw format.
    #[arg(long)]
    pub protocol: Option<String>,
    /// Receive buffer of each connection (SO_RCVBUF), bytes.
    #[arg(long, default_value_t = 4096)]
    pub rcvbuf: usize,
    /// slow: bytes per read.
    #[arg(long, default_value_t = 4096)]
    pub read_bytes: usize,
    /// slow: pause between reads, ms.
    #[arg(long, default_value_t = 10)]
    pub every_ms: u64,
    /// How long to keep the connections, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
}

/// How one connection ended.
#[derive(Debug, Default)]
struct Outcome {
    bytes: u64,
    /// The close code of the gateway's close frame, when one was read.
    close_code: Option<u16>,
    /// The stream ended (EOF or reset) before the duration was over.
    cut: bool,
}

pub fn run(args: Args) -> ExitCode {
    let target = match addrs::parse_url(&args.url) {
        Ok(t) if t.tls => {
            eprintln!("wsgate-loadgen laggard: wss:// is not supported (only subscribe and echo speak TLS)");
            return ExitCode::FAILURE;
        }
        Ok(t) => t,
        Err(e) => {
            eprintln!("wsgate-loadgen laggard: {e}");
            return ExitCode::FAILURE;
        }
    };
    let until = Instant::now() + Duration::from_secs_f64(args.duration.max(0.0));
    let args = std::sync::Arc::new(args);
    let threads: Vec<_> = (0..args.connections)
        .map(|i| {
            let (target, args) = (target.clone(), args.clone());
            std::thread::spawn(move || match lag(&target, &args, until) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("wsgate-loadgen laggard: connection {i}: {e}");
                    Outcome { cut: true, ..Outcome::default() }
                }
            })
        })
        .collect();
    let outcomes: Vec<Outcome> = threads.into_iter().map(|t| t.join().unwrap_or_default()).collect();
    let closed: Vec<u16> = outcomes.iter().filter_map(|o| o.close_code).collect();
    let report = serde_json::json!({
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "connections": args.connections,
        "bytes_read": outcomes.iter().map(|o| o.bytes).sum::<u64>(),
        "closed_with": closed,
        "cut": outcomes.iter().filter(|o| o.cut && o.close_code.is_none()).count(),
        "open_at_end": outcomes.iter().filter(|o| !o.cut && o.close_code.is_none()).count(),
    });
    println!("{report}");
    ExitCode::SUCCESS
}

fn lag(target: &addrs::Target, args: &Args, until: Instant) -> io::Result<Outcome> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_recv_buffer_size(args.rcvbuf)?;
    socket.connect(&target.addr.into())?;
    let mut stream: TcpStream = socket.into();
    let protocol = args.protocol.as_deref().map_or(String::new(), |p| format!("Sec-WebSocket-Protocol: {p}\r\n"));
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n",
        target.path, target.host
    );
    stream.write_all(request.as_bytes())?;
    // The response head, byte by byte (what follows it is frames).
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 || head.len() > 16 * 1024 {
            return Err(io::Error::other("no complete upgrade response"));
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(io::Error::other(String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_string()));
    }
    let mut out = Outcome::default();
    if args.mode == LagMode::Stop {
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        return Ok(out);
    }
    // Slow: read a little now and then; watch for the gateway's close frame at the start of a read's frames
    // (a frame header is found by walking the frames read so far).
    let mut buf = vec![0u8; args.read_bytes.max(1)];
    let mut frames = FrameWalk::default();
    stream.set_read_timeout(Some(Duration::from_millis(args.every_ms.max(1) * 4 + 100)))?;
    while Instant::now() < until {
        match stream.read(&mut buf) {
            Ok(0) => {
                out.cut = true;
                break;
            }
            Ok(n) => {
                out.bytes += n as u64;
                if let Some(code) = frames.feed(&buf[..n]) {
                    out.close_code = Some(code);
                    break;
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(_) => {
                out.cut = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(args.every_ms));
    }
    Ok(out)
}

/// Follows the server's frames (unmasked) through the bytes read, to find a close frame and its code.
#[derive(Debug, Default)]
struct FrameWalk {
    /// Bytes of the current frame still to skip.
    skip: u64,
    /// A frame header (or close payload) split over reads.
    pending: Vec<u8>,
}

impl FrameWalk {
    /// Takes the next bytes read; returns the close code once a close frame's code is in.
    fn feed(&mut self, data: &[u8]) -> Option<u16> {
        let mut i = 0;
        loop {
            // A data frame's payload is skipped in bulk; headers (and a close's code) are gathered byte by byte.
            let k = self.skip.min((data.len() - i) as u64) as usize;
            self.skip -= k as u64;
            i += k;
            if i == data.len() {
                return None;
            }
            self.pending.push(data[i]);
            i += 1;
            let p = &self.pending;
            if p.len() < 2 {
                continue;
            }
            let (len, header) = match p[1] & 0x7f {
                126 if p.len() >= 4 => (u64::from(u16::from_be_bytes([p[2], p[3]])), 4),
                127 if p.len() >= 10 => (u64::from_be_bytes(p[2..10].try_into().expect("8 bytes")), 10),
                126 | 127 => continue,
                n => (u64::from(n), 2),
            };
            if p[0] & 0x0f == 0x8 {
                if len < 2 {
                    return Some(1005); // a close without a code
                }
                if p.len() >= header + 2 {
                    return Some(u16::from_be_bytes([p[header], p[header + 1]]));
                }
                continue;
            }
            if p.len() == header {
                self.skip = len;
                self.pending.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_close_code_after_frames_split_anyhow() {
        let mut wire = Vec::new();
        for n in [3usize, 200, 70_000] {
            wire.push(0x81);
            match n {
                0..=125 => wire.push(n as u8),
                126..=65535 => {
                    wire.push(126);
                    wire.extend_from_slice(&(n as u16).to_be_bytes());
                }
                _ => {
                    wire.push(127);
                    wire.extend_from_slice(&(n as u64).to_be_bytes());
                }
            }
            wire.extend(std::iter::repeat_n(b'x', n));
        }
        wire.extend_from_slice(&[0x88, 4, 0x03, 0xf0, b'o', b'k']);
        for step in [1, 2, 3, 7, 1000, wire.len()] {
            let mut walk = FrameWalk::default();
            let found = wire.chunks(step).find_map(|c| walk.feed(c));
            assert_eq!(found, Some(1008), "step {step}");
        }
    }
}
