//! The feed side of the gateway: one thread that reads market-data lines from up to three sources (an
//! upstream TCP server it connects to, publishers that connect to it, a built-in demo generator) and hands
//! every line to a [`Sink`] supplied by the gateway.
//!
//! It knows nothing of WebSocket or of the gateway's event loops; the sink does. See `docs/upstream.md`.
//!
//! Files: `codec` (sans-IO line framing), `pump` (stream → codec → sink), `client` (upstream connection with
//! reconnect), `ingest` (publisher listener), `demo` (simulated ticks), `feed` (the thread and its loop),
//! `stats` (counters other threads read), `rng` (jitter and random walk).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub mod batch;
pub mod binary_codec;
pub mod codec;
pub mod json_field;
pub mod record;
pub mod sequence;
pub mod topic;

mod client;
mod demo;
mod feed;
mod inbox;
mod ingest;
mod pump;
mod rng;
mod stats;
mod watchdog;

pub use feed::{spawn, FeedHandle};
pub use inbox::{InboxFull, PublishInbox};
pub use record::{Dropped, Framing, PayloadKind, Routing};
pub use sequence::{Stamp, MAX_EPOCH};
pub use stats::{FeedStats, UpstreamState};

/// mio tokens of the feed thread's one `Poll`.
const WAKER_TOKEN: mio::Token = mio::Token(0);
const UPSTREAM_TOKEN: mio::Token = mio::Token(1);
const LISTENER_TOKEN: mio::Token = mio::Token(2);
/// Publisher `i` of the ingest listener has token `FIRST_PUBLISHER_TOKEN + i`.
const FIRST_PUBLISHER_TOKEN: usize = 3;

/// One feed message: its topic, its payload and its position in the feed.
///
/// Non-exhaustive so that fields can be added later; build one with [`Message::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message<'a> {
    /// A valid topic name (`upstream::topic`).
    pub topic: &'a str,
    /// Never empty. With [`PayloadKind::Text`] valid UTF-8 (from a line feed: without its newline and any
    /// trailing `\r`; published by a client: any text); with [`PayloadKind::Binary`] any bytes.
    pub payload: &'a [u8],
    pub kind: PayloadKind,
    /// `seq` and the topic's `prev` (`upstream::sequence`); the epoch is the feed's (`FeedStats::epoch`).
    pub stamp: Stamp,
}

impl<'a> Message<'a> {
    pub fn new(topic: &'a str, payload: &'a [u8], kind: PayloadKind, stamp: Stamp) -> Self {
        Message { topic, payload, kind, stamp }
    }
}

/// Where the feed thread delivers messages. Called only from the feed thread.
///
/// Contract: `publish` must not block (a slow consumer is the sink's business: drop, conflate or
/// disconnect, but return). After each batch of publishes (one `read()` that produced lines, one demo tick
/// batch) the feed calls `flush` once, so the sink can wake its consumers once per batch, not per message.
/// Flow control: while [`Sink::ready`] is false the feed reads nothing from its sources (TCP pushes back on
/// them) and the demo publishes nothing; it asks again at least every [`PAUSE_POLL`].
pub trait Sink: Send + 'static {
    /// Takes one message; the payload is only borrowed for the duration of the call.
    fn publish(&mut self, msg: Message<'_>);
    /// Ends a batch of publishes.
    fn flush(&mut self);
    /// Whether the sink takes more now. Once it said yes, the feed may still publish one read's worth (at most
    /// 64 KiB of input) or one demo tick before asking again.
    fn ready(&self) -> bool {
        true
    }
}

/// How often a paused feed asks its sink again.
pub const PAUSE_POLL: Duration = Duration::from_millis(1);

/// What the feed thread connects to, listens on and generates.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// `"HOST:PORT"` of an upstream server to connect to as a client. Resolved on every attempt
    /// (blocking `getaddrinfo` on the feed thread), addresses tried in order.
    pub upstream: Option<String>,
    /// Address to listen on for publisher connections (port 0 allowed; see [`FeedHandle::ingest_addr`]).
    pub ingest: Option<SocketAddr>,
    /// An ingest listener taken over from another process (zero-downtime restart, socket activation): used
    /// instead of binding `ingest`. Must be a listening TCP socket; it is made non-blocking.
    pub ingest_listener: Option<Arc<std::net::TcpListener>>,
    /// Built-in simulated market feed.
    pub demo: Option<DemoConfig>,
    /// Longest line payload (or binary payload) delivered; longer ones are dropped and counted. Must be > 0.
    pub max_line_bytes: usize,
    /// How the upstream server and the publishers frame their records.
    pub upstream_framing: Framing,
    pub ingest_framing: Framing,
    /// The topic field of JSON lines and the topic of lines without one (both checked by `spawn`).
    pub routing: Routing,
    /// Most topics the feed keeps track of at once (> 0); a topic idle for `topic_idle_expiry` is forgotten.
    pub max_topics: usize,
    pub topic_idle_expiry: Duration,
    /// First reconnect delay ceiling. Must be > 0.
    pub backoff_initial: Duration,
    /// Largest reconnect delay ceiling. Must be >= `backoff_initial`.
    pub backoff_max: Duration,
    /// The upstream is reported silent after this long without a message (`upstream::watchdog`); zero: never.
    pub silence: Duration,
    /// A silent upstream connection is dropped and made again.
    pub silence_reconnect: bool,
    /// Top-level field of the upstream's JSON lines that carries its own sequence number, checked for gaps.
    pub seq_field: Option<String>,
    /// Positions passed through from upstream (`upstream_epoch`): the epoch, and `seq_field`'s value is each
    /// message's `seq`. `None`: the feed numbers messages itself in a random epoch.
    pub upstream_epoch: Option<u64>,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            upstream: None,
            ingest: None,
            ingest_listener: None,
            demo: None,
            max_line_bytes: 64 * 1024,
            upstream_framing: Framing::Auto,
            ingest_framing: Framing::Auto,
            routing: Routing::default(),
            max_topics: 65536,
            topic_idle_expiry: Duration::from_secs(3600),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            silence: Duration::ZERO,
            silence_reconnect: false,
            seq_field: None,
            upstream_epoch: None,
        }
    }
}

/// The simulated market feed: ticks from a random walk per symbol, round-robin over `symbols`.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Total messages per second over all symbols. Must be > 0.
    pub rate_per_sec: u32,
    /// Symbols to simulate. Must not be empty.
    pub symbols: Vec<String>,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            rate_per_sec: 10,
            symbols: ["BTC-USD", "ETH-USD", "SOL-USD", "AAPL", "MSFT", "EUR-USD"]
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }
}

#[cfg(test)]
mod test_support {
    use super::{Message, Sink};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::{Duration, Instant};

    /// Sends every message into a channel as a `String`; counts flushes.
    pub(crate) struct ChannelSink {
        pub tx: mpsc::Sender<String>,
        pub flushes: Arc<AtomicUsize>,
    }

    impl Sink for ChannelSink {
        fn publish(&mut self, msg: Message<'_>) {
            let s = String::from_utf8(msg.payload.to_vec()).expect("payload must be UTF-8");
            let _ = self.tx.send(s);
        }
        fn flush(&mut self) {
            self.flushes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A published message, owned.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Owned {
        pub topic: String,
        pub payload: Vec<u8>,
        pub kind: super::PayloadKind,
        pub seq: u64,
        pub prev: u64,
    }

    /// Sends every message, whole, into a channel.
    pub(crate) struct RecordSink(pub mpsc::Sender<Owned>);

    impl Sink for RecordSink {
        fn publish(&mut self, m: Message<'_>) {
            let (seq, prev) = (m.stamp.seq, m.stamp.prev);
            let _ = self.0.send(Owned { topic: m.topic.into(), payload: m.payload.into(), kind: m.kind, seq, prev });
        }
        fn flush(&mut self) {}
    }

    pub(crate) fn channel_sink() -> (ChannelSink, mpsc::Receiver<String>, Arc<AtomicUsize>) {
        let (tx, rx) = mpsc::channel();
        let flushes = Arc::new(AtomicUsize::new(0));
        (ChannelSink { tx, flushes: flushes.clone() }, rx, flushes)
    }

    /// Generous wait for a condition another thread makes true.
    pub(crate) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub(crate) fn recv(rx: &mpsc::Receiver<String>) -> String {
        rx.recv_timeout(Duration::from_secs(5)).expect("timed out waiting for a message")
    }
}
