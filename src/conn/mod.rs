//! Per-connection state as plain data, kept in a generational slab.
//!
//! Nothing here performs I/O or knows the event loop: the loop thread (`shard`) reads and writes the socket
//! and drives the protocol session; this module only defines what one connection remembers between wake-ups
//! and keeps that small (an idle connection holds no heap memory at all).

mod client_addr;
mod pool;
mod slab;
mod subs;
mod token_bucket;

pub use client_addr::{AddrSource, AddrState, ClientAddr, IpRefusal, IpTable, PerIpLimits, Slot};
pub use pool::BufPool;
pub use slab::{ConnKey, GenSlab};
pub use subs::{Sub, TopicSubs, PINNED};
pub use token_bucket::TokenBucket;

use std::net::TcpStream;

use crate::fanout::{Cursor, Pinned, StreamId};
use crate::proto::session::Session;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the HTTP request head.
    Handshake,
    /// Upgraded: exchanging frames and receiving broadcasts.
    Open,
    /// A close frame or a final HTTP response is queued or sent: no data frame may follow it. The connection
    /// finishes writing what is queued, then half-closes and waits (bounded) for the peer to hang up.
    Closing,
    /// To be freed in the reap phase. Nothing more is read or written.
    Dead,
}

/// What one connection remembers between wake-ups.
///
/// INVARIANT: `out_pos <= outbuf.len()`; `outbuf` empty ⇒ `out_pos == 0`.
/// INVARIANT: `sub_index != NOT_SUBSCRIBED` ⇔ the connection is in its topic's subscriber list at that index.
/// INVARIANT: bytes of `outbuf` are written only while `cursor` stands on a chunk boundary of the broadcast log
/// (chunks end on frame boundaries), so private frames never land inside a broadcast frame.
pub struct Conn {
    pub stream: TcpStream,
    pub phase: Phase,
    /// Our close frame (or final HTTP response) is queued: no broadcast after the current chunk.
    pub close_queued: bool,
    /// Upgraded to WebSocket (as opposed to a plain HTTP exchange).
    pub upgraded: bool,
    /// A Server-Sent Events stream: events follow the response head; its input is ignored; no close frame.
    pub sse: bool,
    /// A long-poll request held until a message or its deadline (in the loop's held list); input is ignored.
    pub held_poll: bool,
    /// The peer's close frame has arrived: the closing handshake is complete once ours is written.
    pub peer_closed: bool,
    /// The peer broke the protocol: its further bytes are discarded, never decoded.
    pub input_failed: bool,
    /// Write side shut down after the last queued byte left; input is only watched for the peer's close.
    pub write_shut: bool,
    /// No send may start now: the last one stopped short (epoll: wait for writability) or is still in flight
    /// (io_uring: wait for its completion).
    pub write_blocked: bool,
    /// A send is in flight (io_uring): the broadcast bytes under `cursor` must stay in the log until it ends.
    pub send_in_flight: bool,
    /// Our cancel of its in-flight operations has been queued (io_uring; once per connection).
    pub cancel_sent: bool,
    /// Operations in flight whose final completion has not been handled (io_uring; always 0 on epoll). The
    /// connection's slot and socket are freed only at 0.
    pub inflight: u8,
    /// The `user_data` of the send in flight (io_uring), so that it can be cancelled by a hash lookup.
    pub send_token: u64,
    /// In the loop thread's list of blocked connections (the list is cleaned lazily).
    pub in_blocked_list: bool,
    /// Queued to be flushed in this loop pass.
    pub dirty: bool,
    pub session: Session,
    /// Bytes received but not yet consumed: a partial request head or a partial frame.
    pub inbuf: Vec<u8>,
    /// Bytes for this connection alone: handshake response, pongs, echoes, close, HTTP responses.
    pub outbuf: Vec<u8>,
    /// Bytes of `outbuf` already written.
    pub out_pos: usize,
    /// Next broadcast byte this connection will receive.
    pub cursor: Cursor,
    /// Index in its stream's subscriber list, or [`NOT_SUBSCRIBED`].
    pub sub_index: u32,
    /// The stream it reads (its format; later its topic subscriptions): `cursor` is a position in that log.
    pub stream_id: StreamId,
    /// Closing: the connection no longer reads the broadcast log. What it still needs of a frame it is in the
    /// middle of is in `pinned`; the log may be trimmed past its cursor.
    pub log_released: bool,
    /// The send in flight was cancelled because the connection fell too far behind (io_uring).
    pub lag_cancel_sent: bool,
    /// The broadcast chunk a connection stopped reading in the middle of: a closing one, or one that left the
    /// whole-feed stream for topic subscriptions (rare: boxed to keep `Conn` small).
    /// INVARIANT: `Some` ⇒ `cursor` lies inside the pinned chunk, and the connection reads no other broadcast
    /// bytes before the pinned ones; its bytes are counted in the loop's `pinned_bytes`.
    pub pinned: Option<Box<Pinned>>,
    /// Topic subscriptions: `Some` once the connection subscribed (it then reads no whole-feed stream).
    pub topics: Option<Box<TopicSubs>>,
    /// Control messages of this connection waiting in the loop's queue.
    pub pending_controls: u8,
    /// Keepalive state: [`PING_UNANSWERED`], [`HEARD`].
    pub keepalive: u8,
    /// Its charge on its client address in the loop threads' shared table (`shard::admission`), released when
    /// it is freed; [`NO_SLOT`] when the per-address limits are off or it was refused.
    pub client_slot: Slot,
    /// The token it came in with (or last refreshed to), when token auth is on and it sent one (boxed: most
    /// gateways run without auth, and `Conn` stays in its budget).
    pub auth: Option<Box<Authenticated>>,
    /// Found past its backlog limits while a send was in flight, with a policy that may skip for it: its send
    /// was cancelled, and the policy is applied before its next send (`fanout::lag_policy`).
    pub lag_relief_due: bool,
    /// Bytes of `outbuf` still to write when the loop last counted them in its private-bytes total
    /// (`max_loop_private_bytes`).
    pub private_counted: u32,
    /// How far its client address is known (PROXY protocol, forwarding headers: `shard::client`).
    pub client_addr: AddrState,
}

/// What a connection's token allows, and when the connection must end unless the token is refreshed.
#[derive(Debug)]
pub struct Authenticated {
    pub grant: crate::auth::Grant,
    /// `grant.valid_until` on this process's monotonic clock. INVARIANT: the loop's token-expiry queue holds an
    /// entry at this instant for the connection (it may hold stale ones too).
    pub deadline: std::time::Instant,
}

/// `Conn::keepalive`: a ping was sent and no pong has come since.
pub const PING_UNANSWERED: u8 = 1;
/// `Conn::keepalive`: bytes arrived from the client since the last idle check.
pub const HEARD: u8 = 2;
/// `Conn::client_slot`: holds no charge.
pub const NO_SLOT: Slot = Slot::MAX;

pub const NOT_SUBSCRIBED: u32 = u32::MAX;

// Budget: 100k idle connections must fit in well under 512 bytes each, slab entry included. 168 since keepalive,
// per-address admission, token auth and the private-bytes budget each took their few bytes (the client-address
// state's one byte fits in padding); anything larger goes behind a box like `pinned`, `topics` and `auth`.
const _: () = assert!(std::mem::size_of::<Conn>() <= 168);

impl Conn {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            phase: Phase::Handshake,
            close_queued: false,
            upgraded: false,
            sse: false,
            held_poll: false,
            peer_closed: false,
            input_failed: false,
            write_shut: false,
            write_blocked: false,
            in_blocked_list: false,
            send_in_flight: false,
            cancel_sent: false,
            inflight: 0,
            send_token: 0,
            dirty: false,
            session: Session::new(crate::proto::session::Role::Server),
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            out_pos: 0,
            cursor: 0,
            sub_index: NOT_SUBSCRIBED,
            stream_id: 0,
            log_released: false,
            lag_cancel_sent: false,
            pinned: None,
            topics: None,
            pending_controls: 0,
            keepalive: 0,
            client_slot: NO_SLOT,
            auth: None,
            lag_relief_due: false,
            private_counted: 0,
            client_addr: AddrState::Known(AddrSource::Peer),
        }
    }

    /// Private bytes still to write.
    pub fn private_pending(&self) -> &[u8] {
        &self.outbuf[self.out_pos..]
    }

    /// Input still matters: a request head, frames of an open connection, or — after our close — the peer's
    /// close frame that completes the closing handshake.
    pub fn wants_input(&self) -> bool {
        match self.phase {
            Phase::Handshake | Phase::Open => true,
            Phase::Closing => self.upgraded && !self.peer_closed && !self.input_failed,
            Phase::Dead => false,
        }
    }

    pub fn is_subscribed(&self) -> bool {
        self.sub_index != NOT_SUBSCRIBED
    }

    /// Reads broadcast logs (the whole-feed stream, or its topics), and has not let go of them while closing.
    pub fn reads_log(&self) -> bool {
        (self.is_subscribed() || self.topics.is_some()) && !self.log_released
    }
}
