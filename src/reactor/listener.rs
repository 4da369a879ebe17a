//! Listening sockets: one per loop thread on the same address, with `SO_REUSEPORT` so that the kernel
//! spreads incoming connections over the threads (and over processes sharing the port).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;

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
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
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
