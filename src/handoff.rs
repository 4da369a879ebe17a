//! Zero-downtime restart: the running process (the incumbent) hands its listening sockets to the process that
//! replaces it (the successor) over a Unix socket, then drains.
//!
//! Why not `SO_REUSEPORT` alone: each reuseport socket has its own accept queue, and the connections queued on
//! the old process's sockets are reset when it closes them. Handing over the sockets themselves moves their
//! queues too: nothing queued is lost, and there is no moment without a listener.
//!
//! The exchange, on `handoff_socket` (both processes are started with the same path):
//! 1. The successor connects and sends `wsgate-handoff/1 hello`.
//! 2. The incumbent answers `wsgate-handoff/1 listeners ws=N ingest=0|1` with its N WebSocket listeners (one per
//!    loop thread, each its own queue) and its ingest listener attached (`SCM_RIGHTS`). It keeps accepting.
//! 3. The successor starts serving on them and sends `ready`.
//! 4. The incumbent answers `draining`, stops accepting at once (its loops close their copies) and drains its
//!    clients with 1012, spread over `shutdown_spread`; then it exits 0.
//! 5. The successor puts its own handoff socket at the path (bound beside it, then renamed over it: the path
//!    never goes missing), ready for the next restart.
//!
//! If the successor fails before `ready`, the incumbent keeps serving as if nothing happened (the sockets are
//! still its own). A path with nobody listening (no file, or a stale one from a crashed process) means: start
//! fresh, bind the listen address.
//!
//! What this does not do: carry positions or history (the successor has its own epoch: a client resuming from a
//! position of the old process gets a `gap`, reason `epoch`), or hand over connections (they are drained).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::reactor::fdpass;

const VERSION: &str = "wsgate-handoff/1";
/// How long either side waits for the other's next line, except the successor's start (below).
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the incumbent waits for the successor to start serving on the sockets it sent.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest line of the exchange.
const MAX_LINE: usize = 256;

/// What the incumbent hands over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// WebSocket listeners (the first `ws` descriptors).
    pub ws: usize,
    /// Whether an ingest listener follows them.
    pub ingest: bool,
}

impl Offer {
    pub fn encode(&self) -> String {
        format!("{VERSION} listeners ws={} ingest={}\n", self.ws, u8::from(self.ingest))
    }

    pub fn parse(line: &str) -> Result<Offer, String> {
        let rest = line
            .trim_end()
            .strip_prefix(VERSION)
            .and_then(|r| r.strip_prefix(" listeners "))
            .ok_or_else(|| format!("not a {VERSION} offer: {line:?}"))?;
        let mut ws = None;
        let mut ingest = None;
        for field in rest.split(' ') {
            match field.split_once('=') {
                Some(("ws", n)) => ws = n.parse::<usize>().ok(),
                Some(("ingest", "0")) => ingest = Some(false),
                Some(("ingest", "1")) => ingest = Some(true),
                _ => return Err(format!("unknown field {field:?} in offer {line:?}")),
            }
        }
        match (ws, ingest) {
            (Some(ws), Some(ingest)) if ws > 0 && ws + usize::from(ingest) <= fdpass::MAX_FDS => {
                Ok(Offer { ws, ingest })
            }
            _ => Err(format!("bad offer {line:?}")),
        }
    }
}

fn hello() -> String {
    format!("{VERSION} hello\n")
}

/// The successor's side, once it holds the incumbent's sockets.
#[derive(Debug)]
pub struct Takeover {
    sock: UnixStream,
    pub listeners: Vec<OwnedFd>,
    pub ingest: Option<OwnedFd>,
}

/// Asks the process serving at `path` for its listening sockets. `Ok(None)`: nobody serves there (no socket
/// file, or a stale one): start fresh.
pub fn request(path: &Path) -> io::Result<Option<Takeover>> {
    let sock = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ECONNREFUSED)) => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("handoff socket {}: {e}", path.display()))),
    };
    sock.set_read_timeout(Some(STEP_TIMEOUT))?;
    sock.set_write_timeout(Some(STEP_TIMEOUT))?;
    (&sock).write_all(hello().as_bytes())?;
    let mut buf = [0u8; MAX_LINE];
    let (n, mut fds) = fdpass::recv_with_fds(&sock, &mut buf)?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the running process closed the handoff"));
    }
    let line = std::str::from_utf8(&buf[..n]).map_err(|_| invalid("offer is not UTF-8"))?;
    let offer = Offer::parse(line).map_err(invalid)?;
    if fds.len() != offer.ws + usize::from(offer.ingest) {
        return Err(invalid(format!("offer {offer:?} came with {} descriptors", fds.len())));
    }
    let ingest = if offer.ingest { fds.pop() } else { None };
    Ok(Some(Takeover { sock, listeners: fds, ingest }))
}

impl Takeover {
    /// Tells the incumbent that this process serves now, and waits for it to confirm that it drains.
    pub fn confirm(self) -> io::Result<()> {
        (&self.sock).write_all(b"ready\n")?;
        let line = read_line(&self.sock)?;
        if line.trim_end() != "draining" {
            return Err(invalid(format!("expected \"draining\", got {line:?}")));
        }
        Ok(())
    }
}

/// Listens at `path` for a successor: binds beside it and renames the socket over it, so the path always names
/// a live process (the old file, if any, is replaced; its process keeps its open socket until it exits).
pub fn listen(path: &Path) -> io::Result<HandoffListener> {
    let mut tmp = PathBuf::from(path);
    tmp.set_file_name(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("wsgate-handoff"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)
        .map_err(|e| io::Error::new(e.kind(), format!("handoff socket {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io::Error::new(e.kind(), format!("handoff socket {}: {e}", path.display()))
    })?;
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(path).ok().map(|m| m.ino());
    Ok(HandoffListener { listener, path: path.to_path_buf(), inode })
}

/// The incumbent's handoff socket, and which file it is (the inode its path named right after `listen`).
#[derive(Debug)]
pub struct HandoffListener {
    pub listener: UnixListener,
    path: PathBuf,
    inode: Option<u64>,
}

impl HandoffListener {
    /// Removes the socket file if the path still names this socket (a successor may have replaced it): a
    /// process that drains without a successor stops advertising itself, so that the next process started finds
    /// nobody there and binds, instead of waiting for an answer that will not come.
    pub fn unlink_if_ours(&self) {
        use std::os::unix::fs::MetadataExt;
        if self.inode.is_some() && std::fs::metadata(&self.path).ok().map(|m| m.ino()) == self.inode {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The incumbent's side of one exchange: hands `ws` (and `ingest`) to the successor on `sock` and waits until
/// it serves on them. `Ok(())`: it does, and it was told that this process drains now (the caller must).
/// An error: the successor went away or misbehaved; this process keeps serving.
pub fn serve(sock: UnixStream, ws: &[RawFd], ingest: Option<RawFd>) -> io::Result<()> {
    sock.set_read_timeout(Some(STEP_TIMEOUT))?;
    sock.set_write_timeout(Some(STEP_TIMEOUT))?;
    let line = read_line(&sock)?;
    if line != hello() {
        return Err(invalid(format!("expected {:?}, got {line:?}", hello())));
    }
    let offer = Offer { ws: ws.len(), ingest: ingest.is_some() };
    let fds: Vec<RawFd> = ws.iter().copied().chain(ingest).collect();
    fdpass::send_with_fds(&sock, offer.encode().as_bytes(), &fds)?;
    sock.set_read_timeout(Some(START_TIMEOUT))?;
    let line = read_line(&sock)?;
    if line.trim_end() != "ready" {
        return Err(invalid(format!("expected \"ready\", got {line:?}")));
    }
    (&sock).write_all(b"draining\n")?;
    Ok(())
}

/// One `\n`-terminated line (at most `MAX_LINE` bytes), read byte by byte so that nothing after it is consumed
/// (the next message may carry descriptors).
fn read_line(sock: &UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut reader = BufReader::with_capacity(1, sock.take(MAX_LINE as u64));
    reader.read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "handoff: the other process went away"));
    }
    String::from_utf8(line).map_err(|_| invalid("a line that is not UTF-8"))
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("handoff: {}", msg.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;

    #[test]
    fn offers_round_trip_and_bad_ones_are_refused() {
        for offer in [Offer { ws: 4, ingest: true }, Offer { ws: 1, ingest: false }] {
            assert_eq!(Offer::parse(&offer.encode()), Ok(offer));
        }
        for bad in [
            "wsgate-handoff/2 listeners ws=1 ingest=0\n",
            "wsgate-handoff/1 listeners ws=0 ingest=0\n",
            "wsgate-handoff/1 listeners ws=1\n",
            "wsgate-handoff/1 listeners ws=1 ingest=2\n",
            "wsgate-handoff/1 listeners ws=1 ingest=0 extra=1\n",
            "wsgate-handoff/1 listeners ws=64 ingest=1\n",
        ] {
            assert!(Offer::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("wsgate-handoff-{}-{name}", std::process::id()))
    }

    #[test]
    fn nobody_at_the_path_means_start_fresh() {
        let path = temp_path("none");
        let _ = std::fs::remove_file(&path);
        assert!(request(&path).unwrap().is_none());
        // A stale socket file (its process gone) too.
        drop(UnixListener::bind(&path).unwrap());
        assert!(request(&path).unwrap().is_none());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_successor_takes_the_listeners_and_the_incumbent_learns_it_serves() {
        let path = temp_path("full");
        let _ = std::fs::remove_file(&path);
        let incumbent = listen(&path).unwrap();
        let ws = [TcpListener::bind("127.0.0.1:0").unwrap(), TcpListener::bind("127.0.0.1:0").unwrap()];
        let ingest = TcpListener::bind("127.0.0.1:0").unwrap();
        let addrs: Vec<_> = ws.iter().map(|l| l.local_addr().unwrap()).collect();
        let ingest_addr = ingest.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (sock, _) = incumbent.listener.accept().unwrap();
            let fds: Vec<RawFd> = ws.iter().map(|l| l.as_raw_fd()).collect();
            serve(sock, &fds, Some(ingest.as_raw_fd()))
        });
        let takeover = request(&path).unwrap().expect("an incumbent listens");
        let got: Vec<_> = takeover
            .listeners
            .iter()
            .map(|fd| TcpListener::from(fd.try_clone().unwrap()).local_addr().unwrap())
            .collect();
        assert_eq!(got, addrs);
        let ingest_got = TcpListener::from(takeover.ingest.as_ref().unwrap().try_clone().unwrap());
        assert_eq!(ingest_got.local_addr().unwrap(), ingest_addr);
        takeover.confirm().unwrap();
        server.join().unwrap().unwrap();
        // The successor's own socket replaces the path.
        let successor = listen(&path).unwrap();
        let _c = UnixStream::connect(&path).unwrap();
        successor.listener.accept().unwrap();
        // A process that drains without a successor removes its own file, not one that replaced it.
        let third = listen(&path).unwrap();
        successor.unlink_if_ours();
        assert!(path.exists(), "the successor's file is not the first process's to remove");
        third.unlink_if_ours();
        assert!(!path.exists());
    }

    #[test]
    fn a_successor_that_dies_before_ready_leaves_the_incumbent_serving() {
        let path = temp_path("dies");
        let _ = std::fs::remove_file(&path);
        let incumbent = listen(&path).unwrap();
        let ws = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = std::thread::spawn(move || {
            let (sock, _) = incumbent.listener.accept().unwrap();
            serve(sock, &[ws.as_raw_fd()], None)
        });
        let takeover = request(&path).unwrap().unwrap();
        drop(takeover);
        let err = server.join().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
