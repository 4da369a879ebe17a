//! The parent process of a `subscribe` or `echo` run: splits the connections over worker processes (re-executing
//! this binary as the hidden `worker` subcommand), prints a progress line every second, sets one measured window
//! for all of them once every connection attempt has finished, samples the gateway's CPU and memory (and the
//! workers' CPU) at the window's edges, and sums the workers' results into a [`Report`].
//!
//! It opens no connection itself; see [`crate::control`] for the protocol with the workers.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::addrs::Target;
use crate::control::{Mode, ToParent, ToWorker, WorkerResult, WorkerSpec};
use crate::msg::monotonic_ns;
use crate::procstat;
use crate::report::{ConnectPhase, Report, Sampled};
use crate::topics::TopicPlan;

/// Options shared by `subscribe` and `echo`.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Gateway URL, `ws://HOST:PORT/PATH`, or `wss://HOST:PORT/PATH` with `--tls-ca`.
    #[arg(long)]
    pub url: String,
    /// `wss://`: PEM file of the certificates to trust (a CA, or the gateway's self-signed certificate); the
    /// server name checked is the URL's host. No system store is used.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Connections to open (over all processes).
    #[arg(long, default_value_t = 1000)]
    pub connections: u64,
    /// Worker processes; 0 = as few as the open-files limit allows. Each runs one event-loop thread.
    #[arg(long, default_value_t = 0)]
    pub procs: usize,
    /// Source addresses to spread connections over, e.g. `127.0.0.2-127.0.0.40` (comma-separated list of
    /// addresses and ranges). Needed beyond ~28k connections to one gateway port.
    #[arg(long)]
    pub source_ips: Option<String>,
    /// Connection attempts per second (all processes together); default: as fast as `--max-pending` allows.
    #[arg(long)]
    pub ramp: Option<f64>,
    /// Most connection attempts in flight per process.
    #[arg(long, default_value_t = 256)]
    pub max_pending: usize,
    /// Seconds a connection attempt (TCP connect + upgrade) may take before it counts as failed ("timeout").
    #[arg(long, default_value_t = 10.0)]
    pub handshake_timeout: f64,
    /// Seconds to wait after all connections are up before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds after the window during which late messages still count as received (not lost).
    #[arg(long, default_value_t = 1.0)]
    pub grace: f64,
    /// Write the latency distribution (µs) in HdrHistogram's `.hgrm` text format to this file.
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A gateway process to sample (CPU per message, RSS per connection); repeat for several, they are summed.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Echo: least time between two wake-ups of a process for sends, µs. Bounds the wake-up rate (each costs
    /// a context switch); a send is late by at most this, and the lateness is reported (`send_lag_us`) and
    /// included in the latency (sends carry their scheduled time).
    #[arg(long, default_value_t = 100)]
    pub min_wake_us: u64,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

enum FromWorker {
    Msg(usize, ToParent),
    Exited(usize),
}

struct WorkerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    progress: (u64, u64, u64, u64),
    up: bool,
    maxes: Option<BTreeMap<String, u64>>,
    result: Option<WorkerResult>,
    exited: bool,
}

impl WorkerProc {
    fn tell(&mut self, msg: &ToWorker) {
        if let Some(stdin) = &mut self.stdin {
            let mut line = serde_json::to_vec(msg).expect("control messages serialize");
            line.push(b'\n');
            let _ = stdin.write_all(&line).and_then(|()| stdin.flush());
        }
    }
}

/// How many processes `connections` need under the open-files hard limit, and that limit.
pub fn plan_procs(connections: u64, requested: usize) -> Result<(usize, u64), String> {
    procstat::raise_nofile_to_hard().map_err(|e| format!("cannot raise the open-files limit: {e}"))?;
    let (_, hard) = procstat::nofile_limit().map_err(|e| format!("getrlimit: {e}"))?;
    let per_proc = hard.saturating_sub(procstat::FD_RESERVE).max(1);
    let needed = connections.div_ceil(per_proc).max(1) as usize;
    let procs = if requested == 0 { needed } else { requested };
    let share = connections.div_ceil(procs as u64);
    if share + procstat::FD_RESERVE > hard {
        return Err(format!(
            "{procs} process(es) would hold {share} connections each, but the open-files hard limit is {hard} \
             (and cannot be raised): use --procs {needed} or more"
        ));
    }
    Ok((procs, hard))
}

/// Runs the whole measurement and returns the report (already printed unless `quiet`). `topics`: the topic
/// workload of `subscribe --topics`.
pub fn run(mode: Mode, args: &CommonArgs, topics: Option<&TopicPlan>) -> Result<Report, String> {
    let target: Target = crate::addrs::parse_url(&args.url)?;
    match (&args.tls_ca, target.tls) {
        // Checked here once, so a bad file fails the run before any worker starts.
        (Some(ca), true) => drop(crate::tls::Client::new(ca, target.host_name())?),
        (None, true) => return Err(format!("{}: wss:// needs --tls-ca FILE (the certificate to trust)", args.url)),
        (Some(_), false) => return Err(format!("--tls-ca is for wss:// URLs, not {}", args.url)),
        (None, false) => {}
    }
    let source_ips: Vec<Ipv4Addr> = match &args.source_ips {
        Some(s) => crate::addrs::parse_source_ips(s)?,
        None => Vec::new(),
    };
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    let (procs, _) = plan_procs(args.connections, args.procs)?;
    let mut warnings = Vec::new();
    let ports = local_port_count();
    let per_src = args.connections.div_ceil(source_ips.len().max(1) as u64);
    if per_src > ports {
        warnings.push(format!(
            "{per_src} connections per source address to one destination but only {ports} ephemeral ports: \
             pass --source-ips with at least {} addresses",
            args.connections.div_ceil(ports)
        ));
    }
    for w in &warnings {
        eprintln!("wsgate-loadgen: warning: {w}");
    }

    let rss_before = procstat::total_rss_bytes(&args.server_pids);
    let connect_start = ConnectStart {
        at: Instant::now(),
        server_cpu_ns: procstat::total_cpu_ns(&args.server_pids),
        self_cpu_ns: procstat::self_cpu_ns(),
    };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
    let salt = u64::from(std::process::id()) << 32 ^ monotonic_ns();
    let (tx, rx) = mpsc::channel();
    let mut workers = Vec::with_capacity(procs);
    let mut first_index = 0;
    for w in 0..procs {
        let count = args.connections / procs as u64 + u64::from((w as u64) < args.connections % procs as u64);
        let spec = WorkerSpec {
            worker: w,
            mode,
            target: target.clone(),
            connections: count,
            first_index,
            source_ips: source_ips.clone(),
            ramp_per_s: args.ramp.map(|r| r / procs as f64),
            max_pending: args.max_pending.max(1),
            handshake_timeout_ms: (args.handshake_timeout * 1000.0) as u64,
            grace_ms: (args.grace * 1000.0) as u64,
            min_wake_us: args.min_wake_us,
            salt,
            topics: topics.cloned(),
            tls_ca: args.tls_ca.clone(),
        };
        first_index += count;
        let mut child = Command::new(&exe)
            .arg("worker")
            .arg("--spec")
            .arg(serde_json::to_string(&spec).expect("spec serializes"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start worker {w} ({}): {e}", exe.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<ToParent>(&line) {
                    Ok(m) => {
                        if tx.send(FromWorker::Msg(w, m)).is_err() {
                            return;
                        }
                    }
                    Err(e) => eprintln!("wsgate-loadgen: worker {w}: bad line {line:?}: {e}"),
                }
            }
            let _ = tx.send(FromWorker::Exited(w));
        });
        let pid = child.id();
        workers.push(WorkerProc {
            stdin: child.stdin.take(),
            child,
            pid,
            progress: (0, 0, 0, 0),
            up: false,
            maxes: None,
            result: None,
            exited: false,
        });
    }
    drop(tx);

    let mut coord = Coordinator {
        rx,
        workers,
        started: Instant::now(),
        last_progress: Instant::now(),
        last_messages: 0,
        quiet: args.quiet,
        phase: "connecting",
    };
    let result = coord.drive(args, rss_before, &connect_start);
    for w in &mut coord.workers {
        w.stdin = None;
        if result.is_err() {
            let _ = w.child.kill();
        }
        let _ = w.child.wait();
    }
    let (sampled, results) = result?;
    let mut report = Report::build(mode, args, procs, &results, &sampled, topics)?;
    report.warnings.splice(0..0, warnings);
    Ok(report)
}

struct Coordinator {
    rx: mpsc::Receiver<FromWorker>,
    workers: Vec<WorkerProc>,
    started: Instant,
    last_progress: Instant,
    last_messages: u64,
    quiet: bool,
    phase: &'static str,
}

impl Coordinator {
    /// Receives worker messages until `done` holds, or fails at `deadline`.
    fn wait_until(&mut self, deadline: Instant, mut done: impl FnMut(&[WorkerProc]) -> bool) -> Result<(), String> {
        loop {
            if done(&self.workers) {
                return Ok(());
            }
            if let Some(w) = self.workers.iter().position(|w| w.exited && w.result.is_none()) {
                return Err(format!("worker {w} exited without a result (see its messages above)"));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("timed out while {}", self.phase));
            }
            let next_progress = self.last_progress + Duration::from_secs(1);
            if now >= next_progress {
                self.print_progress();
            }
            let wait = deadline.min(next_progress).saturating_duration_since(now).max(Duration::from_millis(1));
            match self.rx.recv_timeout(wait) {
                Ok(FromWorker::Msg(w, msg)) => self.handle(w, msg)?,
                Ok(FromWorker::Exited(w)) => self.workers[w].exited = true,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if !done(&self.workers) {
                        return Err("every worker exited".into());
                    }
                }
            }
        }
    }

    fn handle(&mut self, w: usize, msg: ToParent) -> Result<(), String> {
        let wp = &mut self.workers[w];
        match msg {
            ToParent::Progress { open, failed, messages, errors } => wp.progress = (open, failed, messages, errors),
            ToParent::Up { ok, failed } => {
                wp.up = true;
                wp.progress.0 = ok;
                wp.progress.1 = failed;
            }
            ToParent::Maxes { maxes } => wp.maxes = Some(maxes),
            ToParent::Result { result } => wp.result = Some(*result),
            ToParent::Fatal { error } => return Err(format!("worker {w}: {error}")),
        }
        Ok(())
    }

    fn print_progress(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.last_progress).as_secs_f64();
        self.last_progress = now;
        let (open, failed, messages, errors) = self.workers.iter().fold((0, 0, 0, 0), |a, w| {
            (a.0 + w.progress.0, a.1 + w.progress.1, a.2 + w.progress.2, a.3 + w.progress.3)
        });
        let rate = messages.saturating_sub(self.last_messages) as f64 / dt.max(1e-3);
        self.last_messages = messages;
        if !self.quiet {
            eprintln!(
                "[{:5.1}s] {:<10} open {open:>7}  failed {failed:>6}  {rate:>11.0} msg/s  errors {errors}",
                self.started.elapsed().as_secs_f64(),
                self.phase,
            );
        }
    }

    fn sleep_until_ns(&mut self, at_ns: u64) -> Result<(), String> {
        let wait = Duration::from_nanos(at_ns.saturating_sub(monotonic_ns()));
        self.wait_until(Instant::now() + wait, |_| false).or_else(|e| {
            if e.starts_with("timed out") {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        // recv_timeout may wake a little early: finish on the clock the workers use.
        while monotonic_ns() < at_ns {
            std::thread::sleep(Duration::from_nanos(at_ns.saturating_sub(monotonic_ns())));
        }
        Ok(())
    }

    /// The opening of the connections, from before the first worker started to every worker up: its length,
    /// the gateway's CPU over it and the loadgen's (workers, from their start, and this process).
    fn connect_phase(&self, args: &CommonArgs, start: &ConnectStart) -> ConnectPhase {
        let workers: u64 = self.workers.iter().filter_map(|w| procstat::cpu_ns(w.pid).ok()).sum();
        ConnectPhase {
            wall_ns: start.at.elapsed().as_nanos() as u64,
            server_cpu_ns: start
                .server_cpu_ns
                .zip(procstat::total_cpu_ns(&args.server_pids))
                .map(|(a, b)| b.saturating_sub(a)),
            loadgen_cpu_ns: workers + procstat::self_cpu_ns().saturating_sub(start.self_cpu_ns),
        }
    }

    fn drive(
        &mut self,
        args: &CommonArgs,
        rss_before: Option<u64>,
        connect_start: &ConnectStart,
    ) -> Result<(Sampled, Vec<WorkerResult>), String> {
        let n = args.connections as f64;
        let connect_budget = args.ramp.map_or(0.0, |r| n / r) + args.handshake_timeout + n / 500.0 + 30.0;
        self.wait_until(Instant::now() + Duration::from_secs_f64(connect_budget), |ws| ws.iter().all(|w| w.up))?;
        let rss_after = procstat::total_rss_bytes(&args.server_pids);
        let connect = self.connect_phase(args, connect_start);
        let start_ns = monotonic_ns() + (args.warmup * 1e9) as u64;
        let end_ns = start_ns + (args.duration * 1e9) as u64;
        for w in &mut self.workers {
            w.tell(&ToWorker::Window { start_ns, end_ns });
        }
        self.phase = "warmup";
        self.sleep_until_ns(start_ns)?;
        let pids: Vec<u32> = self.workers.iter().map(|w| w.pid).collect();
        let server_cpu_start = procstat::total_cpu_ns(&args.server_pids);
        let worker_cpu_start: Vec<Option<u64>> = pids.iter().map(|&p| procstat::cpu_ns(p).ok()).collect();
        let self_cpu_start = procstat::self_cpu_ns();
        self.phase = "measuring";
        self.sleep_until_ns(end_ns)?;
        let server_cpu_end = procstat::total_cpu_ns(&args.server_pids);
        let worker_cpu_end: Vec<Option<u64>> = pids.iter().map(|&p| procstat::cpu_ns(p).ok()).collect();
        let self_cpu = procstat::self_cpu_ns() - self_cpu_start;
        self.phase = "grace";
        let deadline = Instant::now() + Duration::from_secs_f64(args.grace + 30.0);
        self.wait_until(deadline, |ws| ws.iter().all(|w| w.maxes.is_some()))?;
        let mut global: BTreeMap<String, u64> = BTreeMap::new();
        for w in &self.workers {
            for (topic, &max) in w.maxes.as_ref().expect("waited for") {
                let e = global.entry(topic.clone()).or_insert(max);
                *e = (*e).max(max);
            }
        }
        for w in &mut self.workers {
            w.tell(&ToWorker::Maxes { maxes: global.clone() });
        }
        self.wait_until(deadline, |ws| ws.iter().all(|w| w.result.is_some()))?;
        let worker_cpu_ns: Vec<Option<u64>> =
            worker_cpu_start.iter().zip(&worker_cpu_end).map(|(a, b)| Some(b.as_ref()? - a.as_ref()?)).collect();
        let sampled = Sampled {
            window_ns: end_ns - start_ns,
            server_cpu_ns: server_cpu_start.zip(server_cpu_end).map(|(a, b)| b.saturating_sub(a)),
            server_rss_before: rss_before,
            server_rss_after: rss_after,
            connect,
            worker_cpu_ns,
            parent_cpu_ns: self_cpu,
        };
        let results = self.workers.iter_mut().map(|w| w.result.take().expect("waited for")).collect();
        Ok((sampled, results))
    }
}

/// What was sampled just before the first worker started (see [`Coordinator::connect_phase`]).
struct ConnectStart {
    at: Instant,
    server_cpu_ns: Option<u64>,
    self_cpu_ns: u64,
}

/// Size of the kernel's ephemeral port range (`ip_local_port_range`), 28232 if unreadable.
fn local_port_count() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u64>().ok());
            let (lo, hi) = (it.next()??, it.next()??);
            Some(hi.saturating_sub(lo) + 1)
        })
        .unwrap_or(28_232)
}
