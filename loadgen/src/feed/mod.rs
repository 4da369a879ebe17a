//! `feed`: an open-loop upstream feed at a fixed message rate.
//!
//! See [`LONG_ABOUT`] (the subcommand's `--help`) for what it does and why it stamps scheduled times.

mod peer;
mod schedule;
mod timer;

use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

use crate::msg;
use peer::Peer;
use schedule::Schedule;
use timer::Timer;

const LONG_ABOUT: &str = "\
Acts as the upstream feed server a gateway connects to (`wsgate --upstream ADDR`), or with --connect pushes into \
a gateway's --ingest port, and emits --rate messages per second of exactly --size bytes each (one JSON line, see \
the message format in msg.rs).

Pacing: message n is due at start + n/rate (CLOCK_MONOTONIC, exact integer nanoseconds for integer rates). The \
sender sleeps on a timerfd armed at an absolute time: every --tick (default 1 ms), or until the next due time when \
messages are further apart than that. On each wake-up it writes every message that is due in ONE write per \
gateway (coalesced, like a real feed handler draining its input), so the stream is smooth at tick resolution \
rather than bursty, and a 2.5M msg/s run costs one write per millisecond, not one per message. --spin busy-waits \
the last stretch before each wake-up for finer timing (off by default: it costs CPU the gateway may need).

Each message carries its SCHEDULED time, not the time it was actually written. That makes the measurement \
open-loop: if the feed, the gateway or the network stalls, every message behind the stall shows the full delay \
in the subscribers' latency histograms, instead of the stall silently pushing the schedule back and hiding \
itself (coordinated omission). The summary's lag figures say how far behind schedule the feed itself got, so a \
late feed is visible rather than blamed on the gateway.

With --listen the schedule starts when the first gateway connects (--start-on-connect, default true) and every \
connected gateway gets every message (several gateway processes may connect to one feed); a gateway that \
disconnects is logged and may reconnect. A gateway whose socket cannot keep up gets its unsent bytes queued, up to \
--buffer-mib per gateway; beyond that, whole messages are dropped and counted. The schedule never blocks and \
memory never grows without bound. At the end (--duration, or Ctrl-C) a summary goes to stderr and, with --json, \
to a file.";

/// Arguments of `wsgate-loadgen feed`.
#[derive(Debug, clap::Args)]
#[command(about = "Open-loop upstream feed: fixed-rate, paced messages stamped with their scheduled time")]
#[command(long_about = LONG_ABOUT)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["listen", "connect"])))]
pub struct Args {
    /// Listen for gateways (`wsgate --upstream ADDR`); port 0 picks a free one. Prints `feed: listening on ADDR`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Connect to a gateway's `--ingest` port instead of listening (retried until it answers, and after a drop).
    #[arg(long, value_name = "ADDR")]
    connect: Option<String>,
    /// Messages per second (fractional allowed, at least 0.001).
    #[arg(long)]
    rate: f64,
    /// Bytes per message, newline included (at least 64, or 80+ with topics named like T0000: the format's minimum).
    #[arg(long)]
    size: usize,
    /// Spread messages round-robin over K topics `T0000`..`T{K-1}` (message n goes to topic n mod K), each with
    /// its own sequence numbers from 0; 0 = no topic field (every message on the gateway's default topic).
    #[arg(long, value_name = "K", default_value_t = 0)]
    topics: u32,
    /// Stop the schedule after this long (e.g. 30, 30s, 500ms, 2m); default: run until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// With --listen (or --connect), start the schedule only once a gateway is connected.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    start_on_connect: bool,
    /// Wake-up interval of the sender; every message due at a wake-up goes out in one write.
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    tick: Duration,
    /// Busy-wait this long before each wake-up instead of sleeping (e.g. 20us); 0 = always sleep.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    spin: Duration,
    /// Unsent bytes kept per gateway before messages are dropped, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    buffer_mib: usize,
    /// After the schedule ends, wait up to this long for backlogs to drain before closing.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    drain: Duration,
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Parses `30`, `1.5`, `30s`, `500ms`, `20us`, `2m`, `1h` into a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration (e.g. 30s, 500ms, 20us)"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit `{other}` in `{s}` (use h, m, s, ms, us, ns)")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("`{s}`: {e}"))
}

/// Validated settings.
#[derive(Debug)]
struct Config {
    rate: f64,
    size: usize,
    topics: Vec<String>,
    duration_ns: Option<u64>,
    start_on_connect: bool,
    tick_ns: u64,
    spin_ns: u64,
    bound: usize,
    drain_ns: u64,
}

fn validate(args: &Args) -> Result<Config, String> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err(format!("--rate must be a positive number of messages per second, not {}", args.rate));
    }
    if Schedule::new(0, args.rate).is_none() {
        return Err(format!("--rate {} is out of range (0.001 to 1e12 messages per second)", args.rate));
    }
    let topics: Vec<String> = (0..args.topics).map(|k| msg::topic_name(k, args.topics)).collect();
    let min = msg::min_size(topics.last().map_or(0, String::len));
    if args.size < min {
        let with = if topics.is_empty() { String::new() } else { format!(" with {} topics", topics.len()) };
        return Err(format!("--size {} is too small: a message{with} needs at least {min} bytes", args.size));
    }
    let bound = args.buffer_mib.checked_mul(1 << 20).ok_or("--buffer-mib is too large")?;
    if bound < args.size {
        return Err(format!("--buffer-mib {} cannot hold even one {}-byte message", args.buffer_mib, args.size));
    }
    let as_ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    if args.duration.is_some_and(|d| d.is_zero()) {
        return Err("--duration must be longer than 0".into());
    }
    if args.tick < Duration::from_micros(10) || args.tick > Duration::from_secs(1) {
        return Err(format!("--tick must be between 10us and 1s, not {:?}", args.tick));
    }
    if args.spin >= args.tick {
        return Err(format!("--spin ({:?}) must be shorter than --tick ({:?})", args.spin, args.tick));
    }
    Ok(Config {
        rate: args.rate,
        size: args.size,
        topics,
        duration_ns: args.duration.map(as_ns),
        start_on_connect: args.start_on_connect,
        tick_ns: as_ns(args.tick),
        spin_ns: as_ns(args.spin),
        bound,
        drain_ns: as_ns(args.drain),
    })
}

/// What a run did; printed on stderr and written with `--json`.
#[derive(Debug, Serialize)]
struct Summary {
    /// Messages the schedule emitted (each to every gateway connected at the time).
    messages_sent: u64,
    rate_target: f64,
    /// `messages_sent` over the time from the first scheduled message to the end of the schedule.
    rate_achieved: f64,
    elapsed_s: f64,
    size: usize,
    topics: usize,
    /// How late the oldest message of a write was when written (the tick interval is part of it): max, p50, p99.
    max_lag_ms: f64,
    lag_p50_ms: f64,
    lag_p99_ms: f64,
    /// How late the sender woke after its timer's target time: p50, p99 and max.
    wake_late_p50_us: f64,
    wake_late_p99_us: f64,
    wake_late_max_us: f64,
    /// Writes issued per gateway (one per wake-up with messages due).
    writes: u64,
    /// Longest time any gateway spent with unsent bytes queued, and the most bytes queued for one.
    behind_ms: f64,
    max_backlog_bytes: usize,
    /// Messages dropped: backlog over --buffer-mib, plus bytes still unsent when the drain time ran out.
    dropped: u64,
    /// Messages emitted while no gateway was connected.
    no_gateway: u64,
    gateways_connected: u64,
    gateways_disconnected: u64,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_stop_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe); `sa` is fully initialised (zeroed,
        // then an empty mask) before the call. No SA_RESTART: a blocked epoll_wait returns EINTR and we look.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

const LISTENER: Token = Token(0);
const TIMER: Token = Token(1);
const CONNECTING: Token = Token(2);
const FIRST_PEER: usize = 3;
/// Retry interval of --connect while the gateway does not answer.
const RECONNECT_NS: u64 = 200_000_000;

pub fn run(args: Args) -> ExitCode {
    let cfg = match validate(&args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("feed: {e}");
            return ExitCode::from(2);
        }
    };
    match Feed::new(&args, cfg).and_then(Feed::run) {
        Ok(summary) => {
            eprintln!("{}", summary.line());
            if let Some(path) = &args.json {
                let json = serde_json::to_string_pretty(&summary).expect("summary serialises");
                if let Err(e) = std::fs::write(path, json + "\n") {
                    eprintln!("feed: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("feed: {e}");
            ExitCode::FAILURE
        }
    }
}

impl Summary {
    fn line(&self) -> String {
        format!(
            "feed: sent {} messages of {} B in {:.3} s ({:.1} msg/s, target {}), lag p50 {:.3} ms p99 {:.3} ms \
             max {:.3} ms, wake-up late p50 {:.0} us p99 {:.0} us max {:.0} us, {} writes, behind {:.1} ms (max backlog {} B), \
             dropped {}, sent with no gateway {}, gateways {} connected {} disconnected",
            self.messages_sent,
            self.size,
            self.elapsed_s,
            self.rate_achieved,
            self.rate_target,
            self.lag_p50_ms,
            self.lag_p99_ms,
            self.max_lag_ms,
            self.wake_late_p50_us,
            self.wake_late_p99_us,
            self.wake_late_max_us,
            self.writes,
            self.behind_ms,
            self.max_backlog_bytes,
            self.dropped,
            self.no_gateway,
            self.gateways_connected,
            self.gateways_disconnected,
        )
    }
}

/// Where `--connect` stands.
#[derive(Debug)]
enum Connector {
    /// `--listen` mode.
    Off,
    /// Waiting to (re)try at `retry_at`.
    Idle {
        retry_at: u64,
    },
    Connecting {
        stream: TcpStream,
    },
    Connected,
}

struct Feed {
    cfg: Config,
    poll: Poll,
    timer: Timer,
    listener: Option<TcpListener>,
    connect_addr: Option<SocketAddr>,
    connector: Connector,
    /// Failed connect attempts in a row (only the first of a streak is logged).
    connect_fails: u64,
    /// Slot `i` has token `FIRST_PEER + i`.
    peers: Vec<Option<Peer>>,
    scratch: Vec<u8>,
    batch: Vec<u8>,
    schedule: Option<Schedule>,
    /// Messages emitted so far (the next message's index).
    next: u64,
    /// Messages in the run, if bounded.
    end: Option<u64>,
    /// The sender's current wake-up target.
    target_ns: u64,
    lag_us: Histogram<u64>,
    wake_late_us: Histogram<u64>,
    writes: u64,
    no_gateway: u64,
    /// Counters of peers that are gone.
    gone_dropped: u64,
    gone_behind_ns: u64,
    gone_max_backlog: usize,
    connected: u64,
    disconnected: u64,
    ended_ns: Option<u64>,
}

impl Feed {
    fn new(args: &Args, cfg: Config) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut timer = Timer::new()?;
        poll.registry().register(&mut timer, TIMER, Interest::READABLE)?;
        timer::set_timer_slack(1_000);
        let mut listener = None;
        let mut connector = Connector::Off;
        let mut connect_addr = None;
        if let Some(addr) = args.listen {
            let mut l =
                TcpListener::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("--listen {addr}: {e}")))?;
            poll.registry().register(&mut l, LISTENER, Interest::READABLE)?;
            let local = l.local_addr()?;
            let mut out = io::stdout().lock();
            writeln!(out, "feed: listening on {local}")?;
            out.flush()?;
            listener = Some(l);
        } else if let Some(target) = &args.connect {
            let addr = target
                .to_socket_addrs()
                .map_err(|e| io::Error::new(e.kind(), format!("--connect {target}: {e}")))?
                .next()
                .ok_or_else(|| io::Error::other(format!("--connect {target}: no address")))?;
            connect_addr = Some(addr);
            connector = Connector::Idle { retry_at: 0 };
        }
        let hist = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        Ok(Feed {
            poll,
            timer,
            listener,
            connect_addr,
            connector,
            connect_fails: 0,
            peers: Vec::new(),
            scratch: vec![0; 64 * 1024],
            batch: Vec::with_capacity(cfg.size * 4096),
            schedule: None,
            next: 0,
            end: None,
            target_ns: 0,
            lag_us: hist(),
            wake_late_us: hist(),
            writes: 0,
            no_gateway: 0,
            gone_dropped: 0,
            gone_behind_ns: 0,
            gone_max_backlog: 0,
            connected: 0,
            disconnected: 0,
            ended_ns: None,
            cfg,
        })
    }

    fn run(mut self) -> io::Result<Summary> {
        install_stop_handler();
        if !self.cfg.start_on_connect {
            self.start(msg::monotonic_ns());
        }
        let mut events = Events::with_capacity(256);
        while !STOP.load(Ordering::Relaxed) {
            let now = msg::monotonic_ns();
            self.step_connector(now);
            if self.schedule.is_some() {
                self.emit_due(now);
                if self.end.is_some_and(|end| self.next >= end) {
                    break;
                }
                self.arm_next(now)?;
            }
            let timeout = match &self.connector {
                Connector::Idle { retry_at, .. } => Some(Duration::from_nanos(retry_at.saturating_sub(now))),
                _ => None,
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.spin_until_target();
            let now = msg::monotonic_ns();
            for event in events.iter() {
                self.handle(event, now);
            }
        }
        let end_ns = msg::monotonic_ns();
        self.ended_ns = Some(end_ns);
        self.drain_backlogs(&mut events);
        Ok(self.summary(end_ns))
    }

    fn start(&mut self, now: u64) {
        let schedule = Schedule::new(now, self.cfg.rate).expect("rate validated");
        self.end = self.cfg.duration_ns.map(|d| schedule.count_within(d));
        self.schedule = Some(schedule);
        self.target_ns = now;
    }

    /// Writes every message due at `now` to every gateway, in batches of at most one backlog bound each.
    fn emit_due(&mut self, now: u64) {
        let schedule = self.schedule.expect("started");
        let due = schedule.due_count(now).min(self.end.unwrap_or(u64::MAX));
        if due <= self.next {
            return;
        }
        let _ = self.lag_us.record((now - schedule.due_ns(self.next)) / 1_000);
        let per_batch = (self.cfg.bound / self.cfg.size).max(1) as u64;
        let k = self.cfg.topics.len() as u64;
        while self.next < due {
            let upto = due.min(self.next + per_batch);
            self.batch.clear();
            for n in self.next..upto {
                let (seq, topic) = match n.checked_div(k) {
                    None => (n, None),
                    Some(seq) => (seq, Some(self.cfg.topics[(n % k) as usize].as_str())),
                };
                msg::write_message(&mut self.batch, seq, schedule.due_ns(n), topic, self.cfg.size);
            }
            let count = upto - self.next;
            self.next = upto;
            let mut any = false;
            for slot in 0..self.peers.len() {
                let Some(peer) = self.peers[slot].as_mut() else { continue };
                any = true;
                match peer.offer(&self.batch, self.cfg.size, self.cfg.bound, now) {
                    Ok(()) => self.sync_interest(slot, now),
                    Err(e) => self.close_peer(slot, &format!("write failed: {e}"), now),
                }
            }
            if any {
                self.writes += 1;
            } else {
                self.no_gateway += count;
            }
        }
    }

    /// Arms the timer for the next wake-up: the next tick of a fixed grid, or the next message's due time if that
    /// is later (low rates).
    fn arm_next(&mut self, now: u64) -> io::Result<()> {
        if now < self.target_ns {
            // Woken early by a socket event: nothing new is due before the armed target, which stays.
            return Ok(());
        }
        let schedule = self.schedule.expect("started");
        let grid = self.target_ns + self.cfg.tick_ns;
        let next_due = schedule.due_ns(self.next);
        // Woken more than a tick late (a stall): everything due has just gone out; re-anchor on the next due time
        // so that the wake-ups stay in phase with the schedule (anchoring on `now` would leave every later message
        // waiting for a fraction of a tick, for the rest of the run).
        self.target_ns = if grid > now { grid.max(next_due) } else { next_due };
        self.timer.arm_at(self.target_ns.saturating_sub(self.cfg.spin_ns))
    }

    fn spin_until_target(&mut self) {
        if self.schedule.is_none() {
            return;
        }
        let mut now = msg::monotonic_ns();
        if self.cfg.spin_ns > 0 && now < self.target_ns && self.target_ns - now <= self.cfg.spin_ns {
            while now < self.target_ns {
                std::hint::spin_loop();
                now = msg::monotonic_ns();
            }
        }
        if now >= self.target_ns {
            let _ = self.wake_late_us.record((now - self.target_ns) / 1_000);
        }
    }

    fn handle(&mut self, event: &mio::event::Event, now: u64) {
        match event.token() {
            TIMER => self.timer.clear(),
            LISTENER => self.accept_all(now),
            CONNECTING => self.finish_connect(now),
            Token(t) => {
                let slot = t - FIRST_PEER;
                let Some(peer) = self.peers.get_mut(slot).and_then(Option::as_mut) else { return };
                if event.is_readable() || event.is_read_closed() {
                    match peer.drain_input(&mut self.scratch) {
                        Ok(true) => {}
                        Ok(false) => return self.close_peer(slot, "closed the connection", now),
                        Err(e) => return self.close_peer(slot, &format!("read failed: {e}"), now),
                    }
                }
                if event.is_writable() {
                    match peer.flush(now) {
                        Ok(()) => self.sync_interest(slot, now),
                        Err(e) => self.close_peer(slot, &format!("write failed: {e}"), now),
                    }
                }
            }
        }
    }

    /// Watches a peer for writability only while it has a backlog: otherwise every ACK would wake the sender.
    fn sync_interest(&mut self, slot: usize, now: u64) {
        let Some(peer) = self.peers[slot].as_mut() else { return };
        let want = peer.pending() > 0;
        if want == peer.watching_writable {
            return;
        }
        let interest = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        match self.poll.registry().reregister(&mut peer.stream, Token(FIRST_PEER + slot), interest) {
            Ok(()) => peer.watching_writable = want,
            Err(e) => self.close_peer(slot, &format!("cannot watch the socket: {e}"), now),
        }
    }

    fn accept_all(&mut self, now: u64) {
        loop {
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((stream, addr)) => self.add_peer(stream, addr, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and the like: say so and try again on the next readiness event.
                    eprintln!("feed: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn add_peer(&mut self, mut stream: TcpStream, addr: SocketAddr, now: u64) {
        let _ = stream.set_nodelay(true);
        let slot = self.peers.iter().position(Option::is_none).unwrap_or_else(|| {
            self.peers.push(None);
            self.peers.len() - 1
        });
        if let Err(e) = self.poll.registry().register(&mut stream, Token(FIRST_PEER + slot), Interest::READABLE) {
            eprintln!("feed: cannot register gateway {addr}: {e}");
            return;
        }
        self.peers[slot] = Some(Peer::new(stream, addr));
        self.connected += 1;
        let open = self.peers.iter().flatten().count();
        let at = if self.schedule.is_some() { format!(" at message {}", self.next) } else { String::new() };
        eprintln!("feed: gateway {addr} connected{at} ({open} connected)");
        if self.schedule.is_none() && self.cfg.start_on_connect {
            self.start(now);
        }
    }

    fn close_peer(&mut self, slot: usize, why: &str, now: u64) {
        let Some(mut peer) = self.peers[slot].take() else { return };
        let _ = self.poll.registry().deregister(&mut peer.stream);
        self.disconnected += 1;
        self.retire(&peer, now);
        let open = self.peers.iter().flatten().count();
        eprintln!("feed: gateway {} {why}; {open} still connected", peer.addr);
        if matches!(self.connector, Connector::Connected) && self.ended_ns.is_none() {
            self.connector = Connector::Idle { retry_at: now + RECONNECT_NS };
        }
    }

    /// Adds a departing peer's counters to the totals (its unsent messages count as dropped).
    fn retire(&mut self, peer: &Peer, now: u64) {
        self.gone_dropped += peer.dropped + peer.pending().div_ceil(self.cfg.size) as u64;
        self.gone_behind_ns = self.gone_behind_ns.max(peer.behind_ns(now));
        self.gone_max_backlog = self.gone_max_backlog.max(peer.max_backlog);
    }

    /// `--connect`: starts a non-blocking connect when it is time.
    fn step_connector(&mut self, now: u64) {
        let (Connector::Idle { retry_at }, Some(addr)) = (&self.connector, self.connect_addr) else { return };
        if now < *retry_at {
            return;
        }
        match TcpStream::connect(addr) {
            Ok(mut stream) => match self.poll.registry().register(&mut stream, CONNECTING, Interest::WRITABLE) {
                Ok(()) => self.connector = Connector::Connecting { stream },
                Err(e) => self.connect_failed(&e, now),
            },
            Err(e) => self.connect_failed(&e, now),
        }
    }

    fn finish_connect(&mut self, now: u64) {
        let Connector::Connecting { stream } = &mut self.connector else { return };
        let result = match (stream.take_error(), stream.peer_addr()) {
            (Ok(None), Ok(addr)) => Ok(addr),
            (Ok(Some(e)) | Err(e), _) | (_, Err(e)) => Err(e),
        };
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::NotConnected) {
            return; // a wake-up before the handshake finished
        }
        let Connector::Connecting { mut stream } = std::mem::replace(&mut self.connector, Connector::Connected) else {
            unreachable!("checked above")
        };
        let _ = self.poll.registry().deregister(&mut stream);
        match result {
            Ok(addr) => {
                self.connect_fails = 0;
                self.add_peer(stream, addr, now);
            }
            Err(e) => self.connect_failed(&e, now),
        }
    }

    fn connect_failed(&mut self, e: &io::Error, now: u64) {
        if self.connect_fails == 0 {
            let addr = self.connect_addr.expect("connect mode");
            eprintln!("feed: cannot connect to {addr} ({e}); retrying every {} ms", RECONNECT_NS / 1_000_000);
        }
        self.connect_fails += 1;
        self.connector = Connector::Idle { retry_at: now + RECONNECT_NS };
    }

    /// After the schedule: gives backlogs up to `--drain` to go out, then closes every connection.
    fn drain_backlogs(&mut self, events: &mut Events) {
        let deadline = msg::monotonic_ns() + self.cfg.drain_ns;
        loop {
            let now = msg::monotonic_ns();
            for slot in 0..self.peers.len() {
                if let Some(peer) = self.peers[slot].as_mut() {
                    if let Err(e) = peer.flush(now) {
                        self.close_peer(slot, &format!("write failed: {e}"), now);
                    }
                }
            }
            if now >= deadline || self.peers.iter().flatten().all(|p| p.pending() == 0) {
                break;
            }
            let _ = self.poll.poll(events, Some(Duration::from_nanos(deadline - now)));
        }
        let now = msg::monotonic_ns();
        for slot in 0..self.peers.len() {
            if let Some(mut peer) = self.peers[slot].take() {
                if peer.pending() > 0 {
                    eprintln!("feed: gateway {}: {} bytes unsent after the drain time", peer.addr, peer.pending());
                }
                let _ = peer.stream.shutdown(std::net::Shutdown::Write);
                let _ = self.poll.registry().deregister(&mut peer.stream);
                self.retire(&peer, now);
            }
        }
    }

    fn summary(&self, end_ns: u64) -> Summary {
        let start = self.schedule.map_or(end_ns, |s| s.start_ns());
        // A bounded run that completed lasted exactly its duration on the schedule's clock.
        let elapsed_ns = match (self.cfg.duration_ns, self.end) {
            (Some(d), Some(end)) if self.next >= end => d,
            _ => end_ns.saturating_sub(start),
        };
        let elapsed_s = elapsed_ns as f64 / 1e9;
        let ms = |us: u64| us as f64 / 1e3;
        let live = self.peers.iter().flatten();
        Summary {
            messages_sent: self.next,
            rate_target: self.cfg.rate,
            rate_achieved: if elapsed_s > 0.0 { self.next as f64 / elapsed_s } else { 0.0 },
            elapsed_s,
            size: self.cfg.size,
            topics: self.cfg.topics.len(),
            max_lag_ms: ms(self.lag_us.max()),
            lag_p50_ms: ms(self.lag_us.value_at_quantile(0.5)),
            lag_p99_ms: ms(self.lag_us.value_at_quantile(0.99)),
            wake_late_p50_us: self.wake_late_us.value_at_quantile(0.5) as f64,
            wake_late_p99_us: self.wake_late_us.value_at_quantile(0.99) as f64,
            wake_late_max_us: self.wake_late_us.max() as f64,
            writes: self.writes,
            behind_ms: self.gone_behind_ns.max(live.clone().map(|p| p.behind_ns(end_ns)).max().unwrap_or(0)) as f64
                / 1e6,
            max_backlog_bytes: self.gone_max_backlog.max(live.clone().map(|p| p.max_backlog).max().unwrap_or(0)),
            dropped: self.gone_dropped + live.map(|p| p.dropped).sum::<u64>(),
            no_gateway: self.no_gateway,
            gateways_connected: self.connected,
            gateways_disconnected: self.disconnected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("20us"), Ok(Duration::from_micros(20)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
