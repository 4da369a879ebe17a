//! Gateway settings: one struct, filled from defaults, then an optional TOML file, then command-line flags.
//!
//! Every queue and buffer in the gateway has its limit here, with a default and the policy applied when the
//! limit is reached.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::upstream::Framing;

#[macro_use]
mod keys;
mod flags;

pub use flags::{command, Args};
pub use keys::{Key, Kind};

/// What the feed thread does when a loop thread's queue is full (in bytes or in batches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedOverflow {
    /// Stop reading the feed's sources until every loop thread has room again: nothing is lost, and TCP flow
    /// control pushes back on the upstream server and the publishers.
    Backpressure,
    /// Keep reading; the batch is dropped for the loop thread that has no room (its clients miss it), counted
    /// and logged.
    Drop,
}

/// What happens to a connection past `max_lag_bytes` / `max_lag_messages` (`docs/client-protocol.md`, "Slow
/// consumers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LagPolicyName {
    /// Close it with 1008 (slow consumer).
    Disconnect,
    /// Skip it to live and send it a `gap` notice with the range it missed.
    Drop,
    /// Keep only the newest message per topic for it (a `gap` notice shows the jump); whole-feed: as `drop`.
    Conflate,
}

impl LagPolicyName {
    pub fn policy(self) -> crate::fanout::LagPolicy {
        match self {
            LagPolicyName::Disconnect => crate::fanout::LagPolicy::Disconnect,
            LagPolicyName::Drop => crate::fanout::LagPolicy::Drop,
            LagPolicyName::Conflate => crate::fanout::LagPolicy::Conflate,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "disconnect" => Some(LagPolicyName::Disconnect),
            "drop" => Some(LagPolicyName::Drop),
            "conflate" => Some(LagPolicyName::Conflate),
            _ => None,
        }
    }
}

/// Which I/O backend drives the loop threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoBackend {
    /// io_uring where the kernel allows it (probed at start), otherwise epoll, with one log line saying why.
    Auto,
    /// epoll through mio.
    Epoll,
    /// io_uring; refuses to start where it is unavailable.
    Uring,
}

settings! {
/// The complete configuration of one gateway process. Every field is a key of the TOML file and a flag
/// (`--max-lag-bytes` for `max_lag_bytes`); its doc comment is the flag's help.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the HTTP/WebSocket listener (`GET /ws`, `GET /healthz`). Every loop thread binds it with
    /// `SO_REUSEPORT`, so several processes may share one port too.
    pub listen: SocketAddr,
    /// Loop threads; 0 = one per available core.
    pub threads: usize,
    /// I/O backend.
    pub io: IoBackend,
    /// io_uring: submission queue entries per loop thread (the completion queue gets four times as many).
    pub uring_sq_entries: u32,
    /// io_uring: provided receive buffers per loop thread (a power of two up to 32768). Too few costs re-armed
    /// receives (counted as `recv_enobufs`), never data.
    pub uring_recv_buffers: u16,
    /// io_uring: bytes per provided receive buffer.
    pub uring_recv_buffer_size: u32,
    /// io_uring: sends carrying private bytes or several slices in flight at once per loop thread (48 bytes each,
    /// made on first need); past it, sends wait a pass.
    pub uring_send_slots: u32,
    /// io_uring: a kernel thread polls the submission queue (SQPOLL; takes a core; measured, off by default).
    pub uring_sqpoll: bool,
    /// io_uring: register connection sockets with the ring (fixed files; measured, off by default).
    pub uring_fixed_files: bool,
    /// io_uring: hand queued sends to the kernel every this many, mid-pass (0: one `io_uring_enter` per pass,
    /// plus one whenever the submission queue fills).
    pub uring_submit_batch: u32,
    /// Upstream feed to connect to, `HOST:PORT` (newline-delimited messages).
    pub upstream: Option<String>,
    /// Address on which publishers may connect and push newline-delimited messages.
    pub ingest: Option<SocketAddr>,
    /// Run the built-in simulated market feed.
    pub demo: bool,
    /// Messages per second of the demo feed (all symbols together).
    pub demo_rate: u32,
    /// Echo client data messages back (conformance testing). Otherwise they are validated and discarded.
    pub echo: bool,
    /// `tracing` filter, e.g. `info` or `wsgate=debug`.
    pub log_level: String,
    /// Most connections this process holds, split evenly over the loop threads: each loop thread holds at most
    /// ⌈`max_connections` / threads⌉ (a loop refuses at its share even while another has room). Over it, new
    /// connections get `503` with `Retry-After`.
    pub max_connections: usize,
    /// Most bytes of an HTTP request head; over it → `431`.
    pub max_header_bytes: usize,
    /// Largest client frame payload accepted; over it → close `1009`. A partial frame is buffered per
    /// connection, so this bounds what one client can make the gateway hold (clients of a fan-out gateway
    /// send small control messages).
    pub max_frame_bytes: u64,
    /// Largest client message (all fragments together); over it → close `1009`.
    pub max_message_bytes: u64,
    /// Subprotocols the server speaks, in no particular order; the client's first supported offer wins.
    pub subprotocols: Vec<String>,
    /// Allowed `Origin` values; empty = allow any.
    pub allowed_origins: Vec<String>,
    /// A connection whose unsent broadcast backlog exceeds this many bytes is a slow consumer: it loses its claim
    /// on the broadcast log, so that it can never hold memory for the others, and its `lag_policy` applies
    /// (`disconnect`: closed with `1008`; `drop` or `conflate`: skipped ahead with a `gap` notice).
    /// Also bounds each loop thread's log (see `docs/architecture.md`, "What bounds memory").
    pub max_lag_bytes: u64,
    /// Most messages a connection may be behind (0: no bound but `max_lag_bytes`); past it, as past
    /// `max_lag_bytes`, its slow-consumer policy applies (`lag_policy`, `lag_policies`).
    pub max_lag_messages: u64,
    /// What happens to a connection past `max_lag_bytes` or `max_lag_messages`: `disconnect` (close 1008),
    /// `drop` (skip to live, with a `gap` notice) or `conflate` (newest message per topic, with a `gap` notice).
    pub lag_policy: LagPolicyName,
    /// Slow-consumer policy per topic, as `PATTERN=POLICY` (`BTC-*=conflate`, `news=drop`); the first match
    /// wins, other topics get `lag_policy`.
    pub lag_policies: Vec<String>,
    /// Most bytes queued for one connection alone (pongs, echoes, close); over it → close `1008`.
    pub max_private_bytes: usize,
    /// Most bytes queued for connections alone (pongs, echoes, replies) over one loop thread; past it the
    /// connections holding the most are closed with `1008` until it is met again.
    pub max_loop_private_bytes: u64,
    /// Capacity, in batches, of each loop thread's queue from the feed thread.
    pub feed_queue_batches: usize,
    /// Capacity, in bytes, of each loop thread's queue from the feed thread (a queue may pass it by the batches
    /// of one feed read).
    pub feed_queue_bytes: u64,
    /// Policy when a loop thread's queue is full: `backpressure` (stop reading the feed) or `drop`.
    pub feed_overflow: FeedOverflow,
    /// Longest line (or binary payload) accepted from the feed; longer ones are dropped and counted.
    pub max_line_bytes: usize,
    /// How the upstream server frames its records: `auto`, `tab` or `binary` (`docs/feed-protocol.md`).
    pub upstream_framing: Framing,
    /// How publishers on the ingest listener frame their records.
    pub ingest_framing: Framing,
    /// Top-level field of a JSON line that names its topic (`auto` framing).
    pub topic_field: String,
    /// Topic of lines without a topic field (`auto` framing).
    pub default_topic: String,
    /// Most topics the feed keeps track of; a message for a new topic past it is dropped and counted.
    pub max_topics: usize,
    /// A topic without messages for this long is forgotten.
    #[serde(with = "millis")]
    pub topic_idle_expiry: Duration,
    /// Server-Sent Events: how long a browser waits before reconnecting (the `retry:` hint).
    #[serde(with = "millis")]
    pub sse_retry: Duration,
    /// Server-Sent Events: a comment line this often keeps idle streams (and proxies) alive.
    #[serde(with = "millis")]
    pub sse_heartbeat: Duration,
    /// Name each SSE data event by its topic (`event: TOPIC`, for `addEventListener(topic)`); off: unnamed
    /// events, which `EventSource.onmessage` receives.
    pub sse_event_names: bool,
    /// Long-poll: how long a request waits for a message before it is answered with none.
    #[serde(with = "millis")]
    pub poll_timeout: Duration,
    /// Long-poll: most requests held at once per loop thread; more get `503`.
    pub poll_max_held: usize,
    /// History per topic and encoding, on each loop thread: the last this many messages...
    pub history_messages: usize,
    /// ... no older than this ...
    #[serde(with = "millis")]
    pub history_age: Duration,
    /// ... and at most this many bytes. 0 messages or bytes: no history (resume always reports a gap).
    pub history_bytes: u64,
    /// Most history bytes over every topic of one loop thread (oldest evicted first).
    pub history_total_bytes: u64,
    /// Bytes the topic logs of one loop thread may hold beyond their history for subscribers that lag (each
    /// within `max_lag_bytes`, on different topics); past it the laggiest are closed as slow consumers.
    /// Unset: 4 × `max_lag_bytes`, at least 16 MiB.
    pub max_topic_backlog_bytes: Option<u64>,
    /// Most subscriptions (topics and patterns as written) of one connection.
    pub max_subscriptions: usize,
    /// Topics clients may subscribe to, as topics or prefix patterns (`BTC-*`); empty = any.
    pub allowed_topics: Vec<String>,
    /// A WebSocket client that subscribes to nothing receives nothing (otherwise: every topic).
    pub require_subscription: bool,
    /// Topics WebSocket clients may publish on (`{"op":"publish"}`), as topics or prefix patterns; empty =
    /// publishing off.
    pub publish_topics: Vec<String>,
    /// Most bytes of one published message's data.
    pub publish_max_bytes: usize,
    /// Published messages per second one connection may send (its burst is as many).
    pub publish_rate: u32,
    /// Token auth: a file with the HMAC secret that signs clients' JWTs (HS256), at least 32 bytes; one trailing
    /// line break is not part of it. Setting it (or `auth_public_key_file`) turns token authentication on
    /// (`docs/client-protocol.md`, "Authentication").
    pub auth_secret_file: Option<PathBuf>,
    /// Token auth: a PEM file with the RSA (RS256) or EC P-256 (ES256) public key that verifies clients' JWTs.
    /// Not together with `auth_secret_file`.
    pub auth_public_key_file: Option<PathBuf>,
    /// Token auth: the JWT algorithms accepted, all of the key's family (e.g. `RS256`, `PS256`); empty: HS256,
    /// RS256 or ES256 by the key. `none` is never accepted.
    pub auth_algorithms: Vec<String>,
    /// Token auth: accepted `aud` values, one of which a token must carry; empty: tokens must carry no `aud`.
    pub auth_audience: Vec<String>,
    /// Token auth: the `iss` a token must carry; unset: any or none.
    pub auth_issuer: Option<String>,
    /// Token auth: clock skew allowed on `exp` and `nbf` (a connection is closed at `exp` plus this).
    #[serde(with = "millis")]
    pub auth_leeway: Duration,
    /// Token auth: let clients without a token in, with what every client gets (any offered topic, no
    /// publishing); a token that is sent must still be valid.
    pub auth_optional: bool,
    /// Token auth: the claim that lists the topics and patterns a token's bearer may subscribe to.
    pub auth_topics_claim: String,
    /// Token auth: the claim that lists the topics and patterns a token's bearer may publish on.
    pub auth_publish_claim: String,
    /// Time a client has to send its complete upgrade request.
    #[serde(with = "millis")]
    pub handshake_timeout: Duration,
    /// Time to wait for clients' close frames at shutdown before dropping them.
    #[serde(with = "millis")]
    pub shutdown_timeout: Duration,
    /// Window over which shutdown and restart spread their client closes (0: all at once).
    /// So that clients do not all reconnect at once; each close suggests a delay in this range. Must be below
    /// `shutdown_timeout`.
    #[serde(with = "millis")]
    pub shutdown_spread: Duration,
    /// Unix socket for zero-downtime restart: a new process with the same path takes over the listeners.
    /// The process serving there hands over its listening sockets (and the ingest one), then drains (1012).
    /// See docs/operations.md.
    pub handoff_socket: Option<PathBuf>,
    /// Listen backlog of each loop thread's listener.
    pub backlog: u32,
    /// Serve `/metrics` and `/healthz` on this address (a small thread of its own) instead of on `listen`, where
    /// they then answer 404. Unset: they are served on `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// The upstream counts as silent after this long without a message: logged once, `wsgate_upstream_silent`
    /// is 1 and `/healthz` says `degraded` until the next message. 0: off. Publishers and the demo are not
    /// watched.
    #[serde(with = "millis")]
    pub upstream_silence: Duration,
    /// Drop and remake the upstream connection when it falls silent (`upstream_silence`): for upstreams whose
    /// sessions can stall while TCP stays up. Off: a silent upstream is only reported.
    pub upstream_silence_reconnect: bool,
    /// Top-level integer field of the upstream's JSON lines that carries its own sequence number (e.g. `seq`);
    /// jumps are counted as gaps (`wsgate_upstream_seq_gaps_total`) and logged. Empty: not checked.
    /// `upstream_framing = "auto"` only.
    pub upstream_seq_field: String,
    /// Positions passed through from upstream: when not 0, the epoch of every position (the same number on every
    /// gateway in front of this upstream), and each message's `seq` is its `upstream_seq_field` value instead of
    /// the gateway's own count, so positions survive a restart and mean the same on every node. Needs
    /// `upstream_seq_field`, and no `ingest`, `demo` or `publish_topics` (their messages carry no upstream
    /// number). A message without the field, or whose number is not above the last one, is dropped (counted).
    /// 0 = the gateway numbers the feed itself, in a random epoch per process.
    pub upstream_epoch: u64,
    /// Interval of the server's pings to each WebSocket client (an empty ping frame); 0 = no pings.
    #[serde(with = "millis")]
    pub ping_interval: Duration,
    /// Time a WebSocket client has to answer a ping with a pong; without one it is closed (`1001`, "no pong").
    /// Must be below `ping_interval`.
    #[serde(with = "millis")]
    pub pong_timeout: Duration,
    /// A WebSocket client that sends nothing at all (no frame, no pong) for this long is closed (`1001`,
    /// "idle"); checked every `idle_timeout`, so the close comes between one and two of them; 0 = off.
    #[serde(with = "millis")]
    pub idle_timeout: Duration,
    /// With `require_subscription`: a WebSocket client that has not subscribed this long after its upgrade is
    /// closed (`1008`); 0 = off. Without `require_subscription` it has nothing to do (an unsubscribed client
    /// reads the whole feed).
    #[serde(with = "millis")]
    pub subscribe_timeout: Duration,
    /// Most time a WebSocket or SSE connection stays open; it gets a `notice` (code `lifetime`) `lifetime_notice`
    /// before, then close `1001` (an SSE stream ends); 0 = no limit.
    #[serde(with = "millis")]
    pub max_connection_lifetime: Duration,
    /// How long before `max_connection_lifetime` a connection is told it will be closed; below that lifetime.
    #[serde(with = "millis")]
    pub lifetime_notice: Duration,
    /// Each connection's lifetime is shortened by a random part of this, so that connections opened together
    /// (after a restart, say) do not all reach their lifetime, and reconnect, at once. At most half of
    /// `max_connection_lifetime - lifetime_notice` is used; 0 = every connection gets exactly the lifetime.
    #[serde(with = "millis")]
    pub lifetime_jitter: Duration,
    /// Most connections from one client address (all loop threads together); more get `503` with
    /// `Retry-After` before any upgrade; 0 = no limit. IPv6 addresses count by their /64.
    pub max_connections_per_ip: usize,
    /// New connections per second from one client address (a token bucket with a burst as large); more get
    /// `503` with `Retry-After`; 0 = no limit.
    pub connection_rate_per_ip: u32,
    /// Most client addresses the per-address limits remember (idle ones are forgotten first); a new address
    /// beyond it, while every remembered one has connections open, gets `503`.
    pub max_tracked_ips: usize,
    /// PROXY protocol on the listener (v1 or v2, e.g. HAProxy `send-proxy-v2`, nginx `proxy_protocol on`): every
    /// connection must start with a PROXY header from a `trusted_proxies` address, which names the client (the
    /// address per-address limits, logs and metrics use). A connection from another address is closed at
    /// accept; one whose first bytes are not a valid header gets `400` and is closed; v2 `LOCAL` (health checks)
    /// is accepted as the proxy itself. The header comes before anything else (TLS included). Needs
    /// `trusted_proxies`. See docs/client-address.md.
    pub proxy_protocol: bool,
    /// Address ranges of the proxies trusted to name the client (`10.0.0.0/8`, `::1/128`, or one address): by a
    /// PROXY protocol header, or by `Forwarded`, `X-Forwarded-For` or `X-Real-IP` (read only on requests from
    /// these addresses; the rightmost address that is not a trusted proxy is the client). Empty: no proxy is
    /// trusted and those headers are ignored.
    pub trusted_proxies: Vec<String>,
    /// Control messages and pings per second one WebSocket client may send (a token bucket with a burst twice
    /// as large); beyond it the connection is closed (`1008`); 0 = no limit. Off with `echo`.
    pub client_message_rate: u32,
    /// The `Retry-After` of `503` refusals for load (`max_connections`, overload, per-address connections),
    /// rounded up to whole seconds.
    #[serde(with = "millis")]
    pub retry_after: Duration,
    /// Overload: at or above this much process memory (heap in use, else RSS), new connections get `503`
    /// with `Retry-After`; 0 = off.
    pub overload_memory_bytes: u64,
    /// Shedding: at or above this much process memory, open clients are closed with `1013` (Try Again Later), a
    /// few at a time, until below it again; 0 = off. At least `overload_memory_bytes` when both are set.
    pub shed_memory_bytes: u64,
    /// A loop thread whose queue from the feed is at least this full (percent of `feed_queue_bytes` or of
    /// `feed_queue_batches`) is behind the feed (saturated): it refuses new `/ws`, `/sse` and `/poll` requests
    /// with `503` and `Retry-After: 1` (a retry may land on another loop thread); 0 = off.
    pub overload_feed_queue_percent: u32,
}
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            threads: 0,
            io: IoBackend::Auto,
            uring_sq_entries: 4096,
            uring_recv_buffers: 1024,
            uring_recv_buffer_size: 4096,
            uring_send_slots: 32768,
            uring_sqpoll: false,
            uring_fixed_files: false,
            uring_submit_batch: 64,
            upstream: None,
            ingest: None,
            demo: false,
            demo_rate: 10,
            echo: false,
            log_level: "info".into(),
            max_connections: 1_000_000,
            max_header_bytes: 8 * 1024,
            max_frame_bytes: 64 * 1024,
            max_message_bytes: 64 * 1024,
            subprotocols: Vec::new(),
            allowed_origins: Vec::new(),
            max_lag_bytes: 4 << 20,
            max_lag_messages: 0,
            lag_policy: LagPolicyName::Disconnect,
            lag_policies: Vec::new(),
            max_private_bytes: 2 << 20,
            max_loop_private_bytes: 64 << 20,
            feed_queue_batches: 4096,
            feed_queue_bytes: 16 << 20,
            feed_overflow: FeedOverflow::Backpressure,
            max_line_bytes: 64 * 1024,
            upstream_framing: Framing::Auto,
            ingest_framing: Framing::Auto,
            topic_field: "topic".into(),
            default_topic: "default".into(),
            max_topics: 65536,
            topic_idle_expiry: Duration::from_secs(3600),
            sse_retry: Duration::from_secs(3),
            sse_heartbeat: Duration::from_secs(15),
            sse_event_names: false,
            poll_timeout: Duration::from_secs(25),
            poll_max_held: 4096,
            history_messages: 1000,
            history_age: Duration::from_secs(300),
            history_bytes: 1 << 20,
            history_total_bytes: 64 << 20,
            max_topic_backlog_bytes: None,
            max_subscriptions: 1024,
            allowed_topics: Vec::new(),
            require_subscription: false,
            publish_topics: Vec::new(),
            publish_max_bytes: 4096,
            publish_rate: 20,
            auth_secret_file: None,
            auth_public_key_file: None,
            auth_algorithms: Vec::new(),
            auth_audience: Vec::new(),
            auth_issuer: None,
            auth_leeway: Duration::from_secs(30),
            auth_optional: false,
            auth_topics_claim: "topics".into(),
            auth_publish_claim: "publish".into(),
            handshake_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(5),
            shutdown_spread: Duration::from_secs(2),
            handoff_socket: None,
            backlog: 4096,
            admin_listen: None,
            upstream_silence: Duration::from_secs(30),
            upstream_silence_reconnect: false,
            upstream_seq_field: String::new(),
            upstream_epoch: 0,
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            idle_timeout: Duration::ZERO,
            subscribe_timeout: Duration::from_secs(30),
            max_connection_lifetime: Duration::ZERO,
            lifetime_notice: Duration::from_secs(30),
            lifetime_jitter: Duration::from_secs(60),
            max_connections_per_ip: 0,
            connection_rate_per_ip: 0,
            max_tracked_ips: 65536,
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
            client_message_rate: 100,
            retry_after: Duration::from_secs(5),
            overload_memory_bytes: 0,
            shed_memory_bytes: 0,
            overload_feed_queue_percent: 0,
        }
    }
}

/// The key whose entry holds byte `at` of a TOML text written by `toml::to_string` (top-level `key = ...` lines,
/// then `[key]` / `[[key]]` sections).
fn key_at(text: &str, at: usize) -> String {
    let before = &text[..at.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = &text[line_start..];
    let line = line.lines().next().unwrap_or("");
    let header = |l: &str| l.trim_start_matches('[').trim_end_matches(']').split('.').next().map(str::to_string);
    if line.starts_with('[') {
        return header(line).unwrap_or_default();
    }
    // Inside a section: the section's key.
    if let Some(section) = before[..line_start].lines().rev().find(|l| l.starts_with('[')) {
        return header(section).unwrap_or_default();
    }
    line.split('=').next().unwrap_or("").trim().trim_matches('"').to_string()
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl Config {
    /// The effective `max_topic_backlog_bytes` (see there).
    pub fn topic_backlog_bytes(&self) -> u64 {
        self.max_topic_backlog_bytes.unwrap_or_else(|| self.max_lag_bytes.saturating_mul(4).max(16 << 20))
    }

    /// The slow-consumer policies (`lag_policy`, `lag_policies`), or what is wrong with a rule.
    pub fn lag_rules(&self) -> Result<crate::fanout::LagPolicies, String> {
        let mut rules = Vec::new();
        for rule in &self.lag_policies {
            let bad = || format!("lag_policies: {rule:?} is not PATTERN=POLICY (POLICY: disconnect, drop or conflate)");
            let (pattern, policy) = rule.rsplit_once('=').ok_or_else(bad)?;
            let policy = LagPolicyName::parse(policy.trim()).ok_or_else(bad)?.policy();
            let pattern = pattern.trim();
            let (name, prefix) = match crate::client::Pattern::parse(pattern).map_err(|_| bad())? {
                crate::client::Pattern::Topic(name) => (name, false),
                crate::client::Pattern::Prefix(prefix) => (prefix, true),
            };
            rules.push(crate::fanout::LagRule { name, prefix, policy });
        }
        Ok(crate::fanout::LagPolicies { rules, default: self.lag_policy.policy() })
    }

    /// Defaults, then the file named by `--config`, then the flags; then every value is checked.
    pub fn load(args: &Args) -> Result<Self, ConfigError> {
        let mut table = match &args.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                text.parse::<toml::Table>().map_err(|source| ConfigError::Parse { path: path.clone(), source })?
            }
            None => toml::Table::new(),
        };
        table.extend(args.overrides.clone());
        let cfg = Self::from_table(&table, |key| match args.overrides.contains_key(key) {
            true => format!("--{}", key.replace('_', "-")),
            false => args.config.as_ref().map_or_else(String::new, |p| format!("{}", p.display())),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The configuration a table of keys describes (missing keys keep their defaults). An error names the key and
    /// where its value came from (`source(key)`: a flag or the file).
    fn from_table(table: &toml::Table, source: impl Fn(&str) -> String) -> Result<Self, ConfigError> {
        // Through text, so that the error carries the span of the offending key.
        let text = toml::to_string(table).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        toml::from_str(&text).map_err(|e| {
            let key = e.span().map(|span| key_at(&text, span.start)).unwrap_or_default();
            let message = e.message().trim();
            let what = match message.strip_prefix("unknown field ") {
                // serde lists every key after this: `--help` does it better.
                Some(rest) => format!("unknown key {}", rest.split(',').next().unwrap_or(rest)),
                None => message.to_string(),
            };
            let from = source(&key);
            ConfigError::Invalid(match (key.is_empty(), from.is_empty()) {
                (true, _) => what,
                (false, true) => format!("{key}: {what}"),
                (false, false) => format!("{key} ({from}): {what}"),
            })
        })
    }

    /// The effective configuration as a TOML file that `--config` reads back to the same settings.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"));
        let mut out = String::from("# wsgate: effective configuration (defaults, then --config, then flags)\n");
        out.push_str(&body);
        let table: toml::Table = body.parse().unwrap_or_default();
        for key in KEYS.iter().filter(|k| !table.contains_key(k.name)) {
            out.push_str(&format!("# {} is unset: {}\n", key.name, key.summary()));
        }
        out
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.demo && self.demo_rate == 0 {
            return bad("demo_rate must be at least 1");
        }
        if self.max_header_bytes < 256 {
            return bad("max_header_bytes must be at least 256");
        }
        if self.max_frame_bytes == 0 || self.max_message_bytes < self.max_frame_bytes.min(125) {
            return bad("max_frame_bytes and max_message_bytes must be positive");
        }
        if self.feed_queue_batches < 8 || self.feed_queue_bytes < 256 * 1024 {
            return bad("feed_queue_batches must be at least 8 and feed_queue_bytes at least 262144");
        }
        if self.max_connections == 0 || self.max_lag_bytes == 0 {
            return bad("max_connections and max_lag_bytes must be positive");
        }
        if !self.uring_recv_buffers.is_power_of_two() || self.uring_recv_buffers > 32768 {
            return bad("uring_recv_buffers must be a power of two up to 32768");
        }
        if self.uring_recv_buffer_size < 64 || self.uring_sq_entries < 64 || self.uring_send_slots == 0 {
            return bad("uring_recv_buffer_size and uring_sq_entries must be at least 64, uring_send_slots positive");
        }
        if self.max_private_bytes < 4096 {
            return bad("max_private_bytes must be at least 4096");
        }
        if self.max_loop_private_bytes < self.max_private_bytes as u64 {
            return bad("max_loop_private_bytes must be at least max_private_bytes (one connection may hold that)");
        }
        if let Err(e) = self.lag_rules() {
            return Err(ConfigError::Invalid(e));
        }
        if let Err(e) = crate::upstream::topic::check(self.default_topic.as_bytes()) {
            return Err(ConfigError::Invalid(format!("default_topic {:?}: {e}", self.default_topic)));
        }
        if self.max_subscriptions == 0 || self.max_subscriptions > 65536 {
            return bad("max_subscriptions must be in 1..=65536");
        }
        if let Some(bad_pattern) = self.allowed_topics.iter().find(|p| crate::client::Pattern::parse(p).is_err()) {
            return Err(ConfigError::Invalid(format!("allowed_topics: {bad_pattern:?} is not a topic or pattern")));
        }
        if let Some(bad_pattern) = self.publish_topics.iter().find(|p| crate::client::Pattern::parse(p).is_err()) {
            return Err(ConfigError::Invalid(format!("publish_topics: {bad_pattern:?} is not a topic or pattern")));
        }
        if self.max_topic_backlog_bytes.is_some_and(|b| b < self.max_lag_bytes) {
            return bad("max_topic_backlog_bytes must be at least max_lag_bytes (one lagging client may hold that)");
        }
        if self.publish_max_bytes == 0 || self.publish_max_bytes > 1 << 20 || self.publish_rate == 0 {
            return bad("publish_max_bytes must be in 1..=1048576 and publish_rate above 0");
        }
        if self.sse_heartbeat < Duration::from_millis(10) || self.poll_timeout < Duration::from_millis(10) {
            return bad("sse_heartbeat and poll_timeout must be at least 10 ms");
        }
        if !self.shutdown_spread.is_zero() && self.shutdown_spread >= self.shutdown_timeout {
            return bad("shutdown_spread must be below shutdown_timeout (the last clients closed need time to answer)");
        }
        if self.handoff_socket.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return bad("handoff_socket must be a path");
        }
        if self.topic_field.is_empty() || self.max_topics == 0 || self.topic_idle_expiry.is_zero() {
            return bad("topic_field must not be empty, max_topics and topic_idle_expiry must be positive");
        }
        if !self.upstream_silence.is_zero() && self.upstream_silence < Duration::from_millis(100) {
            return bad("upstream_silence must be 0 (off) or at least 100 ms");
        }
        if self.upstream_silence_reconnect && (self.upstream_silence.is_zero() || self.upstream.is_none()) {
            return bad("upstream_silence_reconnect needs an upstream and upstream_silence above 0");
        }
        if !self.upstream_seq_field.is_empty() && self.upstream_framing != Framing::Auto {
            return bad("upstream_seq_field needs upstream_framing = \"auto\" (JSON lines)");
        }
        if self.upstream_epoch != 0 {
            if self.upstream_epoch > crate::upstream::MAX_EPOCH {
                return bad("upstream_epoch must be at most 2^53 - 1 (positions are JSON numbers)");
            }
            if self.upstream_seq_field.is_empty() || self.upstream.is_none() {
                return bad("upstream_epoch needs an upstream and upstream_seq_field (the positions come from it)");
            }
            if self.ingest.is_some() || self.demo || !self.publish_topics.is_empty() {
                return bad(
                    "upstream_epoch excludes ingest, demo and publish_topics (their messages have no upstream seq)",
                );
            }
        }
        if self.admin_listen.is_some_and(|a| a == self.listen && a.port() != 0) {
            return bad("admin_listen must differ from listen");
        }
        if !self.ping_interval.is_zero()
            && (self.ping_interval < Duration::from_millis(100)
                || self.pong_timeout.is_zero()
                || self.pong_timeout >= self.ping_interval)
        {
            return bad(
                "ping_interval must be 0 or at least 100 ms, and pong_timeout positive and below ping_interval",
            );
        }
        let short = |d: Duration| !d.is_zero() && d < Duration::from_millis(100);
        if short(self.idle_timeout) || short(self.subscribe_timeout) {
            return bad("idle_timeout and subscribe_timeout must be 0 (off) or at least 100 ms");
        }
        if !self.max_connection_lifetime.is_zero() && self.lifetime_notice >= self.max_connection_lifetime {
            return bad("lifetime_notice must be below max_connection_lifetime");
        }
        if self.max_tracked_ips < 64 || self.max_tracked_ips > 1 << 24 {
            return bad("max_tracked_ips must be in 64..=16777216");
        }
        let trusted = self.trusted_proxies().map_err(ConfigError::Invalid)?;
        if self.proxy_protocol && trusted.is_empty() {
            return bad(
                "proxy_protocol needs trusted_proxies (the addresses of the proxies that may send the header, e.g. \
                 127.0.0.1/32)",
            );
        }
        if self.overload_feed_queue_percent > 100 {
            return bad("overload_feed_queue_percent must be in 0..=100");
        }
        if self.shed_memory_bytes != 0 && self.shed_memory_bytes < self.overload_memory_bytes {
            return bad("shed_memory_bytes must be at least overload_memory_bytes (shedding is the stronger measure)");
        }
        self.auth()?;
        Ok(())
    }

    /// Token authentication as configured (`auth_*`): `None` when no key is set. Reads the key file; the error
    /// names the setting at fault.
    pub fn auth(&self) -> Result<Option<crate::auth::AuthConfig>, ConfigError> {
        use crate::auth::{AuthConfig, AuthOptions, KeyMaterial};
        let bad = |m: String| ConfigError::Invalid(m);
        let read = |key: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| bad(format!("{key}: cannot read {}: {e}", path.display())))
        };
        let material = match (&self.auth_secret_file, &self.auth_public_key_file) {
            (None, None) => {
                let set = [
                    ("auth_algorithms", !self.auth_algorithms.is_empty()),
                    ("auth_audience", !self.auth_audience.is_empty()),
                    ("auth_issuer", self.auth_issuer.is_some()),
                    ("auth_optional", self.auth_optional),
                ];
                if let Some((key, _)) = set.iter().find(|(_, on)| *on) {
                    return Err(bad(format!(
                        "{key} is set but token auth is off: set auth_secret_file or auth_public_key_file"
                    )));
                }
                return Ok(None);
            }
            (Some(_), Some(_)) => {
                return Err(bad("auth_secret_file and auth_public_key_file: set one, not both".into()));
            }
            (Some(path), None) => {
                let mut secret = read("auth_secret_file", path)?;
                // `echo secret > file` adds a line break that is not part of the secret.
                if secret.ends_with(b"\n") {
                    secret.pop();
                    if secret.ends_with(b"\r") {
                        secret.pop();
                    }
                }
                KeyMaterial::Secret(secret)
            }
            (None, Some(path)) => KeyMaterial::PublicKeyPem(read("auth_public_key_file", path)?),
        };
        let options = AuthOptions {
            algorithms: self.auth_algorithms.clone(),
            audience: self.auth_audience.clone(),
            issuer: self.auth_issuer.clone(),
            leeway: self.auth_leeway,
            optional: self.auth_optional,
            topics_claim: self.auth_topics_claim.clone(),
            publish_claim: self.auth_publish_claim.clone(),
        };
        AuthConfig::new(material, options).map(Some).map_err(bad)
    }

    /// The trusted proxies (`trusted_proxies`), or what is wrong with an entry.
    pub fn trusted_proxies(&self) -> Result<crate::proto::cidr::TrustedProxies, String> {
        crate::proto::cidr::TrustedProxies::parse(&self.trusted_proxies).map_err(|e| format!("trusted_proxies: {e}"))
    }

    /// The io_uring backend's settings.
    pub fn uring(&self) -> crate::reactor::uring::UringConfig {
        crate::reactor::uring::UringConfig {
            sq_entries: self.uring_sq_entries,
            recv_buffers: self.uring_recv_buffers,
            recv_buffer_size: self.uring_recv_buffer_size,
            send_slots: self.uring_send_slots,
            sqpoll: self.uring_sqpoll,
            fixed_files: self.uring_fixed_files,
            submit_batch: self.uring_submit_batch,
        }
    }

    /// Loop threads to start: the setting, or one per core.
    pub fn thread_count(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(line: &[&str]) -> Result<Config, ConfigError> {
        let full: Vec<&str> = std::iter::once("wsgate").chain(line.iter().copied()).collect();
        Config::load(&Args::parse_from(full).expect("flags parse")?)
    }

    fn file(name: &str, text: &str) -> String {
        let dir = std::env::temp_dir().join(format!("wsgate-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }

    #[test]
    fn file_then_flags() {
        let path = file("gw.toml", "listen = \"127.0.0.1:9000\"\nthreads = 3\necho = true\nhandshake_timeout = 2500\n");
        let cfg = load(&["--config", &path, "--threads", "2"]).unwrap();
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(cfg.threads, 2, "flag overrides file");
        assert!(cfg.echo);
        assert_eq!(cfg.handshake_timeout, Duration::from_millis(2500));
        let cfg = load(&["--config", &path, "--echo=false"]).unwrap();
        assert!(!cfg.echo, "a flag can turn off what the file turned on");
    }

    #[test]
    fn auth_settings_are_checked_at_start() {
        let dir = std::env::temp_dir().join(format!("wsgate-cfg3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "0123456789abcdef0123456789abcde\n").unwrap();
        let public = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/auth/rsa_public.pem");
        let with = |toml: &str| -> Result<Config, ConfigError> {
            let path = dir.join("auth.toml");
            std::fs::write(&path, toml).unwrap();
            load(&["--config", path.to_str().unwrap()])
        };
        let cfg = with(&format!("auth_secret_file = {secret:?}\nauth_leeway = 5000\n")).unwrap();
        let auth = cfg.auth().unwrap().expect("on");
        assert_eq!(auth.algorithms(), &[jsonwebtoken::Algorithm::HS256]);
        assert!(with("").unwrap().auth().unwrap().is_none(), "off by default");
        let by_flags = load(&["--auth-public-key-file", public, "--auth-audience", "wsgate"]).unwrap();
        assert_eq!(by_flags.auth().unwrap().expect("on").algorithms(), &[jsonwebtoken::Algorithm::RS256]);
        for (toml, key) in [
            (format!("auth_secret_file = {short:?}\n"), "auth_secret_file"),
            ("auth_secret_file = \"/nonexistent/secret\"\n".to_string(), "auth_secret_file"),
            (format!("auth_secret_file = {secret:?}\nauth_public_key_file = {public:?}\n"), "set one"),
            (format!("auth_public_key_file = {public:?}\nauth_algorithms = [\"HS256\"]\n"), "auth_algorithms"),
            (format!("auth_public_key_file = {public:?}\nauth_algorithms = [\"none\"]\n"), "auth_algorithms"),
            ("auth_audience = [\"x\"]\n".to_string(), "auth_audience is set but token auth is off"),
            ("auth_optional = true\n".to_string(), "auth_optional is set but token auth is off"),
        ] {
            let err = with(&toml).unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn lag_policies_are_pattern_equals_policy() {
        let cfg = Config {
            lag_policy: LagPolicyName::Drop,
            lag_policies: vec!["BTC-*=conflate".into(), " news = disconnect ".into()],
            ..Config::default()
        };
        let p = cfg.lag_rules().unwrap();
        use crate::fanout::LagPolicy;
        assert_eq!(
            (p.for_topic("BTC-USD"), p.for_topic("news"), p.for_topic("ETH")),
            (LagPolicy::Conflate, LagPolicy::Disconnect, LagPolicy::Drop)
        );
        for bad in ["BTC-*", "BTC-*=slow", "B*C=drop", "=drop"] {
            let cfg = Config { lag_policies: vec![bad.into()], ..Config::default() };
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains("lag_policies"), "{bad}: {err}");
        }
        let cfg = Config { max_loop_private_bytes: 4096, ..Config::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("max_loop_private_bytes"));
    }

    #[test]
    fn proxy_settings_are_checked_at_start() {
        let cfg = load(&["--proxy-protocol", "--trusted-proxies", "127.0.0.1/32,::1/128"]).unwrap();
        assert!(cfg.proxy_protocol);
        assert_eq!(cfg.trusted_proxies, ["127.0.0.1/32", "::1/128"]);
        assert!(cfg.trusted_proxies().unwrap().contains("::1".parse().unwrap()));
        let path = file("proxy.toml", "proxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\"]\n");
        let cfg = load(&["--config", &path]).unwrap();
        assert!(cfg.proxy_protocol && cfg.trusted_proxies == ["10.0.0.0/8"]);
        assert!(!Config::default().proxy_protocol && Config::default().trusted_proxies.is_empty(), "off by default");
        let err = load(&["--proxy-protocol"]).unwrap_err().to_string();
        assert!(err.contains("proxy_protocol") && err.contains("trusted_proxies"), "{err}");
        let err = load(&["--trusted-proxies", "127.0.0.1/32,10.0.0.0/40"]).unwrap_err().to_string();
        assert!(err.contains("trusted_proxies") && err.contains("10.0.0.0/40"), "{err}");
        let printed = load(&["--trusted-proxies", "127.0.0.1/32"]).unwrap().to_toml();
        assert!(printed.contains("proxy_protocol = false") && printed.contains("127.0.0.1/32"), "{printed}");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let path = file("bad.toml", "lisen = \"127.0.0.1:9000\"\n");
        let err = load(&["--config", &path]).unwrap_err().to_string();
        assert!(err.contains("unknown key `lisen`") && err.contains("bad.toml"), "{err}");
    }

    #[test]
    fn wrong_types_name_the_key_and_where_it_came_from() {
        let path = file("types.toml", "threads = \"many\"\n");
        let err = load(&["--config", &path]).unwrap_err().to_string();
        assert!(err.contains("threads") && err.contains("types.toml"), "{err}");
        let err = load(&["--max-lag-bytes", "-5"]).unwrap_err().to_string();
        assert!(err.contains("max_lag_bytes (--max-lag-bytes)"), "{err}");
        let err = load(&["--listen", "nowhere"]).unwrap_err().to_string();
        assert!(err.contains("listen (--listen)"), "{err}");
    }

    #[test]
    fn every_flag_reaches_its_setting() {
        // Each key set by its flag to a value other than its default, read back from the loaded configuration.
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for key in KEYS {
            let value = match key.kind {
                Kind::Bool => (!defaults.get(key.name).and_then(|v| v.as_bool()).unwrap_or(false)).to_string(),
                Kind::Int | Kind::Millis => "4096".to_string(),
                Kind::Choice(words) => words.last().unwrap().to_string(),
                // Strings and lists need values their validation accepts: covered by the tests above.
                _ => continue,
            };
            let flag = format!("--{}", key.flag());
            let Ok(cfg) = load(&[&flag, &value]) else { continue }; // a value validation refuses, e.g. a power of 2
            let got = toml::Table::try_from(cfg).unwrap();
            let got = got.get(key.name).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
            assert_eq!(got, Some(value.clone()), "{flag} {value}");
        }
    }

    #[test]
    fn printed_configuration_reads_back_the_same() {
        let cfg = load(&["--threads", "3", "--allow-origin", "https://a.example", "--upstream", "h:1"]).unwrap();
        let printed = cfg.to_toml();
        assert!(printed.contains("max_topic_backlog_bytes is unset"), "{printed}");
        let path = file("printed.toml", &printed);
        let again = load(&["--config", &path]).unwrap();
        assert_eq!(again.to_toml(), printed);
    }

    #[test]
    fn choices_match_what_the_file_accepts() {
        for key in KEYS {
            let Kind::Choice(words) = key.kind else { continue };
            for word in words {
                let table: toml::Table = format!("{} = \"{word}\"", key.name).parse().unwrap();
                Config::from_table(&table, |_| String::new()).unwrap_or_else(|e| panic!("{}: {word}: {e}", key.name));
            }
        }
    }
}
