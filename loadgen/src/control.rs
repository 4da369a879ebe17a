//! The parent ↔ worker protocol: one JSON object per line, workers write to stdout, the parent to their stdin.
//!
//! Sequence (every worker):
//! 1. parent starts `wsgate-loadgen worker --spec JSON` ([`WorkerSpec`]);
//! 2. worker → `progress` once a second throughout, `up` once all its connection attempts have finished;
//! 3. parent (once every worker is up) → `window` with the absolute CLOCK_MONOTONIC bounds of the measured window
//!    (the same for all workers: the clock is system-wide);
//! 4. worker → `maxes` at the end of the window: per topic, the highest sequence number it saw in the window;
//! 5. parent → `maxes` with the maximum over all workers; worker waits out the grace period, then → `result` and
//!    exits. A worker whose stdin closes (the parent died) exits at once.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::addrs::Target;

/// What the connections do once open.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mode {
    /// Receive the gateway's broadcast; account for every message.
    Subscribe,
    /// Send `rate_per_conn` messages/s of `size` bytes on each connection and time the echoes.
    Echo { rate_per_conn: f64, size: usize },
}

/// Everything a worker process needs; passed as one JSON argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub worker: usize,
    pub mode: Mode,
    pub target: Target,
    /// Connections this worker opens.
    pub connections: u64,
    /// Global index of its first connection (spreads source addresses and keys over all workers).
    pub first_index: u64,
    pub source_ips: Vec<Ipv4Addr>,
    /// Connection attempts per second for this worker; `None` = as fast as `max_pending` allows.
    pub ramp_per_s: Option<f64>,
    /// Most connection attempts in flight at once.
    pub max_pending: usize,
    pub handshake_timeout_ms: u64,
    pub grace_ms: u64,
    /// Echo: least time between two wake-ups for sends, µs.
    pub min_wake_us: u64,
    pub salt: u64,
}

/// Parent → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ToWorker {
    Window { start_ns: u64, end_ns: u64 },
    Maxes { maxes: BTreeMap<String, u64> },
}

/// Worker → parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ToParent {
    Progress { open: u64, failed: u64, messages: u64, errors: u64 },
    Up { ok: u64, failed: u64 },
    Maxes { maxes: BTreeMap<String, u64> },
    Result { result: Box<WorkerResult> },
    Fatal { error: String },
}

/// One worker's counts for the run. Message counts cover the measured window only (see `docs/loadgen.md`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub connections_ok: u64,
    pub connections_failed: u64,
    pub failure_reasons: BTreeMap<String, u64>,
    /// CLOCK_MONOTONIC of the first connection attempt and of the last successful handshake.
    pub first_attempt_ns: u64,
    pub last_ok_ns: u64,
    /// Connections that were open and then closed (by the server, a reset, or a protocol error).
    pub disconnects: u64,
    pub disconnect_reasons: BTreeMap<String, u64>,
    /// Messages received during the window (duplicates included): the "delivered" count for per-message costs.
    pub messages_in_window: u64,
    /// Distinct messages accounted for (window plus grace, up to the global maximum per topic).
    pub messages_received: u64,
    pub messages_expected: u64,
    /// Subscribe: the part of the loss that never arrived by the end of the grace period (see `StreamTotals`).
    pub messages_lost_tail: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub reorders: u64,
    /// Data messages not in the loadgen format.
    pub unparsed: u64,
    pub protocol_errors: u64,
    /// Echo: messages written (or queued) and messages dropped because the connection's send queue was full.
    pub messages_sent: u64,
    pub sends_dropped: u64,
    /// Some stream had more than `seqtrack::MAX_RANGES` gaps open at once: counts are approximate.
    pub ranges_dropped: bool,
    /// Latency histogram, ns ([`crate::hist::encode`]).
    pub histogram: String,
    /// Echo: histogram of send lateness (actual − scheduled send time), ns.
    pub send_lag_histogram: Option<String>,
}
