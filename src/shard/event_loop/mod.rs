//! One loop thread: its listener, its connections, its copy of the broadcast stream. Shares nothing mutable
//! with other loop threads; the feed reaches it over a bounded queue.
//!
//! Each pass runs named phases in order: wait → dispatch readiness → pull the feed → flush connections with
//! something new → reap the dead → sweep deadlines → trim the broadcast log. Connections are freed only in the
//! reap phase, so a key stays valid for the whole pass.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dispatch::Dispatch;
use super::drain::{Drain, StopMode};
use super::feed_queue::{self, FeedReceiver};
use super::input::{self, kill, HeldPoll, InputCx};
use super::keepalive::{self, Keepalive};
use super::log_limit::LogLimit;
use super::message_rate::MessageRate;
use super::output::{self, Flushed};
use super::poll_history;
use super::stats::{ProxyRefusal, ShardStats, Shared, Transport};
use super::timers::{DeadlineQueue, ExpiryQueue};
use super::topic_output;
use super::Settings;
use crate::client::control::Control;
use crate::client::encode::{self, FeedMessage};
use crate::client::poll::{EncodedRun, PollBody};
use crate::client::{sse, Position};
use crate::conn::{AddrState, BufPool, Conn, ConnKey, GenSlab, Phase, TokenBucket, NO_SLOT};
use crate::fanout::{Encoding, FrameLog, Holder, Pins, Relief, Stream, SubBacklog, TopicId, Topics};
use crate::proto::frame::{encode_frame_into, OpCode};
use crate::reactor::{self, Reactor};
use crate::upstream::batch::Records;
use crate::upstream::PayloadKind;

/// How long a half-closed connection may take to hang up after our final bytes.
const LINGER: Duration = Duration::from_secs(2);
/// During a fan-out pass, the feed is pulled again after this many subscribers.
const PULL_EVERY: usize = 64;
/// The same for topic subscriptions, counted in (connection, topic) visits. Each pull seals a chunk per grown
/// topic: pulling as often as for the whole feed would cut sparse topics into one-message chunks (an allocation
/// and a send part per message per topic).
const TOPIC_PULL_EVERY: usize = 1024;
/// Most bytes of idle buffers a loop thread keeps for reuse (1,024 of the usual 4 KiB).
const POOL_BYTES: usize = 4 << 20;
/// After the shutdown deadline, how long operations still in flight (io_uring) may take to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The loop thread's parts that input handling borrows, next to a connection borrowed from `conns`.
macro_rules! input_cx {
    ($shard:ident) => {
        InputCx {
            settings: &$shard.settings,
            shared: &$shard.shared,
            stats: &$shard.shared.shards[$shard.id],
            pool: &mut $shard.pool,
            streams: &mut $shard.streams,
            topics: &$shard.topics,
            controls: &mut $shard.controls,
            position: Position { epoch: $shard.epoch, seq: $shard.last_seq },
            held: &mut $shard.held,
            poll_deadlines: &mut $shard.poll_deadlines,
            pins: &mut $shard.pins,
            linger: &mut $shard.linger_deadlines,
            dirty: &mut $shard.dirty,
            dead: &mut $shard.dead,
            publish_buckets: &mut $shard.publish_buckets,
            proxied_from: &mut $shard.proxied_from,
            keepalive: &mut $shard.keepalive,
            message_rate: &mut $shard.message_rate,
            auth_expiries: &mut $shard.auth_expiries,
        }
    };
}

mod lag;
mod private;
mod subscriptions;
mod tokens;

/// While shedding load, one loop closes 1/SHED_FRACTION of its connections every SHED_EVERY.
const SHED_EVERY: Duration = Duration::from_millis(100);
const SHED_FRACTION: usize = 64;

mod teardown;

/// How often idle topics are looked for and every topic log is trimmed (history ages out).
const TOPIC_SWEEP: Duration = Duration::from_secs(1);

/// Appends what an encoder hands over as one chunk of `log` (tagged with the seq of its first message), and
/// clears it for the next.
fn chunk_into(log: &mut FrameLog) -> impl FnMut(&mut Vec<u8>, u64) + '_ {
    move |buf: &mut Vec<u8>, first_seq: u64| {
        log.push_tagged(Arc::from(&buf[..]), first_seq);
        buf.clear();
    }
}

/// One loop thread over I/O backend `R` (monomorphised per backend; the phases do not know which one runs).
pub struct Shard<R: Reactor> {
    id: usize,
    /// Dropped first, by hand (`teardown`): what the loop then frees depends on whether it ended cleanly.
    io: std::mem::ManuallyDrop<R>,
    conns: GenSlab<Conn>,
    /// The encoded streams, by `StreamId` (`input::RAW_ALL`, `input::JSON_ALL`).
    streams: Vec<Stream>,
    /// Chunks closing connections keep apart from the logs.
    pins: Pins,
    /// Topics with their logs, history and subscribers (`fanout::Topics`).
    topics: Topics,
    /// Topics that grew during the current pull (their open chunks are sealed at its end).
    grown: Vec<TopicId>,
    /// Topics whose new bytes are still to be offered to their subscribers.
    to_offer: Vec<TopicId>,
    /// Topics that grew since the last trim.
    to_trim: Vec<TopicId>,
    /// Counts pulls: a topic connection flushed at generation `g` has everything pulled up to it.
    pull_gen: u64,
    /// Control messages to apply (queued by input handling), and connections to close for lack of room.
    controls: VecDeque<(ConnKey, Control)>,
    too_busy: Vec<ConnKey>,
    /// Connections with prefix patterns (may hold stale entries): a new topic is offered to them.
    pattern_conns: Vec<ConnKey>,
    /// When idle topics are next looked for and every topic trimmed.
    next_topic_sweep: Instant,
    full_trim: bool,
    /// Log sites of the loop thread, each at most once a second: a topic the table has no room for, slow
    /// consumers, holes in the feed, the private-bytes budget.
    table_full_log: LogLimit,
    slow_log: LogLimit,
    hole_log: LogLimit,
    private_log: LogLimit,
    /// Scratch for judging a slow topic connection (`lag`).
    lag_backlogs: Vec<SubBacklog>,
    lag_spots: Vec<lag::Spot>,
    lag_reliefs: Vec<Relief>,
    /// Private bytes pending over every connection, as last counted (`Conn::private_counted`).
    private_bytes: u64,
    /// Run the fan-out phase even if nothing new arrived: a subscriber it skipped (send in flight) is free again.
    refan: bool,
    feed: FeedReceiver,
    /// The feed's epoch (positions in JSON envelopes), and the last `seq` this loop took from the feed.
    epoch: u64,
    last_seq: u64,
    /// When the event streams next get a heartbeat comment.
    next_heartbeat: Instant,
    /// Event streams that read topics (may hold stale entries): they get their heartbeats one by one.
    sse_topic_conns: Vec<ConnKey>,
    /// Bytes held by every topic log of this loop (kept up to date at each seal and trim, recounted at each sweep).
    topic_log_bytes: u64,
    /// Connections that published: their rate limits.
    publish_buckets: HashMap<ConnKey, TokenBucket>,
    /// The proxy a PROXY header named, for connections whose forwarding headers are still to be read
    /// (`AddrState::AwaitingHead { proxied: true }`; `shard::client`).
    proxied_from: HashMap<ConnKey, std::net::IpAddr>,
    /// Pings, pong, idle and subscribe deadlines, lifetimes of the open connections.
    keepalive: Keepalive,
    /// Rate limits of the control messages and pings of the clients that sent some.
    message_rate: MessageRate,
    /// While shedding load: when the next few open clients are closed with 1013.
    next_shed: Instant,
    /// Long-poll requests waiting for a message (may hold entries of connections gone since), and deadlines.
    held: Vec<HeldPoll>,
    poll_deadlines: DeadlineQueue,
    /// Reused: a batch's envelopes for the held requests.
    poll_run: EncodedRun,
    /// When the feed thread received each batch pulled this pass (observed after the fan-out phases).
    pulled_at: Vec<Instant>,
    /// Reused to encode each batch's frames before they become one chunk of a log, and one envelope.
    frames: Vec<u8>,
    envelope: Vec<u8>,
    pool: BufPool,
    /// Connections with something to write this pass.
    dirty: Vec<ConnKey>,
    /// Connections that hold the log back: blocked on writability, with a send in flight, or with a send the
    /// backend deferred (may hold stale entries).
    blocked: Vec<ConnKey>,
    dead: Vec<ConnKey>,
    /// Accepted during the wait; registered with the backend right after it.
    to_attach: Vec<ConnKey>,
    handshake_deadlines: DeadlineQueue,
    linger_deadlines: DeadlineQueue,
    /// Token auth: when each authenticated connection's token expires (`tokens`).
    auth_expiries: ExpiryQueue,
    accept_paused_until: Option<Instant>,
    shutdown_deadline: Option<Instant>,
    /// The shutdown or restart drain, once it started: who is closed next, and when.
    drain: Option<Drain<ConnKey>>,
    max_connections: usize,
    settings: Arc<Settings>,
    shared: Arc<Shared>,
}

impl<R: Reactor> Shard<R> {
    pub fn new(
        id: usize,
        io: R,
        feed: FeedReceiver,
        max_connections: usize,
        settings: Arc<Settings>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            id,
            io: std::mem::ManuallyDrop::new(io),
            conns: GenSlab::new(),
            streams: (0..input::STREAMS).map(|_| Stream::default()).collect(),
            pins: Pins::new(settings.retention.pull_budget()),
            topics: Topics::new(settings.topics),
            grown: Vec::new(),
            to_offer: Vec::new(),
            to_trim: Vec::new(),
            pull_gen: 0,
            controls: VecDeque::new(),
            too_busy: Vec::new(),
            pattern_conns: Vec::new(),
            next_topic_sweep: Instant::now() + TOPIC_SWEEP,
            full_trim: false,
            table_full_log: LogLimit::per_second(),
            slow_log: LogLimit::per_second(),
            hole_log: LogLimit::per_second(),
            private_log: LogLimit::per_second(),
            lag_backlogs: Vec::new(),
            lag_spots: Vec::new(),
            lag_reliefs: Vec::new(),
            private_bytes: 0,
            refan: false,
            feed,
            epoch: shared.feed.as_ref().map_or(0, |f| f.epoch()),
            last_seq: 0,
            next_heartbeat: Instant::now() + settings.sse_heartbeat,
            sse_topic_conns: Vec::new(),
            publish_buckets: HashMap::new(),
            proxied_from: HashMap::new(),
            keepalive: Keepalive::new(settings.keepalive),
            message_rate: MessageRate::new(settings.client_message_rate),
            next_shed: Instant::now(),
            topic_log_bytes: 0,
            held: Vec::new(),
            poll_deadlines: DeadlineQueue::new(settings.poll_timeout),
            poll_run: EncodedRun::default(),
            pulled_at: Vec::new(),
            frames: Vec::new(),
            envelope: Vec::new(),
            pool: BufPool::new(POOL_BYTES, 4096, 256 * 1024),
            dirty: Vec::new(),
            blocked: Vec::new(),
            dead: Vec::new(),
            to_attach: Vec::new(),
            handshake_deadlines: DeadlineQueue::new(settings.handshake_timeout),
            linger_deadlines: DeadlineQueue::new(LINGER),
            auth_expiries: ExpiryQueue::default(),
            accept_paused_until: None,
            shutdown_deadline: None,
            drain: None,
            max_connections,
            settings,
            shared,
        }
    }

    /// Runs until shutdown has closed every connection (or its deadline passed).
    pub fn run(mut self) {
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.wait(timeout) {
                tracing::error!(shard = self.id, error = %e, "waiting for I/O failed: loop thread stops");
                return;
            }
            let pass_started = Instant::now();
            self.apply_controls();
            self.pull_feed();
            self.check_shutdown();
            self.flush_dirty();
            self.fan_out();
            self.fan_out_topics();
            self.observe_delivered();
            self.reap_dead();
            self.sweep_deadlines();
            self.trim_log();
            self.shared.shards[self.id].loop_pass_seconds.observe(pass_started.elapsed());
            if let Some(deadline) = self.shutdown_deadline {
                if self.conns.is_empty() {
                    tracing::debug!(shard = self.id, "all connections closed");
                    return;
                }
                if Instant::now() >= deadline + SHUTDOWN_GRACE {
                    tracing::warn!(shard = self.id, left = self.conns.len(), "operations still in flight at exit");
                    return;
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        // Batches still queued (the pull budget left them there) and connections killed after the reap phase (by
        // a deadline) would get no wake-up of their own: the feed already sent its, deadlines have none.
        let pending = self.feed.pending() || !self.dead.is_empty();
        let news = self.streams.iter().any(Stream::has_news) || !self.to_offer.is_empty();
        if !self.dirty.is_empty() || self.refan || news || pending {
            return Some(Duration::ZERO);
        }
        let grace = self.shutdown_deadline.map(|d| d + SHUTDOWN_GRACE);
        let sse_clients =
            !self.streams[usize::from(input::SSE_ALL)].subscribers.is_empty() || !self.sse_topic_conns.is_empty();
        // Memory marks set: read again every check while the level is raised (it falls only on its own).
        let pressure = self.shared.admission.overloaded().then(|| Instant::now() + super::admission::PRESSURE_CHECK);
        let next = [
            sse_clients.then_some(self.next_heartbeat),
            self.keepalive.next_deadline(),
            pressure,
            self.poll_deadlines.next_deadline(),
            self.handshake_deadlines.next_deadline(),
            self.linger_deadlines.next_deadline(),
            self.auth_expiries.next_deadline(),
            (!self.topics.is_empty()).then_some(self.next_topic_sweep),
            self.accept_paused_until,
            self.shutdown_deadline,
            self.drain.as_ref().and_then(Drain::next_due),
            grace,
        ]
        .into_iter()
        .flatten()
        .min()?;
        Some(next.saturating_duration_since(Instant::now()) + Duration::from_millis(1))
    }

    // ---- phase: wait and dispatch ----------------------------------------------------------------------

    /// One wait of the backend; its events are handled by [`Dispatch`] as they come.
    fn wait(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        let mut dispatch = Dispatch {
            id: self.id,
            conns: &mut self.conns,
            cx: input_cx!(self),
            handshake_deadlines: &mut self.handshake_deadlines,
            accept_paused_until: &mut self.accept_paused_until,
            to_attach: &mut self.to_attach,
            max_connections: self.max_connections,
            refan: &mut self.refan,
        };
        self.io.wait(timeout, &mut dispatch)?;
        for key in std::mem::take(&mut self.to_attach) {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if let Some(drain) = &mut self.drain {
                // Accepted after the drain started (an accept that raced the stop): closed at the window's end.
                drain.push_late(key);
            }
            match self.io.attach(key, conn.stream.as_raw_fd()) {
                Ok(()) if !R::INLINE => conn.inflight += 1, // the receive
                Ok(()) => {}
                Err(e) => {
                    if let Some(suppressed) = super::log_limit::rare_path(Instant::now()) {
                        tracing::warn!(shard = self.id, error = %e, suppressed, "could not start receiving: connection dropped");
                    }
                    kill(conn, key, &mut self.dead);
                }
            }
        }
        Ok(())
    }

    // ---- phase: pull the feed --------------------------------------------------------------------------

    /// Takes what the feed thread queued, while the log is under its pull budget (see `fanout::Retention`);
    /// what stays queued holds the feed back (backpressure) until the trim phase has let go of the laggards.
    fn pull_feed(&mut self) {
        let (mut messages, mut deliveries) = (0u64, 0u64);
        loop {
            let retained = self.streams.iter().map(|s| s.log.retained_bytes()).max().unwrap_or(0);
            let unoffered = self.streams.iter().map(|s| s.log.head() - s.fanned_out_to).max().unwrap_or(0);
            if !self.settings.retention.may_pull(retained, unoffered) {
                break;
            }
            let Some(batch) = self.feed.try_recv() else { break };
            messages += u64::from(batch.messages);
            let first = Records::new(&batch.records).next().map_or(0, |m| m.stamp.seq);
            if self.last_seq > 0 && first > self.last_seq + 1 {
                self.feed_hole(self.last_seq, first); // batches dropped for this loop (`feed_overflow = drop`)
            } else if self.last_seq == 0 && first > 1 {
                // Positions numbered by the upstream (`upstream_epoch`) start where this process joined the feed:
                // what came before is unknown here, so a resume from before it is a gap, not an empty replay.
                self.topics.forget_history_through(first - 1);
            }
            self.pulled_at.push(batch.received);
            let readers: usize = self.streams.iter().map(|s| s.subscribers.len()).sum();
            deliveries += u64::from(batch.messages) * readers as u64;
            self.frames.clear();
            let last = feed_queue::encode_raw_frames(&batch, &mut self.frames);
            self.last_seq = self.last_seq.max(last);
            self.streams[usize::from(input::RAW_ALL)].log.push_tagged(Arc::from(&self.frames[..]), first);
            // Envelopes and events only while someone reads them: their clients start at the head.
            // Envelopes can be far larger than the raw bytes: they are cut into chunks the retention bound covers.
            let json = &mut self.streams[usize::from(input::JSON_ALL)];
            if !json.subscribers.is_empty() {
                self.frames.clear();
                let chunk = chunk_into(&mut json.log);
                feed_queue::encode_json_frames(&batch, self.epoch, &mut self.envelope, &mut self.frames, chunk);
            }
            let sse = &mut self.streams[usize::from(input::SSE_ALL)];
            if !sse.subscribers.is_empty() {
                self.frames.clear();
                let chunk = chunk_into(&mut sse.log);
                let named = self.settings.sse_event_names;
                feed_queue::encode_sse_events(&batch, self.epoch, named, &mut self.envelope, &mut self.frames, chunk);
            }
            self.append_to_topics(&batch);
            if !self.held.is_empty() {
                self.answer_held(&batch);
            }
        }
        if messages > 0 {
            let stats = &self.shared.shards[self.id];
            ShardStats::add(&stats.feed_messages, messages);
            ShardStats::add(&stats.deliveries, deliveries);
        }
    }

    /// Appends every message of `batch` to its topic's logs (each encoding in use, encoded once), then seals
    /// each grown topic's new frames into one chunk per log and queues the topic to be offered.
    fn append_to_topics(&mut self, batch: &feed_queue::Batch) {
        self.pull_gen += 1;
        let now = Instant::now();
        let mut deliveries = 0u64; // messages × their topic's subscribers on this loop
        for msg in Records::new(&batch.records) {
            let (topic, made) = match self.topics.get_or_make(msg.topic, now) {
                Ok(found) => found,
                Err(_) => {
                    // Its subscribers (none on this loop: a subscribed topic is never forgotten) lose nothing;
                    // a topic made later must not claim to know what came before.
                    self.topics.forget_up_to(msg.stamp.seq);
                    if let Some(suppressed) = self.table_full_log.allow(now) {
                        tracing::warn!(
                            shard = self.id,
                            topic = msg.topic,
                            suppressed,
                            "topic table full: message kept out of topic logs"
                        );
                    }
                    continue;
                }
            };
            if made {
                self.join_patterns(topic);
            }
            let position = Position { epoch: self.epoch, seq: msg.stamp.seq };
            let m =
                FeedMessage { topic: msg.topic, payload: msg.payload, kind: msg.kind, position, prev: msg.stamp.prev };
            let envelope = &mut self.envelope;
            let mut encoded = false;
            let sse_name = self.settings.sse_event_names.then_some(msg.topic);
            self.topics.append(topic, msg.stamp.seq, msg.stamp.prev, now, |encoding, out| {
                if encoding != Encoding::Raw && !encoded {
                    envelope.clear();
                    encode::envelope(&m, envelope);
                    encoded = true;
                }
                match encoding {
                    Encoding::Raw => {
                        let op = if m.kind == PayloadKind::Binary { OpCode::Binary } else { OpCode::Text };
                        encode_frame_into(out, op, m.payload);
                    }
                    Encoding::Json => encode_frame_into(out, OpCode::Text, envelope),
                    Encoding::Sse => sse::event(Some(position), sse_name, envelope, out),
                }
            });
            if let Some(t) = self.topics.get_mut(topic) {
                deliveries += t.logs.iter().flatten().map(|l| l.subscribers.len() as u64).sum::<u64>();
                if !t.grown {
                    t.grown = true;
                    self.grown.push(topic);
                }
            }
        }
        if deliveries > 0 {
            ShardStats::add(&self.shared.shards[self.id].deliveries, deliveries);
        }
        for topic in self.grown.drain(..) {
            let Some(t) = self.topics.get_mut(topic) else { continue };
            t.grown = false;
            if !t.trim {
                t.trim = true;
                self.to_trim.push(topic);
            }
            let mut subscribed = false;
            for log in t.logs.iter_mut().flatten() {
                let head = log.log.head();
                log.seal();
                self.topic_log_bytes += log.log.head() - head;
                if log.subscribers.is_empty() {
                    // Nobody to offer to: only the history holds the log back (see trim_log).
                    log.offered = log.log.head();
                } else {
                    subscribed = true;
                }
            }
            if subscribed && !t.offer {
                t.offer = true;
                self.to_offer.push(topic);
            }
        }
    }

    /// Offers what is new in each grown topic to its subscribers (as [`Shard::fan_out`] does for the whole-feed
    /// streams; a connection already flushed since the last pull costs one comparison).
    fn fan_out_topics(&mut self) {
        let mut list = std::mem::take(&mut self.to_offer);
        let mut visited = 0;
        for &topic in &list {
            let Some(t) = self.topics.get_mut(topic) else { continue };
            t.offer = false;
            for encoding in [Encoding::Raw, Encoding::Json, Encoding::Sse] {
                let Some(log) = self.topics.get_mut(topic).and_then(|t| t.log_mut(encoding)) else { continue };
                // INVARIANT (relied on by trim_log): once this loop is over, every open subscriber of the log
                // that is not in the blocked list stands at or after `offered`.
                let head = log.log.head();
                let n = log.subscribers.len();
                for i in 0..n {
                    visited += 1;
                    if visited % TOPIC_PULL_EVERY == 0 {
                        self.pull_feed();
                    }
                    let Some(log) = self.topics.get(topic).and_then(|t| t.log(encoding)) else { break };
                    let Some(&key) = log.subscribers.keys().get(i) else { break };
                    self.offer_topics(ConnKey(key));
                }
                if let Some(log) = self.topics.get_mut(topic).and_then(|t| t.log_mut(encoding)) {
                    log.offered = head;
                }
            }
        }
        list.clear();
        if self.to_offer.is_empty() {
            self.to_offer = list;
        }
    }

    /// Offers topic connection `key` what is new for it.
    fn offer_topics(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.phase != Phase::Open || conn.log_released {
            return;
        }
        let Some(subs) = conn.topics.as_deref_mut() else { return };
        if subs.offered_gen == self.pull_gen {
            return; // flushed (or, blocked, judged) since the last pull: nothing new to offer or judge
        }
        if conn.write_blocked {
            // Judged once per pull, not once per grown topic it reads: its lag only grows with a pull.
            subs.offered_gen = self.pull_gen;
            if self.judge_holder(key) {
                self.hold(key);
            }
            return;
        }
        self.flush_one(key);
    }

    /// Answers every held long-poll request that `batch` has something newer for: the batch's messages after its
    /// position, as envelopes encoded once for all of them (each response copies its suffix: a long-poll response
    /// is per request by nature).
    fn answer_held(&mut self, batch: &feed_queue::Batch) {
        let mut run = std::mem::take(&mut self.poll_run);
        run.clear();
        // The whole feed's envelopes only for whole-feed requests (topic requests answer from history).
        if self.held.iter().any(|h| h.patterns.is_none()) {
            for msg in Records::new(&batch.records) {
                let position = Position { epoch: self.epoch, seq: msg.stamp.seq };
                let prev = msg.stamp.prev;
                run.push(&FeedMessage { topic: msg.topic, payload: msg.payload, kind: msg.kind, position, prev });
            }
        }
        let mut held = std::mem::take(&mut self.held);
        let now = Position { epoch: self.epoch, seq: self.last_seq };
        held.retain(|h| {
            let Some(conn) = self.conns.get_mut(h.key) else { return false };
            if !conn.held_poll || conn.phase != Phase::Open {
                return false;
            }
            if let Some(patterns) = h.patterns.as_deref() {
                // Topics asked for: answered from their history (the batch is in it) once one of them has news.
                // Each waiting request looks at the batch's topics (bounded by `poll_max_held`).
                let news = Records::new(&batch.records)
                    .any(|m| m.stamp.seq > h.since_seq && patterns.iter().any(|p| p.matches(m.topic)));
                let since = Position { epoch: self.epoch, seq: h.since_seq };
                let Some(body) = news.then(|| poll_history::answer(&self.topics, Some(patterns), since, now)).flatten()
                else {
                    return true;
                };
                let mut cx = input_cx!(self);
                input::answer_poll(conn, h.key, body, h.cors.as_deref(), &mut cx);
                return false;
            }
            let Some(body) = run.held_answer(Position { epoch: self.epoch, seq: h.since_seq }) else {
                return true; // still waiting
            };
            let mut cx = input_cx!(self);
            input::answer_poll(conn, h.key, body, h.cors.as_deref(), &mut cx);
            false
        });
        held.append(&mut self.held); // none can be added meanwhile; keep the order anyway
        self.held = held;
        self.poll_run = run;
    }

    // ---- phase: flush ----------------------------------------------------------------------------------

    /// Connections that have private bytes or became writable.
    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.dirty = false;
                self.flush_one(key);
            }
        }
        // Flushing may have queued more (a slow consumer's close): those wait for the next pass.
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Offers new broadcast bytes to every subscriber. A subscriber flushed earlier this pass is already at the
    /// head and costs one comparison.
    ///
    /// The feed is pulled again every [`PULL_EVERY`] subscribers, so a message that arrives while a long pass
    /// is under way still reaches the subscribers the pass has not visited yet, instead of waiting for the pass
    /// to end: each subscriber is visited once per pass and leaves with everything published up to its visit,
    /// so a message's worst wait is about one pass, not two.
    fn fan_out(&mut self) {
        let refan = std::mem::take(&mut self.refan);
        let mut visited = 0;
        for sid in 0..self.streams.len() {
            let stream = &mut self.streams[sid];
            if !stream.has_news() && !refan {
                continue;
            }
            // INVARIANT (relied on by trim_log): after this pass every open subscriber of the stream that is not
            // in the blocked list (write-blocked, send in flight, or send deferred) stands at or after
            // `fanned_out_to`.
            stream.fanned_out_to = stream.log.head();
            for i in 0..stream.subscribers.len() {
                visited += 1;
                if visited % PULL_EVERY == 0 {
                    self.pull_feed();
                }
                self.offer(sid, i);
            }
        }
    }

    /// Offers subscriber `i` of stream `sid` what is new for it.
    fn offer(&mut self, sid: usize, i: usize) {
        let stream = &self.streams[sid];
        let key = ConnKey(stream.subscribers.keys()[i]);
        let head = stream.log.head();
        {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if conn.phase != Phase::Open || conn.cursor == head {
                return;
            }
            if conn.write_blocked {
                // Blocked on its private bytes it may have left the blocked list at the head: now that the log
                // has grown past it, it must hold the log again (or be let go).
                if self.judge_holder(key) {
                    self.hold(key);
                }
                return;
            }
        }
        self.flush_one(key);
    }

    fn flush_one(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        self.private_bytes = private::recount(conn, self.private_bytes);
        if conn.phase == Phase::Dead || conn.write_blocked || conn.write_shut {
            return;
        }
        if conn.lag_relief_due {
            // Found past its limits while its send was in flight (cancelled since): the policy applies now.
            conn.lag_relief_due = false;
            if conn.phase == Phase::Open && !self.relieve(key, self.settings.lag_limits) {
                // Closed, or nothing pending: continue with what is queued.
            }
        }
        let Some(conn) = self.conns.get_mut(key) else { return };
        let stats = &self.shared.shards[self.id];
        // io_uring: the completion that wrote its pinned chunk came since.
        let _ = lag::finish_whole_feed_skip(conn, &mut self.pins, &mut self.pool, stats, self.epoch);
        let flushed = if let Some(subs) = conn.topics.as_deref_mut() {
            subs.offered_gen = self.pull_gen;
            topic_output::flush(conn, key, &self.topics, &mut self.pool, &mut *self.io)
        } else {
            let log = &self.streams[usize::from(conn.stream_id)].log;
            output::flush(conn, key, log, &mut self.pool, &mut *self.io)
        };
        // epoll: written just now (a whole-feed skip that was waiting for it goes on at the next flush).
        let unpinned = lag::finish_whole_feed_skip(conn, &mut self.pins, &mut self.pool, stats, self.epoch);
        self.private_bytes = private::recount(conn, self.private_bytes);
        match flushed {
            Flushed::Done if conn.phase == Phase::Open && unpinned => {
                // It finished a pinned chunk: what follows it (a skip's notice, its logs, perhaps behind what the
                // fan-out offered everyone: held until then) goes out next pass.
                input::mark_dirty(conn, key, &mut self.dirty);
                self.hold(key);
            }
            Flushed::Done => {
                if conn.phase == Phase::Closing && conn.peer_closed {
                    kill(conn, key, &mut self.dead); // Both closes are through.
                } else if conn.phase == Phase::Closing {
                    // Everything, our close frame or final response included, is out: half-close and wait
                    // (bounded) for the peer to hang up, so that unread input cannot turn into a reset that
                    // destroys what we sent.
                    conn.write_shut = true;
                    if conn.stream.shutdown(std::net::Shutdown::Write).is_err() {
                        kill(conn, key, &mut self.dead);
                        return;
                    }
                    self.linger_deadlines.push(Instant::now(), key);
                }
            }
            Flushed::Blocked | Flushed::InFlight => {
                conn.write_blocked = true;
                // A send in flight holds the log back whatever the phase; a blocked open subscriber holds it
                // back until it catches up or turns into a slow consumer.
                if conn.reads_log() && (conn.phase == Phase::Open || conn.send_in_flight) {
                    self.hold(key);
                }
                self.judge_holder(key);
            }
            Flushed::Deferred => {
                // Not sent yet, so its cursor may stand before `fanned_out_to`: like a blocked subscriber it must
                // hold the log back (trim_log looks only at the blocked list), or its chunks would be trimmed
                // before the retry and the connection dropped.
                if conn.reads_log() {
                    self.hold(key);
                }
                if let Some(conn) = self.conns.get_mut(key) {
                    input::mark_dirty(conn, key, &mut self.dirty);
                }
                // Deferred sends are as subject to the lag policy as any other.
                self.judge_holder(key);
            }
            Flushed::Failed => kill(conn, key, &mut self.dead),
        }
    }

    /// Applies the retention rules (`fanout::Retention`) to a connection that may hold the log back: a
    /// subscriber more than `max_lag_bytes` behind the head gets close 1008 (sent after the frame in progress)
    /// and lets go of the log; a send of its still in flight is cancelled, so that it lets go when the
    /// completion comes. Returns whether the connection still holds the log from its cursor on.
    fn judge_holder(&mut self, key: ConnKey) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        if conn.phase == Phase::Open && conn.pinned.as_ref().is_some_and(|p| p.then_skip.is_some()) {
            return self.judge_skipping(key); // finishing a chunk before a skip: its pin holds what it needs
        }
        let sending = conn.send_in_flight && conn.reads_log();
        if !sending && conn.reads_log() && conn.phase != Phase::Open {
            // Closing (or dead) with nothing in flight: it needs at most the chunk it is in the middle of.
            let stats = &self.shared.shards[self.id];
            input::release_log(conn, key, &self.streams, &self.topics, &mut self.pins, stats, &mut self.dead);
        }
        // A topic connection's lag is the sum over its subscriptions, judged as one whole-feed cursor would be.
        let (head, cursor) = match conn.topics.as_deref() {
            Some(subs) => (topic_output::lag(&self.topics, subs), 0),
            None => (self.streams[usize::from(conn.stream_id)].log.head(), conn.cursor),
        };
        let holder = Holder {
            cursor,
            open: conn.phase == Phase::Open,
            sending,
            cancel_sent: conn.lag_cancel_sent || conn.cancel_sent,
        };
        let lag = head.saturating_sub(cursor);
        let late = self.is_late(key, lag);
        let verdict = self.settings.retention.judge_late(holder, late, cursor < head);
        let Some(conn) = self.conns.get_mut(key) else { return false };
        let stats = &self.shared.shards[self.id];
        if verdict.cancel_send {
            tracing::debug!(shard = self.id, ?key, lag_bytes = lag, "cancelling a send that fell behind");
            ShardStats::add(&stats.lagging_sends_cancelled, 1);
            conn.lag_cancel_sent = true;
            self.io.cancel(key, conn.stream.as_raw_fd(), false, Some(conn.send_token));
        }
        if verdict.close && self.settings.lag_relief {
            // A policy may skip for it rather than close it: applied now, or once its send is back.
            if sending {
                conn.lag_relief_due = true;
                return verdict.hold;
            }
            return self.relieve(key, self.settings.lag_limits);
        }
        if verdict.close {
            self.close_slow(key, lag, "slow consumer: too far behind the feed");
        }
        verdict.hold
    }

    /// The fan-out phases are over: every batch pulled this pass has been offered to every subscriber that could
    /// take it (written on epoll, queued on io_uring). One observation per batch, however many subscribers.
    fn observe_delivered(&mut self) {
        if self.pulled_at.is_empty() {
            return;
        }
        let now = Instant::now();
        let histogram = &self.shared.shards[self.id].publish_to_socket_seconds;
        for received in self.pulled_at.drain(..) {
            histogram.observe(now.saturating_duration_since(received));
        }
    }

    /// Puts a connection that holds the log back in the blocked list (once), so that `trim_log` sees it.
    fn hold(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.in_blocked_list {
                conn.in_blocked_list = true;
                self.blocked.push(key);
            }
        }
    }

    // ---- phase: reap -----------------------------------------------------------------------------------

    /// Frees dead connections. One with operations in flight (io_uring) is not freed yet: its operations are
    /// cancelled once, and the completion that ends the last of them queues it here again.
    fn reap_dead(&mut self) {
        for key in std::mem::take(&mut self.dead) {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            let fd = conn.stream.as_raw_fd();
            if conn.inflight > 0 {
                if !conn.cancel_sent {
                    conn.cancel_sent = true;
                    self.io.cancel(key, fd, true, conn.send_in_flight.then_some(conn.send_token));
                }
                continue;
            }
            self.io.detach(key, fd);
            let Some(mut conn) = self.conns.remove(key) else { continue };
            self.uncount_private(&conn);
            if conn.is_subscribed() {
                if let Some(moved) = self.streams[usize::from(conn.stream_id)].subscribers.remove(conn.sub_index) {
                    if let Some(other) = self.conns.get_mut(ConnKey(moved)) {
                        other.sub_index = conn.sub_index;
                    }
                }
            }
            if let Some(subs) = conn.topics.take() {
                self.drop_topic_subs(key, &subs);
            }
            self.publish_buckets.remove(&key);
            if conn.client_addr == (AddrState::AwaitingHead { proxied: true }) {
                self.proxied_from.remove(&key);
            }
            self.message_rate.forget(key);
            if conn.client_slot != NO_SLOT {
                self.shared.admission.release(conn.client_slot);
            }
            self.pool.give(&mut conn.inbuf);
            self.pool.give(&mut conn.outbuf);
            input::unpin(&mut conn, &mut self.pins, &self.shared.shards[self.id]);
            if conn.held_poll {
                self.held.retain(|h| h.key != key); // abandoned while held: free its place at once
            }
            let stats = &self.shared.shards[self.id];
            if conn.upgraded {
                stats.closed(Transport::Ws);
            } else if conn.sse {
                stats.closed(Transport::Sse);
            } else if conn.held_poll {
                stats.closed(Transport::Poll);
            }
            ShardStats::sub(&self.shared.shards[self.id].connections, 1);
            // Dropping the stream closes the socket: nothing is in flight on it any more.
        }
    }

    // ---- phase: deadlines ------------------------------------------------------------------------------

    fn sweep_deadlines(&mut self) {
        let now = Instant::now();
        while let Some(key) = self.handshake_deadlines.pop_expired(now) {
            if let Some(conn) = self.conns.get_mut(key) {
                if conn.client_addr == AddrState::AwaitingPreface {
                    // No protocol spoken yet: nothing to answer in.
                    tracing::debug!(?key, "no PROXY protocol header in time");
                    self.shared.shards[self.id].proxy_refused.add(ProxyRefusal::Timeout as usize, 1);
                    kill(conn, key, &mut self.dead);
                } else if conn.phase == Phase::Handshake {
                    tracing::debug!(?key, "handshake timeout");
                    self.shared.shards[self.id].refused(408);
                    let timeout = crate::proto::handshake::http_response(408, "text/plain", b"request timeout\n");
                    let _ = reactor::send_now(&conn.stream, &timeout);
                    kill(conn, key, &mut self.dead);
                }
            }
        }
        while let Some(key) = self.linger_deadlines.pop_expired(now) {
            if let Some(conn) = self.conns.get_mut(key) {
                if conn.phase == Phase::Closing {
                    kill(conn, key, &mut self.dead);
                }
            }
        }
        while let Some(key) = self.poll_deadlines.pop_expired(now) {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if !conn.held_poll || conn.phase != Phase::Open {
                continue;
            }
            // Nothing newer arrived in time: an empty answer, from where the client stands (or this loop, if later).
            let Some(i) = self.held.iter().position(|h| h.key == key) else { continue };
            let h = self.held.swap_remove(i);
            let next = Position { epoch: self.epoch, seq: h.since_seq.max(self.last_seq) };
            let mut cx = input_cx!(self);
            input::answer_poll(conn, key, PollBody::new().finish(next), h.cors.as_deref(), &mut cx);
        }
        self.expire_tokens(now);
        if now >= self.next_heartbeat {
            // One comment chunk shared by every event stream (its clients and the proxies between stay alive).
            self.next_heartbeat = now + self.settings.sse_heartbeat;
            let sse = &mut self.streams[usize::from(input::SSE_ALL)];
            if !sse.subscribers.is_empty() {
                sse.log.push_tagged(Arc::from(sse::HEARTBEAT), self.last_seq + 1);
                // no message: the next one's
            }
            // Topic streams have no shared log to carry it: a comment in each one's private bytes (a few bytes
            // per stream every `sse_heartbeat`; they go out at a message boundary, as all private bytes do).
            let pool = &mut self.pool;
            let (conns, dirty) = (&mut self.conns, &mut self.dirty);
            self.sse_topic_conns.retain(|&key| {
                let Some(conn) = conns.get_mut(key) else { return false };
                if conn.topics.is_none() || conn.phase != Phase::Open {
                    return false; // closing, or gone (its slot reused)
                }
                if conn.outbuf.capacity() == 0 {
                    conn.outbuf = pool.take();
                }
                conn.outbuf.extend_from_slice(sse::HEARTBEAT);
                input::mark_dirty(conn, key, dirty);
                true
            });
        }
        while let Some((timer, key)) = self.keepalive.pop_expired(now) {
            let mut cx = input_cx!(self);
            if let Some(conn) = self.conns.get_mut(key) {
                keepalive::on_expired(timer, conn, key, now, &mut cx);
            }
        }
        self.shared.admission.refresh_pressure(now);
        if self.shared.admission.shedding() && now >= self.next_shed {
            self.next_shed = now + SHED_EVERY;
            self.shed_load();
        }
        if now >= self.next_topic_sweep {
            self.next_topic_sweep = now + TOPIC_SWEEP;
            self.topics.expire_idle(now, None);
            self.full_trim = true;
        }
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            self.io.accept(true);
        }
        if self.shutdown_deadline.is_some_and(|t| t <= now) {
            let keys: Vec<ConnKey> = self.conns.keys().collect();
            if !keys.is_empty() {
                tracing::info!(shard = self.id, remaining = keys.len(), "shutdown deadline: dropping connections");
            }
            for key in keys {
                if let Some(conn) = self.conns.get_mut(key) {
                    kill(conn, key, &mut self.dead);
                }
            }
            self.reap_dead();
        }
    }

    // ---- phase: trim -----------------------------------------------------------------------------------

    /// Frees broadcast chunks no connection needs any more. After the fan-out phase every open subscriber that is
    /// not in the blocked list stands at or after `fanned_out_to`, so only those in it are looked at (blocked on
    /// writability, or with a send in flight or deferred), each judged by the retention rules
    /// ([`Shard::judge_holder`]): an open one within `max_lag_bytes` holds the log from its cursor, one with a
    /// send in flight too (the kernel may still be reading it) until the completion; a closing one never does.
    fn trim_log(&mut self) {
        // Subscribers visited early in the last pass may not have what was pulled during it (see fan_out).
        for stream in &mut self.streams {
            stream.keep_from = stream.fanned_out_to;
        }
        // Topic logs: those that grew since the last trim (every one at the sweep), from what their history and
        // the last offer keep.
        let full = std::mem::take(&mut self.full_trim);
        let mut to_trim = std::mem::take(&mut self.to_trim);
        if full {
            to_trim.clear();
            to_trim.extend(self.topics.iter().map(|(id, _)| id));
        }
        for &id in &to_trim {
            let Some(topic) = self.topics.get_mut(id) else { continue };
            for log in topic.logs.iter_mut().flatten() {
                let history = log.history.oldest().map_or(log.log.head(), |e| e.at);
                log.keep_from = log.offered.min(history);
            }
        }
        let mut blocked = std::mem::take(&mut self.blocked);
        let (mut lag_max, mut lagging) = (0u64, 0u64);
        blocked.retain(|&key| {
            let holds = self.judge_holder(key);
            let Some(conn) = self.conns.get_mut(key) else { return false };
            if holds && conn.phase == Phase::Open {
                let lag = match conn.topics.as_deref() {
                    Some(subs) => topic_output::lag(&self.topics, subs),
                    None => self.streams[usize::from(conn.stream_id)].log.head().saturating_sub(conn.cursor),
                };
                lag_max = lag_max.max(lag);
                lagging += u64::from(lag > 0);
            }
            if holds {
                match conn.topics.as_deref() {
                    Some(subs) => {
                        for sub in &subs.subs {
                            if let Some(log) = self.topics.get_mut(sub.topic).and_then(|t| t.log_mut(subs.encoding)) {
                                log.keep_from = log.keep_from.min(sub.cursor);
                            }
                        }
                    }
                    None => {
                        // One finishing a chunk before a skip holds its stream from where it goes next.
                        let skip = conn.pinned.as_ref().and_then(|p| p.then_skip);
                        let stream = &mut self.streams[usize::from(conn.stream_id)];
                        stream.keep_from = stream.keep_from.min(skip.map_or(conn.cursor, |s| s.at));
                    }
                }
            } else {
                conn.in_blocked_list = false;
            }
            holds
        });
        debug_assert!(self.blocked.is_empty(), "judging adds nobody to the blocked list");
        self.blocked = blocked;
        let budget = self.topics.history_bytes().saturating_add(self.settings.max_topic_backlog_bytes);
        if self.topic_log_bytes > budget {
            self.shed_topic_laggards(self.topic_log_bytes - budget);
        }
        let mut retained = 0;
        for stream in &mut self.streams {
            stream.log.trim_to(stream.keep_from);
            retained += stream.log.retained_bytes();
        }
        for &id in &to_trim {
            let Some(topic) = self.topics.get_mut(id) else { continue };
            topic.trim = false;
            for log in topic.logs.iter_mut().flatten() {
                let held = log.log.retained_bytes();
                log.trim(log.keep_from);
                self.topic_log_bytes = self.topic_log_bytes.saturating_sub(held - log.log.retained_bytes());
            }
        }
        to_trim.clear();
        self.to_trim = to_trim;
        self.enforce_private_budget();
        let stats = &self.shared.shards[self.id];
        stats.log_bytes.store(retained, Relaxed);
        stats.lag_max_bytes.store(lag_max, Relaxed);
        stats.lagging_subscribers.store(lagging, Relaxed);
        if full {
            // Over every topic: once per sweep, not per pass.
            let logs = self.topics.iter().flat_map(|(_, t)| t.logs.iter().flatten());
            self.topic_log_bytes = logs.map(|l| l.log.retained_bytes()).sum(); // expired topics took theirs
            stats.topic_log_bytes.store(self.topic_log_bytes, Relaxed);
            stats.history_bytes.store(self.topics.history_bytes(), Relaxed);
            stats.loop_topics.store(self.topics.len() as u64, Relaxed);
        }
    }

    /// The topic logs hold `excess` bytes more than the history and `max_topic_backlog_bytes` allow: many
    /// connections, each within `max_lag_bytes`, lag on different topics. The laggiest topic connections that
    /// hold the logs back are closed as slow consumers (1008) until their lag covers the excess; the trim lets
    /// go of what they held once they are closing.
    fn shed_topic_laggards(&mut self, excess: u64) {
        let mut laggards: Vec<(u64, ConnKey)> = self
            .blocked
            .iter()
            .filter_map(|&key| {
                let conn = self.conns.get(key)?;
                let subs = conn.topics.as_deref().filter(|_| conn.phase == Phase::Open)?;
                Some((topic_output::lag(&self.topics, subs), key))
            })
            .collect();
        laggards.sort_unstable_by_key(|&(lag, _)| std::cmp::Reverse(lag));
        let mut left = excess;
        for (lag, key) in laggards {
            if left == 0 {
                break;
            }
            left = left.saturating_sub(lag);
            let idle = self.conns.get(key).is_some_and(|c| !c.send_in_flight);
            if self.settings.lag_relief && lag > 0 && idle {
                // Its topics' policies may skip for it instead (judged as if its limit were just under its lag;
                // all `disconnect` closes it). One with a send in flight is closed as before.
                let limits = crate::fanout::LagLimits { max_bytes: lag - 1, max_messages: 0 };
                let _ = self.relieve(key, limits);
                continue;
            }
            let stats = &self.shared.shards[self.id];
            if let Some(suppressed) = self.slow_log.allow(Instant::now()) {
                tracing::warn!(
                    shard = self.id,
                    ?key,
                    lag_bytes = lag,
                    suppressed,
                    "topic backlog full: closing the laggiest with 1008"
                );
            }
            ShardStats::add(&stats.slow_consumers, 1);
            let mut cx = input_cx!(self);
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if conn.send_in_flight && !(conn.lag_cancel_sent || conn.cancel_sent) {
                // Its send would keep the logs held until it completes, which a client that stopped reading
                // delays without end: cancelled, as for a laggard of the whole feed.
                ShardStats::add(&stats.lagging_sends_cancelled, 1);
                conn.lag_cancel_sent = true;
                self.io.cancel(key, conn.stream.as_raw_fd(), false, Some(conn.send_token));
            }
            input::queue_close(conn, key, 1008, "slow consumer: the gateway's topic backlog is full", &mut cx);
        }
    }

    // ---- shedding --------------------------------------------------------------------------------------

    /// The process is over `shed_memory_bytes`: closes 1/[`SHED_FRACTION`] of this loop's open WebSocket clients
    /// and event streams (at least one) with 1013 Try Again Later (a stream just ends). Called every
    /// [`SHED_EVERY`] while the level stays raised, so about 1/64 of the clients leave per 100 ms until memory
    /// falls below the mark; held long-polls end on their own within `poll_timeout`.
    fn shed_load(&mut self) {
        let open = |c: &Conn| c.phase == Phase::Open && !c.held_poll;
        let quota = (self.conns.len() / SHED_FRACTION).max(1);
        let keys: Vec<ConnKey> =
            self.conns.keys().filter(|&k| self.conns.get(k).is_some_and(open)).take(quota).collect();
        if keys.is_empty() {
            return;
        }
        tracing::warn!(shard = self.id, closing = keys.len(), "shedding load: closing clients with 1013");
        ShardStats::add(&self.shared.shards[self.id].shed_closes, keys.len() as u64);
        for key in keys {
            let mut cx = input_cx!(self);
            if let Some(conn) = self.conns.get_mut(key) {
                input::queue_close(conn, key, 1013, "server overloaded: try again later", &mut cx);
            }
        }
    }

    // ---- shutdown --------------------------------------------------------------------------------------

    /// Starts the drain once `Shared::shutdown` is set (stop accepting, plan the closes), then closes whoever
    /// is due.
    fn check_shutdown(&mut self) {
        if self.drain.is_none() {
            let Some(mode) = self.shared.stopping() else { return };
            self.start_drain(mode);
        }
        self.drain_due(Instant::now());
    }

    /// Stops accepting and queues every connection for its close, spread over `shutdown_spread`
    /// (`shard::drain`); the loop ends when all are gone or at `shutdown_timeout`.
    fn start_drain(&mut self, mode: StopMode) {
        let now = Instant::now();
        self.shutdown_deadline = Some(now + self.settings.shutdown_timeout);
        self.linger_deadlines = DeadlineQueue::new(self.settings.shutdown_timeout);
        self.io.accept(false);
        // Oldest first: the connections that have been served longest go first, the newest last (one accepted a
        // moment ago has had nothing yet; one cut mid-handshake would see a reset, the one thing a restart must
        // not cause). Those accepted within `handshake_timeout` are in the handshake queue, in accept order
        // (every accept is queued there); the others are older, and taken in slab order.
        let recent: Vec<ConnKey> = self
            .handshake_deadlines
            .keys()
            .filter(|&k| self.conns.get(k).is_some_and(|c| matches!(c.phase, Phase::Open | Phase::Handshake)))
            .collect();
        let is_recent: std::collections::HashSet<ConnKey> = recent.iter().copied().collect();
        let mut keys: Vec<ConnKey> = self
            .conns
            .keys()
            .filter(|k| !is_recent.contains(k) && self.conns.get(*k).is_some_and(|c| c.phase == Phase::Open))
            .collect();
        keys.extend(recent);
        tracing::info!(
            shard = self.id,
            connections = keys.len(),
            code = mode.close_code(),
            spread_ms = self.settings.shutdown_spread.as_millis() as u64,
            "draining: closing clients over the spread window"
        );
        let seed = (self.shared.started.elapsed().as_nanos() as u64) ^ ((self.id as u64) << 48);
        self.drain = Some(Drain::new(mode, now, self.settings.shutdown_spread, keys, seed));
    }

    /// Closes the connections whose turn has come: a held long-poll gets its (empty) answer, anything else its
    /// close with a reconnect hint ([`input::queue_drain_close`]). A handshake still under way waits for the
    /// end of the window; one still under way then gets `503` and is dropped.
    fn drain_due(&mut self, now: Instant) {
        let Some(drain) = &mut self.drain else { return };
        let mode = drain.mode;
        while let Some((key, hint)) = drain.pop_due(now) {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            match conn.phase {
                Phase::Handshake if now < drain.end() => drain.push_late(key),
                Phase::Handshake => {
                    let refusal = crate::proto::handshake::http_response_with(
                        503,
                        "text/plain",
                        &format!("Retry-After: {}\r\n", hint.div_ceil(1000)),
                        format!("{}\n", mode.reason()).as_bytes(),
                    );
                    let _ = reactor::send_now(&conn.stream, &refusal);
                    kill(conn, key, &mut self.dead);
                }
                Phase::Open if conn.held_poll => {
                    // A held long-poll gets its (empty) answer now, from where it stands.
                    let Some(i) = self.held.iter().position(|h| h.key == key) else { continue };
                    let h = self.held.swap_remove(i);
                    let next = Position { epoch: self.epoch, seq: h.since_seq.max(self.last_seq) };
                    let mut cx = input_cx!(self);
                    input::answer_poll(conn, key, PollBody::new().finish(next), h.cors.as_deref(), &mut cx);
                }
                Phase::Open => {
                    let mut cx = input_cx!(self);
                    input::queue_drain_close(conn, key, mode, hint, &mut cx);
                }
                Phase::Closing | Phase::Dead => {}
            }
        }
    }
}
