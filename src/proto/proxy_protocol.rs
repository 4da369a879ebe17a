//! The PROXY protocol header (HAProxy's "PROXY protocol" specification, versions 1 and 2) that a load balancer
//! sends before anything else on a connection, naming the client it accepted: a pure parser over the first bytes
//! of a connection.
//!
//! Sans-IO: [`parse`] takes the bytes received so far and says whether they hold a complete header, need more,
//! or are not a valid header. The caller owns the buffer, the deadline and the decision of whom to trust
//! (`shard::preface`); nothing here reads a socket or a clock.
//!
//! What it accepts:
//! - v1 (text): `PROXY TCP4 SRC DST SPORT DPORT\r\n`, `PROXY TCP6 …\r\n`, `PROXY UNKNOWN[ …]\r\n`; at most
//!   [`V1_MAX`] bytes with the CRLF (the specification's 107).
//! - v2 (binary): the 12-byte signature, version 2, command `LOCAL` (the balancer's own connection, e.g. a health
//!   check: no client named) or `PROXY`; over `STREAM` (or `UNSPEC`), the families `AF_INET`, `AF_INET6`,
//!   `AF_UNSPEC` and `AF_UNIX` (the last two name no IP client). TLVs after the addresses are skipped. The
//!   announced length is bounded by [`V2_MAX_PAYLOAD`].
//!
//! What it does not do: decide trust, read TLVs (TLS details, unique ids), or speak UDP (`DGRAM` is refused).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature: the first 12 bytes of every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, `PROXY` to CRLF included (the specification's worst case: two full IPv6 addresses).
pub const V1_MAX: usize = 107;
/// Most bytes a v2 header may announce after its 16-byte fixed part (addresses and TLVs). The specification
/// allows 65535; balancers send a few hundred at most, and this bounds what one connection can make us buffer.
pub const V2_MAX_PAYLOAD: usize = 1024;
/// Most bytes a complete header can take.
pub const MAX_HEADER: usize = 16 + V2_MAX_PAYLOAD;

const V1_PREFIX: &[u8] = b"PROXY ";

/// What the bytes received so far are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Parsed {
    /// A header may still be completed by more bytes (every byte so far fits one).
    NeedMore,
    /// A complete header of `consumed` bytes; what follows it belongs to the next protocol (HTTP or TLS).
    Done {
        consumed: usize,
        /// The client it names; `None` when it names none (v1 `UNKNOWN`, v2 `LOCAL`, `AF_UNSPEC`, `AF_UNIX`): the
        /// connection's own peer address stands.
        source: Option<SocketAddr>,
        /// A v2 `LOCAL` command: the balancer's own connection (a health check), not a relayed client.
        local: bool,
    },
    /// Not a valid header: the connection is to be closed.
    Error(ProxyError),
}

/// Why the first bytes are not a valid PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Neither signature: the peer sent something else first (a plain HTTP request, a TLS hello).
    #[error("no PROXY protocol header")]
    Missing,
    /// A v1 header longer than 107 bytes (no CRLF in time).
    #[error("PROXY v1 header longer than 107 bytes")]
    V1TooLong,
    /// A v1 header that breaks the grammar (protocol word, addresses, ports, spacing).
    #[error("malformed PROXY v1 header: {0}")]
    V1Malformed(&'static str),
    /// A v2 header whose version nibble is not 2 or whose command is neither `LOCAL` nor `PROXY`.
    #[error("PROXY v2 header with an unknown version or command")]
    V2BadVersion,
    /// A v2 `PROXY` header for a family or transport we do not serve (UDP, an unknown family).
    #[error("PROXY v2 header for an unsupported family or transport")]
    V2Unsupported,
    /// A v2 header whose length is too short for its addresses.
    #[error("PROXY v2 header too short for its addresses")]
    V2Short,
    /// A v2 header announcing more than [`V2_MAX_PAYLOAD`] bytes.
    #[error("PROXY v2 header longer than allowed")]
    V2TooLong,
}

impl ProxyError {
    /// Whether the peer did not speak the PROXY protocol at all (as opposed to a broken header).
    pub fn is_missing(&self) -> bool {
        matches!(self, ProxyError::Missing)
    }
}

/// Parses the PROXY header at the start of `buf` (v1 or v2, told by the first byte).
pub fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::NeedMore;
    }
    if buf[0] == V2_SIGNATURE[0] {
        let n = buf.len().min(V2_SIGNATURE.len());
        if buf[..n] != V2_SIGNATURE[..n] {
            return Parsed::Error(ProxyError::Missing);
        }
        if buf.len() < 16 {
            return Parsed::NeedMore;
        }
        return parse_v2(buf);
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Parsed::Error(ProxyError::Missing);
    }
    parse_v1(buf)
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buf.len() >= V1_MAX { Parsed::Error(ProxyError::V1TooLong) } else { Parsed::NeedMore };
    };
    if window[cr] == b'\n' {
        // A lone LF ends nothing: the specification asks for CRLF.
        return Parsed::Error(ProxyError::V1Malformed("line ends without CR"));
    }
    if cr + 2 > V1_MAX {
        return Parsed::Error(ProxyError::V1TooLong);
    }
    match buf.get(cr + 1) {
        None => return Parsed::NeedMore,
        Some(b'\n') => {}
        Some(_) => return Parsed::Error(ProxyError::V1Malformed("CR not followed by LF")),
    }
    let consumed = cr + 2;
    match parse_v1_line(&buf[V1_PREFIX.len()..cr]) {
        Ok(source) => Parsed::Done { consumed, source, local: false },
        Err(reason) => Parsed::Error(ProxyError::V1Malformed(reason)),
    }
}

/// The part of a v1 line after `PROXY `, without the CRLF.
fn parse_v1_line(line: &[u8]) -> Result<Option<SocketAddr>, &'static str> {
    let line = std::str::from_utf8(line).map_err(|_| "not ASCII")?;
    if let Some(rest) = line.strip_prefix("UNKNOWN") {
        // Anything may follow UNKNOWN (the receiver ignores it), but only after a space.
        return match rest.is_empty() || rest.starts_with(' ') {
            true => Ok(None),
            false => Err("unknown protocol"),
        };
    }
    let mut fields = line.split(' ');
    let proto = fields.next().ok_or("no protocol")?;
    let (src, dst, sport, dport) = match (fields.next(), fields.next(), fields.next(), fields.next(), fields.next()) {
        (Some(s), Some(d), Some(sp), Some(dp), None) => (s, d, sp, dp),
        _ => return Err("expected PROTO SRC DST SPORT DPORT separated by single spaces"),
    };
    let ip = |s: &str| -> Result<IpAddr, &'static str> {
        match proto {
            "TCP4" => s.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| "bad IPv4 address"),
            "TCP6" => s.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| "bad IPv6 address"),
            _ => Err("protocol is not TCP4, TCP6 or UNKNOWN"),
        }
    };
    let src_ip = ip(src)?;
    ip(dst)?; // checked, not used
    let port = |s: &str| -> Result<u16, &'static str> {
        // Decimal without a sign or leading zeros (the specification's grammar), 0..=65535.
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
        {
            return Err("bad port");
        }
        s.parse().map_err(|_| "bad port")
    };
    let sport = port(sport)?;
    port(dport)?;
    Ok(Some(SocketAddr::new(src_ip, sport)))
}

fn parse_v2(buf: &[u8]) -> Parsed {
    let ver_cmd = buf[12];
    let fam = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if ver_cmd >> 4 != 2 || ver_cmd & 0x0F > 1 {
        return Parsed::Error(ProxyError::V2BadVersion);
    }
    if len > V2_MAX_PAYLOAD {
        return Parsed::Error(ProxyError::V2TooLong);
    }
    let local = ver_cmd & 0x0F == 0;
    let (family, transport) = (fam >> 4, fam & 0x0F);
    // What the addresses need, checked as soon as the fixed part is here (a LOCAL header's are ignored).
    let need = match family {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => 216,
        _ if local => 0,
        _ => return Parsed::Error(ProxyError::V2Unsupported),
    };
    if !local && !matches!(transport, 0 | 1) {
        return Parsed::Error(ProxyError::V2Unsupported);
    }
    if !local && len < need {
        return Parsed::Error(ProxyError::V2Short);
    }
    if buf.len() < 16 + len {
        return Parsed::NeedMore;
    }
    let consumed = 16 + len;
    if local {
        return Parsed::Done { consumed, source: None, local: true };
    }
    let a = &buf[16..consumed];
    let source = match (family, transport) {
        (1, 1) => {
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([a[8], a[9]])))
        }
        (2, 1) => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), u16::from_be_bytes([a[32], a[33]])))
        }
        // AF_UNSPEC (any transport), AF_UNIX, or an unspecified transport: no IP client to name.
        _ => None,
    };
    Parsed::Done { consumed, source, local: false }
}

/// Encodes a v1 header naming `source` (to `dest`); `None` gives `PROXY UNKNOWN`. For tests and tools; the two
/// addresses must be of one family.
pub fn encode_v1(source: Option<SocketAddr>, dest: SocketAddr) -> Vec<u8> {
    match source {
        None => b"PROXY UNKNOWN\r\n".to_vec(),
        Some(src) => {
            let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!("PROXY {proto} {} {} {} {}\r\n", src.ip(), dest.ip(), src.port(), dest.port()).into_bytes()
        }
    }
}

/// Encodes a v2 header: `PROXY` naming `source` (to `dest`, of the same family), or `LOCAL` for `None`, with
/// `tlvs` (raw TLV bytes, skipped by the parser) appended.
pub fn encode_v2(source: Option<SocketAddr>, dest: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    let mut addrs = Vec::new();
    match (source, dest) {
        (None, _) => out.extend_from_slice(&[0x20, 0x00]),
        (Some(SocketAddr::V4(s)), SocketAddr::V4(d)) => {
            out.extend_from_slice(&[0x21, 0x11]);
            addrs.extend_from_slice(&s.ip().octets());
            addrs.extend_from_slice(&d.ip().octets());
            addrs.extend_from_slice(&s.port().to_be_bytes());
            addrs.extend_from_slice(&d.port().to_be_bytes());
        }
        (Some(s), d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V6(ip) => ip,
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
            };
            out.extend_from_slice(&[0x21, 0x21]);
            addrs.extend_from_slice(&v6(s).octets());
            addrs.extend_from_slice(&v6(d).octets());
            addrs.extend_from_slice(&s.port().to_be_bytes());
            addrs.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    addrs.extend_from_slice(tlvs);
    out.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&addrs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn done(consumed: usize, source: Option<&str>, local: bool) -> Parsed {
        Parsed::Done { consumed, source: source.map(addr), local }
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let h = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(parse(h), done(41, Some("192.0.2.7:56324"), false));
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 80\r\n";
        assert_eq!(parse(h), done(h.len(), Some("[2001:db8::7]:4000"), false));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), done(15, None, false));
        let h = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
        assert_eq!(parse(h), done(h.len(), None, false));
    }

    #[test]
    fn v1_worst_case_fits_and_one_more_byte_does_not() {
        let max = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let h = format!("PROXY TCP6 {max} {max} 65535 65535\r\n");
        assert!(matches!(parse(h.as_bytes()), Parsed::Done { consumed: 104, .. }));
        // The specification's worst case: UNKNOWN followed by the longest TCP6 fields.
        let h = format!("PROXY UNKNOWN {max} {max} 65535 65535\r\n");
        assert_eq!(h.len(), V1_MAX);
        assert!(matches!(parse(h.as_bytes()), Parsed::Done { consumed: V1_MAX, .. }));
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX));
        assert_eq!(parse(long.as_bytes()), Parsed::Error(ProxyError::V1TooLong));
        assert_eq!(parse(&long.as_bytes()[..V1_MAX - 1]), Parsed::NeedMore);
        assert_eq!(parse(&long.as_bytes()[..V1_MAX]), Parsed::Error(ProxyError::V1TooLong));
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.1 56324\r\n"[..],
            b"PROXY TCP4 192.0.2.7  10.0.0.1 1 2\r\n",
            b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 01 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 -1 2\r\n",
            b"PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\rX",
            b"PROXY \xff\r\n",
        ] {
            assert!(
                matches!(parse(bad), Parsed::Error(ProxyError::V1Malformed(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                parse(bad)
            );
        }
    }

    #[test]
    fn anything_else_is_missing_as_soon_as_it_differs() {
        assert_eq!(parse(b"GET /ws HTTP/1.1\r\n"), Parsed::Error(ProxyError::Missing));
        assert_eq!(parse(b"G"), Parsed::Error(ProxyError::Missing));
        assert_eq!(parse(b"PROXX"), Parsed::Error(ProxyError::Missing));
        assert_eq!(parse(b"\x16\x03\x01\x02\x00"), Parsed::Error(ProxyError::Missing), "a TLS hello");
        assert_eq!(parse(b"\r\n\r\nX"), Parsed::Error(ProxyError::Missing));
        assert_eq!(parse(b"PROX"), Parsed::NeedMore);
        assert_eq!(parse(b"\r\n\r\n\0"), Parsed::NeedMore);
        assert_eq!(parse(b""), Parsed::NeedMore);
    }

    #[test]
    fn v2_inet_inet6_local_and_tlvs() {
        let d4 = addr("10.0.0.1:443");
        let h = encode_v2(Some(addr("192.0.2.7:56324")), d4, &[]);
        assert_eq!(h.len(), 28);
        assert_eq!(parse(&h), done(28, Some("192.0.2.7:56324"), false));
        let h = encode_v2(Some(addr("[2001:db8::7]:4000")), addr("[2001:db8::1]:80"), &[]);
        assert_eq!(parse(&h), done(52, Some("[2001:db8::7]:4000"), false));
        let h = encode_v2(None, d4, &[]);
        assert_eq!(parse(&h), done(16, None, true));
        // TLVs (here a PP2_TYPE_UNIQUE_ID and a NOOP) are skipped; the bytes after them are not the header's.
        let mut h = encode_v2(Some(addr("192.0.2.7:1")), d4, &[0x05, 0x00, 0x03, b'a', b'b', b'c', 0x04, 0, 0]);
        h.extend_from_slice(b"GET /");
        assert_eq!(parse(&h), done(h.len() - 5, Some("192.0.2.7:1"), false));
    }

    #[test]
    fn v2_local_ignores_its_address_block() {
        // LOCAL with an INET block (HAProxy health checks send one): accepted, no client named.
        let mut h = encode_v2(Some(addr("192.0.2.7:1")), addr("10.0.0.1:2"), &[]);
        h[12] = 0x20;
        assert_eq!(parse(&h), done(28, None, true));
    }

    #[test]
    fn v2_refusals() {
        let good = encode_v2(Some(addr("192.0.2.7:1")), addr("10.0.0.1:2"), &[]);
        let with = |i: usize, b: u8| {
            let mut h = good.clone();
            h[i] = b;
            parse(&h)
        };
        assert_eq!(with(12, 0x11), Parsed::Error(ProxyError::V2BadVersion), "version 1 in binary");
        assert_eq!(with(12, 0x22), Parsed::Error(ProxyError::V2BadVersion), "command 2");
        assert_eq!(with(13, 0x12), Parsed::Error(ProxyError::V2Unsupported), "UDP");
        assert_eq!(with(13, 0x41), Parsed::Error(ProxyError::V2Unsupported), "family 4");
        assert_eq!(with(15, 11), Parsed::Error(ProxyError::V2Short), "an INET block needs 12 bytes");
        let mut long = good.clone();
        long[14..16].copy_from_slice(&((V2_MAX_PAYLOAD + 1) as u16).to_be_bytes());
        assert_eq!(parse(&long[..16]), Parsed::Error(ProxyError::V2TooLong), "refused from the fixed part");
        assert_eq!(with(15, 12 + 5), Parsed::NeedMore, "announced bytes not here yet");
        // Unspecified family or transport: accepted, naming nobody.
        assert_eq!(with(13, 0x00), done(28, None, false));
        assert_eq!(with(13, 0x10), done(28, None, false));
    }

    #[test]
    fn every_prefix_of_a_header_needs_more() {
        let d = addr("10.0.0.1:2");
        for h in [
            encode_v1(Some(addr("192.0.2.7:1")), d),
            encode_v1(None, d),
            encode_v2(Some(addr("192.0.2.7:1")), d, &[1, 0, 1, 7]),
            encode_v2(None, d, &[]),
        ] {
            for i in 0..h.len() {
                assert_eq!(parse(&h[..i]), Parsed::NeedMore, "{:?} cut at {i}", String::from_utf8_lossy(&h));
            }
            assert!(matches!(parse(&h), Parsed::Done { consumed, .. } if consumed == h.len()));
        }
    }

    fn any_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((Ipv6Addr::from(ip), port))),
        ]
    }

    /// `d` in the family of `s`.
    fn same_family(s: SocketAddr, d: SocketAddr) -> SocketAddr {
        match (s, d.ip()) {
            (SocketAddr::V4(_), IpAddr::V6(ip)) => {
                let o = ip.octets();
                SocketAddr::from(([o[0], o[1], o[2], o[3]], d.port()))
            }
            (SocketAddr::V6(_), IpAddr::V4(ip)) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), d.port()),
            _ => d,
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_in_bounds(buf in proptest::collection::vec(any::<u8>(), 0..1200)) {
            match parse(&buf) {
                Parsed::Done { consumed, .. } => prop_assert!(consumed <= buf.len() && consumed <= MAX_HEADER),
                Parsed::NeedMore => prop_assert!(buf.len() < MAX_HEADER),
                Parsed::Error(_) => {}
            }
        }

        #[test]
        fn headers_round_trip(src in any_addr(), dst in any_addr(), v2 in any::<bool>(), local in any::<bool>(),
                              tlvs in proptest::collection::vec(any::<u8>(), 0..64),
                              tail in proptest::collection::vec(any::<u8>(), 0..32)) {
            let dst = same_family(src, dst);
            let source = (!local).then_some(src);
            let mut h = if v2 { encode_v2(source, dst, &tlvs) } else { encode_v1(source, dst) };
            let len = h.len();
            h.extend_from_slice(&tail);
            prop_assert_eq!(parse(&h), Parsed::Done { consumed: len, source, local: local && v2 });
        }

        /// The loop parses what it has buffered after every read: a decided prefix must decide the whole.
        #[test]
        fn a_decided_prefix_decides_every_extension(buf in proptest::collection::vec(any::<u8>(), 0..200),
                                                     cut in 0usize..200, v in 0u8..3) {
            let mut input = match v {
                0 => encode_v1(Some(SocketAddr::from(([192, 0, 2, 7], 1))), SocketAddr::from(([10, 0, 0, 1], 2))),
                1 => encode_v2(Some(SocketAddr::from(([192, 0, 2, 7], 1))), SocketAddr::from(([10, 0, 0, 1], 2)), &[]),
                _ => Vec::new(),
            };
            input.truncate(cut.min(input.len()));
            input.extend_from_slice(&buf);
            let whole = parse(&input);
            for end in 0..=input.len() {
                let part = parse(&input[..end]);
                if part != Parsed::NeedMore {
                    prop_assert_eq!(part, whole, "decided at {} of {}", end, input.len());
                    break;
                }
            }
        }

        #[test]
        fn garbage_after_a_valid_prefix_never_panics(cut in 0usize..60, junk in proptest::collection::vec(any::<u8>(), 0..120)) {
            let mut h = encode_v1(Some(SocketAddr::from(([192, 0, 2, 7], 1))), SocketAddr::from(([10, 0, 0, 1], 2)));
            h.truncate(cut.min(h.len()));
            h.extend_from_slice(&junk);
            let _ = parse(&h);
            let mut h = encode_v2(None, SocketAddr::from(([10, 0, 0, 1], 2)), &[]);
            h.truncate(cut.min(h.len()));
            h.extend_from_slice(&junk);
            let _ = parse(&h);
        }
    }
}
