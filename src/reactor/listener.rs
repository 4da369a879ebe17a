//! Listening sockets: one per loop thread on the same address, with `SO_REUSEPORT` so that the kernel
//! spreads incoming connections over the threads (and over processes sharing the port).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// A non-blocking TCP listener on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT` set.
pub fn bind_reuseport(addr: SocketAddr, backlog: u32) -> io::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

/// The process or the system is out of file descriptors (`EMFILE` / `ENFILE`): back off before accepting again.
pub fn is_fd_exhaustion(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_listeners_share_a_port() {
        let a = bind_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = a.local_addr().unwrap();
        let b = bind_reuseport(addr, 16).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
    }
}
