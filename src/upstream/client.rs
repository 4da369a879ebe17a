//! The upstream TCP client: non-blocking connect, line reading, reconnect with exponential backoff and full
//! jitter. Driven by the feed loop through `handle_*` calls; owns one socket at a time.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{event::Event, Interest, Registry};
use tracing::{info, warn};

use super::pump::{pump, Framer, Out, Pumped};
use super::rng::Rng;
use super::{FeedStats, Sink, UpstreamState, UPSTREAM_TOKEN};

/// A connect attempt that has not completed by then is abandoned (counts as a failure).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection that lived this long resets the backoff even if it delivered nothing.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// TCP keepalive, so a silently dead upstream is noticed without application heartbeats.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Exponential backoff with full jitter: attempt `k` waits a uniform random time in
/// `[0, min(max, initial * 2^k)]`.
#[derive(Debug)]
pub(super) struct Backoff {
    initial: Duration,
    max: Duration,
    /// Consecutive failed attempts since the last reset.
    attempt: u32,
    rng: Rng,
}

impl Backoff {
    pub(super) fn new(initial: Duration, max: Duration, rng: Rng) -> Self {
        Backoff { initial, max, attempt: 0, rng }
    }

    /// The ceiling for the current attempt.
    fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(30);
        self.initial.checked_mul(factor).map_or(self.max, |d| d.min(self.max))
    }

    /// The delay before the next attempt; advances the attempt count.
    pub(super) fn next_delay(&mut self) -> Duration {
        let delay = self.ceiling().mul_f64(self.rng.next_f64());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    pub(super) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Where the connection is.
#[derive(Debug)]
enum Conn {
    /// Waiting until `until` before resolving and connecting again.
    Backoff { until: Instant },
    /// A non-blocking connect to `addr` is in flight.
    Connecting { stream: TcpStream, addr: SocketAddr, deadline: Instant },
    /// Reading lines.
    Connected { stream: TcpStream, addr: SocketAddr, since: Instant, delivered: u64, readable: bool },
}

/// The upstream client; see the module docs.
#[derive(Debug)]
pub(super) struct Client {
    /// `"HOST:PORT"`, resolved on every round of attempts.
    target: String,
    conn: Conn,
    /// Resolved addresses not tried yet in this round (tried from the back).
    addrs: Vec<SocketAddr>,
    codec: Framer,
    backoff: Backoff,
    ever_connected: bool,
    /// Connections made plus messages received, ever: what the silence watchdog watches.
    progress: u64,
}

impl Client {
    /// Starts the first connection attempt at once.
    pub(super) fn start(
        target: String,
        codec: Framer,
        backoff: Backoff,
        registry: &Registry,
        stats: &FeedStats,
        now: Instant,
    ) -> Self {
        let mut client = Client {
            target,
            conn: Conn::Backoff { until: now },
            addrs: Vec::new(),
            codec,
            backoff,
            ever_connected: false,
            progress: 0,
        };
        client.start_round(registry, stats, now);
        client
    }

    /// When [`Client::handle_timeout`] next has work to do.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        match &self.conn {
            Conn::Backoff { until } => Some(*until),
            Conn::Connecting { deadline, .. } => Some(*deadline),
            Conn::Connected { .. } => None,
        }
    }

    /// Whether [`Client::handle_read`] has data to read (the last pump ran out of budget or an event came).
    pub(super) fn wants_read(&self) -> bool {
        matches!(self.conn, Conn::Connected { readable: true, .. })
    }

    /// A readiness event for [`UPSTREAM_TOKEN`].
    pub(super) fn handle_ready(&mut self, event: &Event, registry: &Registry, stats: &FeedStats, now: Instant) {
        match &mut self.conn {
            Conn::Backoff { .. } => {} // stale event for a socket already closed
            Conn::Connected { readable, .. } => {
                // Readable, read-closed and error all show up when reading.
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    *readable = true;
                }
            }
            Conn::Connecting { stream, .. } => match connect_outcome(stream) {
                Ok(false) => {} // spurious wake-up; still connecting
                Ok(true) => self.on_connected(registry, stats, now),
                Err(e) => self.fail_attempt(registry, stats, now, &e),
            },
        }
    }

    /// Reads what is available (bounded per turn) and publishes it.
    pub(super) fn handle_read<S: Sink>(
        &mut self,
        registry: &Registry,
        buf: &mut [u8],
        out: &mut Out<'_, S>,
        now: Instant,
    ) {
        let Conn::Connected { stream, addr, delivered, readable, .. } = &mut self.conn else {
            return;
        };
        if !*readable {
            return;
        }
        let addr = *addr;
        let before = *delivered;
        let pumped = pump(stream, &mut self.codec, buf, out, &format_args!("upstream {addr}"), delivered);
        self.progress += *delivered - before;
        match pumped {
            Pumped::Drained => *readable = false,
            Pumped::Budget => {}
            Pumped::Closed(err) => self.on_disconnected(registry, out.stats, now, err),
        }
    }

    /// Starts the next attempt when the backoff has elapsed; abandons a connect that took too long.
    pub(super) fn handle_timeout(&mut self, registry: &Registry, stats: &FeedStats, now: Instant) {
        match self.conn {
            Conn::Backoff { until } if now >= until => self.start_round(registry, stats, now),
            Conn::Connecting { deadline, .. } if now >= deadline => {
                let e = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
                self.fail_attempt(registry, stats, now, &e);
            }
            _ => {}
        }
    }

    /// Connections made plus messages received so far (changes on each of them).
    pub(super) fn progress(&self) -> u64 {
        self.progress
    }

    /// Drops a connection that has been silent for `silent_for` and reconnects after the usual backoff
    /// (`upstream_silence_reconnect`). Does nothing unless connected.
    pub(super) fn drop_silent(&mut self, registry: &Registry, stats: &FeedStats, now: Instant, silent_for: Duration) {
        if !matches!(self.conn, Conn::Connected { .. }) {
            return;
        }
        stats.add_silence_reconnect();
        let e = io::Error::new(io::ErrorKind::TimedOut, format!("silent for {silent_for:?}: reconnecting"));
        self.on_disconnected(registry, stats, now, Some(e));
    }

    /// Closes the socket (feed shutdown).
    pub(super) fn close(&mut self, registry: &Registry) {
        if let Conn::Connecting { stream, .. } | Conn::Connected { stream, .. } = &mut self.conn {
            let _ = registry.deregister(stream);
        }
        self.conn = Conn::Backoff { until: Instant::now() };
    }

    /// Resolves the target and tries its addresses.
    fn start_round(&mut self, registry: &Registry, stats: &FeedStats, now: Instant) {
        match self.target.to_socket_addrs() {
            Ok(addrs) => {
                self.addrs = addrs.collect();
                self.addrs.reverse();
                self.try_next_addr(registry, stats, now);
            }
            Err(e) => {
                self.addrs.clear();
                self.schedule_retry(stats, now, &format_args!("resolving failed: {e}"));
            }
        }
    }

    /// Starts a connect to the next untried address; backs off when none is left.
    fn try_next_addr(&mut self, registry: &Registry, stats: &FeedStats, now: Instant) {
        while let Some(addr) = self.addrs.pop() {
            let attempt = TcpStream::connect(addr).and_then(|mut stream| {
                registry.register(&mut stream, UPSTREAM_TOKEN, Interest::READABLE | Interest::WRITABLE)?;
                Ok(stream)
            });
            match attempt {
                Ok(stream) => {
                    self.conn = Conn::Connecting { stream, addr, deadline: now + CONNECT_TIMEOUT };
                    stats.set_upstream_state(UpstreamState::Connecting);
                    return;
                }
                Err(e) if !self.addrs.is_empty() => {
                    warn!(upstream = %self.target, %addr, error = %e, "upstream connect failed; trying next address");
                }
                Err(e) => return self.schedule_retry(stats, now, &format_args!("connect to {addr} failed: {e}")),
            }
        }
        self.schedule_retry(stats, now, &"no addresses resolved");
    }

    /// The in-flight connect failed: try the next address of this round, or back off.
    fn fail_attempt(&mut self, registry: &Registry, stats: &FeedStats, now: Instant, e: &io::Error) {
        let Conn::Connecting { stream, addr, .. } = &mut self.conn else {
            return;
        };
        let addr = *addr;
        let _ = registry.deregister(stream);
        self.conn = Conn::Backoff { until: now };
        if self.addrs.is_empty() {
            self.schedule_retry(stats, now, &format_args!("connect to {addr} failed: {e}"));
        } else {
            warn!(upstream = %self.target, %addr, error = %e, "upstream connect failed; trying next address");
            self.try_next_addr(registry, stats, now);
        }
    }

    /// A round of attempts failed: count it, log it with the delay, and wait.
    fn schedule_retry(&mut self, stats: &FeedStats, now: Instant, error: &dyn std::fmt::Display) {
        let delay = self.backoff.next_delay();
        stats.add_connect_failure();
        stats.set_upstream_state(UpstreamState::Backoff);
        warn!(upstream = %self.target, %error, retry_in = ?delay, "upstream unavailable");
        self.conn = Conn::Backoff { until: now + delay };
    }

    fn on_connected(&mut self, registry: &Registry, stats: &FeedStats, now: Instant) {
        let Conn::Connecting { stream, addr, .. } = std::mem::replace(&mut self.conn, Conn::Backoff { until: now })
        else {
            return;
        };
        let mut stream = stream;
        self.addrs.clear();
        let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE).with_interval(KEEPALIVE_INTERVAL);
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            warn!(%addr, error = %e, "could not enable TCP keepalive on the upstream connection");
        }
        // We never write: stop asking for writability.
        if let Err(e) = registry.reregister(&mut stream, UPSTREAM_TOKEN, Interest::READABLE) {
            self.conn = Conn::Connecting { stream, addr, deadline: now };
            return self.fail_attempt(registry, stats, now, &e);
        }
        if self.ever_connected {
            stats.add_reconnect();
        }
        self.ever_connected = true;
        self.progress += 1;
        stats.set_upstream_state(UpstreamState::Connected);
        info!(upstream = %self.target, %addr, "upstream connected");
        // Data may have arrived with the connect's readiness edge: read once to find out.
        self.conn = Conn::Connected { stream, addr, since: now, delivered: 0, readable: true };
    }

    fn on_disconnected(&mut self, registry: &Registry, stats: &FeedStats, now: Instant, err: Option<io::Error>) {
        let Conn::Connected { mut stream, addr, since, delivered, .. } =
            std::mem::replace(&mut self.conn, Conn::Backoff { until: now })
        else {
            return;
        };
        let _ = registry.deregister(&mut stream);
        drop(stream);
        let lived = now.saturating_duration_since(since);
        let partial = self.codec.reset();
        if partial > 0 {
            stats.add_partial_discarded();
            info!(%addr, bytes = partial, "discarding the incomplete record of the closed upstream connection");
        }
        if delivered > 0 || lived >= STABLE_AFTER {
            self.backoff.reset();
        }
        let delay = self.backoff.next_delay();
        stats.set_upstream_state(UpstreamState::Backoff);
        match err {
            None => {
                info!(%addr, ?lived, messages = delivered, retry_in = ?delay, "upstream disconnected (closed by peer)")
            }
            Some(e) => {
                warn!(%addr, error = %e, ?lived, messages = delivered, retry_in = ?delay, "upstream connection failed")
            }
        }
        self.conn = Conn::Backoff { until: now + delay };
    }
}

/// `Ok(true)` once a non-blocking connect has completed, `Ok(false)` while it is still in progress.
fn connect_outcome(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected || e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::test_support::{channel_sink, recv, wait_until};
    use crate::upstream::{spawn, FeedConfig};
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn backoff_ceiling_doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), Rng::from_seed(7));
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            let c = b.ceiling();
            let d = b.next_delay();
            assert!(d <= c, "full jitter stays under the ceiling");
            ceilings.push(c.as_millis());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        for _ in 0..100 {
            b.next_delay(); // no overflow however long it fails
        }
        assert_eq!(b.ceiling(), Duration::from_secs(1));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn full_jitter_spreads_delays() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1), Rng::from_seed(1));
        let delays: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
        assert!(delays.iter().any(|d| *d < Duration::from_millis(250)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(750)));
    }

    fn accept(listener: &TcpListener) -> std::net::TcpStream {
        listener.set_nonblocking(true).unwrap();
        let mut conn = None;
        wait_until("the client to connect", || match listener.accept() {
            Ok((s, _)) => {
                conn = Some(s);
                true
            }
            Err(_) => false,
        });
        let conn = conn.unwrap();
        conn.set_nonblocking(false).unwrap();
        conn
    }

    fn fast_cfg(upstream: String) -> FeedConfig {
        FeedConfig {
            upstream: Some(upstream),
            backoff_initial: Duration::from_millis(5),
            backoff_max: Duration::from_millis(40),
            ..FeedConfig::default()
        }
    }

    #[test]
    fn receives_lines_and_reconnects_after_the_server_drops() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (sink, rx, _) = channel_sink();
        let feed = spawn(fast_cfg(addr.to_string()), sink).unwrap();
        let stats = feed.stats.clone();

        let mut conn = accept(&listener);
        conn.write_all(b"one\ntwo\r\n\nthr").unwrap();
        assert_eq!(recv(&rx), "one");
        assert_eq!(recv(&rx), "two");
        assert_eq!(stats.upstream_state(), UpstreamState::Connected);
        assert_eq!(stats.reconnects(), 0);

        // The server goes away, leaving "thr" unterminated: it must be discarded, not joined to later data.
        drop(conn);
        drop(listener);
        wait_until("backoff after the drop", || stats.upstream_state() == UpstreamState::Backoff);
        wait_until("the partial line to be discarded", || stats.partial_lines_discarded() == 1);

        let listener = TcpListener::bind(addr).unwrap();
        let mut conn = accept(&listener);
        conn.write_all(b"ee\nfour\n").unwrap();
        assert_eq!(recv(&rx), "ee");
        assert_eq!(recv(&rx), "four");
        assert_eq!(stats.upstream_state(), UpstreamState::Connected);
        assert_eq!(stats.reconnects(), 1);
        // Counted after the chunk's publishes: wait rather than race the receive.
        wait_until("the count", || stats.messages_published() == 4);
        feed.shutdown();
        assert_eq!(stats.upstream_state(), UpstreamState::Disabled);
    }

    #[test]
    fn unreachable_upstream_backs_off_and_counts_failures() {
        // Bind then drop to get a port that refuses connections.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (sink, _rx, _) = channel_sink();
        let feed = spawn(fast_cfg(format!("localhost:{port}")), sink).unwrap();
        let stats = feed.stats.clone();
        wait_until("several failed attempts", || stats.connect_failures() >= 3);
        assert_ne!(stats.upstream_state(), UpstreamState::Connected);
        assert_eq!(stats.reconnects(), 0);
        feed.shutdown();
    }
}
