//! Who a connection comes from, for the per-address limits: [`ClientAddr`], and [`IpTable`], the bounded table of
//! per-address connection counts and new-connection rates those limits are judged by.
//!
//! Pure: no clock (`now` is passed in), no lock, no socket. The loop threads share one table through
//! `shard::admission`, which shards it behind locks; this file does not know that.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::TokenBucket;

/// The one address the per-address limits, logs and metrics key a connection on.
///
/// Set at accept to the TCP peer. Behind a trusted proxy that is the proxy's address for every client, so the
/// PROXY protocol header and trusted `Forwarded`/`X-Forwarded-For`/`X-Real-IP` headers name it instead
/// (`shard::client`, `docs/client-address.md`); known only once the PROXY header or the request head is read.
/// A connection from a trusted proxy is therefore not charged at accept (its proxy is not its client): it is
/// admitted on its address when that is known. Should a connection already hold a charge when its address
/// changes, the charge is moved: `IpTable::release`, then `IpTable::admit`.
///
/// An IPv4-mapped IPv6 address is its IPv4 address. Any other IPv6 address counts by its /64: one host or site
/// usually holds a whole /64, so limits on single IPv6 addresses would limit nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(IpAddr);

impl ClientAddr {
    pub fn from_peer(peer: SocketAddr) -> Self {
        Self::from_ip(peer.ip())
    }

    pub fn from_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientAddr(IpAddr::V4(v4)),
                None => {
                    let mut octets = v6.octets();
                    octets[8..].fill(0);
                    ClientAddr(IpAddr::V6(Ipv6Addr::from(octets)))
                }
            },
            v4 => ClientAddr(v4),
        }
    }

    /// The address (an IPv6 address with its last 64 bits zeroed).
    pub fn ip(&self) -> IpAddr {
        self.0
    }
}

/// Where a connection's client address came from (the `source` label of `proxied_clients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrSource {
    /// The TCP peer (no proxy, or an untrusted one, or a trusted one that named nobody).
    Peer = 0,
    /// A PROXY protocol header.
    ProxyProtocol = 1,
    /// `Forwarded: for=` from a trusted proxy.
    Forwarded = 2,
    /// `X-Forwarded-For` from a trusted proxy.
    XForwardedFor = 3,
    /// `X-Real-IP` from a trusted proxy.
    XRealIp = 4,
}

/// How far a connection's client address is known (one byte in `Conn`; `shard::client` moves it on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrState {
    /// Known, from this source (and charged on, when the per-address limits are on).
    Known(AddrSource),
    /// PROXY protocol on and the peer trusted: the header has not been read yet. Nothing is charged.
    AwaitingPreface,
    /// It comes from a trusted proxy: the request head's forwarding headers decide. Nothing is charged yet.
    /// `proxied`: that proxy is the client a PROXY header named (kept in the loop's table by connection), not
    /// the TCP peer.
    AwaitingHead { proxied: bool },
}

/// The per-address limits; 0 = that limit is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerIpLimits {
    /// Most connections open at once from one address.
    pub max_connections: u32,
    /// New connections per second from one address (a burst as large).
    pub rate: u32,
    /// Most addresses remembered.
    pub capacity: usize,
}

impl PerIpLimits {
    pub fn any(&self) -> bool {
        self.max_connections > 0 || self.rate > 0
    }
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpRefusal {
    /// The address already has `max_connections` open.
    TooManyConnections,
    /// The address opens connections faster than `rate`; a token is there after `retry_after`.
    TooFast { retry_after: Duration },
    /// Every remembered address still matters (connections open, or its rate bucket not yet full again) and
    /// the table has no room for another.
    TableFull,
}

impl IpRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            IpRefusal::TooManyConnections => "too many connections from your address",
            IpRefusal::TooFast { .. } => "too many new connections from your address",
            IpRefusal::TableFull => "too many client addresses",
        }
    }
}

/// A slot of the table, held by an admitted connection until it is released. Its entry is never forgotten while
/// it has connections, so the slot stays that address's.
pub type Slot = u32;

#[derive(Debug)]
struct Entry {
    addr: ClientAddr,
    conns: u32,
    bucket: TokenBucket,
}

/// How long a full table that found nothing to forget is not scanned again (new addresses are refused
/// meanwhile): a table kept full on purpose cannot make every new connection pay a scan.
const RESCAN_AFTER: Duration = Duration::from_millis(100);

/// Per-address connection counts and new-connection buckets, at most `capacity` addresses.
///
/// INVARIANT: `index[e.addr] == slot` for every `Some(e)` at `entries[slot]`; the `None` slots are in `free`.
/// INVARIANT: an entry with `conns > 0` is never forgotten.
#[derive(Debug)]
pub struct IpTable {
    limits: PerIpLimits,
    index: HashMap<ClientAddr, Slot>,
    entries: Vec<Option<Entry>>,
    free: Vec<Slot>,
    /// A scan for forgettable entries found none: none is made again before this.
    no_scan_until: Option<Instant>,
}

impl IpTable {
    pub fn new(limits: PerIpLimits) -> Self {
        Self { limits, index: HashMap::new(), entries: Vec::new(), free: Vec::new(), no_scan_until: None }
    }

    /// Addresses remembered.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Connections open from `addr`, as counted here.
    pub fn connections(&self, addr: ClientAddr) -> u32 {
        self.index.get(&addr).and_then(|&s| self.entries[s as usize].as_ref()).map_or(0, |e| e.conns)
    }

    /// Admits a new connection from `addr` (counts it and takes a rate token), or says why not. An admitted
    /// connection must be released exactly once, with the slot returned.
    pub fn admit(&mut self, addr: ClientAddr, now: Instant) -> Result<Slot, IpRefusal> {
        let PerIpLimits { max_connections, rate, .. } = self.limits;
        let slot = match self.index.get(&addr) {
            Some(&slot) => slot,
            None => self.insert(addr, now)?,
        };
        let entry = self.entries[slot as usize].as_mut().expect("indexed slots hold an entry");
        if max_connections > 0 && entry.conns >= max_connections {
            return Err(IpRefusal::TooManyConnections);
        }
        if rate > 0 && !entry.bucket.take(rate, rate, now) {
            return Err(IpRefusal::TooFast { retry_after: entry.bucket.wait(rate) });
        }
        entry.conns += 1;
        Ok(slot)
    }

    /// A connection admitted on `slot` has ended.
    pub fn release(&mut self, slot: Slot, now: Instant) {
        let Some(Some(entry)) = self.entries.get_mut(slot as usize) else {
            debug_assert!(false, "released a slot that holds nothing");
            return;
        };
        debug_assert!(entry.conns > 0, "released more connections than were admitted");
        entry.conns = entry.conns.saturating_sub(1);
        if entry.conns == 0 && self.forgettable_at(slot, now) {
            self.forget(slot);
        }
    }

    fn insert(&mut self, addr: ClientAddr, now: Instant) -> Result<Slot, IpRefusal> {
        if self.index.len() >= self.limits.capacity {
            self.make_room(now)?;
        }
        let entry = Entry { addr, conns: 0, bucket: TokenBucket::full(self.limits.rate, now) };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.entries[slot as usize] = Some(entry);
                slot
            }
            None => {
                self.entries.push(Some(entry));
                (self.entries.len() - 1) as Slot
            }
        };
        self.index.insert(addr, slot);
        Ok(slot)
    }

    /// Forgets every entry that remembers nothing a fresh one would not (no connection open, rate bucket full
    /// again); at most one scan per [`RESCAN_AFTER`] when it finds none. Amortised O(1) per insert: a scan that
    /// frees k entries pays for the next k inserts.
    fn make_room(&mut self, now: Instant) -> Result<(), IpRefusal> {
        if self.no_scan_until.is_some_and(|t| now < t) {
            return Err(IpRefusal::TableFull);
        }
        for slot in 0..self.entries.len() as Slot {
            if self.forgettable_at(slot, now) {
                self.forget(slot);
            }
        }
        if self.index.len() >= self.limits.capacity {
            self.no_scan_until = Some(now + RESCAN_AFTER);
            return Err(IpRefusal::TableFull);
        }
        self.no_scan_until = None;
        Ok(())
    }

    fn forgettable_at(&self, slot: Slot, now: Instant) -> bool {
        let rate = self.limits.rate;
        match &self.entries[slot as usize] {
            Some(e) => e.conns == 0 && (rate == 0 || e.bucket.is_full(rate, rate, now)),
            None => false,
        }
    }

    fn forget(&mut self, slot: Slot) {
        if let Some(entry) = self.entries[slot as usize].take() {
            self.index.remove(&entry.addr);
            self.free.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> ClientAddr {
        ClientAddr::from_ip(IpAddr::from([127, 0, 0, last]))
    }

    fn limits(max_connections: u32, rate: u32, capacity: usize) -> PerIpLimits {
        PerIpLimits { max_connections, rate, capacity }
    }

    #[test]
    fn ipv4_mapped_is_ipv4_and_ipv6_counts_by_its_64() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(ClientAddr::from_ip(mapped), ClientAddr::from_ip("10.1.2.3".parse().unwrap()));
        let a = ClientAddr::from_ip("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = ClientAddr::from_ip("2001:db8:1:2:bbbb::9".parse().unwrap());
        let other = ClientAddr::from_ip("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a.ip(), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn connections_per_address_are_capped_and_released() {
        let t = Instant::now();
        let mut table = IpTable::new(limits(2, 0, 16));
        let s1 = table.admit(addr(1), t).unwrap();
        let s2 = table.admit(addr(1), t).unwrap();
        assert_eq!(table.admit(addr(1), t), Err(IpRefusal::TooManyConnections));
        assert!(table.admit(addr(2), t).is_ok(), "another address is unaffected");
        assert_eq!(table.connections(addr(1)), 2);
        table.release(s1, t);
        assert!(table.admit(addr(1), t).is_ok());
        table.release(s2, t);
        assert_eq!(table.connections(addr(1)), 1);
    }

    #[test]
    fn without_a_rate_an_address_with_no_connection_is_forgotten_at_once() {
        let t = Instant::now();
        let mut table = IpTable::new(limits(1, 0, 16));
        let s = table.admit(addr(1), t).unwrap();
        assert_eq!(table.len(), 1);
        table.release(s, t);
        assert!(table.is_empty());
    }

    #[test]
    fn the_rate_is_per_address_with_a_retry_after() {
        let t = Instant::now();
        let mut table = IpTable::new(limits(0, 2, 16));
        let slots: Vec<Slot> = (0..2).map(|_| table.admit(addr(1), t).unwrap()).collect();
        match table.admit(addr(1), t) {
            Err(IpRefusal::TooFast { retry_after }) => assert_eq!(retry_after, Duration::from_millis(500)),
            other => panic!("{other:?}"),
        }
        assert!(table.admit(addr(2), t).is_ok(), "another address has its own bucket");
        assert!(table.admit(addr(1), t + Duration::from_millis(500)).is_ok(), "a token after 1/rate s");
        // Closing the connections does not refill the bucket: it is remembered until full again.
        for s in slots {
            table.release(s, t + Duration::from_millis(500));
        }
        assert!(table.admit(addr(1), t + Duration::from_millis(600)).is_err());
    }

    #[test]
    fn a_full_table_forgets_idle_addresses_and_refuses_when_none_is() {
        let t = Instant::now();
        let mut table = IpTable::new(limits(0, 1, 4));
        let held: Vec<Slot> = (1..=4).map(|i| table.admit(addr(i), t).unwrap()).collect();
        assert_eq!(table.admit(addr(5), t), Err(IpRefusal::TableFull), "every address has a connection open");
        for &s in &held[..2] {
            table.release(s, t);
        }
        // Released, but their buckets are not full again yet: still remembered (and the scan waits).
        assert_eq!(table.admit(addr(5), t + Duration::from_millis(50)), Err(IpRefusal::TableFull));
        let later = t + Duration::from_secs(2);
        assert!(table.admit(addr(5), later).is_ok(), "idle addresses are forgotten to make room");
        assert!(table.admit(addr(6), later).is_ok());
        assert_eq!(table.len(), 4);
        assert_eq!(table.admit(addr(7), later), Err(IpRefusal::TableFull));
        assert_eq!(table.connections(addr(3)), 1, "an address with connections open is never forgotten");
    }

    #[test]
    fn slots_are_reused_and_the_index_stays_consistent() {
        let t = Instant::now();
        let mut table = IpTable::new(limits(3, 0, 8));
        let mut open: Vec<(u8, Slot)> = Vec::new();
        // A deterministic mix of admits and releases over 8 addresses.
        let mut x: u32 = 7;
        for _ in 0..2000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let a = (x >> 16) as u8 % 8;
            if x & 1 == 0 || open.is_empty() {
                if let Ok(s) = table.admit(addr(a), t) {
                    open.push((a, s));
                }
            } else {
                let (_, s) = open.swap_remove((x >> 8) as usize % open.len());
                table.release(s, t);
            }
            for a in 0..8 {
                let expected = open.iter().filter(|(b, _)| *b == a).count() as u32;
                assert_eq!(table.connections(addr(a)), expected);
                assert!(expected <= 3);
            }
        }
    }
}
