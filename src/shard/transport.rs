//! The transport seam between the loop and the reactor.
//!
//! Plain connections do not pass through here: `output` and `topic_output` hand the reactor the broadcast log's
//! shared slices and the private bytes as they are (zero copy). A TLS connection (the listener speaks TLS when
//! `tls_cert` is set):
//! - input: the raw received bytes go to its session ([`on_input`]), and the plaintext they carry to
//!   `input::on_bytes`. The session is made at the first input, from the raw bytes: the one place where a
//!   PROXY protocol header can be taken off before TLS sees a byte.
//! - output: the slices a send would carry are encrypted ([`encrypt`]) into the session's buffer (at most
//!   `tls::session::SEND_BUDGET` of plaintext at a time), the cursor moving by the plaintext taken, exactly as
//!   for a write; that buffer is what the reactor sends ([`drain`]; on io_uring it travels with the operation as
//!   its private bytes and comes back with the completion, [`on_sent`]). Broadcast frames are still encoded once;
//!   only the encryption is per connection.
//!
//! It does not decide when to flush or close: the loop does, as for plain connections.

use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::time::Instant;

use super::input::{self, kill, InputCx};
use super::log_limit::LogLimit;
use super::output::{send_failed, Flushed};
use super::stats::TlsHandshake;
use crate::conn::{BufPool, Conn, ConnKey, SideTable};
use crate::reactor::{self, Outgoing, Reactor, Sending};
use crate::tls::{Tls, TlsSession};

/// The loop's TLS sessions, keyed like its connections.
pub type Sessions = SideTable<Box<TlsSession>>;

thread_local! {
    /// Failed TLS input is logged at most once a second per loop thread (it is counted in full).
    static FAILURE_LOG: RefCell<LogLimit> = const { RefCell::new(LogLimit::per_second()) };
}

/// Bytes received on a connection of a TLS listener.
pub fn on_input(
    conn: &mut Conn,
    key: ConnKey,
    data: &mut [u8],
    sessions: &mut Sessions,
    tls: &Tls,
    cx: &mut InputCx<'_>,
) {
    if !conn.wants_input() {
        return;
    }
    let session = match sessions.get_mut(key) {
        Some(session) => session,
        None => match TlsSession::new(&tls.config()) {
            Ok(session) => sessions.insert(key, Box::new(session)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a TLS session");
                kill(conn, key, cx.dead);
                return;
            }
        },
    };
    let mut plain = cx.pool.take();
    // Handshake records and alerts go into a pooled buffer too, given back below if nothing was written to it
    // (idle connections hold none), or by `drain` once sent.
    if session.cipher.capacity() == 0 {
        session.cipher = cx.pool.take();
    }
    let result = session.handle_input(data, &mut plain);
    if !session.has_cipher() {
        session.cipher_pos = 0;
        cx.pool.give(&mut session.cipher);
    }
    match result {
        Ok(progress) => {
            if progress.handshake_done {
                cx.stats.tls_handshakes.add(TlsHandshake::Ok as usize, 1);
            }
            if progress.wants_send || progress.handshake_done {
                input::mark_dirty(conn, key, cx.dirty);
            }
            if !plain.is_empty() {
                input::on_bytes(conn, key, &mut plain, cx);
            }
        }
        Err(e) => {
            if session.is_handshaking() {
                cx.stats.tls_handshakes.add(TlsHandshake::Failed as usize, 1);
            }
            if let Some(suppressed) = FAILURE_LOG.with(|l| l.borrow_mut().allow(Instant::now())) {
                tracing::warn!(?key, error = %e, suppressed, "TLS failed (not a TLS client, or refused): closed");
            }
            // The alert, best effort (its socket buffer has room: the connection has sent little), then close.
            let _ = reactor::send_now(&conn.stream, &session.cipher[session.cipher_pos..]);
            kill(conn, key, cx.dead);
        }
    }
    cx.pool.give(&mut plain);
}

/// Sends the ciphertext still pending. `None`: none is left, encrypt more; otherwise how the flush stops here.
/// While the handshake runs no plaintext can be encrypted: the flush ends (input carries it on).
pub fn drain<R: Reactor>(
    conn: &mut Conn,
    key: ConnKey,
    tls: &mut TlsSession,
    pool: &mut BufPool,
    io: &mut R,
) -> Option<Flushed> {
    while tls.has_cipher() {
        let out = Outgoing { head: &[], private: &mut tls.cipher, private_from: tls.cipher_pos, tail: &[] };
        // SAFETY: the send carries no borrowed bytes (`head` and `tail` are empty); the ciphertext is `private`,
        // which the operation owns until its completion hands it back (`on_sent`).
        match unsafe { io.send(key, conn.stream.as_raw_fd(), out) } {
            Sending::Done(Ok(written)) => tls.sent(written),
            Sending::Done(Err(e)) => {
                if let Some(outcome) = send_failed(&e) {
                    return Some(outcome);
                }
            }
            Sending::InFlight(token) => {
                tls.cipher_pos = 0; // the buffer went with the operation
                conn.send_token = token;
                conn.send_in_flight = true;
                conn.inflight += 1;
                return Some(Flushed::InFlight);
            }
            Sending::Deferred => return Some(Flushed::Deferred),
        }
    }
    // Idle connections hold no ciphertext buffer.
    tls.cipher_pos = 0;
    pool.give(&mut tls.cipher);
    tls.is_handshaking().then_some(Flushed::Done)
}

/// Encrypts the start of what `out` would send into the session's buffer; the result reads like a write's:
/// the plaintext bytes taken.
pub fn encrypt(tls: &mut TlsSession, out: &Outgoing<'_>, pool: &mut BufPool) -> Sending {
    if tls.cipher.capacity() == 0 {
        tls.cipher = pool.take();
    }
    match tls.encrypt(out.parts()) {
        Ok(0) => Sending::Done(Err(std::io::Error::other("TLS took no plaintext"))),
        taken => Sending::Done(taken),
    }
}

/// After the last plaintext byte of a closing connection: queues close_notify (once). `true`: there is
/// ciphertext to send.
pub fn close_notify(conn: &Conn, tls: Option<&mut TlsSession>) -> bool {
    conn.close_queued && tls.is_some_and(|tls| tls.close_notify())
}

/// A ciphertext send completed (io_uring): what was not written goes back before anything queued since.
pub fn on_sent(tls: &mut TlsSession, pool: &mut BufPool, written: usize, mut cipher: Vec<u8>, from: usize) {
    if from + written < cipher.len() {
        cipher.drain(..from + written);
        cipher.extend_from_slice(&tls.cipher[tls.cipher_pos..]);
        pool.give(&mut tls.cipher);
        tls.cipher = cipher;
        tls.cipher_pos = 0;
    } else {
        pool.give(&mut cipher);
    }
}
