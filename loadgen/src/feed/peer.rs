//! One connected gateway: a non-blocking socket plus a bounded backlog of bytes the socket has not taken yet.
//!
//! The schedule never waits for a socket. A batch the socket cannot take at once goes to the backlog (whole
//! messages, plus the tail of a message the kernel took part of, so the stream stays line-aligned); once the
//! backlog would pass its bound, further messages for this peer are dropped and counted. The time a peer spends
//! with a non-empty backlog is its "behind" time.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;

#[derive(Debug)]
pub struct Peer {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    /// Unsent bytes are `backlog[head..]`.
    backlog: Vec<u8>,
    head: usize,
    behind_since: Option<u64>,
    /// Total ns this peer had unsent bytes (finished intervals only; see [`Peer::behind_ns`]).
    behind_done_ns: u64,
    pub dropped: u64,
    pub max_backlog: usize,
    pub bytes_sent: u64,
    /// Registered for WRITABLE (only while there is a backlog).
    pub watching_writable: bool,
}

impl Peer {
    pub fn new(stream: TcpStream, addr: SocketAddr) -> Self {
        Peer {
            stream,
            addr,
            backlog: Vec::new(),
            head: 0,
            behind_since: None,
            behind_done_ns: 0,
            dropped: 0,
            max_backlog: 0,
            bytes_sent: 0,
            watching_writable: false,
        }
    }

    /// Bytes waiting for the socket.
    pub fn pending(&self) -> usize {
        self.backlog.len() - self.head
    }

    /// Time spent behind up to `now_ns`, the current stretch included.
    pub fn behind_ns(&self, now_ns: u64) -> u64 {
        self.behind_done_ns + self.behind_since.map_or(0, |s| now_ns.saturating_sub(s))
    }

    /// Sends one batch of whole `msg_size`-byte messages, or queues what the socket does not take, within
    /// `bound` bytes of backlog. An error means the connection is gone.
    pub fn offer(&mut self, batch: &[u8], msg_size: usize, bound: usize, now_ns: u64) -> io::Result<()> {
        if self.pending() > 0 {
            self.flush(now_ns)?;
        }
        let written = if self.pending() == 0 { self.write_some(batch)? } else { 0 };
        let rest = &batch[written..];
        if rest.is_empty() {
            return Ok(());
        }
        // The kernel may have taken part of a message: its tail must follow, whatever the bound says.
        let partial = (msg_size - written % msg_size) % msg_size;
        let whole = (rest.len() - partial) / msg_size;
        let room = bound.saturating_sub(self.pending() + partial) / msg_size;
        let keep = whole.min(room);
        self.dropped += (whole - keep) as u64;
        self.enqueue(&rest[..partial + keep * msg_size], now_ns);
        Ok(())
    }

    /// Writes as much of the backlog as the socket takes.
    pub fn flush(&mut self, now_ns: u64) -> io::Result<()> {
        if self.pending() == 0 {
            return Ok(());
        }
        let n = write_all_nonblocking(&mut self.stream, &self.backlog[self.head..])?;
        self.bytes_sent += n as u64;
        self.head += n;
        if self.head == self.backlog.len() {
            self.backlog.clear();
            self.head = 0;
            if let Some(since) = self.behind_since.take() {
                self.behind_done_ns += now_ns.saturating_sub(since);
            }
        }
        Ok(())
    }

    /// Reads and discards whatever the gateway sends (nothing, normally). `Ok(false)`: it closed.
    pub fn drain_input(&mut self, scratch: &mut [u8]) -> io::Result<bool> {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn write_some(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = write_all_nonblocking(&mut self.stream, buf)?;
        self.bytes_sent += n as u64;
        Ok(n)
    }

    fn enqueue(&mut self, bytes: &[u8], now_ns: u64) {
        if bytes.is_empty() {
            return;
        }
        // Compact once at least half the buffer is sent: amortised O(1) per byte, never a memmove per tick.
        if self.head > 0 && self.head >= self.pending() {
            self.backlog.drain(..self.head);
            self.head = 0;
        }
        if self.behind_since.is_none() {
            self.behind_since = Some(now_ns);
        }
        self.backlog.extend_from_slice(bytes);
        self.max_backlog = self.max_backlog.max(self.pending());
    }
}

/// Writes until done or `WouldBlock`; returns the bytes written.
fn write_all_nonblocking(w: &mut impl Write, buf: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match w.write(&buf[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
