//! I/O plumbing below the loop threads: sockets, process limits, and the two I/O backends behind one small
//! interface. Knows connection keys and file descriptors, nothing of WebSocket.
//!
//! The [`Reactor`] trait is completion-shaped: the loop asks for sends and receives and hears back through
//! [`Event`]s. The epoll backend ([`EpollReactor`]) does its I/O inline when readiness arrives, so it keeps the
//! plain syscalls of a readiness loop; the io_uring backend ([`UringReactor`]) queues operations and hands them
//! to the kernel in batches: the `io_uring_enter` that ends each loop pass, and every `uring_submit_batch` sends
//! mid-pass. The loop is monomorphised per backend, and only reads the two associated constants to tell them
//! apart.

pub mod activation;
mod epoll;
pub mod fdpass;
mod limits;
mod listener;
mod stats;
pub mod uring;
mod waker;

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::time::Duration;

pub use epoll::EpollReactor;
pub use limits::raise_nofile_limit;
pub use listener::{adopt_listener, bind_reuseport, is_fd_exhaustion, send_now};
pub use stats::IoStats;
pub use uring::UringReactor;
pub use waker::Waker;

use crate::conn::ConnKey;

/// One I/O backend of a loop thread. Created on the loop thread that uses it and never shared.
pub trait Reactor: Sized {
    /// `true`: [`Reactor::send`] completes before it returns (epoll). `false`: its result arrives later as
    /// [`Event::Sent`] (io_uring), and the loop must keep what it sent alive and unmoved until then.
    const INLINE: bool;
    /// Most slices one send may carry.
    const MAX_IOV: usize;
    /// The name printed at start and in `/healthz`.
    const NAME: &'static str;

    /// Starts (`true`) or stops accepting. Stopping for good (shutdown) closes the listener.
    fn accept(&mut self, on: bool);

    /// Starts receiving on a freshly accepted connection.
    fn attach(&mut self, key: ConnKey, fd: RawFd) -> io::Result<()>;

    /// Sends `out`, in order: `head`, `private[private_from..]`, then each of `tail`.
    ///
    /// # Safety
    /// When this returns [`Sending::InFlight`], the bytes behind `out.head` and `out.tail` must stay valid and
    /// unmoved until the matching [`Event::Sent`] has been delivered. (`out.private` is moved into the
    /// operation and handed back with that event, so it needs no such care.)
    unsafe fn send(&mut self, key: ConnKey, fd: RawFd, out: Outgoing<'_>) -> Sending;

    /// Ends operations still in flight for the connection, each with its own event: its receive when `recv`, and
    /// the send whose token [`Sending::InFlight`] gave, if any. Called after the connection died with operations
    /// in flight (receive and send; its socket is closed only after the last of them has ended), and to take
    /// back a send from a connection that fell too far behind (the send only: its event then reports
    /// `ECANCELED`, or the bytes written if the send ended first).
    fn cancel(&mut self, key: ConnKey, fd: RawFd, recv: bool, send: Option<u64>);

    /// Forgets a connection whose socket is about to be closed (no operation is in flight on it).
    fn detach(&mut self, key: ConnKey, fd: RawFd);

    /// Hands queued operations to the kernel and waits up to `timeout` (`None`: no limit) for something to
    /// happen — one `epoll_wait` or one `io_uring_enter` — then delivers what happened to `handler`.
    fn wait(&mut self, timeout: Option<Duration>, handler: &mut impl Handler) -> io::Result<()>;
}

/// The loop thread's side of [`Reactor::wait`].
pub trait Handler {
    /// The socket of a connection that still reads input, or `None` when it is gone or dead: then it is neither
    /// read nor re-armed.
    fn input_fd(&self, key: ConnKey) -> Option<RawFd>;

    /// Handles one event. For [`Event::Received`], `false` means: stop reading this connection for now.
    fn on_event(&mut self, event: Event<'_>) -> bool;
}

/// What a reactor reports.
#[derive(Debug)]
pub enum Event<'a> {
    /// A new connection (its socket inherits the listener's options, `TCP_NODELAY` included).
    Accepted(OwnedFd),
    /// Accepting failed and stopped (e.g. `EMFILE`): call [`Reactor::accept`] to resume.
    AcceptStopped(io::Error),
    /// Bytes from a connection. The loop owns them only during this call.
    Received { key: ConnKey, data: &'a mut [u8] },
    /// No more input from this connection: `None` for end of stream, otherwise why. Ends the receive that
    /// [`Reactor::attach`] started.
    RecvEnded { key: ConnKey, err: Option<io::Error> },
    /// The socket has room again after a short send (inline backends only).
    Writable { key: ConnKey },
    /// A send that was in flight ended (deferred backends only): bytes written, or why not.
    Sent { key: ConnKey, result: io::Result<usize>, private: Vec<u8>, private_from: usize },
}

/// The bytes of one send: the rest of the broadcast chunk under the connection's cursor, its private bytes,
/// then newer broadcast chunks. Any part may be empty.
pub struct Outgoing<'a> {
    pub head: &'a [u8],
    pub private: &'a mut Vec<u8>,
    pub private_from: usize,
    pub tail: &'a [&'a [u8]],
}

impl Outgoing<'_> {
    /// The non-empty parts, in order.
    pub fn parts(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let private = &self.private[self.private_from..];
        [self.head, private].into_iter().chain(self.tail.iter().copied()).filter(|part| !part.is_empty())
    }
}

/// How [`Reactor::send`] went.
#[derive(Debug)]
#[must_use]
pub enum Sending {
    /// Done now (inline backends): bytes written, or the error (`WouldBlock`: the socket is full).
    Done(io::Result<usize>),
    /// Queued; [`Event::Sent`] follows. `out.private` was moved into the operation. The token names the send
    /// for [`Reactor::cancel`].
    InFlight(u64),
    /// Not queued now for lack of room (submission queue or send slots): try again next pass.
    Deferred,
}
