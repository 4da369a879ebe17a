//! Where connections go and come from: the `ws://` or `wss://` URL, the `--source-ips` list, and the non-blocking connect
//! with `IP_BIND_ADDRESS_NO_PORT`.
//!
//! Why the source addresses: the kernel picks an ephemeral port per (source address, destination) pair, and
//! there are only ~28k of them (`ip_local_port_range`). 100k connections to one gateway port therefore need
//! several source addresses. Binding a source address normally picks the port at `bind()` time, from the ports
//! free for *any* destination; `IP_BIND_ADDRESS_NO_PORT` defers the choice to `connect()`, where the kernel
//! can reuse a port already used towards another destination.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// A parsed `ws://HOST:PORT/PATH` or `wss://HOST:PORT/PATH` URL.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Target {
    pub addr: SocketAddr,
    /// `wss://`: TLS, with the URL's host as the server name.
    #[serde(default)]
    pub tls: bool,
    /// `Host` header value (`HOST:PORT` as written in the URL).
    pub host: String,
    /// Request target, including any query.
    pub path: String,
}

/// Parses a `ws://` or `wss://` URL and resolves its host.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (tls, rest) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => return Err(format!("{url:?}: only ws:// and wss:// URLs are supported")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url:?}: missing host"));
    }
    let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        authority.to_string()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{url:?}: cannot resolve {with_port}: {e}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("{url:?}: {with_port} has no IPv4 address"))?;
    Ok(Target { addr, tls, host: authority.to_string(), path: path.to_string() })
}

impl Target {
    /// The host without the port: the TLS server name.
    pub fn host_name(&self) -> &str {
        match self.host.rsplit_once(':') {
            Some((name, port)) if port.parse::<u16>().is_ok() => name,
            _ => &self.host,
        }
    }
}

/// Parses `--source-ips`: comma-separated IPv4 addresses and inclusive ranges `A-B`
/// (e.g. `127.0.0.2-127.0.0.40,127.0.1.1`).
pub fn parse_source_ips(spec: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| s.trim().parse::<Ipv4Addr>().map_err(|e| format!("--source-ips: {s:?}: {e}"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (u32::from(parse(a)?), u32::from(parse(b)?));
                if a > b {
                    return Err(format!("--source-ips: empty range {part:?}"));
                }
                if b - a >= 65_536 {
                    return Err(format!("--source-ips: range {part:?} is larger than 65536 addresses"));
                }
                out.extend((a..=b).map(Ipv4Addr::from));
            }
            None => out.push(parse(part)?),
        }
    }
    if out.is_empty() {
        return Err("--source-ips: no address given".into());
    }
    Ok(out)
}

/// Starts a non-blocking TCP connect to `dst`, from `src` (port chosen at connect time) when given.
/// Returns once the connect is in progress (or done); completion shows up as writability.
pub fn start_connect(dst: SocketAddr, src: Option<Ipv4Addr>) -> io::Result<mio::net::TcpStream> {
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    sock.set_nodelay(true)?;
    if let Some(ip) = src {
        set_bind_address_no_port(&sock)?;
        sock.bind(&SockAddr::from(SocketAddr::new(IpAddr::V4(ip), 0)))?;
    }
    match sock.connect(&SockAddr::from(dst)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(std::net::TcpStream::from(sock)))
}

fn set_bind_address_no_port(sock: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local; the descriptor is owned by `sock`.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A short, aggregatable name for why a connection failed.
pub fn error_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::ECONNRESET) | Some(libc::EPIPE) => "reset".into(),
        Some(libc::ETIMEDOUT) => "timeout".into(),
        Some(libc::EADDRNOTAVAIL) => "no free local port (EADDRNOTAVAIL: add --source-ips)".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => "out of file descriptors".into(),
        _ => match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(tls) => format!("tls: {tls}"),
            None => format!("io: {}", e.kind()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("ws://127.0.0.1:9000/ws?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!((t.host.as_str(), t.path.as_str()), ("127.0.0.1:9000", "/ws?x=1"));
        let t = parse_url("ws://127.0.0.1").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/"));
        assert!(!t.tls);
        let t = parse_url("wss://localhost:9443/ws").unwrap();
        assert!(t.tls);
        assert_eq!((t.addr.port(), t.host.as_str(), t.host_name()), (9443, "localhost:9443", "localhost"));
        let t = parse_url("wss://127.0.0.1/ws").unwrap();
        assert_eq!((t.addr.port(), t.host_name()), (443, "127.0.0.1"));
        assert!(parse_url("http://127.0.0.1/ws").is_err());
        assert!(parse_url("ws:///ws").is_err());
    }

    #[test]
    fn source_ip_ranges() {
        let ips = parse_source_ips("127.0.0.2-127.0.0.4, 127.0.1.1").unwrap();
        let want: Vec<Ipv4Addr> =
            ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.1.1"].map(|s| s.parse().unwrap()).into();
        assert_eq!(ips, want);
        assert!(parse_source_ips("127.0.0.5-127.0.0.4").is_err());
        assert!(parse_source_ips("").is_err());
        assert!(parse_source_ips("127.0.0.x").is_err());
    }
}
