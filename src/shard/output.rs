//! Writing one connection: everything pending for it — the rest of a broadcast chunk, its private bytes, then
//! newer broadcast chunks — leaves in one send per loop pass (one `sendmsg` on epoll, one queued `send`/`sendmsg`
//! operation on io_uring).

use std::io;

use super::transport;
use crate::conn::{BufPool, Conn, ConnKey};
use crate::fanout::{FrameLog, Located};
use crate::reactor::{Outgoing, Reactor, Sending};
use crate::tls::TlsSession;

/// Most slices of any backend's send (a backend may take fewer: `Reactor::MAX_IOV`).
const MAX_PARTS: usize = 64;

/// How a flush ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Flushed {
    /// Nothing left to write.
    Done,
    /// The socket buffer is full: wait for writability (epoll).
    Blocked,
    /// A send is in flight; its completion continues the flush (io_uring).
    InFlight,
    /// The backend had no room for the send this pass: try again next pass (io_uring).
    Deferred,
    /// The connection cannot continue: socket error, or its backlog was trimmed away mid-frame.
    Failed,
}

/// Writes (or starts writing) what is pending for `conn`. Private bytes are only ever written at a chunk
/// boundary of the broadcast stream (see the `Conn` invariants), and once `close_queued` is set no further chunk
/// is started.
pub fn flush<R: Reactor>(
    conn: &mut Conn,
    key: ConnKey,
    log: &FrameLog,
    pool: &mut BufPool,
    io: &mut R,
    mut tls: Option<&mut TlsSession>,
) -> Flushed {
    use std::os::fd::AsRawFd;
    debug_assert!(!conn.send_in_flight, "one send per connection at a time");
    loop {
        if let Some(tls) = tls.as_deref_mut() {
            if let Some(outcome) = transport::drain(conn, key, tls, pool, io) {
                return outcome;
            }
        }
        let mut tail = [&[][..]; MAX_PARTS];
        let mut tail_len = 0;
        let (head, mut next_chunk): (&[u8], Option<usize>) = if let Some(pin) = &conn.pinned {
            // A closing connection that let go of the log finishes the frame it is in from its pinned chunk.
            (pin.rest(conn.cursor), None)
        } else if conn.reads_log() {
            match log.locate(conn.cursor) {
                Located::Trimmed => {
                    // Cannot happen while trim_log keeps every cursor in the blocked list: say so loudly if it does.
                    if let Some(suppressed) = super::log_limit::rare_path(std::time::Instant::now()) {
                        tracing::error!(
                            ?key,
                            cursor = conn.cursor,
                            suppressed,
                            "broadcast bytes this connection needs were freed: dropped"
                        );
                    }
                    return Flushed::Failed;
                }
                Located::Head => (&[][..], None),
                Located::At { index, offset: 0 } => (&[][..], Some(index)),
                Located::At { index, offset } => (&log.chunk(index)[offset..], Some(index + 1)),
            }
        } else {
            (&[][..], None)
        };
        let private_len = conn.outbuf.len() - conn.out_pos;
        let room = R::MAX_IOV.min(MAX_PARTS) - usize::from(!head.is_empty()) - usize::from(private_len > 0);
        if !conn.close_queued {
            while let Some(index) = next_chunk.filter(|&i| i < log.chunk_count() && tail_len < room) {
                tail[tail_len] = log.chunk(index);
                tail_len += 1;
                next_chunk = Some(index + 1);
            }
        }
        if head.is_empty() && private_len == 0 && tail_len == 0 {
            if transport::close_notify(conn, tls.as_deref_mut()) {
                continue;
            }
            release_private(conn, pool);
            return Flushed::Done;
        }
        let head_len = head.len();
        let fd = conn.stream.as_raw_fd();
        let out = Outgoing { head, private: &mut conn.outbuf, private_from: conn.out_pos, tail: &tail[..tail_len] };
        let sending = match tls.as_deref_mut() {
            // TLS: encrypted into the session's buffer, which the next round sends (`transport`).
            Some(tls) => transport::encrypt(tls, &out, pool),
            // SAFETY: the broadcast bytes (`head`, `tail`) are chunks of `log` or the connection's pinned chunk.
            // While this send is in flight the connection is flagged `send_in_flight` and kept in the blocked list,
            // and `trim_log` never drops a chunk at or after the cursor of such a connection; a pinned chunk is
            // dropped only by `flush_one` (never with a send in flight) or when the connection is freed (only after
            // its last completion). The cursor moves only when the send's completion is handled (`on_sent`).
            // Chunks are `Arc<[u8]>` heap data, so log growth moves no bytes.
            None => unsafe { io.send(key, fd, out) },
        };
        match sending {
            Sending::Done(Ok(written)) => advance(conn, head_len, private_len, written),
            Sending::Done(Err(e)) => {
                if let Some(outcome) = send_failed(&e) {
                    return outcome;
                }
            }
            Sending::InFlight(token) => {
                conn.send_token = token;
                // The private bytes went with the operation; new ones start a fresh buffer.
                conn.out_pos = 0;
                conn.send_in_flight = true;
                conn.inflight += 1;
                return Flushed::InFlight;
            }
            Sending::Deferred => return Flushed::Deferred,
        }
        if conn.out_pos == conn.outbuf.len() {
            release_private(conn, pool);
        }
        // Go round again: either more is pending, or (after a short write) the next attempt sees `WouldBlock`
        // for certain, so that edge-triggered readiness is sure to report when the socket drains.
    }
}

/// Applies a completed send (io_uring): moves the cursor over the broadcast bytes written and puts back the
/// private bytes that were not. The connection must then be flushed again (more may be pending, or its close
/// may be complete).
pub fn on_sent(conn: &mut Conn, log: &FrameLog, pool: &mut BufPool, written: usize, private: Vec<u8>, from: usize) {
    // The cursor has not moved since the send started, so the chunk under it is the same one.
    let head_len = match &conn.pinned {
        Some(pin) => pin.rest(conn.cursor).len(),
        None => match log.locate(conn.cursor) {
            Located::At { index, offset } if offset > 0 && conn.reads_log() => log.chunk(index).len() - offset,
            _ => 0,
        },
    };
    let private_len = private.len() - from;
    let k = written.min(head_len);
    let p = (written - k).min(private_len);
    conn.cursor += (written - p) as u64;
    return_private(conn, pool, private, from, p);
}

/// What a failed send means for the flush: `None` to try again at once (interrupted).
pub fn send_failed(e: &io::Error) -> Option<Flushed> {
    match e.kind() {
        io::ErrorKind::WouldBlock => Some(Flushed::Blocked),
        io::ErrorKind::Interrupted => None,
        _ => {
            tracing::debug!(error = %e, "write failed");
            Some(Flushed::Failed)
        }
    }
}

/// After a completed send of `private[from..]`, of which `written` bytes went out: a short send's rest goes back
/// before anything queued since; otherwise the buffer returns to the pool.
pub fn return_private(conn: &mut Conn, pool: &mut BufPool, mut private: Vec<u8>, from: usize, written: usize) {
    if written < private.len() - from {
        private.drain(..from + written);
        private.extend_from_slice(&conn.outbuf[conn.out_pos..]);
        pool.give(&mut conn.outbuf);
        conn.outbuf = private;
        conn.out_pos = 0;
    } else {
        if cfg!(debug_assertions) {
            // A use of these bytes after this point (a send that still pointed at them) would show as corrupt
            // frames at the clients.
            private.fill(0xA5);
        }
        pool.give(&mut private);
    }
}

/// Moves the cursor and `out_pos` over `written` bytes of `[head_len broadcast][private_len private][broadcast]`.
fn advance(conn: &mut Conn, head_len: usize, private_len: usize, written: usize) {
    let k = written.min(head_len);
    let p = (written - k).min(private_len);
    conn.cursor += (written - p) as u64;
    conn.out_pos += p;
}

fn release_private(conn: &mut Conn, pool: &mut BufPool) {
    conn.out_pos = 0;
    pool.give(&mut conn.outbuf);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Conn {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut conn = Conn::new(stream);
        conn.sub_index = 0;
        conn
    }

    /// `advance` against a byte-by-byte walk over the three parts, for every split point.
    #[test]
    fn advance_matches_a_walk_over_the_parts() {
        for head_len in 0..4 {
            for private_len in 0..4 {
                for tail_len in 0..4 {
                    for written in 0..=head_len + private_len + tail_len {
                        let mut c = conn();
                        c.outbuf = vec![0; private_len];
                        advance(&mut c, head_len, private_len, written);
                        let parts = [(head_len, true), (private_len, false), (tail_len, true)];
                        let (mut cursor, mut out_pos, mut left) = (0, 0, written);
                        for (len, broadcast) in parts {
                            let k = left.min(len);
                            if broadcast {
                                cursor += k
                            } else {
                                out_pos += k
                            }
                            left -= k;
                        }
                        assert_eq!(
                            (c.cursor, c.out_pos),
                            (cursor as u64, out_pos),
                            "{head_len} {private_len} {tail_len} {written}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_short_send_puts_the_private_rest_before_newer_bytes() {
        let mut log = FrameLog::new();
        log.push(std::sync::Arc::from(&b"abcd"[..]));
        let mut pool = BufPool::new(4096, 64, 1024);
        let mut c = conn();
        c.cursor = 2; // "cd" of the chunk is pending
        c.outbuf = b"NEW".to_vec();
        // The send carried "cd" + "xyz" (from offset 1 of "_xyz"); 3 bytes went: "cd" and "x".
        on_sent(&mut c, &log, &mut pool, 3, b"_xyz".to_vec(), 1);
        assert_eq!(c.cursor, 4);
        assert_eq!(&c.outbuf[c.out_pos..], b"yzNEW");
    }

    #[test]
    fn a_full_send_moves_the_cursor_past_the_private_bytes() {
        let mut log = FrameLog::new();
        log.push(std::sync::Arc::from(&b"abcd"[..]));
        log.push(std::sync::Arc::from(&b"efgh"[..]));
        let mut pool = BufPool::new(4096, 64, 1024);
        let mut c = conn();
        c.cursor = 2;
        on_sent(&mut c, &log, &mut pool, 2 + 2 + 3, b"pq".to_vec(), 0);
        assert_eq!(c.cursor, 7);
        assert!(c.outbuf.is_empty());
    }
}
