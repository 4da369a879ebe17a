//! Who may open a connection, decided before any byte of it is read: the per-address limits
//! (`max_connections_per_ip`, `connection_rate_per_ip`) over one table shared by every loop thread, and the
//! process's memory pressure (`overload_memory_bytes`: requests for `/ws`, `/sse` and `/poll` refused;
//! `shed_memory_bytes`: open clients closed with 1013 by the loop threads). Refusals are `503` with
//! `Retry-After`.
//!
//! Why one shared table: `SO_REUSEPORT` spreads one address's connections over every loop thread, so a per-loop
//! count would allow N times the configured limit. The table is split into [`SHARDS`] parts by a keyed hash of
//! the address, each behind its own lock, taken once when a connection is admitted and once when it is freed —
//! never on the message path. Each part holds at most its share of `max_tracked_ips` addresses.
//!
//! Where: a connection from anyone but a trusted proxy is charged on its TCP peer at accept (a half-open
//! handshake counts against its address from its first moment, so one address cannot hold thousands of them).
//! A connection from a trusted proxy is charged once the PROXY header or its request head named its client
//! (`shard::client`), before routing; a proxy is never charged as if it were a client.
//!
//! Not here: `max_connections` (the loop's slab, `dispatch`), the per-connection message rate
//! (`message_rate`).

use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::input::{self, InputCx};
use super::memory;
use super::stats::{LoadRefusal, ShardStats};
use crate::config::Config;
use crate::conn::{ClientAddr, Conn, ConnKey, IpRefusal, IpTable, PerIpLimits, Slot, NO_SLOT};
use crate::proto::handshake;
use crate::reactor;

/// Parts of the shared address table (a power of two).
pub const SHARDS: usize = 64;
const SHARD_BITS: u32 = SHARDS.trailing_zeros();
const LOCAL_BITS: u32 = Slot::BITS - SHARD_BITS;
/// How often the process's memory is read for the overload and shedding marks (by whichever loop thread
/// comes first).
pub const PRESSURE_CHECK: Duration = Duration::from_millis(100);
/// At most one refusal log line per this long, process-wide (the others are counted in the next line).
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The admission state the loop threads share (in `Shared`).
pub struct Admission {
    clients: Option<ClientTable>,
    pressure: Pressure,
    pub retry_after_s: u64,
    log: LogLimit,
}

impl Admission {
    pub fn from_config(cfg: &Config) -> Self {
        let limits = PerIpLimits {
            max_connections: u32::try_from(cfg.max_connections_per_ip).unwrap_or(u32::MAX),
            rate: cfg.connection_rate_per_ip,
            capacity: cfg.max_tracked_ips,
        };
        Self {
            clients: limits.any().then(|| ClientTable::new(limits)),
            pressure: Pressure::new(cfg.overload_memory_bytes, cfg.shed_memory_bytes),
            retry_after_s: retry_secs(cfg.retry_after),
            log: LogLimit::new(),
        }
    }

    /// Whether the per-address limits are on (`max_connections_per_ip`, `connection_rate_per_ip`).
    pub fn limits_per_address(&self) -> bool {
        self.clients.is_some()
    }

    /// Whether new connections are refused for memory (overloaded or shedding).
    pub fn overloaded(&self) -> bool {
        self.pressure.level() >= Level::Overloaded
    }

    /// Whether open clients are being shed.
    pub fn shedding(&self) -> bool {
        self.pressure.level() == Level::Shedding
    }

    /// Whether a memory mark is set (the loop threads then read the memory every [`PRESSURE_CHECK`]).
    pub fn watches_memory(&self) -> bool {
        self.pressure.enabled()
    }

    /// Re-reads the memory if [`PRESSURE_CHECK`] has passed since the last reading by any loop thread.
    pub fn refresh_pressure(&self, now: Instant) {
        self.pressure.refresh(now);
    }

    /// The `Retry-After` seconds of refusals for load.
    pub fn retry_after_s(&self) -> u64 {
        self.retry_after_s
    }

    /// Frees the charge of a connection that is being freed.
    pub fn release(&self, slot: Slot) {
        if let (Some(table), true) = (&self.clients, slot != NO_SLOT) {
            table.release(slot, Instant::now());
        }
    }

    /// Logs a refusal, at most once per [`LOG_EVERY`] for the whole process (with the count of those not logged).
    pub fn log_refusal(&self, what: &str) {
        self.log.warn(what);
    }
}

/// Charges `conn` on its client address `ip` (moving a charge it already holds), or answers `503` with
/// `Retry-After` and closes it once that is written (through the connection, so that the answer is not lost to
/// a reset; the slot is held at most the linger time). Returns whether it was admitted. Called at accept with
/// the TCP peer, or once a PROXY header or trusted forwarding headers named the client (`shard::client`).
/// `answered`: the client can read the `503`. Not so before a TLS handshake: the transport then sends nothing
/// but closes (`docs/tls.md` says why), and the log line says so.
pub fn charge(conn: &mut Conn, key: ConnKey, ip: IpAddr, answered: bool, cx: &mut InputCx<'_>) -> bool {
    let admission = &cx.shared.admission;
    let Some(table) = &admission.clients else { return true };
    if conn.client_slot != NO_SLOT {
        table.release(std::mem::replace(&mut conn.client_slot, NO_SLOT), Instant::now());
    }
    let refusal = match table.admit(ClientAddr::from_ip(ip), Instant::now()) {
        Ok(slot) => {
            conn.client_slot = slot;
            return true;
        }
        Err(refusal) => refusal,
    };
    let (reason, retry_after_s) = match refusal {
        IpRefusal::TooManyConnections => (LoadRefusal::PerIp, admission.retry_after_s),
        IpRefusal::TooFast { retry_after } => (LoadRefusal::IpRate, retry_secs(retry_after)),
        IpRefusal::TableFull => (LoadRefusal::IpTableFull, admission.retry_after_s),
    };
    cx.stats.refused_for_load(reason);
    let how = if answered { "with 503" } else { "by a close (TLS listener: no answer before the handshake)" };
    admission.log.warn(&format!("{}: refused {ip} {how}", refusal.reason()));
    let response = busy_response(refusal.reason(), retry_after_s);
    input::respond(conn, key, &response, cx);
    false
}

/// A request for `/ws`, `/sse` or `/poll` while the process is over a memory mark, or while this loop thread is
/// behind the feed: answered `503` with `Retry-After` (true), or let through (false). The page and `/healthz`
/// are never refused for load.
pub fn refuse_if_overloaded(conn: &mut Conn, key: ConnKey, cx: &mut InputCx<'_>) -> bool {
    let admission = &cx.shared.admission;
    let (counted, reason, retry_after_s) = if admission.overloaded() {
        (LoadRefusal::Overload, "server overloaded: try again later", admission.retry_after_s)
    } else if cx.settings.behind.is_some_and(|b| b.is_behind(cx.stats)) {
        // Another loop thread may well have room: the client may retry at once.
        (LoadRefusal::Behind, "server busy (behind the feed): try again", 1)
    } else {
        return false;
    };
    cx.stats.refused_for_load(counted);
    admission.log.warn(&format!("{reason}: refused with 503"));
    input::respond(conn, key, &busy_response(reason, retry_after_s), cx);
    true
}

/// When a loop thread counts as behind the feed: its queue from the feed holds at least this many bytes or
/// batches (`overload_feed_queue_percent` of the queue's bounds). A loop that cannot keep up (too many clients
/// for its core, or a burst) fills its queue; with `feed_overflow = backpressure` it then holds the whole feed
/// back, so taking more clients on it makes every client later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behind {
    pub bytes: u64,
    pub batches: u64,
}

impl Behind {
    pub fn from_config(cfg: &Config) -> Option<Self> {
        let pct = u64::from(cfg.overload_feed_queue_percent);
        (pct > 0).then(|| Behind {
            bytes: (cfg.feed_queue_bytes * pct / 100).max(1),
            batches: (cfg.feed_queue_batches as u64 * pct / 100).max(1),
        })
    }

    pub fn is_behind(&self, stats: &ShardStats) -> bool {
        stats.feed_queue_bytes.load(Relaxed) >= self.bytes || stats.feed_queue_batches.load(Relaxed) >= self.batches
    }
}

/// Answers a fresh connection `503` with `Retry-After` at once, without taking a slot for it (at
/// `max_connections`, or overloaded: the answer costs nothing more than one write into an empty socket buffer).
pub fn refuse_now(stream: &TcpStream, reason: &str, retry_after_s: u64) {
    let _ = reactor::send_now(stream, &busy_response(reason, retry_after_s));
}

/// `503 Service Unavailable` with `Retry-After` and the reason as the body.
pub fn busy_response(reason: &str, retry_after_s: u64) -> Vec<u8> {
    let body = format!("{reason}\n");
    handshake::http_response_with(503, "text/plain", &format!("Retry-After: {retry_after_s}\r\n"), body.as_bytes())
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
pub fn retry_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

/// The address table, split in [`SHARDS`] locked parts. A slot names its part in its top bits.
struct ClientTable {
    parts: Box<[Mutex<IpTable>]>,
    hasher: RandomState,
}

impl ClientTable {
    fn new(limits: PerIpLimits) -> Self {
        let per_part = PerIpLimits { capacity: limits.capacity.div_ceil(SHARDS), ..limits };
        Self { parts: (0..SHARDS).map(|_| Mutex::new(IpTable::new(per_part))).collect(), hasher: RandomState::new() }
    }

    fn part(&self, i: usize) -> std::sync::MutexGuard<'_, IpTable> {
        // A panic while holding the lock leaves the table consistent (each method finishes its change or makes
        // none before anything can panic): the lock is used as it is.
        self.parts[i].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn admit(&self, addr: ClientAddr, now: Instant) -> Result<Slot, IpRefusal> {
        // A keyed hash: a client cannot aim many addresses at one part.
        let i = (self.hasher.hash_one(addr) as usize) & (SHARDS - 1);
        let local = self.part(i).admit(addr, now)?;
        debug_assert!(local < (1 << LOCAL_BITS) - 1, "a part's capacity is far below 2^26");
        Ok(((i as Slot) << LOCAL_BITS) | local)
    }

    fn release(&self, slot: Slot, now: Instant) {
        let i = (slot >> LOCAL_BITS) as usize;
        self.part(i).release(slot & ((1 << LOCAL_BITS) - 1), now);
    }
}

/// How hard the process is pressed for memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Normal = 0,
    /// At or above `overload_memory_bytes`: new connections are refused.
    Overloaded = 1,
    /// At or above `shed_memory_bytes`: open clients are closed too.
    Shedding = 2,
}

/// The level for `bytes` of memory against the marks (0 = that mark is off).
pub fn level_for(bytes: u64, overload: u64, shed: u64) -> Level {
    if shed > 0 && bytes >= shed {
        Level::Shedding
    } else if (overload > 0 && bytes >= overload) || (shed > 0 && overload == 0 && bytes >= shed) {
        Level::Overloaded
    } else {
        Level::Normal
    }
}

/// The memory level, read by one loop thread at a time and seen by all.
struct Pressure {
    overload: u64,
    shed: u64,
    level: AtomicU8,
    /// Milliseconds after `started` at which the memory is next read.
    next_check_ms: AtomicU64,
    started: Instant,
}

impl Pressure {
    fn new(overload: u64, shed: u64) -> Self {
        Self { overload, shed, level: AtomicU8::new(0), next_check_ms: AtomicU64::new(0), started: Instant::now() }
    }

    fn enabled(&self) -> bool {
        self.overload > 0 || self.shed > 0
    }

    fn level(&self) -> Level {
        match self.level.load(Relaxed) {
            0 => Level::Normal,
            1 => Level::Overloaded,
            _ => Level::Shedding,
        }
    }

    fn refresh(&self, now: Instant) {
        if !self.enabled() {
            return;
        }
        let ms = now.saturating_duration_since(self.started).as_millis() as u64;
        let next = self.next_check_ms.load(Relaxed);
        let then = ms + PRESSURE_CHECK.as_millis() as u64;
        if ms < next || self.next_check_ms.compare_exchange(next, then, Relaxed, Relaxed).is_err() {
            return; // read recently, or another loop thread is reading it now
        }
        // What the gateway holds (heap in use) where the allocator says; else RSS, which also counts freed
        // memory the allocator keeps, so a process may stay above a mark after what filled it is gone.
        let usage = memory::usage();
        let Some(bytes) = usage.heap_live.or(usage.rss) else { return };
        let level = level_for(bytes, self.overload, self.shed);
        let before = self.level.swap(level as u8, Relaxed);
        if before != level as u8 {
            tracing::warn!(memory_bytes = bytes, level = ?level, "memory pressure changed");
        }
    }
}

/// A process-wide limit on refusal log lines.
struct LogLimit {
    next_ms: AtomicU64,
    suppressed: AtomicU64,
    started: Instant,
}

impl LogLimit {
    fn new() -> Self {
        Self { next_ms: AtomicU64::new(0), suppressed: AtomicU64::new(0), started: Instant::now() }
    }

    fn warn(&self, what: &str) {
        let ms = self.started.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Relaxed);
        let then = ms + LOG_EVERY.as_millis() as u64;
        if ms < next || self.next_ms.compare_exchange(next, then, Relaxed, Relaxed).is_err() {
            self.suppressed.fetch_add(1, Relaxed);
            return;
        }
        let suppressed = self.suppressed.swap(0, Relaxed);
        tracing::warn!(suppressed, "{what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(level_for(10, 0, 0), Level::Normal);
        assert_eq!(level_for(99, 100, 200), Level::Normal);
        assert_eq!(level_for(100, 100, 200), Level::Overloaded);
        assert_eq!(level_for(200, 100, 200), Level::Shedding);
        assert_eq!(level_for(200, 0, 200), Level::Shedding, "shedding alone also refuses new connections");
        assert_eq!(level_for(150, 0, 200), Level::Normal);
        assert_eq!(level_for(150, 100, 0), Level::Overloaded);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_secs(Duration::ZERO), 1);
        assert_eq!(retry_secs(Duration::from_millis(200)), 1);
        assert_eq!(retry_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_secs(Duration::from_secs(5)), 5);
    }

    #[test]
    fn the_shared_table_counts_one_address_across_threads() {
        let table = ClientTable::new(PerIpLimits { max_connections: 100, rate: 0, capacity: 1024 });
        let addr = ClientAddr::from_ip("10.0.0.1".parse().unwrap());
        // Eight threads race for the same address's 100 places: exactly 100 are admitted.
        let admitted: Vec<Vec<Slot>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..50).filter_map(|_| table.admit(addr, Instant::now()).ok()).collect()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let slots: Vec<Slot> = admitted.into_iter().flatten().collect();
        assert_eq!(slots.len(), 100);
        assert!(slots.iter().all(|&s| s == slots[0]), "one address, one slot");
        assert_eq!(table.admit(addr, Instant::now()), Err(IpRefusal::TooManyConnections));
        for s in slots {
            table.release(s, Instant::now());
        }
        let other = ClientAddr::from_ip("10.0.0.2".parse().unwrap());
        assert!(table.admit(addr, Instant::now()).is_ok() && table.admit(other, Instant::now()).is_ok());
    }

    #[test]
    fn behind_at_the_configured_share_of_either_queue_bound() {
        let cfg = Config {
            overload_feed_queue_percent: 50,
            feed_queue_bytes: 1000,
            feed_queue_batches: 10,
            ..Config::default()
        };
        let b = Behind::from_config(&cfg).unwrap();
        assert_eq!(b, Behind { bytes: 500, batches: 5 });
        let stats = ShardStats::default();
        assert!(!b.is_behind(&stats));
        stats.feed_queue_bytes.store(499, Relaxed);
        stats.feed_queue_batches.store(4, Relaxed);
        assert!(!b.is_behind(&stats));
        stats.feed_queue_batches.store(5, Relaxed);
        assert!(b.is_behind(&stats), "half the batches");
        stats.feed_queue_batches.store(1, Relaxed);
        stats.feed_queue_bytes.store(500, Relaxed);
        assert!(b.is_behind(&stats), "half the bytes");
        assert_eq!(Behind::from_config(&Config::default()), None, "off by default");
    }

    #[test]
    fn the_busy_response_has_retry_after() {
        let r = String::from_utf8(busy_response("too many connections from your address", 7)).unwrap();
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        assert!(r.contains("\r\nRetry-After: 7\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\ntoo many connections from your address\n"), "{r}");
    }
}
