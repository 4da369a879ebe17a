//! The admin listener (`admin_listen`): `GET /metrics` and `GET /healthz` on an address of their own, so that
//! they need not be public. One small thread with blocking sockets, one request per connection: scrapes and
//! health checks are rare, and nothing here touches a loop thread (both answers are read from `Shared`).
//!
//! Bounds: a request head of at most [`MAX_HEAD`] bytes (431 past it) that must arrive within
//! [`REQUEST_TIMEOUT`] (408 past it); one connection is served at a time, so a client that holds one open delays
//! the next by at most that long. It keeps answering (`/healthz`: 503 `draining`) until the gateway has
//! stopped, after every loop thread has ended.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::stats::Shared;
use crate::proto::handshake::{self, HandshakeConfig, Parsed, Rejection};

/// Most bytes of a request head.
pub const MAX_HEAD: usize = 8192;
/// Time a client has to send its whole request head (and to take the answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The running admin listener; stopped (and joined) by [`AdminServer::stop`] or on drop.
pub struct AdminServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `addr` (port 0 allowed) and starts the thread `wsgate-admin`. Bind errors are returned here.
    pub fn spawn(addr: SocketAddr, shared: Arc<Shared>) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("wsgate-admin".into()).spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::Acquire) {
                    break;
                }
                match stream {
                    Ok(stream) => {
                        if let Err(e) = serve(stream, &shared) {
                            tracing::debug!(error = %e, "admin request failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin listener: accept failed");
                        std::thread::sleep(Duration::from_millis(100)); // e.g. out of file descriptors
                    }
                }
            }
        })?;
        tracing::info!(%addr, "admin listener (/metrics, /healthz) started");
        Ok(Self { addr, stop, thread: Some(thread) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and joins the thread (after the request in progress, bounded by [`REQUEST_TIMEOUT`]).
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        self.stop.store(true, Ordering::Release);
        // The thread blocks in accept: one connection wakes it, and it sees the flag.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        if let Err(e) = TcpStream::connect_timeout(&wake, Duration::from_secs(1)) {
            tracing::warn!(error = %e, "could not wake the admin thread: left running");
            return;
        }
        if thread.join().is_err() {
            tracing::error!("the admin thread panicked");
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Reads one request head (bounded in bytes and time), answers it and closes.
fn serve(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    let cfg = HandshakeConfig { max_header_bytes: MAX_HEAD, ..HandshakeConfig::default() };
    let mut buf = vec![0u8; MAX_HEAD + 1];
    let mut len = 0;
    let response = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break handshake::http_response(408, "text/plain", b"request timeout\n");
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut buf[len..]) {
            Ok(0) => return Ok(()), // gone before asking anything
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        len += n;
        match handshake::parse_request(&buf[..len], &cfg) {
            Ok(Parsed::Partial) if len < buf.len() => continue,
            Ok(Parsed::Partial) => {
                break Rejection { status: 431, reason: "request head too large" }.to_response();
            }
            Ok(Parsed::Complete { head, .. }) => break route(&head, shared),
            Err(rejection) => break rejection.to_response(),
        }
    };
    stream.write_all(&response)?;
    // Half-close, then let the client hang up first (bounded), so that unread input cannot turn into a reset
    // that destroys the answer.
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 512];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}

/// The answer to one request head: pure routing over the parsed head.
fn route(head: &handshake::RequestHead, shared: &Shared) -> Vec<u8> {
    match (head.method.as_str(), head.path_only()) {
        ("GET", "/metrics") => shared.metrics_response(),
        ("GET", "/healthz") => shared.health_response(),
        (_, "/metrics" | "/healthz") => Rejection { status: 405, reason: "method not allowed: use GET" }.to_response(),
        _ => handshake::http_response(404, "text/plain", b"not found: this listener serves /metrics and /healthz\n"),
    }
}
