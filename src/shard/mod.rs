//! The loop threads and their wiring: the only module that knows every other one.
//!
//! [`Gateway::start`] binds one `SO_REUSEPORT` listener per loop thread, starts the feed thread with a sink that
//! encodes each message once and hands batches to every loop thread over bounded queues, and starts one pinned
//! loop thread per core. [`Gateway::shutdown`] stops accepting, closes every client with 1001 and waits (bounded)
//! for them.

mod access;
mod admin;
mod admission;
mod client;
mod dispatch;
mod drain;
mod event_loop;
mod feed_queue;
mod input;
mod keepalive;
mod log_limit;
mod memory;
mod message_rate;
mod metrics;
mod output;
mod poll_history;
mod preface;
mod publishing;
mod stats;
mod timers;
mod topic_output;
mod transport;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::sync::mpsc;

pub use drain::StopMode;
pub use feed_queue::{Batch, BroadcastSink, QueueLimits, BATCH_MAX_BYTES};
pub use stats::{HealthStatus, ShardStats, Shared};

use crate::auth::AuthConfig;
use crate::client::Pattern;
use crate::config::{Config, IoBackend};
use crate::fanout::{HistoryLimits, LagLimits, LagPolicies, LagPolicy, Retention, TopicLimits};
use crate::proto::cidr::TrustedProxies;
use crate::proto::handshake::HandshakeConfig;
use crate::proto::session::Limits;
use crate::reactor::{EpollReactor, IoStats, Reactor, UringReactor, Waker};
use crate::upstream::{self, DemoConfig, FeedConfig, FeedHandle, Routing};
use event_loop::Shard;

/// What the loop threads need of the configuration, resolved once.
pub struct Settings {
    pub handshake: HandshakeConfig,
    pub limits: Limits,
    pub echo: bool,
    /// The slow-consumer rule and the log's pull budget (`max_lag_bytes`).
    pub retention: Retention,
    /// How far behind a connection may be (`max_lag_bytes`, `max_lag_messages`) and what happens past it, per
    /// topic (`fanout::lag_policy`).
    pub lag_limits: LagLimits,
    pub lag_policies: LagPolicies,
    /// Some policy may skip messages for a slow connection (not every one is `disconnect`).
    pub lag_relief: bool,
    pub max_private_bytes: usize,
    /// Most private bytes pending over every connection of a loop.
    pub max_loop_private_bytes: u64,
    /// Server-Sent Events: the `retry:` hint and the heartbeat interval.
    pub sse_retry_ms: u32,
    pub sse_heartbeat: Duration,
    /// SSE data events named by their topic (`event: BTC-USD`) instead of unnamed.
    pub sse_event_names: bool,
    /// Long-poll: how long a request is held, and how many at once per loop.
    pub poll_timeout: Duration,
    pub poll_max_held: usize,
    pub handshake_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// The window over which a drain spreads its closes (`shard::drain`).
    pub shutdown_spread: Duration,
    /// Topics, history and subscriptions.
    pub topics: TopicLimits,
    pub max_subscriptions: usize,
    /// Empty: any topic.
    pub allowed_topics: Vec<Pattern>,
    pub require_subscription: bool,
    /// Client publishing: the topics allowed (none: off), the data size cap, messages per second per connection.
    pub publish_topics: Vec<Pattern>,
    /// Bytes the topic logs of a loop may hold beyond their history for lagging subscribers.
    pub max_topic_backlog_bytes: u64,
    pub publish_max_bytes: usize,
    pub publish_rate: u32,
    /// `/healthz` and `/metrics` are served on the admin listener (`admin_listen`), not on the public one.
    pub admin_elsewhere: bool,
    /// Pings, pong, idle and subscribe deadlines, lifetime.
    pub keepalive: keepalive::KeepaliveSettings,
    /// Control messages and pings per second per WebSocket client (0: no limit; off with `echo`).
    pub client_message_rate: u32,
    /// The loop is behind the feed (refuses new upgrades) from this many queued bytes or batches on.
    pub behind: Option<admission::Behind>,
    /// Token authentication (`shard::access`); `None`: off.
    pub auth: Option<AuthConfig>,
    /// Every connection starts with a PROXY protocol header (`shard::client`).
    pub proxy_protocol: bool,
    /// Who may name the client: by a PROXY header, or by forwarding headers (`shard::client`).
    pub trusted_proxies: TrustedProxies,
    /// TLS on the listener (`tls_cert`): every connection speaks TLS (after its PROXY header, if any). Shared with
    /// `Gateway` for SIGHUP reloads.
    pub tls: Option<Arc<crate::tls::Tls>>,
}

impl Settings {
    fn from_config(cfg: &Config) -> Self {
        Self {
            handshake: HandshakeConfig {
                max_header_bytes: cfg.max_header_bytes,
                // The client protocol's formats first (`client::format`), then the operator's own.
                subprotocols: crate::client::format::SUBPROTOCOLS
                    .iter()
                    .map(|s| s.to_string())
                    .chain(cfg.subprotocols.iter().cloned())
                    .collect(),
                allowed_origins: (!cfg.allowed_origins.is_empty()).then(|| cfg.allowed_origins.clone()),
            },
            limits: Limits { max_frame_bytes: cfg.max_frame_bytes, max_message_bytes: cfg.max_message_bytes },
            echo: cfg.echo,
            retention: Retention {
                max_lag: cfg.max_lag_bytes,
                // Raw chunks are a batch's frames (smaller than its records); envelope chunks are cut to a bound
                // of their own, which is the larger.
                max_chunk: feed_queue::max_envelope_chunk(cfg.max_line_bytes) as u64,
            },
            lag_limits: LagLimits { max_bytes: cfg.max_lag_bytes, max_messages: cfg.max_lag_messages },
            lag_relief: {
                let p = cfg.lag_rules().unwrap_or_default();
                p.default != LagPolicy::Disconnect || p.rules.iter().any(|r| r.policy != LagPolicy::Disconnect)
            },
            lag_policies: cfg.lag_rules().unwrap_or_default(),
            max_private_bytes: cfg.max_private_bytes,
            max_loop_private_bytes: cfg.max_loop_private_bytes,
            sse_retry_ms: u32::try_from(cfg.sse_retry.as_millis()).unwrap_or(u32::MAX),
            sse_heartbeat: cfg.sse_heartbeat,
            sse_event_names: cfg.sse_event_names,
            poll_timeout: cfg.poll_timeout,
            poll_max_held: cfg.poll_max_held,
            handshake_timeout: cfg.handshake_timeout,
            shutdown_timeout: cfg.shutdown_timeout,
            shutdown_spread: cfg.shutdown_spread,
            topics: TopicLimits {
                max_topics: cfg.max_topics,
                idle: cfg.topic_idle_expiry,
                history: HistoryLimits {
                    max_messages: cfg.history_messages,
                    max_age: cfg.history_age,
                    max_bytes: cfg.history_bytes,
                },
                total_bytes: cfg.history_total_bytes,
            },
            max_subscriptions: cfg.max_subscriptions,
            allowed_topics: cfg.allowed_topics.iter().filter_map(|p| Pattern::parse(p).ok()).collect(),
            require_subscription: cfg.require_subscription,
            publish_topics: cfg.publish_topics.iter().filter_map(|p| Pattern::parse(p).ok()).collect(),
            publish_max_bytes: cfg.publish_max_bytes,
            max_topic_backlog_bytes: cfg.topic_backlog_bytes(),
            publish_rate: cfg.publish_rate,
            admin_elsewhere: cfg.admin_listen.is_some(),
            keepalive: keepalive::KeepaliveSettings::from_config(cfg),
            client_message_rate: if cfg.echo { 0 } else { cfg.client_message_rate },
            behind: admission::Behind::from_config(cfg),
            auth: None, // read from its files by `Gateway::start`, which fails if they cannot be
            proxy_protocol: cfg.proxy_protocol,
            // Checked by `Config::validate`.
            trusted_proxies: cfg.trusted_proxies().unwrap_or_default(),
            tls: None, // read from its files by `Gateway::start` too
        }
    }
}

/// Where the listening sockets come from.
#[derive(Debug, Default)]
pub enum Listeners {
    /// Bind `listen`: one `SO_REUSEPORT` socket per loop thread (and `ingest`, if set).
    #[default]
    Bind,
    /// Sockets another process created, to serve instead of binding (`listen` is then not used). `ws`: at least
    /// one. The process runs at least as many loop threads as `ws` has sockets, so that every one is served
    /// (each has its own queue: one nobody accepts from would hold its connections until they time out).
    Inherited { ws: Vec<OwnedFd>, ingest: Option<OwnedFd>, from: Origin },
}

/// Who passed the sockets, which decides what loop threads beyond their number do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A handoff from the process this one replaces: extra loop threads bind their own `SO_REUSEPORT` sockets
    /// on the same address, like a fresh start (they are handed over in turn at the next restart).
    Handoff,
    /// systemd socket activation: extra loop threads share the passed sockets. A socket bound by the service
    /// itself would die with it, resetting its queue, at every restart; the ones systemd holds do not.
    Systemd,
}

/// A running gateway: loop threads plus the feed thread.
pub struct Gateway {
    local_addr: SocketAddr,
    ingest_addr: Option<SocketAddr>,
    loops: Vec<JoinHandle<()>>,
    wakers: Vec<Arc<Waker>>,
    feed: Option<FeedHandle>,
    shared: Arc<Shared>,
    /// `/metrics` and `/healthz` on `admin_listen`; stopped last, so it answers `draining` to the end.
    admin: Option<admin::AdminServer>,
    /// Copies of the distinct listening sockets (and the ingest one), kept only for a handoff
    /// (`handoff_socket`); let go of when a drain starts, so that, when no successor holds them, the sockets
    /// close with the loops' copies and new connections are refused instead of queued.
    handoff_fds: Option<(Vec<OwnedFd>, Option<OwnedFd>)>,
    /// The listener's TLS, for SIGHUP reloads.
    tls: Option<Arc<crate::tls::Tls>>,
}

impl Gateway {
    /// Binds, spawns every thread, and returns once the gateway accepts connections. `on_exit` is called from
    /// each loop thread when it ends (for whatever reason), so the caller can notice a thread that died.
    pub fn start(cfg: &Config, source: Listeners, on_exit: impl Fn() + Send + Sync + 'static) -> io::Result<Self> {
        // Token auth fails closed: a key that cannot be read now stops the start (`Config::load` checked it too).
        let auth = cfg.auth().map_err(io::Error::other)?;
        let tls = cfg.tls().map_err(io::Error::other)?.map(Arc::new);
        crate::reactor::raise_nofile_limit(cfg.max_connections as u64 + 64);
        let backend = choose_backend(cfg)?;
        let nonblocking = backend == IoBackend::Epoll;

        let (listeners, distinct, inherited_ingest) = listeners(cfg, source, nonblocking)?;
        let threads = listeners.len();
        let local_addr = listeners[0].local_addr()?;

        let shard_stats: Arc<[ShardStats]> = (0..threads).map(|_| ShardStats::default()).collect();
        let io_stats: Box<[Arc<IoStats>]> = (0..threads).map(|_| Arc::new(IoStats::default())).collect();
        let mut wakers = Vec::with_capacity(threads);
        let mut queues = Vec::with_capacity(threads);
        let mut receivers = Vec::with_capacity(threads);
        for id in 0..threads {
            let waker = Arc::new(Waker::new(nonblocking)?);
            let (tx, rx) = feed_queue::queue(id, cfg.feed_queue_batches, waker.clone(), shard_stats.clone());
            wakers.push(waker);
            queues.push(tx);
            receivers.push(rx);
        }
        let limits =
            QueueLimits { batches: cfg.feed_queue_batches, bytes: cfg.feed_queue_bytes, overflow: cfg.feed_overflow };

        // The ingest listener is handed over like the others: bound here (not by the feed thread) when a
        // successor may want it, so that a copy can be kept.
        let ingest_listener = match (inherited_ingest, cfg.ingest) {
            (Some(l), Some(_)) => Some(l),
            (Some(l), None) => {
                tracing::warn!(addr = ?l.local_addr().ok(), "an ingest listener was passed but ingest is not set: closed");
                None
            }
            (None, Some(addr)) if cfg.handoff_socket.is_some() => Some(TcpListener::bind(addr)?),
            (None, _) => None,
        };
        let ingest_copy = match (&cfg.handoff_socket, &ingest_listener) {
            (Some(_), Some(l)) => Some(l.as_fd().try_clone_to_owned()?),
            _ => None,
        };
        let mut feed_cfg = feed_config(cfg);
        if let Some(f) = &mut feed_cfg {
            f.ingest_listener = ingest_listener.map(Arc::new);
        }
        let feed = match feed_cfg {
            Some(feed_cfg) => Some(upstream::spawn(feed_cfg, BroadcastSink::new(queues, shard_stats.clone(), limits))?),
            None => {
                tracing::info!("no feed configured (--upstream, --ingest or --demo): clients receive no broadcasts");
                None
            }
        };
        let io_name = match backend {
            IoBackend::Uring => UringReactor::NAME,
            _ => EpollReactor::NAME,
        };
        let shared = Arc::new(Shared {
            shutdown: AtomicBool::new(false),
            stop_mode: AtomicU8::new(0),
            shards: shard_stats,
            feed: feed.as_ref().map(|f| f.stats.clone()),
            publish: feed.as_ref().map(|f| f.inbox.clone()),
            started: Instant::now(),
            io_backend: io_name,
            io: io_stats.clone(),
            admission: admission::Admission::from_config(cfg),
        });

        let settings = Arc::new(Settings { auth, tls: tls.clone(), ..Settings::from_config(cfg) });
        let per_thread_max = cfg.max_connections.div_ceil(threads);
        let uring_cfg = cfg.uring();
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let on_exit = Arc::new(on_exit);
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        let mut loops = Vec::with_capacity(threads);
        let parts = listeners.into_iter().zip(receivers).zip(wakers.iter().cloned()).zip(io_stats.iter().cloned());
        for (id, (((listener, rx), waker), stats)) in parts.enumerate() {
            let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
            let (on_exit, ready, settings, shared, uring_cfg) =
                (on_exit.clone(), ready_tx.clone(), settings.clone(), shared.clone(), uring_cfg.clone());
            let handle = std::thread::Builder::new().name(format!("wsgate-loop-{id}")).spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(shard = id, "could not pin loop thread to core {}", core.id);
                    }
                }
                // The backend is built on the thread that uses it: an io_uring instance with SINGLE_ISSUER
                // belongs to the thread that created it.
                let args = LoopArgs { id, feed: rx, max_connections: per_thread_max, settings, shared, ready };
                match backend {
                    IoBackend::Uring => {
                        serve(UringReactor::new(&uring_cfg, listener, waker, per_thread_max, stats), args)
                    }
                    _ => serve(EpollReactor::new(listener, &waker, stats), args),
                }
                on_exit();
            })?;
            loops.push(handle);
        }
        drop(ready_tx);
        let handoff_fds = cfg.handoff_socket.as_ref().map(|_| (distinct, ingest_copy));
        let ingest_addr = feed.as_ref().and_then(|f| f.ingest_addr);
        let mut gateway = Self { local_addr, ingest_addr, loops, wakers, feed, shared, admin: None, handoff_fds, tls };
        if let Some(addr) = cfg.admin_listen {
            match admin::AdminServer::spawn(addr, gateway.shared.clone()) {
                Ok(server) => gateway.admin = Some(server),
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot bind admin_listen");
                    gateway.shutdown();
                    return Err(e);
                }
            }
        }
        for _ in 0..threads {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, io = io_name, "a loop thread could not set up its I/O backend");
                    gateway.shutdown();
                    return Err(e);
                }
                Err(_) => {
                    gateway.shutdown();
                    return Err(io::Error::other("a loop thread ended during start"));
                }
            }
        }
        tracing::info!(%local_addr, threads, io = io_name, "gateway started");
        Ok(gateway)
    }

    /// The I/O backend in use (`epoll` or `uring`).
    pub fn io_backend(&self) -> &'static str {
        self.shared.io_backend
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn ingest_addr(&self) -> Option<SocketAddr> {
        self.ingest_addr
    }

    /// Where `/metrics` and `/healthz` are served when `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(admin::AdminServer::local_addr)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Starts draining for `mode` and returns at once: every loop stops accepting and closes its clients
    /// (1001 or 1012) spread over `shutdown_spread`; the feed stops accepting publishers. The first drain
    /// started wins.
    pub fn begin_stop(&mut self, mode: StopMode) {
        self.handoff_fds = None;
        self.shared.begin_stop(mode);
        for waker in &self.wakers {
            let _ = waker.wake();
        }
        if let Some(feed) = &self.feed {
            feed.stop_ingest();
        }
    }

    /// The listening sockets to hand to a successor (`handoff_socket` set, no drain started): one per distinct
    /// WebSocket listener, then the ingest listener.
    pub fn handoff_fds(&self) -> Option<(Vec<RawFd>, Option<RawFd>)> {
        let (ws, ingest) = self.handoff_fds.as_ref()?;
        Some((ws.iter().map(AsRawFd::as_raw_fd).collect(), ingest.as_ref().map(AsRawFd::as_raw_fd)))
    }

    /// Drains (as a shutdown, unless a drain already started), waits for the loops — until every client is
    /// gone, at most `shutdown_timeout` (+1 s for operations in flight) — then stops the feed.
    /// The listener speaks TLS.
    pub fn tls_on(&self) -> bool {
        self.tls.is_some()
    }

    /// Reads the TLS certificate, key and client CA files again (SIGHUP): `None` when TLS is off. Open
    /// connections keep their sessions; new handshakes get the new configuration. On error the old one stays.
    pub fn reload_tls(&self) -> Option<Result<(), String>> {
        self.tls.as_ref().map(|tls| tls.reload())
    }

    pub fn shutdown(mut self) {
        self.begin_stop(StopMode::Shutdown);
        for handle in self.loops {
            if handle.join().is_err() {
                tracing::error!("a loop thread panicked");
            }
        }
        if let Some(feed) = self.feed {
            feed.shutdown();
        }
        if let Some(admin) = self.admin {
            admin.stop();
        }
        tracing::info!("gateway stopped");
    }
}

/// One listener per loop thread, the distinct sockets among them (copies, for a handoff), and an inherited
/// ingest listener. See [`Listeners`] for the rules.
type Planned = (Vec<TcpListener>, Vec<OwnedFd>, Option<TcpListener>);

fn listeners(cfg: &Config, source: Listeners, nonblocking: bool) -> io::Result<Planned> {
    let threads = cfg.thread_count();
    let bind = |addr| crate::reactor::bind_reuseport(addr, cfg.backlog, nonblocking);
    let (mut listeners, ingest, origin) = match source {
        Listeners::Bind => (vec![bind(cfg.listen)?], None, Origin::Handoff),
        Listeners::Inherited { ws, ingest, from } => {
            if ws.is_empty() {
                return Err(io::Error::other("no WebSocket listener among the inherited sockets"));
            }
            let ws = ws
                .into_iter()
                .map(|fd| crate::reactor::adopt_listener(fd, nonblocking))
                .collect::<Result<Vec<_>, _>>()?;
            // The feed thread is a readiness loop: its copy is made non-blocking when it adopts it.
            let ingest = match ingest {
                Some(fd) => Some(crate::reactor::adopt_listener(fd, true)?),
                None => None,
            };
            tracing::info!(
                sockets = ws.len(),
                ingest = ingest.is_some(),
                from = ?from,
                addr = %ws[0].local_addr()?,
                "serving inherited listening sockets (listen is not used)"
            );
            if ws.len() > threads {
                tracing::info!(
                    threads,
                    sockets = ws.len(),
                    "more inherited sockets than threads: one loop thread each"
                );
            }
            (ws, ingest, from)
        }
    };
    let distinct = listeners.len();
    let local_addr = listeners[0].local_addr()?;
    for i in listeners.len()..threads.max(listeners.len()) {
        let next = match origin {
            Origin::Handoff => bind(local_addr)?,
            Origin::Systemd => listeners[i % distinct].try_clone()?,
        };
        listeners.push(next);
    }
    let copies = match origin {
        Origin::Handoff => listeners.iter().map(|l| l.as_fd().try_clone_to_owned()).collect::<Result<_, _>>()?,
        Origin::Systemd => {
            listeners[..distinct].iter().map(|l| l.as_fd().try_clone_to_owned()).collect::<Result<_, _>>()?
        }
    };
    Ok((listeners, copies, ingest))
}

/// What a loop thread needs besides its backend.
struct LoopArgs {
    id: usize,
    feed: feed_queue::FeedReceiver,
    max_connections: usize,
    settings: Arc<Settings>,
    shared: Arc<Shared>,
    /// Told once the backend is up (or why it is not).
    ready: mpsc::Sender<io::Result<()>>,
}

/// Runs one loop thread on backend `R` until shutdown.
fn serve<R: Reactor>(io: io::Result<R>, args: LoopArgs) {
    match io {
        Ok(io) => {
            let _ = args.ready.send(Ok(()));
            Shard::new(args.id, io, args.feed, args.max_connections, args.settings, args.shared).run();
        }
        Err(e) => {
            let _ = args.ready.send(Err(e));
        }
    }
}

/// Resolves `--io`: `epoll` as asked; `uring` only if the probe passes (otherwise start fails, saying why);
/// `auto` is io_uring where the probe passes, otherwise epoll with one log line giving the reason.
fn choose_backend(cfg: &Config) -> io::Result<IoBackend> {
    match cfg.io {
        IoBackend::Epoll => Ok(IoBackend::Epoll),
        IoBackend::Uring => match crate::reactor::uring::probe(&cfg.uring()) {
            Ok(()) => Ok(IoBackend::Uring),
            Err(reason) => Err(io::Error::other(format!("--io uring: io_uring unavailable: {reason}"))),
        },
        IoBackend::Auto => match crate::reactor::uring::probe(&cfg.uring()) {
            Ok(()) => Ok(IoBackend::Uring),
            Err(reason) => {
                tracing::info!("io backend: epoll (io_uring unavailable: {reason})");
                Ok(IoBackend::Epoll)
            }
        },
    }
}

fn feed_config(cfg: &Config) -> Option<FeedConfig> {
    if cfg.upstream.is_none() && cfg.ingest.is_none() && !cfg.demo {
        return None;
    }
    Some(FeedConfig {
        upstream: cfg.upstream.clone(),
        ingest: cfg.ingest,
        demo: cfg.demo.then(|| DemoConfig { rate_per_sec: cfg.demo_rate, ..DemoConfig::default() }),
        max_line_bytes: cfg.max_line_bytes,
        upstream_framing: cfg.upstream_framing,
        ingest_framing: cfg.ingest_framing,
        routing: Routing { topic_field: cfg.topic_field.clone(), default_topic: cfg.default_topic.clone() },
        max_topics: cfg.max_topics,
        topic_idle_expiry: cfg.topic_idle_expiry,
        silence: cfg.upstream_silence,
        silence_reconnect: cfg.upstream_silence_reconnect,
        seq_field: (!cfg.upstream_seq_field.is_empty()).then(|| cfg.upstream_seq_field.clone()),
        upstream_epoch: (cfg.upstream_epoch != 0).then_some(cfg.upstream_epoch),
        ..FeedConfig::default()
    })
}
