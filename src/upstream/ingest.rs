//! The ingest listener: accepts publisher connections (up to [`MAX_PUBLISHERS`] at once), each framed by its
//! own codec, and publishes their lines. Publishers are read-only: nothing is ever written back.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use tracing::{info, warn};

use super::pump::{pump, Framer, Out, Pumped};
use super::record::Framing;
use super::{FeedStats, Sink, FIRST_PUBLISHER_TOKEN, LISTENER_TOKEN};

/// Publisher connections open at once; more are accepted and closed at once (logged, counted).
pub(super) const MAX_PUBLISHERS: usize = 64;

#[derive(Debug)]
struct Publisher {
    stream: TcpStream,
    peer: SocketAddr,
    codec: Framer,
    since: Instant,
    delivered: u64,
    /// An event said there may be data; cleared when a read returns `WouldBlock`.
    readable: bool,
}

/// The listener and its publishers.
#[derive(Debug)]
pub(super) struct Ingest {
    /// `None` once it stopped accepting (a drain).
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    /// Slot `i` has token `FIRST_PUBLISHER_TOKEN + i`. A slot is reused after its publisher closed; a stale
    /// readiness event for the old publisher only makes the new one try a read that returns `WouldBlock`.
    publishers: Vec<Option<Publisher>>,
    open: usize,
    max_line_bytes: usize,
    framing: Framing,
}

impl Ingest {
    /// Binds and registers the listener.
    pub(super) fn bind(
        addr: SocketAddr,
        max_line_bytes: usize,
        framing: Framing,
        registry: &Registry,
    ) -> io::Result<Self> {
        Self::adopt(std::net::TcpListener::bind(addr)?, max_line_bytes, framing, registry)
    }

    /// Registers a listener bound elsewhere (taken over from another process, or bound by `bind`). It is made
    /// non-blocking: the feed thread is a readiness loop.
    pub(super) fn adopt(
        listener: std::net::TcpListener,
        max_line_bytes: usize,
        framing: Framing,
        registry: &Registry,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let local_addr = listener.local_addr()?;
        registry.register(&mut listener, LISTENER_TOKEN, Interest::READABLE)?;
        info!(%local_addr, "ingest listening for publishers");
        Ok(Ingest { listener: Some(listener), local_addr, publishers: Vec::new(), open: 0, max_line_bytes, framing })
    }

    /// Stops accepting publishers: closes this copy of the listener (a successor process may hold another).
    pub(super) fn stop_accepting(&mut self, registry: &Registry) {
        if let Some(mut listener) = self.listener.take() {
            let _ = registry.deregister(&mut listener);
            info!(local_addr = %self.local_addr, "ingest: no longer accepting publishers");
        }
    }

    pub(super) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether `token` belongs to the listener or one of its publishers.
    pub(super) fn owns(token: Token) -> bool {
        token == LISTENER_TOKEN || token.0 >= FIRST_PUBLISHER_TOKEN
    }

    /// A readiness event for one of this listener's tokens.
    pub(super) fn handle_ready(&mut self, token: Token, registry: &Registry, stats: &FeedStats, now: Instant) {
        if token == LISTENER_TOKEN {
            self.accept_all(registry, stats, now);
        } else if let Some(Some(p)) = self.publishers.get_mut(token.0 - FIRST_PUBLISHER_TOKEN) {
            p.readable = true;
        }
    }

    /// Whether some publisher has data left to read.
    pub(super) fn wants_read(&self) -> bool {
        self.publishers.iter().flatten().any(|p| p.readable)
    }

    /// Reads every readable publisher (bounded per publisher per turn); closes those that ended.
    pub(super) fn handle_read<S: Sink>(
        &mut self,
        registry: &Registry,
        buf: &mut [u8],
        out: &mut Out<'_, S>,
        now: Instant,
    ) {
        for slot in &mut self.publishers {
            let Some(p) = slot.as_mut().filter(|p| p.readable) else {
                continue;
            };
            let peer = p.peer;
            match pump(&mut p.stream, &mut p.codec, buf, out, &format_args!("publisher {peer}"), &mut p.delivered) {
                Pumped::Drained => p.readable = false,
                Pumped::Budget => {}
                Pumped::Closed(err) => {
                    let mut p = slot.take().expect("slot checked above");
                    self.open -= 1;
                    out.stats.set_ingest_publishers(self.open);
                    close_publisher(&mut p, registry, out.stats, now, err);
                }
            }
        }
    }

    /// Closes every publisher (feed shutdown).
    pub(super) fn close(&mut self, registry: &Registry, stats: &FeedStats) {
        for mut p in self.publishers.drain(..).flatten() {
            let _ = registry.deregister(&mut p.stream);
        }
        self.stop_accepting(registry);
        self.open = 0;
        stats.set_ingest_publishers(0);
    }

    /// Accepts until `WouldBlock` (the listener is edge-triggered).
    fn accept_all(&mut self, registry: &Registry, stats: &FeedStats, now: Instant) {
        let Some(listener) = &self.listener else { return };
        loop {
            let (mut stream, peer) = match listener.accept() {
                Ok(conn) => conn,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => continue,
                Err(e) => {
                    // E.g. out of file descriptors: pending connections are retried on the next event.
                    warn!(error = %e, "ingest accept failed");
                    return;
                }
            };
            let slot = match self.publishers.iter().position(Option::is_none) {
                Some(i) => i,
                None if self.publishers.len() < MAX_PUBLISHERS => {
                    self.publishers.push(None);
                    self.publishers.len() - 1
                }
                None => {
                    let total = stats.add_ingest_refused();
                    warn!(%peer, limit = MAX_PUBLISHERS, total, "refusing publisher: limit reached");
                    continue; // dropping `stream` closes it
                }
            };
            let token = Token(FIRST_PUBLISHER_TOKEN + slot);
            if let Err(e) = registry.register(&mut stream, token, Interest::READABLE) {
                warn!(%peer, error = %e, "could not register publisher; closing it");
                continue;
            }
            self.publishers[slot] = Some(Publisher {
                stream,
                peer,
                codec: Framer::new(self.framing, self.max_line_bytes),
                since: now,
                delivered: 0,
                readable: true, // data may have arrived before registration
            });
            self.open += 1;
            stats.set_ingest_publishers(self.open);
            info!(%peer, publishers = self.open, "publisher connected");
        }
    }
}

fn close_publisher(p: &mut Publisher, registry: &Registry, stats: &FeedStats, now: Instant, err: Option<io::Error>) {
    let _ = registry.deregister(&mut p.stream);
    let lived = now.saturating_duration_since(p.since);
    let partial = p.codec.reset();
    if partial > 0 {
        stats.add_partial_discarded();
    }
    let peer = p.peer;
    match err {
        None => {
            info!(%peer, ?lived, messages = p.delivered, partial_bytes_discarded = partial, "publisher disconnected")
        }
        Some(e) => {
            warn!(%peer, error = %e, ?lived, messages = p.delivered, partial_bytes_discarded = partial, "publisher connection failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::test_support::{channel_sink, recv, wait_until};
    use crate::upstream::{spawn, FeedConfig};
    use std::io::{Read, Write};
    use std::net::TcpStream as StdStream;
    use std::time::Duration;

    fn ingest_cfg() -> FeedConfig {
        FeedConfig { ingest: Some("127.0.0.1:0".parse().unwrap()), ..FeedConfig::default() }
    }

    #[test]
    fn two_publishers_interleaved() {
        let (sink, rx, _) = channel_sink();
        let feed = spawn(ingest_cfg(), sink).unwrap();
        let addr = feed.ingest_addr.expect("bound address");
        assert_ne!(addr.port(), 0);
        let stats = feed.stats.clone();

        let mut a = StdStream::connect(addr).unwrap();
        let mut b = StdStream::connect(addr).unwrap();
        wait_until("two publishers", || stats.ingest_publishers() == 2);
        // Each publisher's partial line is framed by its own codec.
        a.write_all(b"hel").unwrap();
        b.write_all(b"wor").unwrap();
        a.flush().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        b.write_all(b"ld\n").unwrap();
        assert_eq!(recv(&rx), "world");
        a.write_all(b"lo\n").unwrap();
        assert_eq!(recv(&rx), "hello");

        drop(a);
        wait_until("one publisher left", || stats.ingest_publishers() == 1);
        b.write_all(b"still here\n").unwrap();
        assert_eq!(recv(&rx), "still here");
        feed.shutdown();
    }

    #[test]
    fn refuses_publishers_over_the_limit() {
        let (sink, _rx, _) = channel_sink();
        let feed = spawn(ingest_cfg(), sink).unwrap();
        let addr = feed.ingest_addr.unwrap();
        let stats = feed.stats.clone();
        let conns: Vec<StdStream> = (0..MAX_PUBLISHERS).map(|_| StdStream::connect(addr).unwrap()).collect();
        wait_until("the limit to fill", || stats.ingest_publishers() == MAX_PUBLISHERS as u64);
        let mut extra = StdStream::connect(addr).unwrap();
        wait_until("a refusal", || stats.ingest_refused() == 1);
        extra.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(extra.read(&mut [0u8; 8]).unwrap(), 0, "the refused connection is closed");
        assert_eq!(stats.ingest_publishers(), MAX_PUBLISHERS as u64);
        drop(conns);
        wait_until("publishers to go", || stats.ingest_publishers() == 0);
        feed.shutdown();
    }
}
