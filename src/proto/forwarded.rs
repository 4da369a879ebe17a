//! The client address named by forwarding headers — RFC 7239 `Forwarded`, `X-Forwarded-For`, `X-Real-IP` — as
//! a pure function over a parsed request head, the address the request came from and the trusted proxies.
//!
//! The rule (`docs/client-address.md`): headers count only when the request comes from a trusted proxy (its TCP
//! peer, or the client a PROXY protocol header named). Then the first of `Forwarded`, `X-Forwarded-For`,
//! `X-Real-IP` that the request carries decides (every line of it, in order, as one list), and the client is
//! the rightmost address in that list that is not a trusted proxy: everything to its left was written by
//! someone we do not trust. When every address is a trusted proxy, the leftmost is the client. Elements that
//! name no address (`for=unknown`, an obfuscated `for=_hidden`, an element without `for=`) are skipped.
//!
//! A malformed header from a trusted proxy is an error (the request is refused): guessing would hand the
//! per-address limits a wrong address. From anyone else headers are not read at all.
//!
//! Not here: the PROXY protocol (`proxy_protocol`), the per-address limits, what a refusal looks like.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::cidr::{canonical, TrustedProxies};
use super::handshake::RequestHead;

/// The header that named the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    Forwarded,
    XForwardedFor,
    XRealIp,
}

impl Header {
    /// In order of precedence.
    pub const ALL: [Header; 3] = [Header::Forwarded, Header::XForwardedFor, Header::XRealIp];

    pub fn name(self) -> &'static str {
        match self {
            Header::Forwarded => "Forwarded",
            Header::XForwardedFor => "X-Forwarded-For",
            Header::XRealIp => "X-Real-IP",
        }
    }
}

/// A forwarding header from a trusted proxy that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed {} header: {reason}", header.name())]
pub struct Malformed {
    pub header: Header,
    pub reason: &'static str,
}

/// The client a request's headers name: `Ok(None)` when they do not count (the request does not come from a
/// trusted proxy, or carries none of the headers, or they name no address), else the address and the header
/// that named it.
pub fn client_from_headers(
    head: &RequestHead,
    from: IpAddr,
    trusted: &TrustedProxies,
) -> Result<Option<(IpAddr, Header)>, Malformed> {
    if !trusted.contains(from) {
        return Ok(None);
    }
    for header in Header::ALL {
        let mut lines = head.header_all(header.name()).peekable();
        if lines.peek().is_none() {
            continue;
        }
        let mut chain = Vec::new();
        for line in lines {
            let before = chain.len();
            let parsed = match header {
                Header::Forwarded => forwarded_for(line, &mut chain),
                Header::XForwardedFor | Header::XRealIp => address_list(line, &mut chain),
            };
            parsed.map_err(|reason| Malformed { header, reason })?;
            if header == Header::XRealIp && chain.len() > before + 1 {
                return Err(Malformed { header, reason: "more than one address on a line" });
            }
        }
        return Ok(rightmost_untrusted(&chain, trusted).map(|ip| (ip, header)));
    }
    Ok(None)
}

/// The rightmost address not in `trusted`, else the leftmost (every hop trusted).
fn rightmost_untrusted(chain: &[IpAddr], trusted: &TrustedProxies) -> Option<IpAddr> {
    chain.iter().rev().find(|ip| !trusted.contains(**ip)).or(chain.first()).copied().map(canonical)
}

/// `X-Forwarded-For` / `X-Real-IP`: comma-separated addresses, each `IP`, `IP:PORT`, `[IPv6]` or
/// `[IPv6]:PORT`; `unknown` and empty elements are skipped.
fn address_list(line: &str, chain: &mut Vec<IpAddr>) -> Result<(), &'static str> {
    for item in line.split(',').map(str::trim) {
        if item.is_empty() || item.eq_ignore_ascii_case("unknown") {
            continue;
        }
        chain.push(node_ip(item).ok_or("an element is not an IP address")?);
    }
    Ok(())
}

/// An address with an optional port: `192.0.2.7`, `192.0.2.7:80`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:80`.
fn node_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (v4, port) = s.split_once(':')?;
    is_port(port).then(|| v4.parse::<Ipv4Addr>().ok().map(IpAddr::V4)).flatten()
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u16>().is_ok()
}

/// RFC 7239 §4: `forwarded-element *( "," forwarded-element )`, each `pair *( ";" pair )`, a pair `token "="
/// ( token / quoted-string )`. Pushes the address of each element's `for=`; elements without one, or whose node
/// is `unknown` or obfuscated (`_…`), add nothing.
fn forwarded_for(line: &str, chain: &mut Vec<IpAddr>) -> Result<(), &'static str> {
    let b = line.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && matches!(b[*i], b' ' | b'\t') {
            *i += 1;
        }
    };
    loop {
        // One element.
        let mut node: Option<String> = None;
        loop {
            skip_ws(&mut i);
            if i < b.len() && matches!(b[i], b',' | b';') {
                // An empty element or pair (`a, , b`, `for=x;;by=y`): tolerated, as RFC 7230's list rule says.
                if b[i] == b',' {
                    break;
                }
                i += 1;
                continue;
            }
            if i == b.len() {
                break;
            }
            let start = i;
            while i < b.len() && is_tchar(b[i]) {
                i += 1;
            }
            if i == start || i == b.len() || b[i] != b'=' {
                return Err("expected NAME=VALUE");
            }
            let name = &line[start..i];
            i += 1;
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = String::new();
                loop {
                    match b.get(i) {
                        None => return Err("unterminated quoted string"),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            let &c = b.get(i + 1).ok_or("unterminated quoted string")?;
                            v.push(char::from(c));
                            i += 2;
                        }
                        Some(&c) => {
                            // Not ASCII: refused (no address contains it) rather than decoded.
                            if !c.is_ascii() {
                                return Err("a value is not ASCII");
                            }
                            v.push(char::from(c));
                            i += 1;
                        }
                    }
                }
                v
            } else {
                let start = i;
                while i < b.len() && is_tchar(b[i]) {
                    i += 1;
                }
                if i == start {
                    return Err("empty value");
                }
                line[start..i].to_string()
            };
            if name.eq_ignore_ascii_case("for") {
                if node.is_some() {
                    return Err("for= twice in one element");
                }
                node = Some(value);
            }
            skip_ws(&mut i);
            match b.get(i) {
                None | Some(b',') => break,
                Some(b';') => i += 1,
                Some(_) => return Err("expected ; or , between pairs"),
            }
        }
        if let Some(node) = node {
            if let Some(ip) = forwarded_node(&node)? {
                chain.push(ip);
            }
        }
        if i >= b.len() {
            return Ok(());
        }
        i += 1; // the comma
    }
}

/// RFC 7239 §6: `nodename [ ":" node-port ]`, the name an IPv4 address, `[IPv6]`, `unknown` or obfuscated
/// (`_` then letters, digits, `.`, `_`, `-`); the port digits or obfuscated. `None` for a node naming no address.
fn forwarded_node(node: &str) -> Result<Option<IpAddr>, &'static str> {
    let bad = "for= is not an address, unknown or an obfuscated identifier";
    let (name, port) = if let Some(rest) = node.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or(bad)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(bad)?),
        };
        (Ok(v6.parse::<Ipv6Addr>().map_err(|_| bad)?), port)
    } else {
        match node.split_once(':') {
            Some((n, p)) => (Err(n), Some(p)),
            None => (Err(node), None),
        }
    };
    if let Some(p) = port {
        if !(is_port(p) || is_obfuscated(p)) {
            return Err(bad);
        }
    }
    match name {
        Ok(v6) => Ok(Some(IpAddr::V6(v6))),
        Err(n) if n.eq_ignore_ascii_case("unknown") || is_obfuscated(n) => Ok(None),
        Err(n) => n.parse::<Ipv4Addr>().map(|v4| Some(IpAddr::V4(v4))).map_err(|_| bad),
    }
}

fn is_obfuscated(s: &str) -> bool {
    s.len() > 1
        && s.starts_with('_')
        && s.bytes().skip(1).all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(headers: &[(&str, &str)]) -> RequestHead {
        let mut req = String::from("GET /ws HTTP/1.1\r\nHost: x\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let cfg =
            crate::proto::HandshakeConfig { max_header_bytes: 8192, subprotocols: Vec::new(), allowed_origins: None };
        match crate::proto::parse_request(req.as_bytes(), &cfg) {
            Ok(crate::proto::Parsed::Complete { head, .. }) => head,
            other => panic!("{other:?}"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted() -> TrustedProxies {
        TrustedProxies::parse(&["127.0.0.1", "10.0.0.0/8", "::1"]).unwrap()
    }

    fn resolve(headers: &[(&str, &str)]) -> Result<Option<(IpAddr, Header)>, Malformed> {
        client_from_headers(&head(headers), ip("127.0.0.1"), &trusted())
    }

    #[test]
    fn only_a_trusted_peer_is_heard() {
        let h = head(&[("X-Forwarded-For", "192.0.2.7")]);
        assert_eq!(client_from_headers(&h, ip("192.0.2.99"), &trusted()), Ok(None));
        assert_eq!(
            client_from_headers(&h, ip("10.1.1.1"), &trusted()),
            Ok(Some((ip("192.0.2.7"), Header::XForwardedFor)))
        );
        assert_eq!(client_from_headers(&h, ip("::ffff:10.1.1.1"), &trusted()).unwrap().unwrap().0, ip("192.0.2.7"));
        let garbage = head(&[("X-Forwarded-For", "not an address")]);
        assert_eq!(client_from_headers(&garbage, ip("192.0.2.99"), &trusted()), Ok(None), "not even parsed");
    }

    #[test]
    fn rightmost_untrusted_wins_and_spoofed_left_entries_do_not() {
        // The client wrote "203.0.113.66" itself; our nginx (127.0.0.1) appended the address it saw.
        assert_eq!(resolve(&[("X-Forwarded-For", "203.0.113.66, 192.0.2.7")]).unwrap().unwrap().0, ip("192.0.2.7"));
        // Through two of our proxies: their own addresses are skipped.
        assert_eq!(
            resolve(&[("X-Forwarded-For", "192.0.2.7, 10.0.0.5,10.0.0.6")]).unwrap().unwrap().0,
            ip("192.0.2.7")
        );
        // Only proxies: the leftmost.
        assert_eq!(resolve(&[("X-Forwarded-For", "10.0.0.4, 10.0.0.5")]).unwrap().unwrap().0, ip("10.0.0.4"));
        // Several lines are one list, in order.
        let two = [("X-Forwarded-For", "192.0.2.1"), ("X-Forwarded-For", "192.0.2.2, 10.0.0.1")];
        assert_eq!(resolve(&two).unwrap().unwrap().0, ip("192.0.2.2"));
        let two = [("X-Real-IP", "192.0.2.1"), ("X-Real-IP", "192.0.2.2")];
        assert_eq!(resolve(&two).unwrap().unwrap().0, ip("192.0.2.2"));
        let bad = [("X-Real-IP", "192.0.2.1"), ("X-Real-IP", "192.0.2.2, 192.0.2.3")];
        assert!(resolve(&bad).is_err(), "one address per X-Real-IP line");
    }

    #[test]
    fn precedence_forwarded_then_xff_then_x_real_ip() {
        let all = [("X-Real-IP", "192.0.2.3"), ("X-Forwarded-For", "192.0.2.2"), ("Forwarded", "for=192.0.2.1")];
        assert_eq!(resolve(&all), Ok(Some((ip("192.0.2.1"), Header::Forwarded))));
        assert_eq!(resolve(&all[..2]), Ok(Some((ip("192.0.2.2"), Header::XForwardedFor))));
        assert_eq!(resolve(&all[..1]), Ok(Some((ip("192.0.2.3"), Header::XRealIp))));
        assert_eq!(resolve(&[]), Ok(None));
    }

    #[test]
    fn forwarded_syntax() {
        let cases = [
            ("for=192.0.2.60;proto=http;by=203.0.113.43", Some("192.0.2.60")),
            ("For=\"[2001:db8:cafe::17]:4711\"", Some("2001:db8:cafe::17")),
            ("for=\"[2001:db8::1]\"", Some("2001:db8::1")),
            ("for=\"192.0.2.43:47011\"", Some("192.0.2.43")),
            ("for=192.0.2.43, for=198.51.100.17", Some("198.51.100.17")),
            ("for=198.51.100.17, for=10.0.0.9", Some("198.51.100.17")),
            ("for=192.0.2.43, for=_hidden", Some("192.0.2.43")),
            ("for=192.0.2.43, for=unknown;proto=https", Some("192.0.2.43")),
            ("for=\"_gazonk\"", None),
            ("proto=https;host=example.com", None),
            ("for=192.0.2.43 ; proto=http , for=\"198.51.100.9\";by=\"a\\\"b\"", Some("198.51.100.9")),
            ("for=\"192.0.2.43:_port\"", Some("192.0.2.43")),
            ("for=192.0.2.43,,for=192.0.2.44", Some("192.0.2.44")),
        ];
        for (value, want) in cases {
            let got = resolve(&[("Forwarded", value)]);
            assert_eq!(got, Ok(want.map(|w| (ip(w), Header::Forwarded))), "{value}");
        }
    }

    #[test]
    fn malformed_headers_from_a_trusted_proxy_are_errors() {
        for (name, value) in [
            ("Forwarded", "for=\"192.0.2.1"),
            ("Forwarded", "for"),
            ("Forwarded", "for=192.0.2.1 by=x"),
            ("Forwarded", "for=[2001:db8::1]"),
            ("Forwarded", "for=\"[2001:db8::1]:x\""),
            ("Forwarded", "for=example.com"),
            ("Forwarded", "for=1.2.3.4;for=5.6.7.8"),
            ("Forwarded", "=1.2.3.4"),
            ("Forwarded", "for=\"a\\\"b\""),
            ("X-Forwarded-For", "192.0.2.1, example.com"),
            ("X-Forwarded-For", "192.0.2.1:99999"),
            ("X-Forwarded-For", "[2001:db8::1"),
            ("X-Real-IP", "x"),
            ("X-Real-IP", "192.0.2.1, 192.0.2.2"),
        ] {
            let err = resolve(&[(name, value)]).unwrap_err();
            assert_eq!(err.header.name(), name, "{value}");
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn addresses_with_ports_and_brackets() {
        for (value, want) in [
            ("192.0.2.7:1234", "192.0.2.7"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("2001:db8::7", "2001:db8::7"),
            ("unknown, 192.0.2.7", "192.0.2.7"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
        ] {
            assert_eq!(resolve(&[("X-Forwarded-For", value)]).unwrap().unwrap().0, ip(want), "{value}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(name in prop_oneof![Just("Forwarded"), Just("X-Forwarded-For"), Just("X-Real-IP")],
                        value in "[ -~]{0,80}") {
            let _ = resolve(&[(name, value.trim())]);
        }

        /// A chain of addresses written as each header writes it reads back as its rightmost untrusted one.
        #[test]
        fn written_chains_read_back(chain in proptest::collection::vec((any::<[u8; 4]>(), any::<bool>()), 1..6),
                                   as_forwarded in any::<bool>()) {
            let ips: Vec<IpAddr> = chain.iter().map(|(o, ours)| {
                if *ours { IpAddr::from([10, o[1], o[2], o[3]]) } else { IpAddr::from([192, 0, o[2], o[3]]) }
            }).collect();
            let value: Vec<String> = ips.iter().map(|ip| if as_forwarded { format!("for={ip}") } else { ip.to_string() }).collect();
            let name = if as_forwarded { "Forwarded" } else { "X-Forwarded-For" };
            let got = resolve(&[(name, &value.join(", "))]).unwrap().unwrap().0;
            let want = ips.iter().rev().find(|ip| !trusted().contains(**ip)).unwrap_or(&ips[0]);
            prop_assert_eq!(got, *want);
        }
    }
}
