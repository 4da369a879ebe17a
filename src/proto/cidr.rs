//! Address ranges (`10.0.0.0/8`, `2001:db8::/32`, `::1/128`) and the list of trusted proxies made of them
//! (`trusted_proxies`): who may tell us, by a PROXY protocol header or a forwarding header, where a connection
//! really comes from.
//!
//! Pure: parsing and matching only. An IPv4-mapped IPv6 address (`::ffff:192.0.2.7`, what a dual-stack socket
//! reports for an IPv4 peer) is its IPv4 address, on both sides: a range written `::ffff:10.0.0.0/104` is
//! `10.0.0.0/8`, and `10.0.0.0/8` contains `::ffff:10.1.2.3`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// One range: a network address and a prefix length. Host bits written in the network address are cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// INVARIANT: IPv4 or a non-mapped IPv6 address, with the bits past `prefix` zero.
    net: IpAddr,
    /// INVARIANT: at most 32 for IPv4, 128 for IPv6.
    prefix: u8,
}

/// The IPv4 address an IPv4-mapped IPv6 address stands for; any other address as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Cidr {
    /// The range of `prefix` leading bits of `ip` (`None` for a prefix longer than the address).
    pub fn new(ip: IpAddr, prefix: u8) -> Option<Cidr> {
        let (net, prefix) = match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() && prefix >= 96 => (canonical(ip), prefix - 96),
            _ => (ip, prefix),
        };
        let net = match net {
            IpAddr::V4(v4) if prefix <= 32 => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask32(prefix))),
            IpAddr::V6(v6) if prefix <= 128 => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask128(prefix))),
            _ => return None,
        };
        Some(Cidr { net, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped address as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => u32::from(ip) & mask32(self.prefix) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => u128::from(ip) & mask128(self.prefix) == u128::from(net),
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// Why a range does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address range (ADDRESS/PREFIX, e.g. 10.0.0.0/8 or ::1/128, or one address)")]
pub struct BadCidr(pub String);

impl FromStr for Cidr {
    type Err = BadCidr;

    /// `ADDRESS/PREFIX`, or one address alone (`/32`, `/128`).
    fn from_str(s: &str) -> Result<Self, BadCidr> {
        let bad = || BadCidr(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                // Decimal digits only: `+8` or ` 8` is not a prefix.
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                (a, Some(p.parse::<u8>().map_err(|_| bad())?))
            }
            None => (s, None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix = prefix.unwrap_or(if ip.is_ipv4() { 32 } else { 128 });
        Cidr::new(ip, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// The trusted proxies: a few ranges, matched in order (a linear scan: lists are short, and it runs once per
/// connection, never per message).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Parses every entry; the error names the first that is not a range.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, BadCidr> {
        entries.iter().map(|e| e.as_ref().trim().parse()).collect::<Result<Vec<_>, _>>().map(TrustedProxies)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_ranges() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "v4-mapped");
        assert!(!c.contains(ip("::a01:203")), "an IPv4-compatible address is IPv6");
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("2001:db8::1")));
        assert_eq!("192.168.1.77/24".parse::<Cidr>().unwrap().to_string(), "192.168.1.0/24", "host bits cleared");
    }

    #[test]
    fn v6_ranges_and_mapped_ranges() {
        let c: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(c.contains(ip("2001:db8:ffff::1")) && !c.contains(ip("2001:db9::1")));
        assert!(!c.contains(ip("10.0.0.1")));
        let lo: Cidr = "::1/128".parse().unwrap();
        assert!(lo.contains(ip("::1")) && !lo.contains(ip("127.0.0.1")));
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped, "10.0.0.0/8".parse().unwrap());
        assert!(mapped.contains(ip("10.9.9.9")));
        let all: Cidr = "::/0".parse().unwrap();
        assert!(all.contains(ip("2001:db8::1")));
    }

    #[test]
    fn refusals() {
        for bad in ["", "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/+8", "10.0.0/8", "example.com", "10.0.0.0/8/8"]
        {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
        let err = TrustedProxies::parse(&["127.0.0.1/32", "nope"]).unwrap_err();
        assert!(err.to_string().contains("\"nope\""), "{err}");
    }

    #[test]
    fn the_list_matches_any_of_its_ranges() {
        let t = TrustedProxies::parse(&["127.0.0.1/32", " ::1/128 ", "10.0.0.0/8"]).unwrap();
        assert!(t.contains(ip("127.0.0.1")) && t.contains(ip("::1")) && t.contains(ip("10.3.4.5")));
        assert!(!t.contains(ip("127.0.0.2")) && !t.contains(ip("192.0.2.1")));
        assert!(TrustedProxies::default().is_empty() && !TrustedProxies::default().contains(ip("127.0.0.1")));
    }

    proptest! {
        /// Against a bit-by-bit oracle: the address's first `prefix` bits equal the network's.
        #[test]
        fn contains_matches_the_bitwise_oracle(net in any::<u128>(), addr in any::<u128>(), prefix in 0u8..=128,
                                              v4 in any::<bool>()) {
            let (net_ip, addr_ip, width) = if v4 {
                (IpAddr::V4(Ipv4Addr::from(net as u32)), IpAddr::V4(Ipv4Addr::from(addr as u32)), 32u8)
            } else {
                // Keep clear of the mapped range, which is tested above.
                let n = net | (1 << 127);
                (IpAddr::V6(Ipv6Addr::from(n)), IpAddr::V6(Ipv6Addr::from(addr)), 128u8)
            };
            let prefix = prefix.min(width);
            let c = Cidr::new(net_ip, prefix).unwrap();
            let bits = |ip: IpAddr| -> Vec<bool> {
                let octets: Vec<u8> = match canonical(ip) { IpAddr::V4(a) => a.octets().to_vec(), IpAddr::V6(a) => a.octets().to_vec() };
                octets.iter().flat_map(|o| (0..8).rev().map(move |i| o >> i & 1 == 1)).collect()
            };
            let (nb, ab) = (bits(net_ip), bits(addr_ip));
            let expected = nb.len() == ab.len() && nb[..usize::from(prefix)] == ab[..usize::from(prefix)];
            prop_assert_eq!(c.contains(addr_ip), expected);
            prop_assert_eq!(c.to_string().parse::<Cidr>().unwrap(), c, "round trip");
        }
    }
}
