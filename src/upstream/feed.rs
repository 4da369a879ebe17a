//! The feed thread: one `mio::Poll` driving the upstream client, the ingest listener and the demo
//! generator, in phases: wait, dispatch readiness, read, sweep timers. Shutdown comes through a `Waker`.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Waker};
use tracing::{error, info, warn};

use super::client::{Backoff, Client};
use super::demo::Demo;
use super::inbox::{PublishInbox, Published};
use super::ingest::Ingest;
use super::pump::{Framer, Out};
use super::rng::Rng;
use super::sequence::{Sequencer, MAX_EPOCH};
use super::watchdog::{Verdict, Watchdog};
use super::{topic, FeedConfig, FeedStats, Sink, UpstreamState, PAUSE_POLL, UPSTREAM_TOKEN, WAKER_TOKEN};

/// Size of the one read buffer all sources share.
const READ_BUF: usize = 64 * 1024;
/// Bytes of client-published messages waiting for the feed thread, at most.
const INBOX_BYTES: usize = 4 << 20;
/// Client-published messages sequenced per loop turn (the sources get their turn too).
const INBOX_PER_TURN: usize = 1024;

/// The running feed thread. Dropping it also shuts the thread down (and joins it).
#[derive(Debug)]
pub struct FeedHandle {
    /// Counters, readable from any thread.
    pub stats: Arc<FeedStats>,
    /// The address the ingest listener is bound to (the real port when 0 was asked for).
    pub ingest_addr: Option<SocketAddr>,
    /// Where loop threads hand messages their clients publish.
    pub inbox: Arc<PublishInbox>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    /// Set to make the feed thread stop accepting publishers (a drain): it closes its copy of the ingest
    /// listener and keeps reading the publishers it has.
    stop_ingest: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FeedHandle {
    /// Stops accepting publishers (the gateway drains: a successor, if any, holds the listener now). Publishers
    /// already connected keep publishing until the feed stops.
    pub fn stop_ingest(&self) {
        self.stop_ingest.store(true, Ordering::Release);
        if let Err(e) = self.waker.wake() {
            error!(error = %e, "could not wake the feed thread");
        }
    }

    /// Wakes the feed thread, which closes its sockets and returns, and joins it. If the thread panicked
    /// (e.g. in the sink), the panic is resumed here.
    pub fn shutdown(mut self) {
        if let Err(panic) = self.stop_and_join() {
            std::panic::resume_unwind(panic);
        }
    }

    fn stop_and_join(&mut self) -> std::thread::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stop.store(true, Ordering::Release);
        if let Err(e) = self.waker.wake() {
            error!(error = %e, "could not wake the feed thread");
        }
        thread.join()
    }
}

impl Drop for FeedHandle {
    fn drop(&mut self) {
        if self.stop_and_join().is_err() {
            error!("the feed thread panicked");
        }
    }
}

/// Validates `cfg`, binds the ingest listener (if any), and starts the thread named `wsgate-feed`.
/// Configuration and bind errors are returned here, not logged later.
pub fn spawn(cfg: FeedConfig, sink: impl Sink) -> io::Result<FeedHandle> {
    validate(&cfg)?;
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?);
    let ingest = match (&cfg.ingest_listener, cfg.ingest) {
        (Some(listener), _) => {
            let listener = listener.try_clone()?;
            Some(Ingest::adopt(listener, cfg.max_line_bytes, cfg.ingest_framing, poll.registry())?)
        }
        (None, Some(addr)) => Some(Ingest::bind(addr, cfg.max_line_bytes, cfg.ingest_framing, poll.registry())?),
        (None, None) => None,
    };
    let ingest_addr = ingest.as_ref().map(Ingest::local_addr);
    let stats = Arc::new(FeedStats::default());
    if cfg.upstream.is_some() {
        // Reported from the moment spawn returns, not from whenever the thread gets to its first attempt.
        stats.set_upstream_state(UpstreamState::Connecting);
    }
    let epoch = cfg.upstream_epoch.unwrap_or_else(|| (Rng::seeded().next_u64() & MAX_EPOCH).max(1));
    let sequencer = Sequencer::new(epoch, cfg.max_topics, cfg.topic_idle_expiry);
    stats.set_sequencer(&sequencer);
    let stop = Arc::new(AtomicBool::new(false));
    let cfg_silence = cfg.silence;
    let stop_ingest = Arc::new(AtomicBool::new(false));
    let inbox = Arc::new(PublishInbox::new(INBOX_BYTES, waker.clone()));
    let feed = Feed {
        inbox: inbox.clone(),
        published: Vec::new(),
        poll,
        cfg,
        client: None,
        ingest,
        demo: None,
        buf: vec![0; READ_BUF],
        sink,
        stats: stats.clone(),
        stop: stop.clone(),
        stop_ingest: stop_ingest.clone(),
        sequencer,
        scratch: String::new(),
        next_expiry_sweep: Instant::now(),
        watchdog: Watchdog::new(cfg_silence, Instant::now()),
    };
    let thread = std::thread::Builder::new().name("wsgate-feed".into()).spawn(move || feed.run())?;
    Ok(FeedHandle { stats, ingest_addr, inbox, waker, stop, stop_ingest, thread: Some(thread) })
}

fn validate(cfg: &FeedConfig) -> io::Result<()> {
    let invalid = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    if cfg.max_line_bytes == 0 {
        return invalid("max_line_bytes must be > 0".into());
    }
    if let Err(e) = topic::check(cfg.routing.default_topic.as_bytes()) {
        return invalid(format!("default_topic {:?}: {e}", cfg.routing.default_topic));
    }
    if cfg.routing.topic_field.is_empty() || cfg.max_topics == 0 || cfg.topic_idle_expiry.is_zero() {
        return invalid("need a non-empty topic_field, max_topics > 0 and topic_idle_expiry > 0".into());
    }
    if cfg.backoff_initial.is_zero() || cfg.backoff_max < cfg.backoff_initial {
        return invalid("need 0 < backoff_initial <= backoff_max".into());
    }
    if let Some(target) = &cfg.upstream {
        let port_ok =
            target.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return invalid(format!("upstream {target:?} is not HOST:PORT"));
        }
    }
    if let Some(demo) = &cfg.demo {
        if demo.rate_per_sec == 0 || demo.symbols.is_empty() {
            return invalid("demo needs rate_per_sec > 0 and at least one symbol".into());
        }
        if let Some(bad) = demo.symbols.iter().find(|s| topic::check(s.as_bytes()).is_err()) {
            return invalid(format!("demo symbol {bad:?} is not a valid topic name"));
        }
    }
    Ok(())
}

/// Everything the feed thread owns.
struct Feed<S> {
    poll: Poll,
    cfg: FeedConfig,
    client: Option<Client>,
    ingest: Option<Ingest>,
    demo: Option<Demo>,
    /// Shared read buffer, reused by every read.
    buf: Vec<u8>,
    sink: S,
    stats: Arc<FeedStats>,
    stop: Arc<AtomicBool>,
    stop_ingest: Arc<AtomicBool>,
    /// Assigns every message its position; owns the table of topics.
    sequencer: Sequencer,
    /// Reused for topics that had to be unescaped.
    scratch: String,
    /// When idle topics are next looked for (piggybacked on wake-ups: an idle feed creates no topics).
    next_expiry_sweep: Instant,
    inbox: Arc<PublishInbox>,
    /// Reused: messages taken from the inbox this turn.
    published: Vec<Published>,
    /// Watches the upstream for silence (unused without one).
    watchdog: Watchdog,
}

/// How a [`Feed`] builds its [`Out`] from its fields (a macro: the sources are borrowed at the same time).
macro_rules! out {
    ($feed:ident, $now:expr) => {
        Out {
            sink: &mut $feed.sink,
            stats: &$feed.stats,
            routing: &$feed.cfg.routing,
            sequencer: &mut $feed.sequencer,
            scratch: &mut $feed.scratch,
            now: $now,
        }
    };
}

impl<S: Sink> Feed<S> {
    fn run(mut self) {
        let now = Instant::now();
        let mut rng = Rng::seeded();
        if let Some(target) = self.cfg.upstream.clone() {
            let backoff = Backoff::new(self.cfg.backoff_initial, self.cfg.backoff_max, Rng::from_seed(rng.next_u64()));
            let registry = self.poll.registry();
            let framer = Framer::new(self.cfg.upstream_framing, self.cfg.max_line_bytes)
                .with_seq_field(self.cfg.seq_field.clone(), self.cfg.upstream_epoch.is_some());
            self.client = Some(Client::start(target, framer, backoff, registry, &self.stats, now));
        }
        if let Some(demo) = &self.cfg.demo {
            self.demo = Some(Demo::new(demo, now, Rng::from_seed(rng.next_u64())));
        }
        info!(
            upstream = self.cfg.upstream.as_deref().unwrap_or("-"),
            ingest = ?self.ingest.as_ref().map(Ingest::local_addr),
            demo = self.demo.is_some(),
            "feed thread started"
        );
        let mut events = Events::with_capacity(256);
        let mut paused = false;
        let mut last_pause_log: Option<Instant> = None;
        while !self.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            let was_paused = std::mem::replace(&mut paused, !self.sink.ready());
            if paused && !was_paused {
                let total = self.stats.add_backpressure_pause();
                if last_pause_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                    last_pause_log = Some(now);
                    warn!(total, "loop threads are behind the feed: reading paused until they catch up (backpressure)");
                }
            }
            // Paused: sources are not read (pump asks the sink first), so do not spin on their readiness.
            let timeout = if paused { Some(PAUSE_POLL) } else { self.poll_timeout(now) };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                error!(error = %e, "feed poll failed; stopping the feed thread");
                break;
            }
            if self.stop_ingest.load(Ordering::Acquire) {
                if let Some(ingest) = &mut self.ingest {
                    ingest.stop_accepting(self.poll.registry());
                }
            }
            self.dispatch(&events, Instant::now());
            self.read_ready(Instant::now());
            self.sequence_published(Instant::now());
            self.sweep_timers(Instant::now());
            self.watch(Instant::now());
        }
        self.close();
        info!("feed thread stopped");
    }

    /// How long the wait phase may block: zero when a source still has data to read, else until the
    /// earliest timer (demo tick, reconnect, connect timeout), else until an event.
    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        let pending = self.client.as_ref().is_some_and(Client::wants_read)
            || self.ingest.as_ref().is_some_and(Ingest::wants_read)
            || !self.inbox.is_empty();
        if pending {
            return Some(Duration::ZERO);
        }
        let client = self.client.as_ref().and_then(Client::next_deadline);
        let demo = self.demo.as_ref().map(Demo::next_due);
        let watchdog = self.client.as_ref().and(self.watchdog.deadline());
        let deadline = [client, demo, watchdog].into_iter().flatten().min()?;
        Some(deadline.saturating_duration_since(now))
    }

    /// Routes readiness to its source. Reading happens in the next phase.
    fn dispatch(&mut self, events: &Events, now: Instant) {
        let registry = self.poll.registry();
        for event in events {
            match event.token() {
                WAKER_TOKEN => {} // the loop condition reads the stop flag
                UPSTREAM_TOKEN => {
                    if let Some(client) = &mut self.client {
                        client.handle_ready(event, registry, &self.stats, now);
                    }
                }
                token if Ingest::owns(token) => {
                    if let Some(ingest) = &mut self.ingest {
                        ingest.handle_ready(token, registry, &self.stats, now);
                    }
                }
                _ => {}
            }
        }
    }

    fn read_ready(&mut self, now: Instant) {
        let registry = self.poll.registry();
        let mut out = out!(self, now);
        if let Some(client) = &mut self.client {
            client.handle_read(registry, &mut self.buf, &mut out, now);
        }
        if let Some(ingest) = &mut self.ingest {
            ingest.handle_read(registry, &mut self.buf, &mut out, now);
        }
    }

    /// Sequences what clients published, like any source's records (while the loops have room).
    fn sequence_published(&mut self, now: Instant) {
        if !self.sink.ready() {
            return;
        }
        let mut published = std::mem::take(&mut self.published);
        self.inbox.take(INBOX_PER_TURN, &mut published);
        if !published.is_empty() {
            let mut out = out!(self, now);
            for p in &published {
                out.publish_one(&p.topic, &p.payload, &"client");
            }
            out.flush();
            published.clear();
        }
        self.published = published;
    }

    fn sweep_timers(&mut self, now: Instant) {
        if let Some(client) = &mut self.client {
            client.handle_timeout(self.poll.registry(), &self.stats, now);
        }
        if let Some(demo) = &mut self.demo {
            demo.handle_timeout(now, &mut out!(self, now));
        }
        if now >= self.next_expiry_sweep {
            self.next_expiry_sweep = now + self.cfg.topic_idle_expiry / 4;
            if self.sequencer.expire_idle(now) > 0 {
                self.stats.set_sequencer(&self.sequencer);
            }
        }
    }

    /// The silence watchdog's turn: the upstream's progress (connections made and messages received), then
    /// whether it has been silent too long. Publishers (`ingest`) and the demo are not watched: an idle
    /// publisher is normal.
    fn watch(&mut self, now: Instant) {
        let Some(progress) = self.client.as_ref().map(Client::progress) else { return };
        if let Some(Verdict::Resumed { after }) = self.watchdog.handle_progress(progress, now) {
            self.stats.set_silent(false);
            info!(silent_for = ?after, "upstream active again (a message, or a new connection)");
        }
        if let Some(Verdict::Silent { for_ }) = self.watchdog.poll(now) {
            self.stats.set_silent(true);
            warn!(silent_for = ?for_, "upstream silent: no message for upstream_silence (health: degraded)");
            if self.cfg.silence_reconnect {
                if let Some(client) = &mut self.client {
                    client.drop_silent(self.poll.registry(), &self.stats, now, for_);
                    self.watchdog.restart(now);
                }
            }
        }
    }

    fn close(&mut self) {
        let registry = self.poll.registry();
        if let Some(client) = &mut self.client {
            client.close(registry);
        }
        if let Some(ingest) = &mut self.ingest {
            ingest.close(registry, &self.stats);
        }
        self.stats.set_upstream_state(UpstreamState::Disabled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::demo::tests::check_tick;
    use crate::upstream::test_support::{channel_sink, wait_until};
    use crate::upstream::DemoConfig;
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn demo_publishes_about_rate_messages_in_batches() {
        let (sink, rx, flushes) = channel_sink();
        let cfg = FeedConfig {
            demo: Some(DemoConfig { rate_per_sec: 200, ..DemoConfig::default() }),
            ..FeedConfig::default()
        };
        let started = Instant::now();
        let feed = spawn(cfg, sink).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let stats = feed.stats.clone();
        feed.shutdown();
        let elapsed = started.elapsed().as_secs_f64();
        let msgs: Vec<String> = rx.try_iter().collect();
        // The schedule allows 1 + 200 * elapsed; loaded CI machines may lag, never run ahead.
        let expected = 1.0 + 200.0 * elapsed;
        assert!(msgs.len() as f64 <= expected + 1.0, "{} > {expected}", msgs.len());
        assert!(msgs.len() >= 60, "only {} messages in {elapsed:.2}s", msgs.len());
        msgs.iter().for_each(|m| {
            check_tick(m);
        });
        assert_eq!(stats.messages_published(), msgs.len() as u64);
        let flushes = flushes.load(Relaxed);
        assert!(flushes >= 1 && flushes <= msgs.len(), "one flush per batch: {flushes}");
        assert_eq!(stats.upstream_state(), UpstreamState::Disabled);
    }

    /// A [`ChannelSink`](crate::upstream::test_support::ChannelSink) that has room only while `open` is set.
    struct GatedSink {
        inner: crate::upstream::test_support::ChannelSink,
        open: Arc<AtomicBool>,
    }

    impl Sink for GatedSink {
        fn publish(&mut self, msg: crate::upstream::Message<'_>) {
            self.inner.publish(msg);
        }
        fn flush(&mut self) {
            self.inner.flush();
        }
        fn ready(&self) -> bool {
            self.open.load(Relaxed)
        }
    }

    #[test]
    fn a_sink_without_room_pauses_reading_and_loses_nothing() {
        use std::io::Write;
        let (inner, rx, _) = channel_sink();
        let open = Arc::new(AtomicBool::new(false));
        let sink = GatedSink { inner, open: open.clone() };
        let cfg = FeedConfig {
            ingest: Some("127.0.0.1:0".parse().unwrap()),
            demo: Some(DemoConfig { rate_per_sec: 1000, ..DemoConfig::default() }),
            ..FeedConfig::default()
        };
        let feed = spawn(cfg, sink).unwrap();
        let stats = feed.stats.clone();
        let mut publisher = std::net::TcpStream::connect(feed.ingest_addr.unwrap()).unwrap();
        for i in 0..100 {
            writeln!(publisher, "line {i}").unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(rx.try_iter().count(), 0, "nothing is read or generated while the sink has no room");
        assert!(stats.backpressure_pauses() >= 1);
        open.store(true, Relaxed);
        let mut lines = Vec::new();
        wait_until("the publisher's lines", || {
            lines.extend(rx.try_iter().filter(|m| m.starts_with("line ")));
            lines.len() == 100
        });
        assert!(lines.iter().enumerate().all(|(i, l)| *l == format!("line {i}")), "in order, none lost");
        wait_until("demo ticks after the pause", || rx.try_iter().any(|m| m.contains("\"tick\"")));
        feed.shutdown();
    }

    #[test]
    fn shutdown_is_prompt_with_all_sources_idle() {
        let (sink, _rx, _) = channel_sink();
        let cfg = FeedConfig {
            // A long backoff and a slow demo: the thread is parked in poll with a long timeout.
            upstream: Some("127.0.0.1:1".into()),
            ingest: Some("127.0.0.1:0".parse().unwrap()),
            demo: Some(DemoConfig { rate_per_sec: 1, ..DemoConfig::default() }),
            backoff_initial: Duration::from_secs(30),
            backoff_max: Duration::from_secs(60),
            ..FeedConfig::default()
        };
        let feed = spawn(cfg, sink).unwrap();
        let stats = feed.stats.clone();
        wait_until("the first attempt to fail", || stats.connect_failures() >= 1);
        std::thread::sleep(Duration::from_millis(20));
        let t = Instant::now();
        feed.shutdown();
        assert!(t.elapsed() < Duration::from_millis(500), "shutdown took {:?}", t.elapsed());
    }

    #[test]
    fn dropping_the_handle_stops_the_thread() {
        let (sink, rx, _) = channel_sink();
        let cfg = FeedConfig { demo: Some(DemoConfig::default()), ..FeedConfig::default() };
        drop(spawn(cfg, sink).unwrap());
        // The sink (and its sender) went away with the thread.
        while rx.recv_timeout(Duration::from_secs(5)).is_ok() {}
        assert!(matches!(rx.try_recv(), Err(std::sync::mpsc::TryRecvError::Disconnected)));
    }

    #[test]
    fn rejects_bad_config_and_surfaces_bind_errors() {
        let bad = [
            FeedConfig { max_line_bytes: 0, ..FeedConfig::default() },
            FeedConfig { backoff_initial: Duration::ZERO, ..FeedConfig::default() },
            FeedConfig { backoff_max: Duration::from_millis(1), ..FeedConfig::default() },
            FeedConfig { upstream: Some("no-port".into()), ..FeedConfig::default() },
            FeedConfig { upstream: Some(":80".into()), ..FeedConfig::default() },
            FeedConfig { demo: Some(DemoConfig { rate_per_sec: 0, ..DemoConfig::default() }), ..FeedConfig::default() },
            FeedConfig { demo: Some(DemoConfig { symbols: vec![], ..DemoConfig::default() }), ..FeedConfig::default() },
        ];
        for cfg in bad {
            let err = spawn(cfg.clone(), channel_sink().0).expect_err(&format!("{cfg:?}"));
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let cfg = FeedConfig { ingest: Some(taken.local_addr().unwrap()), ..FeedConfig::default() };
        assert_eq!(spawn(cfg, channel_sink().0).unwrap_err().kind(), io::ErrorKind::AddrInUse);
    }
}
