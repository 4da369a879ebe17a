//! One loop thread: its listener, its connections, its copy of the broadcast stream. Shares nothing mutable
//! with other loop threads; the feed reaches it over a bounded queue.
//!
//! Each pass runs named phases in order: wait → dispatch readiness → pull the feed → flush connections with
//! something new → reap the dead → sweep deadlines → trim the broadcast log. Connections are freed only in the
//! reap phase, so a key stays valid for the whole pass.

use std::io::{self, ErrorKind, Read, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use super::feed_queue::FeedReceiver;
use super::input::{self, kill, InputCx};
use super::output::{self, Flushed};
use super::stats::{ShardStats, Shared};
use super::timers::DeadlineQueue;
use super::Settings;
use crate::conn::{BufPool, Conn, ConnKey, GenSlab, Phase};
use crate::fanout::{FrameLog, Located, Subscribers};
use crate::reactor;

pub const LISTENER: Token = Token(0);
pub const WAKER: Token = Token(1);

/// Size of the loop thread's one receive buffer: every connection reads into it; only a partial frame is
/// copied out to the connection.
const READ_BUF_BYTES: usize = 64 * 1024;
/// Reads per connection per pass before others get their turn.
const READS_PER_PASS: usize = 4;
/// How long a half-closed connection may take to hang up after our final bytes.
const LINGER: Duration = Duration::from_secs(2);
/// During a fan-out pass, the feed is pulled again after this many subscribers.
const PULL_EVERY: usize = 64;
/// Pause after the process ran out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The loop thread's parts that input handling borrows, next to a connection borrowed from `conns`.
macro_rules! input_cx {
    ($shard:ident) => {
        InputCx {
            settings: &$shard.settings,
            shared: &$shard.shared,
            stats: &$shard.shared.shards[$shard.id],
            pool: &mut $shard.pool,
            log: &$shard.log,
            subscribers: &mut $shard.subscribers,
            dirty: &mut $shard.dirty,
            dead: &mut $shard.dead,
        }
    };
}

pub struct Shard {
    id: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    conns: GenSlab<Conn>,
    log: FrameLog,
    subscribers: Subscribers,
    /// Stream position up to which every subscriber has been offered the log.
    fanned_out_to: u64,
    feed: FeedReceiver,
    read_buf: Box<[u8]>,
    pool: BufPool,
    /// Connections with something to write this pass.
    dirty: Vec<ConnKey>,
    /// Connections waiting for writability with broadcast bytes pending (may hold stale entries).
    blocked: Vec<ConnKey>,
    /// Connections that hit the read budget and must be read again next pass.
    read_again: Vec<ConnKey>,
    dead: Vec<ConnKey>,
    handshake_deadlines: DeadlineQueue,
    linger_deadlines: DeadlineQueue,
    accept_paused_until: Option<Instant>,
    shutdown_deadline: Option<Instant>,
    max_connections: usize,
    settings: Arc<Settings>,
    shared: Arc<Shared>,
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        poll: Poll,
        mut listener: TcpListener,
        feed: FeedReceiver,
        max_connections: usize,
        settings: Arc<Settings>,
        shared: Arc<Shared>,
    ) -> io::Result<Self> {
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Self {
            id,
            poll,
            listener: Some(listener),
            conns: GenSlab::new(),
            log: FrameLog::new(),
            subscribers: Subscribers::new(),
            fanned_out_to: 0,
            feed,
            read_buf: vec![0; READ_BUF_BYTES].into_boxed_slice(),
            pool: BufPool::new(1024, 4096, 256 * 1024),
            dirty: Vec::new(),
            blocked: Vec::new(),
            read_again: Vec::new(),
            dead: Vec::new(),
            handshake_deadlines: DeadlineQueue::new(settings.handshake_timeout),
            linger_deadlines: DeadlineQueue::new(LINGER),
            accept_paused_until: None,
            shutdown_deadline: None,
            max_connections,
            settings,
            shared,
        })
    }

    fn stats(&self) -> &ShardStats {
        &self.shared.shards[self.id]
    }

    /// Runs until shutdown has closed every connection (or its deadline passed).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!(shard = self.id, error = %e, "poll failed: loop thread stops");
                    return;
                }
            }
            self.dispatch(&events);
            self.read_again_pass();
            self.pull_feed();
            self.check_shutdown();
            self.flush_dirty();
            self.fan_out();
            self.reap_dead();
            self.sweep_deadlines();
            self.trim_log();
            if self.shutdown_deadline.is_some() && self.conns.is_empty() {
                tracing::debug!(shard = self.id, "all connections closed");
                return;
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.read_again.is_empty() || !self.dirty.is_empty() || self.log.head() != self.fanned_out_to {
            return Some(Duration::ZERO);
        }
        let next = [
            self.handshake_deadlines.next_deadline(),
            self.linger_deadlines.next_deadline(),
            self.accept_paused_until,
            self.shutdown_deadline,
        ]
        .into_iter()
        .flatten()
        .min()?;
        Some(next.saturating_duration_since(Instant::now()) + Duration::from_millis(1))
    }

    // ---- phase: dispatch -------------------------------------------------------------------------------

    fn dispatch(&mut self, events: &Events) {
        for event in events {
            match event.token() {
                LISTENER => self.accept_ready(),
                WAKER => {} // the feed is pulled every pass
                token => {
                    let key = ConnKey(token.0 as u64);
                    if event.is_writable() {
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.write_blocked = false;
                            input::mark_dirty(conn, key, &mut self.dirty);
                        }
                    }
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.read_conn(key);
                    }
                }
            }
        }
    }

    fn accept_ready(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        let Some(listener) = &self.listener else { return };
        loop {
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if reactor::is_fd_exhaustion(&e) => {
                    tracing::warn!(shard = self.id, error = %e, "out of file descriptors: pausing accepts");
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
                Err(e) => {
                    tracing::debug!(shard = self.id, error = %e, "accept failed");
                    continue;
                }
            };
            if self.conns.len() >= self.max_connections {
                // Best effort: the socket buffer of a fresh connection always has room for this.
                let busy = crate::proto::handshake::http_response(503, "text/plain", b"server at max_connections\n");
                let _ = (&stream).write(&busy);
                tracing::warn!(shard = self.id, %peer, "max_connections reached: refused with 503");
                ShardStats::add(&self.stats().rejected, 1);
                continue;
            }
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY failed");
            }
            let key = self.conns.insert(Conn::new(stream));
            let conn = self.conns.get_mut(key).expect("just inserted");
            if let Err(e) = self.poll.registry().register(
                &mut conn.stream,
                Token(key.0 as usize),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                tracing::warn!(error = %e, "register failed");
                self.conns.remove(key);
                continue;
            }
            ShardStats::add(&self.shared.shards[self.id].connections, 1);
            self.handshake_deadlines.push(Instant::now(), key);
        }
    }

    fn read_conn(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.phase == Phase::Dead {
            return;
        }
        conn.read_pending = false;
        let mut cx = input_cx!(self);
        for _ in 0..READS_PER_PASS {
            match (&conn.stream).read(&mut self.read_buf) {
                Ok(0) => {
                    if conn.phase == Phase::Open {
                        tracing::debug!(?key, "peer closed without a close frame");
                    }
                    kill(conn, key, &mut self.dead);
                    return;
                }
                Ok(n) => {
                    input::on_bytes(conn, key, &mut self.read_buf[..n], &mut cx);
                    if conn.phase == Phase::Dead {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(?key, error = %e, "read failed");
                    kill(conn, key, &mut self.dead);
                    return;
                }
            }
        }
        conn.read_pending = true;
        self.read_again.push(key);
    }

    fn read_again_pass(&mut self) {
        for key in std::mem::take(&mut self.read_again) {
            if self.conns.get(key).is_some_and(|c| c.read_pending) {
                self.read_conn(key);
            }
        }
    }

    // ---- phase: pull the feed --------------------------------------------------------------------------

    fn pull_feed(&mut self) {
        let mut messages = 0u64;
        while let Ok(batch) = self.feed.try_recv() {
            messages += u64::from(batch.messages);
            self.log.push(batch.frames);
        }
        if messages > 0 {
            ShardStats::add(&self.shared.shards[self.id].feed_messages, messages);
        }
    }

    // ---- phase: flush ----------------------------------------------------------------------------------

    /// Connections that have private bytes or became writable.
    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.dirty = false;
                self.flush_one(key);
            }
        }
        // Flushing may have queued more (a slow consumer's close): those wait for the next pass.
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Offers new broadcast bytes to every subscriber. A subscriber flushed earlier this pass is already at the
    /// head and costs one comparison.
    ///
    /// The feed is pulled again every [`PULL_EVERY`] subscribers, so a message that arrives while a long pass
    /// is under way still reaches the subscribers the pass has not visited yet, instead of waiting for the pass
    /// to end: each subscriber is visited once per pass and leaves with everything published up to its visit,
    /// so a message's worst wait is about one pass, not two.
    fn fan_out(&mut self) {
        let head = self.log.head();
        if head == self.fanned_out_to {
            return;
        }
        // INVARIANT (relied on by trim_log): after this pass every open subscriber that is not blocked stands at
        // or after `fanned_out_to`.
        self.fanned_out_to = head;
        for i in 0..self.subscribers.len() {
            if i % PULL_EVERY == PULL_EVERY - 1 {
                self.pull_feed();
            }
            let key = ConnKey(self.subscribers.keys()[i]);
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if conn.phase != Phase::Open || conn.cursor == self.log.head() {
                continue;
            }
            if conn.write_blocked {
                self.check_lag(key);
            } else {
                self.flush_one(key);
            }
        }
    }

    fn flush_one(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.phase == Phase::Dead || conn.write_blocked || conn.write_shut {
            return;
        }
        match output::flush(conn, &self.log, &mut self.pool) {
            Flushed::Done => {
                if conn.phase == Phase::Closing && conn.peer_closed {
                    kill(conn, key, &mut self.dead); // Both closes are through.
                } else if conn.phase == Phase::Closing {
                    // Everything, our close frame or final response included, is out: half-close and wait
                    // (bounded) for the peer to hang up, so that unread input cannot turn into a reset that
                    // destroys what we sent.
                    conn.write_shut = true;
                    if conn.stream.shutdown(std::net::Shutdown::Write).is_err() {
                        kill(conn, key, &mut self.dead);
                        return;
                    }
                    self.linger_deadlines.push(Instant::now(), key);
                }
            }
            Flushed::Blocked => {
                conn.write_blocked = true;
                if !conn.in_blocked_list && conn.phase == Phase::Open {
                    conn.in_blocked_list = true;
                    self.blocked.push(key);
                }
                self.check_lag(key);
            }
            Flushed::Failed => kill(conn, key, &mut self.dead),
        }
    }

    /// Slow-consumer policy: a subscriber more than `max_lag_bytes` behind the head gets close 1008 (sent after
    /// the broadcast frame in progress) and stops holding the log back.
    fn check_lag(&mut self, key: ConnKey) {
        let head = self.log.head();
        let Some(conn) = self.conns.get_mut(key) else { return };
        let lag = head - conn.cursor;
        if conn.phase != Phase::Open || lag <= self.settings.max_lag_bytes {
            return;
        }
        tracing::warn!(shard = self.id, ?key, lag_bytes = lag, "slow consumer: closing with 1008");
        ShardStats::add(&self.shared.shards[self.id].slow_consumers, 1);
        let mut cx = input_cx!(self);
        input::queue_close(conn, key, 1008, "slow consumer: too far behind the feed", &mut cx);
        self.linger_deadlines.push(Instant::now(), key);
    }

    // ---- phase: reap -----------------------------------------------------------------------------------

    fn reap_dead(&mut self) {
        for key in std::mem::take(&mut self.dead) {
            let Some(mut conn) = self.conns.remove(key) else { continue };
            if conn.is_subscribed() {
                if let Some(moved) = self.subscribers.remove(conn.sub_index) {
                    if let Some(other) = self.conns.get_mut(ConnKey(moved)) {
                        other.sub_index = conn.sub_index;
                    }
                }
            }
            self.pool.give(&mut conn.inbuf);
            self.pool.give(&mut conn.outbuf);
            ShardStats::sub(&self.shared.shards[self.id].connections, 1);
            // Dropping the stream closes the socket, which also removes it from the epoll set.
        }
    }

    // ---- phase: deadlines ------------------------------------------------------------------------------

    fn sweep_deadlines(&mut self) {
        let now = Instant::now();
        while let Some(key) = self.handshake_deadlines.pop_expired(now) {
            if let Some(conn) = self.conns.get_mut(key) {
                if conn.phase == Phase::Handshake {
                    tracing::debug!(?key, "handshake timeout");
                    let timeout = crate::proto::handshake::http_response(408, "text/plain", b"request timeout\n");
                    let _ = (&conn.stream).write(&timeout);
                    kill(conn, key, &mut self.dead);
                }
            }
        }
        while let Some(key) = self.linger_deadlines.pop_expired(now) {
            if let Some(conn) = self.conns.get_mut(key) {
                if conn.phase == Phase::Closing {
                    kill(conn, key, &mut self.dead);
                }
            }
        }
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            self.accept_ready();
        }
        if self.shutdown_deadline.is_some_and(|t| t <= now) {
            let keys: Vec<ConnKey> = self.conns.keys().collect();
            if !keys.is_empty() {
                tracing::info!(shard = self.id, remaining = keys.len(), "shutdown deadline: dropping connections");
            }
            for key in keys {
                if let Some(conn) = self.conns.get_mut(key) {
                    kill(conn, key, &mut self.dead);
                }
            }
            self.reap_dead();
        }
    }

    // ---- phase: trim -----------------------------------------------------------------------------------

    /// Frees broadcast chunks no connection needs any more. After the fan-out phase every open subscriber that is
    /// not blocked stands at or after `fanned_out_to`, so only blocked ones are looked at: an open one needs
    /// everything from its cursor on; a closing
    /// one (a slow consumer) only the rest of the batch it is in the middle of, so that its close frame can
    /// still follow a whole frame — and it holds even that for the linger time at most.
    fn trim_log(&mut self) {
        let head = self.log.head();
        // Subscribers visited early in the last pass may not have what was pulled during it (see fan_out).
        let mut keep_from = self.fanned_out_to;
        let (conns, log) = (&mut self.conns, &self.log);
        self.blocked.retain(|&key| {
            let Some(conn) = conns.get_mut(key) else { return false };
            let needs_log = match conn.phase {
                Phase::Open => conn.cursor < head,
                Phase::Closing => {
                    !conn.write_shut && matches!(log.locate(conn.cursor), Located::At { offset, .. } if offset > 0)
                }
                Phase::Handshake | Phase::Dead => false,
            };
            if needs_log {
                keep_from = keep_from.min(conn.cursor);
            } else {
                conn.in_blocked_list = false;
            }
            needs_log
        });
        self.log.trim_to(keep_from);
    }

    // ---- shutdown --------------------------------------------------------------------------------------

    fn check_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() || !self.shared.shutdown.load(Relaxed) {
            return;
        }
        let now = Instant::now();
        self.shutdown_deadline = Some(now + self.settings.shutdown_timeout);
        self.linger_deadlines = DeadlineQueue::new(self.settings.shutdown_timeout);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<ConnKey> = self.conns.keys().collect();
        tracing::info!(shard = self.id, connections = keys.len(), "shutting down: closing clients with 1001");
        for key in keys {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            match conn.phase {
                Phase::Handshake => kill(conn, key, &mut self.dead),
                Phase::Open => {
                    let mut cx = input_cx!(self);
                    input::queue_close(conn, key, 1001, "server shutting down", &mut cx);
                }
                Phase::Closing | Phase::Dead => {}
            }
        }
    }
}
