//! I/O plumbing below the loop threads: sockets and process limits. Knows nothing of WebSocket.
//!
//! The epoll backend is mio; the loop threads use `mio::Poll` directly for readiness. This module owns
//! how sockets are made (one `SO_REUSEPORT` listener per loop thread) and the open-files limit.

mod limits;
mod listener;

pub use limits::raise_nofile_limit;
pub use listener::{bind_reuseport, is_fd_exhaustion};
