//! One worker process: a single-threaded mio event loop holding its share of the connections.
//!
//! The loop runs in named phases: take control messages from the parent, start connection attempts (paced),
//! send the echo messages that are due, sweep timers (handshake timeouts, progress, window end, result), wait
//! for readiness (a `timerfd` gives the wait a nanosecond deadline), then dispatch. Connections live in a `Vec`
//! indexed by their token and are never reused, so a stale event cannot reach another connection.
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
use crate::control::{Mode, ToParent, ToWorker, WorkerResult, WorkerSpec};
use crate::hist;
use crate::msg::{monotonic_ns, write_message};
use crate::procstat;
use crate::recorder::Recorder;
use crate::timer::TimerFd;

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
        let conns = (0..spec.connections).map(|i| Conn::new(spec.first_index + i)).collect();
        let now = monotonic_ns();
        Ok(Worker {
            rec: Recorder::new(echo.is_some()),
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
                    if let Some(e) = &mut self.echo {
                        e.t0 = Some(now);
                    }
                }
                Control::Msg(ToWorker::Maxes { maxes }) => self.global_maxes = Some(maxes),
            }
        }
        true
    }

    /// Phase: start connection attempts, paced by the ramp and bounded by `max_pending`.
    fn start_connections(&mut self, now: u64) {
        let n = self.conns.len();
        let mut budget = BATCH.min(self.spec.max_pending.saturating_sub(self.in_flight));
        if let Some(rate) = self.spec.ramp_per_s {
            let due = (((now - self.ramp_t0) as f64 / 1e9 * rate) as usize + 1).min(n);
            budget = budget.min(due.saturating_sub(self.next_to_start));
        }
        while budget > 0 && self.next_to_start < n {
            budget -= 1;
            let i = self.next_to_start;
            self.next_to_start += 1;
            let conn = &mut self.conns[i];
            let src = (!self.spec.source_ips.is_empty())
                .then(|| self.spec.source_ips[(conn.index % self.spec.source_ips.len() as u64) as usize]);
            conn.started_ns = now;
            match addrs::start_connect(self.spec.target.addr, src) {
                Ok(mut stream) => {
                    match self.poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)
                    {
                        Ok(()) => {
                            conn.stream = Some(stream);
                            conn.state = State::Connecting;
                            self.in_flight += 1;
                        }
                        Err(e) => fail(&mut self.res, conn, addrs::error_reason(&e)),
                    }
                }
                Err(e) => fail(&mut self.res, conn, addrs::error_reason(&e)),
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
                    close(&mut self.res, &self.poll, conn, reason);
                }
            }
        }
    }

    /// Phase (every tick): handshake timeouts.
    fn sweep_timeouts(&mut self, now: u64) {
        if self.in_flight > 0 {
            let timeout = self.spec.handshake_timeout_ms * 1_000_000;
            for conn in &mut self.conns[..self.next_to_start] {
                if matches!(conn.state, State::Connecting | State::Handshaking) && now - conn.started_ns > timeout {
                    self.in_flight -= 1;
                    close(&mut self.res, &self.poll, conn, "timeout".into());
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
        self.res.connections_ok - self.res.disconnects
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
        }
        r.histogram = hist::encode(&self.rec.hist);
        if let Some(echo) = &self.echo {
            r.send_lag_histogram = Some(hist::encode(&echo.lag));
        }
        send(&ToParent::Result { result: Box::new(std::mem::take(r)) });
    }

    fn next_deadline(&self) -> u64 {
        let mut d = self.next_tick.min(self.next_progress);
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
                                let req = wsgate::proto::handshake::client_request(
                                    &self.spec.target.host,
                                    &self.spec.target.path,
                                    &crate::client_conn::key_for(conn.index, self.spec.salt),
                                );
                                conn.state = State::Handshaking;
                                conn.out = req;
                                if let Err(e) = conn.flush() {
                                    self.in_flight -= 1;
                                    close(&mut self.res, &self.poll, conn, addrs::error_reason(&e));
                                    continue;
                                }
                            }
                            Err(e) => {
                                self.in_flight -= 1;
                                close(&mut self.res, &self.poll, conn, addrs::error_reason(&e));
                                continue;
                            }
                        }
                    }
                    if ev.is_writable() && !conn.out.is_empty() {
                        if let Err(e) = conn.flush() {
                            if conn.state == State::Handshaking {
                                self.in_flight -= 1;
                            }
                            close(&mut self.res, &self.poll, conn, addrs::error_reason(&e));
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
                        match conn.on_readable(&mut self.rbuf, &mut self.rec, self.spec.salt, &mut mask) {
                            ReadOutcome::Ok => {}
                            ReadOutcome::Upgraded => {
                                self.in_flight -= 1;
                                self.res.connections_ok += 1;
                                self.res.last_ok_ns = monotonic_ns();
                                conn.pending_in.shrink_to_fit();
                                if conn.out.is_empty() {
                                    conn.out = Vec::new();
                                }
                            }
                            ReadOutcome::Ended(end) => {
                                if was_handshaking && conn.state == State::Handshaking {
                                    self.in_flight -= 1;
                                } else if was_handshaking {
                                    // Upgraded and ended within one read.
                                    self.in_flight -= 1;
                                    self.res.connections_ok += 1;
                                    self.res.last_ok_ns = monotonic_ns();
                                }
                                close(&mut self.res, &self.poll, conn, end.reason());
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A connection that never opened: counted as failed, with its reason.
fn fail(res: &mut WorkerResult, conn: &mut Conn, reason: String) {
    conn.state = State::Closed;
    conn.stream = None;
    res.connections_failed += 1;
    *res.failure_reasons.entry(reason).or_default() += 1;
}

/// Ends a connection: a failed attempt if it never opened, a disconnect if it did.
fn close(res: &mut WorkerResult, poll: &Poll, conn: &mut Conn, reason: String) {
    if let Some(mut s) = conn.stream.take() {
        let _ = poll.registry().deregister(&mut s);
        let _ = conn_flush_best_effort(&mut s, &conn.out);
    }
    let was_open = conn.state == State::Open;
    conn.state = State::Closed;
    conn.out = Vec::new();
    conn.pending_in = Vec::new();
    if was_open {
        res.disconnects += 1;
        *res.disconnect_reasons.entry(reason).or_default() += 1;
    } else {
        res.connections_failed += 1;
        *res.failure_reasons.entry(reason).or_default() += 1;
    }
}

fn conn_flush_best_effort(s: &mut mio::net::TcpStream, out: &[u8]) -> io::Result<usize> {
    if out.is_empty() {
        return Ok(0);
    }
    s.write(out)
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}
