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
use crate::topics::TopicPlan;

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
    /// Subscribe: the topic workload (`--topics`); `None` = every connection takes the whole feed.
    #[serde(default)]
    pub topics: Option<TopicPlan>,
    /// `wss://`: the PEM file of the certificates to trust (`--tls-ca`).
    #[serde(default)]
    pub tls_ca: Option<std::path::PathBuf>,
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
    /// Subscribe with `--topics`: per-topic accounting, replies, reconnects.
    #[serde(default)]
    pub topics: Option<Box<TopicResult>>,
}

/// One topic's counts over all the connections of a worker (or of the run, once summed). Message counts are the
/// feed counter's, under the window's rules; `chain_*` are the gateway's `prev`/`seq` chain's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicCounts {
    /// Messages of the topic received in the window, over all its subscribers (replays included).
    pub deliveries: u64,
    pub expected: u64,
    pub received: u64,
    /// Of `expected − received`, the part above each stream's highest number: not arrived by the end.
    pub lost_tail: u64,
    pub duplicates: u64,
    pub reorders: u64,
    /// Numbers skipped under a gap notice (neither expected nor lost).
    pub gap_covered: u64,
    pub gap_notices: u64,
    /// Messages whose `prev` was not the last seq received, without a gap notice.
    pub chain_holes: u64,
    /// Messages whose `seq` was not above the last position received.
    pub chain_duplicates: u64,
}

impl TopicCounts {
    pub fn add(&mut self, o: &TopicCounts) {
        self.deliveries += o.deliveries;
        self.expected += o.expected;
        self.received += o.received;
        self.lost_tail += o.lost_tail;
        self.duplicates += o.duplicates;
        self.reorders += o.reorders;
        self.gap_covered += o.gap_covered;
        self.gap_notices += o.gap_notices;
        self.chain_holes += o.chain_holes;
        self.chain_duplicates += o.chain_duplicates;
    }

    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }
}

/// What a worker saw of the topic workload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TopicResult {
    /// Indexed by topic (`T0000` is 0).
    pub per_topic: Vec<TopicCounts>,
    /// Gap notices received in the counting period (window and grace), by reason.
    pub gap_notices: BTreeMap<String, u64>,
    /// `error` replies, by code (any time: the load generator never sends a request that should fail).
    pub error_replies: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    /// Messages received in the window that were a replay of history (not in the latency histogram).
    pub replayed: u64,
    /// Data messages for a topic the connection had not subscribed to.
    pub unexpected_topic: u64,
    /// Data messages with nothing to check their position against (before any reply).
    pub unanchored: u64,
    /// Drops made on purpose (churn, storm), reconnections that completed, and attempts that failed.
    pub drops: u64,
    pub reconnects: u64,
    pub reconnect_failures: u64,
    /// Churn drops skipped because the connection was not open with every reply in.
    pub churn_skipped: u64,
    pub storm: Option<StormResult>,
}

/// One worker's part of a resume storm: per connection that dropped, ns from the drop until it had every
/// `subscribed` reply, and until its first live message after them (replay done for that topic).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StormResult {
    pub dropped: u64,
    pub resubscribed_ns: Vec<u64>,
    pub live_ns: Vec<u64>,
}
