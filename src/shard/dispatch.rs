//! What the loop thread does with each event its I/O backend reports. Runs inside `Reactor::wait`, so it
//! borrows every part of the loop but the backend itself; anything that needs the backend (registering a new
//! connection) is queued for right after the wait.

use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use super::admission;
use super::client;
use super::input::{self, kill, InputCx};
use super::output;
use super::preface;
use super::stats::{LoadRefusal, ShardStats};
use super::timers::DeadlineQueue;
use super::topic_output;
use super::transport;
use crate::conn::{AddrState, Conn, ConnKey, GenSlab, Phase};
use crate::reactor::{Event, Handler};

/// Pause after the process ran out of file descriptors.
pub const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

pub struct Dispatch<'a> {
    pub id: usize,
    pub conns: &'a mut GenSlab<Conn>,
    pub tls_sessions: &'a mut transport::Sessions,
    pub cx: InputCx<'a>,
    pub handshake_deadlines: &'a mut DeadlineQueue,
    pub accept_paused_until: &'a mut Option<Instant>,
    /// Accepted connections to register with the backend once the wait is over.
    pub to_attach: &'a mut Vec<ConnKey>,
    pub max_connections: usize,
    /// Set when a subscriber the last fan-out skipped is free again: the next fan-out runs even without news.
    pub refan: &'a mut bool,
}

impl Handler for Dispatch<'_> {
    fn input_fd(&self, key: ConnKey) -> Option<RawFd> {
        let conn = self.conns.get(key)?;
        (conn.phase != Phase::Dead).then(|| conn.stream.as_raw_fd())
    }

    fn on_event(&mut self, event: Event<'_>) -> bool {
        match event {
            Event::Accepted(fd) => self.accepted(fd),
            Event::AcceptStopped(e) => {
                tracing::warn!(shard = self.id, error = %e, "out of file descriptors: pausing accepts");
                *self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
            }
            Event::Received { key, data } => {
                let Some(conn) = self.conns.get_mut(key) else { return false };
                if conn.phase == Phase::Dead {
                    return false;
                }
                // Stages: the PROXY header (when `proxy_protocol` is on), then TLS (on a TLS listener), then HTTP
                // and WebSocket.
                if conn.client_addr == AddrState::AwaitingPreface {
                    let Some(mut rest) = preface::on_bytes(conn, key, data, &mut self.cx) else {
                        return conn.phase != Phase::Dead;
                    };
                    if !rest.is_empty() {
                        self.after_preface(key, &mut rest);
                    }
                    self.cx.pool.give(&mut rest);
                    return self.conns.get(key).is_some_and(|c| c.phase != Phase::Dead);
                }
                match &self.cx.settings.tls {
                    Some(tls) => transport::on_input(conn, key, data, self.tls_sessions, tls, &mut self.cx),
                    None => input::on_bytes(conn, key, data, &mut self.cx),
                }
                return conn.phase != Phase::Dead;
            }
            Event::RecvEnded { key, err } => {
                let Some(conn) = self.conns.get_mut(key) else { return false };
                match err {
                    None if conn.phase == Phase::Open => tracing::debug!(?key, "peer closed without a close frame"),
                    Some(e) if conn.phase != Phase::Dead => tracing::debug!(?key, error = %e, "read failed"),
                    _ => {}
                }
                kill(conn, key, self.cx.dead);
                op_ended(conn, key, self.cx.dead);
            }
            Event::Writable { key } => {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.write_blocked = false;
                    input::mark_dirty(conn, key, self.cx.dirty);
                }
            }
            Event::Sent { key, result, mut private, private_from } => {
                let Some(conn) = self.conns.get_mut(key) else {
                    debug_assert!(false, "send completion for a freed connection");
                    return false;
                };
                conn.send_in_flight = false;
                conn.write_blocked = false;
                // Our cancel of a send that fell behind: it wrote nothing (a send that wrote something ends then).
                let cancelled_by_us = std::mem::take(&mut conn.lag_cancel_sent);
                match result {
                    _ if conn.phase == Phase::Dead => self.cx.pool.give(&mut private),
                    Ok(written) => sent(conn, key, self.tls_sessions, &mut self.cx, written, private, private_from),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || (cancelled_by_us && is_cancel(&e)) => {
                        sent(conn, key, self.tls_sessions, &mut self.cx, 0, private, private_from)
                    }
                    Err(e) => {
                        tracing::debug!(?key, error = %e, "send failed");
                        self.cx.pool.give(&mut private);
                        kill(conn, key, self.cx.dead);
                    }
                }
                // What the completion leaves to do: private bytes or a close to finish go out in the flush phase.
                // Broadcast bytes go out in the fan-out phase, which pulls the feed as it goes: one the last
                // fan-out skipped (this send was in flight) asks for a fan-out pass even if nothing new arrived.
                // (Flushing those here instead would keep them in flight during every fan-out, for good.)
                if conn.phase == Phase::Closing && conn.reads_log() {
                    // It closed while this send was in flight: now it can let go of the log.
                    let cx = &mut self.cx;
                    input::release_log(conn, key, cx.streams, cx.topics, cx.pins, cx.stats, cx.dead);
                }
                if conn.phase != Phase::Dead {
                    let topic_news =
                        conn.topics.as_deref().is_some_and(|subs| topic_output::has_pending(self.cx.topics, subs));
                    let cipher_left = self.tls_sessions.get_mut(key).is_some_and(|s| s.has_cipher());
                    if conn.phase != Phase::Open || !conn.private_pending().is_empty() || topic_news || cipher_left {
                        input::mark_dirty(conn, key, self.cx.dirty);
                    } else if conn.is_subscribed()
                        && conn.cursor < self.cx.streams[usize::from(conn.stream_id)].fanned_out_to
                    {
                        *self.refan = true;
                    }
                }
                op_ended(conn, key, self.cx.dead);
            }
        }
        true
    }
}

/// How a cancelled operation ends: `ECANCELED`, or `EINTR` when it was running in a kernel worker.
fn is_cancel(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECANCELED) || e.kind() == std::io::ErrorKind::Interrupted
}

/// One of the connection's operations has ended (io_uring). A dead connection whose last operation ended goes
/// back to the reap phase, which frees it.
fn op_ended(conn: &mut Conn, key: ConnKey, dead: &mut Vec<ConnKey>) {
    if conn.inflight == 0 {
        return; // epoll: nothing is ever in flight
    }
    conn.inflight -= 1;
    if conn.inflight == 0 && conn.phase == Phase::Dead && conn.cancel_sent {
        dead.push(key);
    }
}

/// Applies a completed send by what it carried: a TLS connection's ciphertext, a topic connection's parts, or
/// its whole-feed stream.
fn sent(
    conn: &mut Conn,
    key: ConnKey,
    tls_sessions: &mut transport::Sessions,
    cx: &mut InputCx<'_>,
    written: usize,
    private: Vec<u8>,
    private_from: usize,
) {
    if let Some(tls) = tls_sessions.get_mut(key) {
        transport::on_sent(tls, cx.pool, written, private, private_from);
    } else if conn.topics.is_some() {
        topic_output::on_sent(conn, cx.pool, written, private, private_from);
    } else {
        let log = &cx.streams[usize::from(conn.stream_id)].log;
        output::on_sent(conn, log, cx.pool, written, private, private_from);
    }
}

impl Dispatch<'_> {
    /// The bytes that followed a connection's PROXY header go on to the next stage as fresh input.
    fn after_preface(&mut self, key: ConnKey, rest: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        match &self.cx.settings.tls {
            Some(tls) => transport::on_input(conn, key, rest, self.tls_sessions, tls, &mut self.cx),
            None => input::on_bytes(conn, key, rest, &mut self.cx),
        }
    }

    fn accepted(&mut self, fd: OwnedFd) {
        let stream = TcpStream::from(fd);
        if self.conns.len() >= self.max_connections {
            // Refused at once, before taking a slot: best effort, as the socket buffer of a fresh connection
            // always has room for the answer.
            let admission = &self.cx.shared.admission;
            if self.cx.settings.tls.is_none() {
                admission::refuse_now(&stream, "server at max_connections: try again later", admission.retry_after_s());
                admission.log_refusal("max_connections reached: refused with 503");
            } else {
                // A TLS client could not read a plain answer: it is closed.
                admission.log_refusal("max_connections reached: refused by a close (TLS listener)");
            }
            self.cx.stats.refused_for_load(LoadRefusal::MaxConnections);
            return;
        }
        let Ok(peer) = client::screen(&stream, self.cx.settings, &self.cx.shared.admission, self.cx.stats) else {
            return; // PROXY protocol from an untrusted peer: dropping the socket closes it
        };
        let key = self.conns.insert(Conn::new(stream));
        self.to_attach.push(key);
        ShardStats::add(&self.cx.stats.connections, 1);
        self.handshake_deadlines.push(Instant::now(), key);
        if let Some(conn) = self.conns.get_mut(key) {
            client::accepted(conn, key, peer, &mut self.cx);
        }
    }
}
