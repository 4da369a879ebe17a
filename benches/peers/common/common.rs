//! Plumbing shared by the benchmark baseline peers (included by each peer with `#[path]`): the command line, the
//! listener, the open-files limit and the upstream feed client. Nothing here is WebSocket-specific, so the peers
//! differ only in how they speak WebSocket.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Longest feed line broadcast, as wsgate's default `max_line_bytes`; longer lines are dropped.
pub const MAX_LINE_BYTES: usize = 65536;
/// Fixed delay before reconnecting to the upstream feed.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Listen backlog, as wsgate's default `backlog` (tokio's `TcpListener::bind` uses 1024).
const BACKLOG: u32 = 4096;

pub struct Args {
    pub listen: SocketAddr,
    pub upstream: Option<String>,
    pub echo: bool,
    /// Tokio worker threads; `None` = tokio's default (one per core).
    pub threads: Option<usize>,
}

fn usage(name: &str) -> String {
    format!(
        "{name}: benchmark baseline peer for wsgate (not for production)\n\n\
         usage: {name} [--listen ADDR] [--upstream HOST:PORT] [--echo] [--threads N]\n\n  \
         --listen ADDR         WebSocket listen address, endpoint GET /ws [default: 127.0.0.1:8080]\n  \
         --upstream HOST:PORT  TCP feed server; every line is broadcast as a text message\n  \
         --echo                echo client data messages back\n  \
         --threads N           tokio worker threads [default: one per core]\n"
    )
}

/// Parses `--listen`, `--upstream`, `--echo`, `--threads` (also as `--flag=value`); exits with usage on error.
pub fn parse_args(name: &str) -> Args {
    let mut args = Args { listen: "127.0.0.1:8080".parse().unwrap(), upstream: None, echo: false, threads: None };
    let fail = |msg: &str| -> ! {
        eprintln!("{name}: {msg}\n\n{}", usage(name));
        std::process::exit(2)
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value =
            || inline.clone().or_else(|| it.next()).unwrap_or_else(|| fail(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--listen" => args.listen = value().parse().unwrap_or_else(|e| fail(&format!("--listen: {e}"))),
            "--upstream" => args.upstream = Some(value()),
            "--threads" => {
                let n: usize = value().parse().unwrap_or_else(|e| fail(&format!("--threads: {e}")));
                args.threads = (n > 0).then_some(n);
            }
            "--echo" => args.echo = true,
            "-h" | "--help" => {
                print!("{}", usage(name));
                std::process::exit(0)
            }
            _ => fail(&format!("unknown argument {arg:?}")),
        }
    }
    args
}

/// The multi-threaded tokio runtime with `threads` workers (tokio's default, one per core, when `None`).
pub fn runtime(threads: Option<usize>) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    builder.enable_all().build().expect("tokio runtime")
}

/// Raises the soft open-files limit to the hard limit, as wsgate does at start.
pub fn raise_nofile_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("could not raise the open-files limit: {e}");
    }
}

/// Binds `addr` with `SO_REUSEADDR` and a 4096 backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Prints the line harnesses wait for: `listening on ws://ADDR/ws`.
pub fn announce(listener: &TcpListener) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on ws://{}/ws", listener.local_addr()?)?;
    out.flush()
}

/// Accepted sockets get `TCP_NODELAY`, as in wsgate: each message leaves at once.
pub fn prepare(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
}

/// Connects to the feed server at `addr` forever (fixed 100 ms retry) and calls `on_line` with each non-empty line,
/// without its `\n` and one trailing `\r`, in order. Lines over [`MAX_LINE_BYTES`] are dropped; UTF-8 is left to
/// the caller.
pub async fn run_upstream(addr: String, mut on_line: impl FnMut(Bytes)) {
    let mut buf = Vec::with_capacity(4096);
    let mut failing = false;
    loop {
        match TcpStream::connect(&addr).await {
            Ok(stream) => {
                failing = false;
                let _ = stream.set_nodelay(true);
                eprintln!("upstream {addr}: connected");
                let mut reader = BufReader::with_capacity(64 * 1024, stream);
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf).await {
                        Ok(0) => {
                            eprintln!("upstream {addr}: closed");
                            break;
                        }
                        Ok(_) if buf.last() != Some(&b'\n') => {
                            eprintln!("upstream {addr}: closed mid-line");
                            break;
                        }
                        Ok(_) => {
                            let line = &buf[..buf.len() - 1];
                            let line = line.strip_suffix(b"\r").unwrap_or(line);
                            if !line.is_empty() && line.len() <= MAX_LINE_BYTES {
                                on_line(Bytes::copy_from_slice(line));
                            }
                        }
                        Err(e) => {
                            eprintln!("upstream {addr}: {e}");
                            break;
                        }
                    }
                }
            }
            // Logged once per outage, not every 100 ms.
            Err(e) if !failing => {
                failing = true;
                eprintln!("upstream {addr}: connect: {e} (retrying every {RECONNECT_DELAY:?})");
            }
            Err(_) => {}
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}
