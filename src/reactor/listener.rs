//! Listening sockets: one per loop thread on the same address, with `SO_REUSEPORT` so that the kernel
//! spreads incoming connections over the threads (and over processes sharing the port).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// A TCP listener on `addr` with `SO_REUSEADDR`, `SO_REUSEPORT` and `TCP_NODELAY` set. Accepted sockets inherit
/// `TCP_NODELAY` from it, which saves a `setsockopt` per connection.
///
/// `nonblocking` is for readiness backends; io_uring wants blocking sockets, because it makes the first attempt
/// of every operation non-blocking itself and waits for readiness internally, while on an `O_NONBLOCK` socket an
/// operation handed to a worker thread could end in `EAGAIN`.
pub fn bind_reuseport(addr: SocketAddr, backlog: u32, nonblocking: bool) -> io::Result<TcpListener> {
    let ty = if nonblocking { Type::STREAM.nonblocking() } else { Type::STREAM };
    let socket = Socket::new(Domain::for_address(addr), ty.cloexec(), Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(ACCEPT_WAIT_CAP))?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// The longest a blocking `accept` on one of our listeners may wait (`SO_RCVTIMEO`, which `accept` honours).
///
/// A listener handed to another process is the same socket, and its `O_NONBLOCK` flag belongs to the socket, not
/// to the process: a successor on the io_uring backend makes it blocking while this process, on epoll, may still
/// be accepting from it for a moment. Without a cap, a readiness event whose connection the other process took
/// first would block this loop thread in `accept` until the next connection arrives; with it, such an `accept`
/// ends with `EAGAIN` after this long. io_uring never blocks in `accept`, so it does not care.
const ACCEPT_WAIT_CAP: Duration = Duration::from_millis(10);

/// Takes over a listening TCP socket that another process created (systemd socket activation, or a handoff
/// from the process this one replaces): checks that it is one, sets the mode the backend needs (see
/// [`bind_reuseport`]; the flag is shared with every other holder of the socket) and close-on-exec.
pub fn adopt_listener(fd: OwnedFd, nonblocking: bool) -> io::Result<TcpListener> {
    let socket = Socket::from(fd);
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("inherited fd: {what}"));
    if socket.r#type()? != Type::STREAM {
        return Err(invalid("not a stream socket"));
    }
    let domain = socket.domain()?;
    if domain != Domain::IPV4 && domain != Domain::IPV6 {
        return Err(invalid("not a TCP/IP socket (a Unix socket?)"));
    }
    if !socket.is_listener()? {
        return Err(invalid("not listening"));
    }
    socket.set_nonblocking(nonblocking)?;
    socket.set_cloexec(true)?;
    socket.set_read_timeout(Some(ACCEPT_WAIT_CAP))?;
    socket.set_nodelay(true)?;
    Ok(socket.into())
}

/// The process or the system is out of file descriptors (`EMFILE` / `ENFILE`): back off before accepting again.
pub fn is_fd_exhaustion(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Best-effort write that never blocks, whatever the socket's mode: for the few bytes written outside the
/// backend (a `503` to a connection that is refused at once, a `408` before hanging up).
pub fn send_now(socket: &impl AsFd, bytes: &[u8]) -> io::Result<usize> {
    SockRef::from(socket).send_with_flags(bytes, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_listeners_share_a_port() {
        let a = bind_reuseport("127.0.0.1:0".parse().unwrap(), 16, true).unwrap();
        let addr = a.local_addr().unwrap();
        let b = bind_reuseport(addr, 16, false).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
    }

    #[test]
    fn adopting_checks_the_socket_and_sets_its_mode() {
        let bound = bind_reuseport("127.0.0.1:0".parse().unwrap(), 16, true).unwrap();
        let addr = bound.local_addr().unwrap();
        let adopted = adopt_listener(OwnedFd::from(bound), false).unwrap();
        assert_eq!(adopted.local_addr().unwrap(), addr);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        // Blocking now: accept waits for the queued connection instead of failing with WouldBlock.
        adopted.accept().unwrap();
        // With nothing queued, the cap ends a blocking accept instead of hanging.
        let t0 = std::time::Instant::now();
        let err = adopted.accept().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        assert!(t0.elapsed() < Duration::from_secs(1));

        let not_listening = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let err = adopt_listener(OwnedFd::from(not_listening), true).unwrap_err();
        assert!(err.to_string().contains("not listening"), "{err}");
        let udp = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        assert!(adopt_listener(OwnedFd::from(udp), true).is_err());
        let (unix, _) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(adopt_listener(OwnedFd::from(unix), true).is_err());
    }

    #[test]
    fn accepted_sockets_inherit_nodelay() {
        for nonblocking in [true, false] {
            let listener = bind_reuseport("127.0.0.1:0".parse().unwrap(), 16, nonblocking).unwrap();
            let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            listener.set_nonblocking(false).unwrap();
            let (accepted, _) = listener.accept().unwrap();
            assert!(accepted.nodelay().unwrap(), "TCP_NODELAY must be inherited (nonblocking={nonblocking})");
        }
    }
}
