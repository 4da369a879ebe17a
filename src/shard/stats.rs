//! Counters. Each loop thread writes only its own [`ShardStats`] (relaxed atomics, one cache line apart);
//! readers sum them. Nothing here is on a lock.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::Arc;
use std::time::Instant;

use crate::conn::AddrSource;
use crate::metrics::{declare_stats, Histogram, LabelSet, PerLabel};
use crate::reactor::IoStats;
use crate::upstream::{Dropped, FeedStats, PublishInbox, UpstreamState};

declare_stats! {
    prefix "wsgate_";
    /// One loop thread's counters and gauges: the source of `/metrics` (each field is a metric, named after it;
    /// see `metrics::declare_stats!`) and of `/healthz`. Aligned to 128 bytes so two threads never share a cache
    /// line.
    #[derive(Debug, Default)]
    #[repr(align(128))]
    pub struct ShardStats {
        /// Connections held by this loop thread, in any phase (handshake, open, closing).
        pub gauge connections: AtomicU64,
        /// Connections open, by transport: WebSocket sessions, Server-Sent Events streams, long-poll requests held.
        pub gauge open_connections: PerLabel<Transport, 3>,
        /// Connections opened, by transport: WebSocket upgrades, SSE streams started, long-poll requests accepted.
        pub counter opened_connections: PerLabel<Transport, 3>,
        /// HTTP requests refused (no upgrade, no stream), by status code.
        pub counter http_refused: PerLabel<Refusal, 13>,
        /// Connections failed for a protocol violation.
        pub counter protocol_errors: AtomicU64,
        /// Connections closed as slow consumers (close 1008, or a long-poll or stream ended).
        pub counter slow_consumers: AtomicU64,
        /// Feed messages this loop thread took from its queue.
        pub counter feed_messages: AtomicU64,
        /// Messages received from clients (WebSocket data messages: requests, publishes, echoes).
        pub counter client_messages: AtomicU64,
        /// Feed messages queued for delivery to subscribers: each message times the subscribers it had on this
        /// loop when it arrived (a slow consumer closed later did not receive all of them).
        pub counter deliveries: AtomicU64,
        /// Feed batches dropped because this loop thread's queue was full (`feed_overflow = "drop"`; written by
        /// the feed thread).
        pub counter feed_batches_dropped: AtomicU64,
        /// Batches in this loop thread's queue from the feed thread (the feed thread adds, the loop takes).
        pub gauge feed_queue_batches: AtomicU64,
        /// Bytes in this loop thread's queue from the feed thread.
        pub gauge feed_queue_bytes: AtomicU64,
        /// Bytes of the whole-feed broadcast logs this loop thread retains (set after each trim).
        pub gauge log_bytes: AtomicU64,
        /// Bytes of topic logs this loop thread retains: history and what subscribers have yet to receive (set
        /// at each topic sweep).
        pub gauge topic_log_bytes: AtomicU64,
        /// The history part of the topic logs, in bytes (set at each topic sweep).
        pub gauge history_bytes: AtomicU64,
        /// Topics this loop thread holds (set at each topic sweep).
        pub gauge loop_topics: AtomicU64,
        /// Bytes of broadcast chunks kept by closing connections for the rest of a frame (see `conn::Pinned`).
        pub gauge pinned_bytes: AtomicU64,
        /// Sends cancelled because their connection fell more than `max_lag_bytes` behind (io_uring).
        pub counter lagging_sends_cancelled: AtomicU64,
        /// Closing connections cut without their close frame, because the loop already kept `max_lag_bytes` of
        /// chunks for other closing connections.
        pub counter closing_cut: AtomicU64,
        /// `gap` notices sent to subscribers on subscribe or resume, by reason: history no longer reaches back,
        /// or a position of another epoch.
        pub counter gap_notices: PerLabel<GapKind, 2>,
        /// How far the most lagging subscriber of this loop thread is behind, in bytes of its encoding (at the
        /// last trim; only subscribers blocked on a full socket or with a send in flight lag).
        pub gauge lag_max_bytes: AtomicU64,
        /// Subscribers behind the head at the last trim (blocked on a full socket, or with a send in flight).
        pub gauge lagging_subscribers: AtomicU64,
        /// Slow consumers relieved by skipping (lag policy `drop`, or `conflate` where a topic's newest message
        /// follows): each skip sends `gap` notices.
        pub counter lag_skips: AtomicU64,
        /// Subscriptions of slow consumers cut to their topic's newest message (lag policy `conflate`).
        pub counter lag_conflations: AtomicU64,
        /// Messages slow consumers did not receive because of those skips (whole-feed skips counted from the
        /// skipped chunks' first message).
        pub counter lag_messages_skipped: AtomicU64,
        /// Holes in this loop thread's feed (batches the feed thread dropped for it, `feed_overflow = "drop"`),
        /// each announced to its clients with a `gap` notice (`reason: "overload"`).
        pub counter feed_holes: AtomicU64,
        /// Bytes queued for connections alone (pongs, echoes, replies, notices) on this loop thread, as last
        /// counted (bounded by `max_loop_private_bytes`).
        pub gauge loop_private_bytes: AtomicU64,
        /// Connections closed (1008) because this loop thread's private bytes were past `max_loop_private_bytes`.
        pub counter private_budget_closes: AtomicU64,
        /// Requests refused with `403` because their `Origin` is not in `allowed_origins` (any transport).
        pub counter origin_refused: AtomicU64,
        /// Token auth: requests refused with `401` (no token, or one that is malformed, badly signed, of an
        /// algorithm not allowed, expired, not yet valid, or for another audience or issuer). The debug log line
        /// of each gives the reason category.
        pub counter auth_refused: AtomicU64,
        /// Token auth: requests refused with `403`, and `subscribe`/`publish` requests answered `forbidden`,
        /// because the token's claims do not allow the topic.
        pub counter auth_forbidden: AtomicU64,
        /// Token auth: connections ended because their token expired (WebSocket closed with 4001, event stream
        /// ended, held long-poll answered).
        pub counter auth_expired: AtomicU64,
        /// Token auth: `refresh` requests accepted.
        pub counter auth_refreshed: AtomicU64,
        /// Token auth: `refresh` requests refused (answered `unauthorized` or `forbidden`).
        pub counter auth_refresh_refused: AtomicU64,
        /// Requests refused with `503` for load before any upgrade (also counted in `http_refused`), by reason:
        /// `max_connections`; the client address already had `max_connections_per_ip` open (`per_ip`); it opened
        /// more than `connection_rate_per_ip` per second (`ip_rate`); the table of addresses was full
        /// (`max_tracked_ips`, `ip_table_full`); the process was over `overload_memory_bytes` (`overload`); this
        /// loop thread was behind the feed (`overload_feed_queue_percent`, `behind`).
        pub counter load_refused: PerLabel<LoadRefusal, 7>,
        /// Connections closed before their request because of the PROXY protocol (`proxy_protocol`), by reason:
        /// the peer is not in `trusted_proxies` (`untrusted`: closed at accept, nothing written); its first bytes
        /// are not a PROXY header (`missing`: answered `400`); the header is malformed or of an unsupported kind
        /// (`malformed`: `400`); no complete header within `handshake_timeout` (`timeout`: closed).
        pub counter proxy_refused: PerLabel<ProxyRefusal, 4>,
        /// Requests refused with `400` because a trusted proxy sent a malformed `Forwarded`, `X-Forwarded-For` or
        /// `X-Real-IP` header (also counted in `http_refused`).
        pub counter forwarded_refused: AtomicU64,
        /// Client addresses decided, by where they came from: the TCP peer (`peer`), a PROXY protocol header
        /// (`proxy_protocol`), or a trusted proxy's `Forwarded` (`forwarded`), `X-Forwarded-For`
        /// (`x_forwarded_for`) or `X-Real-IP` (`x_real_ip`) header. One per connection whose address was decided
        /// (connections refused before that are not counted).
        pub counter proxied_clients: PerLabel<AddrSource, 5>,
        /// Pings sent to WebSocket clients (`ping_interval`).
        pub counter pings_sent: AtomicU64,
        /// WebSocket clients closed for not answering a ping within `pong_timeout` (`1001`).
        pub counter pong_timeouts: AtomicU64,
        /// WebSocket clients closed for sending nothing for `idle_timeout` (`1001`).
        pub counter idle_timeouts: AtomicU64,
        /// WebSocket clients closed for subscribing to nothing within `subscribe_timeout` (`1008`).
        pub counter subscribe_timeouts: AtomicU64,
        /// Connections closed at `max_connection_lifetime` (`1001`; an SSE stream ends).
        pub counter lifetime_closes: AtomicU64,
        /// WebSocket clients closed for sending more than `client_message_rate` messages per second (`1008`).
        pub counter message_rate_closes: AtomicU64,
        /// Open clients closed with `1013` while shedding load (`shed_memory_bytes`).
        pub counter shed_closes: AtomicU64,
        /// Connections closed by a shutdown (1001) or restart (1012) drain, with a reconnect hint.
        pub counter drain_closes: AtomicU64,
        /// Time one loop pass takes, from the end of its wait to the end of its trim phase.
        pub histogram loop_pass_seconds: Histogram,
        /// Time from the feed thread receiving a batch of messages to the end of the fan-out phase that offered
        /// it to every subscriber of this loop (epoll: written to their sockets; io_uring: queued for
        /// submission). One observation per batch, not per subscriber.
        pub histogram publish_to_socket_seconds: Histogram,
    }
    internal {
        /// This thread no longer takes batches (it ended): its queue does not hold the feed back.
        pub feed_queue_closed: AtomicBool,
    }
}

impl ShardStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Relaxed);
    }

    /// Counts a refused HTTP request.
    pub fn refused(&self, status: u16) {
        self.http_refused.add(Refusal::index(status), 1);
    }

    /// Counts a connection opened on `transport` (and open until [`ShardStats::closed`]).
    pub fn opened(&self, transport: Transport) {
        self.opened_connections.add(transport as usize, 1);
        self.open_connections.add(transport as usize, 1);
    }

    /// Counts a request refused with `503` for load.
    pub fn refused_for_load(&self, reason: LoadRefusal) {
        self.load_refused.add(reason as usize, 1);
        self.refused(503);
    }

    /// A connection counted open by [`ShardStats::opened`] is no longer.
    pub fn closed(&self, transport: Transport) {
        self.open_connections.sub(transport as usize, 1);
    }
}

/// How a client reads the feed (the `transport` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Ws = 0,
    Sse = 1,
    Poll = 2,
}

impl LabelSet for Transport {
    const LABEL: &'static str = "transport";
    fn values() -> &'static [&'static str] {
        &["ws", "sse", "poll"]
    }
}

/// The `status` label of refused requests: the codes the gateway answers with, and `other`.
#[derive(Debug)]
pub enum Refusal {}

impl Refusal {
    const STATUSES: [u16; 12] = [400, 401, 403, 404, 405, 408, 426, 429, 431, 500, 503, 505];

    /// The counter index of `status`.
    pub fn index(status: u16) -> usize {
        Self::STATUSES.iter().position(|&s| s == status).unwrap_or(Self::STATUSES.len())
    }
}

impl LabelSet for Refusal {
    const LABEL: &'static str = "status";
    fn values() -> &'static [&'static str] {
        &["400", "401", "403", "404", "405", "408", "426", "429", "431", "500", "503", "505", "other"]
    }
}

/// Why a request was refused with `503` for load (the `reason` label of `load_refused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadRefusal {
    MaxConnections = 0,
    PerIp = 1,
    IpRate = 2,
    IpTableFull = 3,
    Overload = 4,
    Behind = 5,
    /// A long-poll request while the loop thread already holds `poll_max_held` of them.
    PollHeld = 6,
}

impl LabelSet for LoadRefusal {
    const LABEL: &'static str = "reason";
    fn values() -> &'static [&'static str] {
        &["max_connections", "per_ip", "ip_rate", "ip_table_full", "overload", "behind", "poll_held"]
    }
}

/// Why a connection was closed for the PROXY protocol (the `reason` label of `proxy_refused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyRefusal {
    Untrusted = 0,
    Missing = 1,
    Malformed = 2,
    Timeout = 3,
}

impl LabelSet for ProxyRefusal {
    const LABEL: &'static str = "reason";
    fn values() -> &'static [&'static str] {
        &["untrusted", "missing", "malformed", "timeout"]
    }
}

impl LabelSet for AddrSource {
    const LABEL: &'static str = "source";
    fn values() -> &'static [&'static str] {
        &["peer", "proxy_protocol", "forwarded", "x_forwarded_for", "x_real_ip"]
    }
}

/// Why a `gap` notice was sent on subscribe or resume (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapKind {
    History = 0,
    Epoch = 1,
}

impl LabelSet for GapKind {
    const LABEL: &'static str = "reason";
    fn values() -> &'static [&'static str] {
        &["history", "epoch"]
    }
}

/// What the loop threads and the control thread share: read-mostly, never on the per-message path.
pub struct Shared {
    /// Set once, when the gateway starts draining (shutdown or restart): loops stop accepting and close their
    /// clients; `/healthz` says so. `stop_mode` says which drain it is.
    pub shutdown: AtomicBool,
    /// Why it drains: a `StopMode` as `StopMode::to_u8` (0 until set). Written before `shutdown`, with release
    /// ordering on `shutdown`, so a loop that sees `shutdown` (acquire) sees the mode.
    pub stop_mode: AtomicU8,
    pub shards: Arc<[ShardStats]>,
    pub feed: Option<Arc<FeedStats>>,
    /// Where client-published messages go to be sequenced with the feed (none without a feed).
    pub publish: Option<Arc<PublishInbox>>,
    pub started: Instant,
    /// The I/O backend the loop threads run on (`epoll` or `uring`).
    pub io_backend: &'static str,
    /// Each loop thread's backend counters.
    pub io: Box<[Arc<IoStats>]>,
    /// Per-address limits and memory pressure, shared by the loop threads.
    pub admission: super::admission::Admission,
}

impl Shared {
    /// Starts draining for `mode`, unless a drain already started (the first one wins: a SIGTERM during a
    /// restart drain does not turn its 1012 closes into 1001).
    pub fn begin_stop(&self, mode: super::drain::StopMode) {
        let _ = self.stop_mode.compare_exchange(0, mode.to_u8(), Relaxed, Relaxed);
        self.shutdown.store(true, Release);
    }

    /// The drain under way, if any.
    pub fn stopping(&self) -> Option<super::drain::StopMode> {
        if !self.shutdown.load(Acquire) {
            return None;
        }
        // A `shutdown` set without a mode (by older code paths) is a plain shutdown.
        Some(super::drain::StopMode::from_u8(self.stop_mode.load(Relaxed)).unwrap_or(super::drain::StopMode::Shutdown))
    }

    /// Sum of one counter over all loop threads.
    pub fn total(&self, pick: impl Fn(&ShardStats) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| pick(s).load(Relaxed)).sum()
    }

    /// Sum of one backend counter over all loop threads.
    pub fn io_total(&self, pick: impl Fn(&IoStats) -> &AtomicU64) -> u64 {
        self.io.iter().map(|s| pick(s).load(Relaxed)).sum()
    }

    /// What `/healthz` says now, and why when not `ok`.
    pub fn health_status(&self) -> (HealthStatus, Option<&'static str>) {
        if self.shutdown.load(Relaxed) {
            return (HealthStatus::Draining, Some("shutting down: new clients should go elsewhere"));
        }
        if let Some(feed) = &self.feed {
            if matches!(feed.upstream_state(), UpstreamState::Connecting | UpstreamState::Backoff) {
                return (HealthStatus::Degraded, Some("upstream not connected"));
            }
            if feed.silent() {
                return (HealthStatus::Degraded, Some("feed silent for upstream_silence or longer"));
            }
        }
        (HealthStatus::Ok, None)
    }

    /// The complete `/healthz` response: `200` while serving (`ok` or `degraded`), `503` while draining.
    pub fn health_response(&self) -> Vec<u8> {
        let (status, _) = self.health_status();
        let headers = "Cache-Control: no-store\r\n";
        crate::proto::handshake::http_response_with(
            status.http_status(),
            "application/json",
            headers,
            self.health_json().as_bytes(),
        )
    }

    /// The `/healthz` body.
    pub fn health_json(&self) -> String {
        let upstream = self.feed.as_ref().map_or("disabled", |f| f.upstream_state().as_str());
        let published = self.feed.as_ref().map_or(0, |f| f.messages_published());
        let pauses = self.feed.as_ref().map_or(0, |f| f.backpressure_pauses());
        let (epoch, feed_seq, (topics, topics_expired)) =
            self.feed.as_ref().map_or((0, 0, (0, 0)), |f| (f.epoch(), f.last_seq(), f.topics()));
        let silent = self.feed.as_ref().is_some_and(|f| f.silent());
        let (gaps, missing, resets) = self.feed.as_ref().map_or((0, 0, 0), |f| f.seq_gaps());
        let dropped: Vec<String> = Dropped::ALL
            .iter()
            .map(|&r| format!("\"{}\":{}", r.as_str(), self.feed.as_ref().map_or(0, |f| f.dropped(r))))
            .collect();
        let dropped = dropped.join(",");
        let (status, reason) = self.health_status();
        let reason = reason.map_or_else(|| "null".to_string(), |r| format!("\"{r}\""));
        let status = status.as_str();
        let mem = super::memory::usage();
        let num = |v: Option<u64>| v.map_or_else(|| "null".to_string(), |v| v.to_string());
        format!(
            "{{\"status\":\"{status}\",\"reason\":{reason},\"connections\":{},\"threads\":{},\"upstream\":\"{upstream}\",\
             \"upstream_silent\":{silent},\"upstream_seq_gaps\":{gaps},\"upstream_seq_missing\":{missing},\
             \"upstream_seq_resets\":{resets},\
             \"feed_messages\":{published},\"epoch\":{epoch},\"feed_seq\":{feed_seq},\"topics\":{topics},\
             \"topics_expired\":{topics_expired},\"feed_dropped\":{{{dropped}}},\"feed_batches_dropped\":{},\"feed_backpressure_pauses\":{pauses},\
             \"slow_consumers\":{},\"lag_skips\":{},\"lag_conflations\":{},\"lag_messages_skipped\":{},\
             \"feed_holes\":{},\"loop_private_bytes\":{},\"private_budget_closes\":{},\"lagging_sends_cancelled\":{},\"closing_cut\":{},\"uptime_s\":{},\
             \"feed_queue_bytes\":{},\"log_bytes\":{},\"topic_log_bytes\":{},\"history_bytes\":{},\
             \"loop_topics\":{},\"pinned_bytes\":{},\
             \"rss_bytes\":{},\"heap_live_bytes\":{},\"heap_free_bytes\":{},\
             \"io\":\"{}\",\"io_waits\":{},\"io_midpass_submits\":{},\"io_recv_enobufs\":{},\"io_sends_deferred\":{}}}\n",
            self.total(|s| &s.connections),
            self.shards.len(),
            self.total(|s| &s.feed_batches_dropped),
            self.total(|s| &s.slow_consumers),
            self.total(|s| &s.lag_skips),
            self.total(|s| &s.lag_conflations),
            self.total(|s| &s.lag_messages_skipped),
            self.total(|s| &s.feed_holes),
            self.total(|s| &s.loop_private_bytes),
            self.total(|s| &s.private_budget_closes),
            self.total(|s| &s.lagging_sends_cancelled),
            self.total(|s| &s.closing_cut),
            self.started.elapsed().as_secs(),
            self.total(|s| &s.feed_queue_bytes),
            self.total(|s| &s.log_bytes),
            self.total(|s| &s.topic_log_bytes),
            self.total(|s| &s.history_bytes),
            self.total(|s| &s.loop_topics),
            self.total(|s| &s.pinned_bytes),
            num(mem.rss),
            num(mem.heap_live),
            num(mem.heap_free),
            self.io_backend,
            self.io_total(|s| &s.waits),
            self.io_total(|s| &s.midpass_submits),
            self.io_total(|s| &s.recv_enobufs),
            self.io_total(|s| &s.sends_deferred),
        )
    }
}

/// What `/healthz` answers (`docs/operations.md`): balancers send new clients to `ok` gateways first, may still
/// send them to `degraded` ones (the answer is still `200`: every gateway of a fleet usually shares one
/// upstream, and a fleet that all answered `503` for a silent feed would refuse clients that history and a
/// later feed can serve), and stop sending them to `draining` ones (`503`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    Ok,
    /// Serving, but the upstream is not connected or has been silent for `upstream_silence`.
    Degraded,
    /// A shutdown (or a drain for restart) has started.
    Draining,
}

impl HealthStatus {
    pub const ALL: [HealthStatus; 3] = [HealthStatus::Ok, HealthStatus::Degraded, HealthStatus::Draining];

    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Ok => "ok",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Draining => "draining",
        }
    }

    /// The HTTP status of the `/healthz` answer.
    pub fn http_status(self) -> u16 {
        match self {
            HealthStatus::Draining => 503,
            HealthStatus::Ok | HealthStatus::Degraded => 200,
        }
    }
}
