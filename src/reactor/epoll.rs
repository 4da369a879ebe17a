//! The epoll backend (through mio): readiness, then the syscalls inline — `accept4` until `EAGAIN`, up to
//! [`READS_PER_PASS`] `recv`s into one shared buffer, `sendmsg` when the loop sends.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, IoSlice};
use std::net::TcpListener;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::{is_fd_exhaustion, Event, Handler, IoStats, Outgoing, Reactor, Sending, Waker};
use crate::conn::ConnKey;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Size of the loop thread's one receive buffer: every connection reads into it; only a partial frame is
/// copied out to the connection.
const READ_BUF_BYTES: usize = 64 * 1024;
/// Reads per connection per pass before others get their turn.
const READS_PER_PASS: usize = 4;
/// `sendmsg` slices (well under `IOV_MAX`).
const MAX_IOV: usize = 64;

pub struct EpollReactor {
    poll: Poll,
    events: Events,
    listener: Option<mio::net::TcpListener>,
    /// Accepting is on (off while paused after `EMFILE`, and for good after shutdown).
    accepting: bool,
    /// Run the accept loop in the next wait even without a readiness event (resuming after a pause: the
    /// edge-triggered event for the waiting connections has already been consumed).
    accept_now: bool,
    read_buf: Box<[u8]>,
    /// Connections that used up their read budget and are read again next pass.
    read_again: VecDeque<ConnKey>,
    stats: Arc<IoStats>,
}

impl EpollReactor {
    /// `listener` must be non-blocking; `waker` must be an `O_NONBLOCK` eventfd.
    pub fn new(listener: TcpListener, waker: &Waker, stats: Arc<IoStats>) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut listener = mio::net::TcpListener::from_std(listener);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        poll.registry().register(&mut SourceFd(&waker.as_raw_fd()), WAKER, Interest::READABLE)?;
        Ok(Self {
            poll,
            events: Events::with_capacity(1024),
            listener: Some(listener),
            accepting: true,
            accept_now: false,
            read_buf: vec![0; READ_BUF_BYTES].into_boxed_slice(),
            read_again: VecDeque::new(),
            stats,
        })
    }

    fn accept_all(&mut self, h: &mut impl Handler) {
        let Some(listener) = &self.listener else { return };
        while self.accepting {
            match listener.accept() {
                Ok((stream, _)) => {
                    // SAFETY: `into_raw_fd` gives up ownership of an open descriptor; nothing else owns it.
                    let fd = unsafe { OwnedFd::from_raw_fd(stream.into_raw_fd()) };
                    h.on_event(Event::Accepted(fd));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if is_fd_exhaustion(&e) => {
                    self.accepting = false;
                    h.on_event(Event::AcceptStopped(e));
                }
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            }
        }
    }

    fn read(&mut self, key: ConnKey, h: &mut impl Handler) {
        for _ in 0..READS_PER_PASS {
            let Some(fd) = h.input_fd(key) else { return };
            // SAFETY: the buffer is ours and valid for `len` bytes; `fd` is open (the loop closes sockets only
            // in its reap phase, never during a wait).
            let n = unsafe { libc::recv(fd, self.read_buf.as_mut_ptr().cast(), self.read_buf.len(), 0) };
            match n {
                0 => {
                    h.on_event(Event::RecvEnded { key, err: None });
                    return;
                }
                n if n > 0 => {
                    IoStats::add(&self.stats.received_bytes, n as u64);
                    let data = &mut self.read_buf[..n as usize];
                    if !h.on_event(Event::Received { key, data }) {
                        return;
                    }
                }
                _ => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        ErrorKind::WouldBlock => return,
                        ErrorKind::Interrupted => {}
                        _ => {
                            h.on_event(Event::RecvEnded { key, err: Some(e) });
                            return;
                        }
                    }
                }
            }
        }
        self.read_again.push_back(key);
    }
}

impl Reactor for EpollReactor {
    const INLINE: bool = true;
    const MAX_IOV: usize = MAX_IOV;
    const NAME: &'static str = "epoll";

    fn accept(&mut self, on: bool) {
        if on {
            self.accepting = true;
            self.accept_now = true;
        } else if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
    }

    fn attach(&mut self, key: ConnKey, fd: RawFd) -> io::Result<()> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        self.poll.registry().register(&mut SourceFd(&fd), Token(key.0 as usize), interest)
    }

    unsafe fn send(&mut self, _key: ConnKey, fd: RawFd, out: Outgoing<'_>) -> Sending {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let mut n = 0;
        for (slot, part) in slices.iter_mut().zip(out.parts()) {
            *slot = IoSlice::new(part);
            n += 1;
        }
        // SAFETY: `fd` is an open socket for the duration of this call (closed only in the loop's reap phase);
        // the borrowed descriptor does not outlive it.
        let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        // sendmsg(2) rather than writev(2): the same TCP path without the VFS layer's per-call overhead (about a
        // tenth of a one-message send on loopback, measured with perf), and MSG_NOSIGNAL instead of SIGPIPE.
        let sent = socket2::SockRef::from(&socket).send_vectored(&slices[..n]);
        if let Ok(written) = sent {
            IoStats::add(&self.stats.sent_bytes, written as u64);
        }
        Sending::Done(sent)
    }

    fn cancel(&mut self, _key: ConnKey, _fd: RawFd, _recv: bool, _send: Option<u64>) {
        // Nothing is ever in flight: I/O happens inside the calls.
    }

    fn detach(&mut self, _key: ConnKey, _fd: RawFd) {
        // Closing the socket removes it from the epoll set.
    }

    fn wait(&mut self, timeout: Option<Duration>, h: &mut impl Handler) -> io::Result<()> {
        let busy = !self.read_again.is_empty() || self.accept_now;
        let timeout = if busy { Some(Duration::ZERO) } else { timeout };
        IoStats::bump(&self.stats.waits);
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() != ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let mut accept = std::mem::take(&mut self.accept_now);
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in &events {
            match event.token() {
                LISTENER => accept = true,
                WAKER => {} // the loop pulls its feed every pass
                token => {
                    let key = ConnKey(token.0 as u64);
                    if event.is_writable() {
                        h.on_event(Event::Writable { key });
                    }
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.read(key, h);
                    }
                }
            }
        }
        self.events = events;
        if accept {
            self.accept_all(h);
        }
        for _ in 0..self.read_again.len() {
            let Some(key) = self.read_again.pop_front() else { break };
            self.read(key, h);
        }
        Ok(())
    }
}
