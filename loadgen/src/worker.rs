//! One worker process: a single-threaded mio event loop holding its share of the connections.
//!
//! The loop runs in named phases: take control messages from the parent, drop connections on purpose (topic
//! churn and storm, [`crate::resume`]), start connection attempts (paced; reconnections too), send the echo
//! messages that are due, sweep timers (handshake timeouts, progress, window end, result), wait for readiness
//! (a `timerfd` gives the wait a nanosecond deadline), then dispatch. Connections live in a `Vec` indexed by
//! their token. A slot gets a new socket only when it reconnects, and only in the start phase, after the
//! dispatch phase that may have closed its old one: the old socket is deregistered and closed by then, so no
//! event of it can reach the new one.
//!
//! Talks to the parent with [`crate::control`]: JSON lines on stdout (nothing else is ever printed there) and
//! on stdin (read by a helper thread that wakes the loop).

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};
use std::sync::mpsc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use wsgate::proto::frame::{encode_masked_frame_into, OpCode};

use crate::addrs;
use crate::client_conn::{Conn, ReadOutcome, State};
use crate::control::{Mode, StormResult, ToParent, ToWorker, WorkerResult, WorkerSpec};
use crate::hist;
use crate::msg::{monotonic_ns, write_message};
use crate::procstat;
use crate::recorder::Recorder;
use crate::resume::{Resumer, RETRY_NS};
use crate::timer::TimerFd;
use crate::topic_conn::TopicConn;

const TIMER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// The read buffer shared by all connections of the process.
const READ_BUF_BYTES: usize = 256 * 1024;
/// Housekeeping period (handshake timeouts, state changes); progress lines go out once a second.
const TICK_NS: u64 = 100_000_000;
/// Most echo sends or connection attempts per loop pass, so reads are never starved.
const BATCH: usize = 4096;

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// The worker's specification, as JSON (written by the parent process).
    #[arg(long)]
    pub spec: String,
}

/// Entry point of the hidden `worker` subcommand.
pub fn main(args: WorkerArgs) -> std::process::ExitCode {
    let result = serde_json::from_str::<WorkerSpec>(&args.spec)
        .map_err(|e| format!("bad worker spec: {e}"))
        .and_then(|spec| Worker::new(spec).map_err(|e| format!("worker setup: {e}")))
        .and_then(|mut w| w.run());
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            send(&ToParent::Fatal { error: error.clone() });
            eprintln!("wsgate-loadgen worker: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn send(msg: &ToParent) {
    let mut out = io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, msg);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

enum Control {
    Msg(ToWorker),
    /// The parent closed our stdin (it exited): stop.
    Eof,
}

struct Echo {
    interval_ns: u64,
    size: usize,
    /// Send schedule origin, set when the window arrives.
    t0: Option<u64>,
    /// Next global send number g: connection `g % n`, its message `g / n`, scheduled at `t0 + g·interval/n`.
    next_g: u64,
    payload: Vec<u8>,
    frame: Vec<u8>,
    /// Least time between two wake-ups for sends (bounds the wake-up rate; sends are late by at most this).
    min_wake_ns: u64,
    last_send_pass: u64,
    /// Actual send time − scheduled time (the client's own lateness), ns.
    lag: hdrhistogram::Histogram<u64>,
}

impl Echo {
    fn scheduled(&self, g: u64, n: u64) -> u64 {
        self.t0.unwrap_or(u64::MAX) + (u128::from(g) * u128::from(self.interval_ns) / u128::from(n)) as u64
    }
}

struct Worker {
    spec: WorkerSpec,
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    rbuf: Box<[u8]>,
    rec: Recorder,
    timer: TimerFd,
    _waker: std::sync::Arc<Waker>,
    ctrl: mpsc::Receiver<Control>,
    echo: Option<Echo>,
    /// `wss://`: the TLS configuration every connection's session is made from.
    tls: Option<crate::tls::Client>,
    /// Topic churn and storm: drops on purpose and the reconnection queue.
    resumer: Option<Resumer>,
    rng: u64,
    // Connection phase.
    next_to_start: usize,
    in_flight: usize,
    ramp_t0: u64,
    up_sent: bool,
    // Results so far.
    res: WorkerResult,
    // Window phase.
    maxes_sent: bool,
    global_maxes: Option<BTreeMap<String, u64>>,
    next_tick: u64,
    next_progress: u64,
}

impl Worker {
    fn new(spec: WorkerSpec) -> io::Result<Worker> {
        let limit = procstat::raise_nofile_to_hard()?;
        if spec.connections + procstat::FD_RESERVE > limit {
            return Err(io::Error::other(format!(
                "{} connections need {} descriptors but the open-files limit is {limit}: use more --procs",
                spec.connections,
                spec.connections + procstat::FD_RESERVE
            )));
        }
        let poll = Poll::new()?;
        let waker = std::sync::Arc::new(Waker::new(poll.registry(), WAKER)?);
        let timer = TimerFd::new()?;
        poll.registry().register(&mut SourceFd(&timer.raw_fd()), TIMER, Interest::READABLE)?;
        let (tx, ctrl) = mpsc::channel();
        let wake = waker.clone();
        std::thread::Builder::new().name("control".into()).spawn(move || {
            for line in io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<ToWorker>(&line) {
                    Ok(m) => {
                        if tx.send(Control::Msg(m)).is_err() {
                            return;
                        }
                    }
                    Err(e) => eprintln!("wsgate-loadgen worker: bad control line {line:?}: {e}"),
                }
                let _ = wake.wake();
            }
            let _ = tx.send(Control::Eof);
            let _ = wake.wake();
        })?;
        let echo = match spec.mode {
            Mode::Subscribe => None,
            Mode::Echo { rate_per_conn, size } => Some(Echo {
                interval_ns: (1e9 / rate_per_conn).max(1.0) as u64,
                size,
                t0: None,
                next_g: 0,
                payload: Vec::with_capacity(size + 64),
                frame: Vec::with_capacity(size + 64),
                min_wake_ns: spec.min_wake_us * 1000,
                last_send_pass: 0,
                lag: hist::new_histogram(),
            }),
        };
        let conns = (0..spec.connections)
            .map(|i| {
                let mut c = Conn::new(spec.first_index + i);
                c.sub = spec.topics.as_ref().map(|plan| Box::new(TopicConn::new(plan, c.index)));
                c
            })
            .collect();
        let tls = match (&spec.tls_ca, spec.target.tls) {
            (Some(ca), true) => Some(crate::tls::Client::new(ca, spec.target.host_name()).map_err(io::Error::other)?),
            _ => None,
        };
        let mut rec = Recorder::new(echo.is_some());
        if let Some(plan) = &spec.topics {
            rec = rec.with_topics(plan);
        }
        let now = monotonic_ns();
        Ok(Worker {
            rec,
            resumer: spec.topics.as_ref().and_then(Resumer::new),
            rng: crate::client_conn::splitmix64(spec.salt ^ spec.first_index) | 1,
            spec,
            poll,
            events: Events::with_capacity(1024),
            conns,
            rbuf: vec![0u8; READ_BUF_BYTES].into_boxed_slice(),
            timer,
            _waker: waker,
            ctrl,
            echo,
            tls,
            next_to_start: 0,
            in_flight: 0,
            ramp_t0: now,
            up_sent: false,
            res: WorkerResult { first_attempt_ns: now, ..WorkerResult::default() },
            maxes_sent: false,
            global_maxes: None,
            next_tick: now,
            next_progress: now + 1_000_000_000,
        })
    }

    fn run(&mut self) -> Result<(), String> {
        loop {
            let now = monotonic_ns();
            if !self.take_control(now) {
                return Ok(());
            }
            self.drop_due(now);
            self.start_connections(now);
            self.send_due(now);
            if now >= self.next_tick {
                self.next_tick = now + TICK_NS;
                self.sweep_timeouts(now);
            }
            if self.advance(now) {
                return Ok(());
            }
            let deadline = self.next_deadline();
            self.timer.arm_at(deadline).map_err(|e| format!("timerfd: {e}"))?;
            match self.poll.poll(&mut self.events, Some(Duration::from_secs(1))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("epoll: {e}")),
            }
            self.dispatch();
        }
    }

    /// Phase: control messages. Returns `false` when the parent is gone.
    fn take_control(&mut self, now: u64) -> bool {
        while let Ok(c) = self.ctrl.try_recv() {
            match c {
                Control::Eof => return false,
                Control::Msg(ToWorker::Window { start_ns, end_ns }) => {
                    self.rec.set_window(start_ns, end_ns, self.spec.grace_ms * 1_000_000);
                    if let Some(r) = &mut self.resumer {
                        r.set_window(now, start_ns, end_ns);
                    }
                    if let Some(e) = &mut self.echo {
                        e.t0 = Some(now);
                    }
                }
                Control::Msg(ToWorker::Maxes { maxes }) => self.global_maxes = Some(maxes),
            }
        }
        true
    }

    /// Phase: start connection attempts, paced by the ramp and bounded by `max_pending`; then reconnections that
    /// are due, within the same bound.
    fn start_connections(&mut self, now: u64) {
        let n = self.conns.len();
        let mut budget = BATCH.min(self.spec.max_pending.saturating_sub(self.in_flight));
        let mut first = budget;
        if let Some(rate) = self.spec.ramp_per_s {
            let due = (((now - self.ramp_t0) as f64 / 1e9 * rate) as usize + 1).min(n);
            first = first.min(due.saturating_sub(self.next_to_start));
        }
        while first > 0 && self.next_to_start < n {
            first -= 1;
            budget -= 1;
            let i = self.next_to_start;
            self.next_to_start += 1;
            self.begin_connect(i, now);
        }
        while budget > 0 {
            let Some(i) = self.resumer.as_mut().and_then(|r| r.next_reconnect(now)) else { break };
            budget -= 1;
            self.begin_connect(i, now);
        }
    }

    /// Starts the TCP connect of slot `i` (with a new TLS session for `wss://`).
    fn begin_connect(&mut self, i: usize, now: u64) {
        let conn = &mut self.conns[i];
        let src = (!self.spec.source_ips.is_empty())
            .then(|| self.spec.source_ips[(conn.index % self.spec.source_ips.len() as u64) as usize]);
        conn.started_ns = now;
        let result = addrs::start_connect(self.spec.target.addr, src).and_then(|mut stream| {
            let tls = self.tls.as_ref().map(crate::tls::Client::session).transpose()?;
            self.poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)?;
            Ok((stream, tls))
        });
        match result {
            Ok((stream, tls)) => {
                conn.stream = Some(stream);
                conn.tls = tls;
                conn.state = State::Connecting;
                self.in_flight += 1;
            }
            Err(e) => close(&mut self.res, &self.poll, self.resumer.as_mut(), i, conn, addrs::error_reason(&e)),
        }
    }

    /// Phase: drops on purpose — topic churn, and the resume storm — each queued to reconnect.
    fn drop_due(&mut self, now: u64) {
        let Some(r) = &mut self.resumer else { return };
        let n = self.conns.len();
        while let Some(i) = r.next_churn(now, n) {
            let conn = &mut self.conns[i];
            // Only a connection that is open with every reply in: one still (re)subscribing has no settled
            // positions to resume from, and dropping it would only repeat the attempt.
            if conn.state != State::Open || !conn.sub.as_ref().is_some_and(|s| s.settled()) {
                r.counts.churn_skipped += 1;
                continue;
            }
            drop_open(&self.poll, conn);
            r.counts.drops += 1;
            r.schedule(i, now);
        }
        if r.storm_due(now) {
            let back = now + r.storm_away_ns();
            for (i, conn) in self.conns.iter_mut().enumerate() {
                if conn.state != State::Open {
                    continue;
                }
                drop_open(&self.poll, conn);
                let tc = conn.sub.as_mut().expect("topic connection");
                tc.storm_dropped_at = Some(now);
                tc.storm_replied_at = None;
                tc.storm_live_at = None;
                r.counts.drops += 1;
                r.schedule(i, back);
            }
        }
    }

    /// Phase: echo sends whose scheduled time has come (open loop: late sends carry their scheduled time).
    fn send_due(&mut self, now: u64) {
        let Some(echo) = &mut self.echo else { return };
        let Some((start, end, _)) = self.rec.window() else { return };
        let n = self.conns.len() as u64;
        echo.last_send_pass = now;
        for _ in 0..BATCH {
            let at = echo.scheduled(echo.next_g, n);
            if at > now || at >= end {
                return;
            }
            let conn = &mut self.conns[(echo.next_g % n) as usize];
            let seq = echo.next_g / n;
            echo.next_g += 1;
            let in_window = at >= start;
            match conn.state {
                State::Open => {}
                // A connection that dropped: its messages are expected (and lost); one that never opened is not.
                State::Closed if conn.opened => {
                    self.res.messages_expected += u64::from(in_window);
                    continue;
                }
                _ => continue,
            }
            echo.payload.clear();
            write_message(&mut echo.payload, seq, at, None, echo.size);
            echo.payload.pop(); // the newline is the feed's line delimiter, not part of a WebSocket message
            echo.frame.clear();
            self.rng = xorshift(self.rng);
            encode_masked_frame_into(&mut echo.frame, OpCode::Text, &echo.payload, (self.rng as u32).to_le_bytes());
            self.res.messages_expected += u64::from(in_window);
            if in_window {
                echo.lag.saturating_record(now - at);
            }
            match conn.send_frame(&echo.frame) {
                Ok(true) => self.res.messages_sent += 1,
                Ok(false) => self.res.sends_dropped += 1,
                Err(e) => {
                    let reason = addrs::error_reason(&e);
                    close(&mut self.res, &self.poll, None, 0, conn, reason);
                }
            }
        }
    }

    /// Phase (every tick): handshake timeouts.
    fn sweep_timeouts(&mut self, now: u64) {
        if self.in_flight > 0 {
            let timeout = self.spec.handshake_timeout_ms * 1_000_000;
            for (i, conn) in self.conns.iter_mut().enumerate() {
                if matches!(conn.state, State::Connecting | State::Handshaking) && now - conn.started_ns > timeout {
                    self.in_flight -= 1;
                    close(&mut self.res, &self.poll, self.resumer.as_mut(), i, conn, "timeout".into());
                }
            }
        }
    }

    /// Phase (every pass): progress line and the run's state changes. Returns `true` when the worker is done.
    fn advance(&mut self, now: u64) -> bool {
        if now >= self.next_progress {
            self.next_progress += 1_000_000_000;
            send(&ToParent::Progress {
                open: self.open_count(),
                failed: self.res.connections_failed,
                messages: self.rec.counters.messages_total,
                errors: self.res.disconnects,
            });
        }
        if !self.up_sent && self.next_to_start == self.conns.len() && self.in_flight == 0 {
            self.up_sent = true;
            send(&ToParent::Up { ok: self.res.connections_ok, failed: self.res.connections_failed });
        }
        let Some((_, end, grace_end)) = self.rec.window() else { return false };
        if !self.maxes_sent && now >= end {
            self.maxes_sent = true;
            send(&ToParent::Maxes { maxes: self.rec.window_maxes() });
        }
        if now >= grace_end && self.global_maxes.is_some() {
            self.finish();
            return true;
        }
        false
    }

    fn open_count(&self) -> u64 {
        self.conns.iter().filter(|c| c.state == State::Open).count() as u64
    }

    fn finish(&mut self) {
        let r = &mut self.res;
        let c = self.rec.counters;
        r.messages_in_window = c.messages_in_window;
        r.gaps = c.gaps;
        r.duplicates = c.duplicates;
        r.reorders = c.reorders;
        r.unparsed = c.unparsed;
        if self.echo.is_some() {
            for conn in &self.conns {
                for t in &conn.tracks {
                    r.messages_received += t.unique();
                    r.ranges_dropped |= t.ranges_dropped();
                }
            }
        } else {
            let maxes = self.rec.maxes_by_id(self.global_maxes.as_ref().expect("checked by the caller"));
            for conn in &self.conns {
                let t = Recorder::finish_subscribe(&conn.tracks, &maxes);
                r.messages_received += t.received;
                r.messages_expected += t.expected;
                r.messages_lost_tail += t.tail;
                r.ranges_dropped |= t.ranges_dropped;
            }
            if let Some(mode) = self.rec.topic_mode.take() {
                let mut result = mode.result;
                for conn in &self.conns {
                    let Some(tc) = &conn.sub else { continue };
                    for (slot, stream) in tc.streams.iter().enumerate() {
                        let k = mode.plan.topic_in(tc.first, slot) as usize;
                        let Some(max) = maxes.get(k + 1).copied().flatten() else { continue };
                        let (t, track) = (&mut result.per_topic[k], &stream.track);
                        t.expected += track.expected_up_to(max);
                        t.received += track.unique_up_to(max);
                        t.lost_tail += track.tail_up_to(max);
                        t.gap_covered += track.covered_up_to(max);
                        r.messages_expected += track.expected_up_to(max);
                        r.messages_received += track.unique_up_to(max);
                        r.messages_lost_tail += track.tail_up_to(max);
                        r.ranges_dropped |= track.ranges_dropped();
                    }
                }
                if let Some(resumer) = &self.resumer {
                    let c = resumer.counts;
                    (result.drops, result.reconnects, result.reconnect_failures, result.churn_skipped) =
                        (c.drops, c.reconnects, c.reconnect_failures, c.churn_skipped);
                }
                if mode.plan.storm_at_ms.is_some() {
                    result.storm = Some(storm_result(&self.conns));
                }
                r.topics = Some(Box::new(result));
            }
        }
        r.histogram = hist::encode(&self.rec.hist);
        if let Some(echo) = &self.echo {
            r.send_lag_histogram = Some(hist::encode(&echo.lag));
        }
        send(&ToParent::Result { result: Box::new(std::mem::take(r)) });
    }

    fn next_deadline(&self) -> u64 {
        let mut d = self.next_tick.min(self.next_progress);
        if let Some(at) = self.resumer.as_ref().and_then(|r| r.next_deadline(self.conns.len())) {
            d = d.min(at);
        }
        if let (Some(echo), Some((_, end, _))) = (&self.echo, self.rec.window()) {
            let at = echo.scheduled(echo.next_g, self.conns.len() as u64);
            if at < end {
                d = d.min(at.max(echo.last_send_pass + echo.min_wake_ns));
            }
        }
        if let Some(rate) = self.spec.ramp_per_s {
            if self.next_to_start < self.conns.len() && self.in_flight < self.spec.max_pending {
                d = d.min(self.ramp_t0 + (self.next_to_start as f64 / rate * 1e9) as u64);
            }
        }
        if let Some((_, end, grace_end)) = self.rec.window() {
            if !self.maxes_sent {
                d = d.min(end);
            } else if self.global_maxes.is_some() {
                d = d.min(grace_end);
            }
        }
        d
    }

    /// Phase: readiness dispatch.
    fn dispatch(&mut self) {
        for ev in self.events.iter() {
            match ev.token() {
                TIMER => self.timer.clear(),
                WAKER => {}
                Token(i) => {
                    let Some(conn) = self.conns.get_mut(i) else { continue };
                    if conn.state == State::Connecting {
                        match conn.check_connected() {
                            Ok(false) => continue,
                            Ok(true) => {
                                let plan = self.spec.topics.as_ref();
                                let target = match (&mut conn.sub, plan) {
                                    (Some(tc), Some(plan)) => tc.request_target(plan, &self.spec.target.path),
                                    _ => self.spec.target.path.clone(),
                                };
                                let req = wsgate::proto::handshake::client_request_with(
                                    &self.spec.target.host,
                                    &target,
                                    &crate::client_conn::key_for(conn.index, self.spec.salt),
                                    plan.and_then(|p| p.protocol()),
                                );
                                conn.state = State::Handshaking;
                                conn.out = req;
                                if let Err(e) = conn.flush() {
                                    self.in_flight -= 1;
                                    close(
                                        &mut self.res,
                                        &self.poll,
                                        self.resumer.as_mut(),
                                        i,
                                        conn,
                                        addrs::error_reason(&e),
                                    );
                                    continue;
                                }
                            }
                            Err(e) => {
                                self.in_flight -= 1;
                                close(
                                    &mut self.res,
                                    &self.poll,
                                    self.resumer.as_mut(),
                                    i,
                                    conn,
                                    addrs::error_reason(&e),
                                );
                                continue;
                            }
                        }
                    }
                    if ev.is_writable() && conn.wants_write() {
                        if let Err(e) = conn.flush() {
                            if conn.state == State::Handshaking {
                                self.in_flight -= 1;
                            }
                            close(&mut self.res, &self.poll, self.resumer.as_mut(), i, conn, addrs::error_reason(&e));
                            continue;
                        }
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        let rng = &mut self.rng;
                        let mut mask = || {
                            *rng = xorshift(*rng);
                            (*rng as u32).to_le_bytes()
                        };
                        let was_handshaking = conn.state == State::Handshaking;
                        let protocol = self.spec.topics.as_ref().and_then(|p| p.protocol());
                        let open = match conn.on_readable(
                            &mut self.rbuf,
                            &mut self.rec,
                            self.spec.salt,
                            protocol,
                            &mut mask,
                        ) {
                            // Replies may have made room for more of a resume's requests.
                            ReadOutcome::Ok => true,
                            ReadOutcome::Upgraded => {
                                self.in_flight -= 1;
                                opened(&mut self.res, self.resumer.as_mut(), conn);
                                conn.pending_in.shrink_to_fit();
                                if conn.out.is_empty() {
                                    conn.out = Vec::new();
                                }
                                true
                            }
                            ReadOutcome::Ended(end) => {
                                if was_handshaking && conn.state == State::Handshaking {
                                    self.in_flight -= 1;
                                } else if was_handshaking {
                                    // Upgraded and ended within one read.
                                    self.in_flight -= 1;
                                    opened(&mut self.res, self.resumer.as_mut(), conn);
                                }
                                close(&mut self.res, &self.poll, self.resumer.as_mut(), i, conn, end.reason());
                                false
                            }
                        };
                        if open {
                            if let Err(e) = send_controls(conn, &mut mask) {
                                let reason = addrs::error_reason(&e);
                                close(&mut self.res, &self.poll, self.resumer.as_mut(), i, conn, reason);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Ends a connection: a failed attempt if it never opened, a disconnect if it did, a failed reconnection if it
/// was coming back. With a resumer (topic churn or storm), a slot that had opened is queued to come back.
fn close(
    res: &mut WorkerResult,
    poll: &Poll,
    resumer: Option<&mut Resumer>,
    slot: usize,
    conn: &mut Conn,
    reason: String,
) {
    let _ = conn.flush(); // best effort: a close frame or alert still queued
    if let Some(mut s) = conn.stream.take() {
        let _ = poll.registry().deregister(&mut s);
    }
    let was_open = conn.state == State::Open;
    let reconnecting = conn.sub.as_ref().is_some_and(|s| s.reconnecting);
    conn.state = State::Closed;
    conn.out = Vec::new();
    conn.pending_in = Vec::new();
    if was_open {
        res.disconnects += 1;
        *res.disconnect_reasons.entry(reason).or_default() += 1;
    } else if reconnecting {
        *res.failure_reasons.entry(format!("reconnect: {reason}")).or_default() += 1;
    } else {
        res.connections_failed += 1;
        *res.failure_reasons.entry(reason).or_default() += 1;
    }
    if let (Some(r), true) = (resumer, conn.opened) {
        if reconnecting && !was_open {
            r.counts.reconnect_failures += 1;
        }
        conn.reset_for_reconnect();
        if let Some(tc) = &mut conn.sub {
            tc.on_closed();
        }
        r.schedule(slot, monotonic_ns() + RETRY_NS);
    }
}

/// Drops an open connection on purpose (churn, storm): no close handshake, like a client that vanishes; the
/// slot keeps its checkers and resumes from their positions.
fn drop_open(poll: &Poll, conn: &mut Conn) {
    if let Some(mut s) = conn.stream.take() {
        let _ = poll.registry().deregister(&mut s);
    }
    conn.reset_for_reconnect();
    if let Some(tc) = &mut conn.sub {
        tc.on_closed();
    }
}

/// The upgrade completed: a new connection, or a reconnection coming back.
fn opened(res: &mut WorkerResult, resumer: Option<&mut Resumer>, conn: &mut Conn) {
    match (conn.sub.as_deref_mut(), resumer) {
        (Some(tc), Some(r)) if tc.reconnecting => {
            tc.reconnecting = false;
            r.counts.reconnects += 1;
        }
        _ => {
            res.connections_ok += 1;
            res.last_ok_ns = monotonic_ns();
        }
    }
}

/// Sends the control messages of a resume (topics beyond the request target's group) that may go now, masked.
fn send_controls(conn: &mut Conn, mask: &mut impl FnMut() -> [u8; 4]) -> io::Result<()> {
    if conn.state != State::Open {
        return Ok(()); // not before the upgrade completes
    }
    let Some(tc) = conn.sub.as_deref_mut().filter(|tc| !tc.controls.is_empty()) else { return Ok(()) };
    let controls = tc.take_sendable();
    let mut frame = Vec::new();
    for c in &controls {
        encode_masked_frame_into(&mut frame, OpCode::Text, c.as_bytes(), mask());
    }
    if !frame.is_empty() {
        conn.send_frame(&frame)?;
    }
    Ok(())
}

/// Each storm victim's time from the drop to its last reply and to its first live message.
fn storm_result(conns: &[Conn]) -> StormResult {
    let mut s = StormResult::default();
    for tc in conns.iter().filter_map(|c| c.sub.as_deref()) {
        let Some(dropped) = tc.storm_dropped_at else { continue };
        s.dropped += 1;
        if let Some(at) = tc.storm_replied_at {
            s.resubscribed_ns.push(at - dropped);
        }
        if let Some(at) = tc.storm_live_at {
            s.live_ns.push(at - dropped);
        }
    }
    s
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}
