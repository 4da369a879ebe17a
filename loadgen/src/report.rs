//! The final report of a `subscribe` or `echo` run: workers' results summed, per-message costs derived, printed
//! for people and written as JSON (`--json`) and as an HdrHistogram percentile distribution (`--hgrm`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::control::{Mode, WorkerResult};
use crate::coordinator::CommonArgs;
use crate::hist::{self, LatencyUs};
use crate::report_topics::{RunFigures, TopicReport};
use crate::topics::TopicPlan;

/// Above this share of one core used by a worker during the window, the client may be the bottleneck.
pub const CLIENT_BUSY_FRACTION: f64 = 0.8;

/// What the parent sampled from `/proc` around the window.
#[derive(Debug, Clone)]
pub struct Sampled {
    pub window_ns: u64,
    /// Gateway utime+stime over the window, all `--server-pid`s summed.
    pub server_cpu_ns: Option<u64>,
    /// Gateway VmRSS before the first connection and once all were up.
    pub server_rss_before: Option<u64>,
    pub server_rss_after: Option<u64>,
    /// The opening of the connections (before the window).
    pub connect: ConnectPhase,
    /// Each worker's CPU over the window.
    pub worker_cpu_ns: Vec<Option<u64>>,
    pub parent_cpu_ns: u64,
}

/// From before the first connection attempt to every connection up (or failed): what opening them cost.
#[derive(Debug, Clone)]
pub struct ConnectPhase {
    pub wall_ns: u64,
    /// Gateway utime+stime over the phase, all `--server-pid`s summed.
    pub server_cpu_ns: Option<u64>,
    /// Workers (from their start) and the parent.
    pub loadgen_cpu_ns: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub connections: u64,
    pub procs: usize,
    pub connections_ok: u64,
    pub connections_failed: u64,
    pub failure_reasons: BTreeMap<String, u64>,
    pub handshakes_per_s: f64,
    pub disconnects: u64,
    pub disconnect_reasons: BTreeMap<String, u64>,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub grace_s: f64,
    /// Messages received in the window (duplicates included): the denominator of the per-message costs.
    pub messages_in_window: u64,
    pub messages_per_s: f64,
    pub messages_expected: u64,
    pub messages_received: u64,
    pub messages_lost: u64,
    /// Of `messages_lost`, those not arrived by the end of the grace period (beyond each connection's highest
    /// received number): late rather than skipped when latency exceeds `--grace`.
    pub messages_lost_tail: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub reorders: u64,
    pub unparsed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sends_dropped: Option<u64>,
    pub latency_us: LatencyUs,
    /// Echo: how late the client sent (actual − scheduled send time), over the window's sends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag_us: Option<LatencyUs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_ns_per_msg: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_cores: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_bytes_per_conn: Option<f64>,
    /// Gateway CPU while the connections were opened ÷ connections opened: accept, TLS handshake, upgrade.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_conn_opened: Option<f64>,
    /// The same CPU over the phase's length: near the gateway's loop threads, the gateway was the limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_server_cpu_cores: Option<f64>,
    /// The loadgen's CPU over the same phase: near its process count, the client was the limit.
    pub connect_loadgen_cpu_cores: f64,
    pub loadgen_cpu_ns_per_msg: Option<f64>,
    pub loadgen_cpu_cores: f64,
    /// Largest share of one core used by a single worker process during the window.
    pub loadgen_max_proc_core_fraction: f64,
    pub accounting_approximate: bool,
    pub warnings: Vec<String>,
    /// `--topics`: "pass" when exactly-once delivery was verified, else "fail" with `verdict_failures`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verdict_failures: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topics: Option<TopicReport>,
    #[serde(skip)]
    pub histogram: Option<hdrhistogram::Histogram<u64>>,
}

impl Report {
    pub fn build(
        mode: Mode,
        args: &CommonArgs,
        procs: usize,
        results: &[WorkerResult],
        s: &Sampled,
        topics: Option<&TopicPlan>,
    ) -> Result<Report, String> {
        let mut h = hist::new_histogram();
        for r in results {
            h.add(hist::decode(&r.histogram)?).map_err(|e| format!("histogram: {e:?}"))?;
        }
        let mut lag = None;
        for r in results {
            if let Some(text) = &r.send_lag_histogram {
                let l = lag.get_or_insert_with(hist::new_histogram);
                l.add(hist::decode(text)?).map_err(|e| format!("histogram: {e:?}"))?;
            }
        }
        let sum = |f: fn(&WorkerResult) -> u64| results.iter().map(f).sum::<u64>();
        let merge = |f: fn(&WorkerResult) -> &BTreeMap<String, u64>| {
            let mut m = BTreeMap::new();
            for r in results {
                for (k, v) in f(r) {
                    *m.entry(k.clone()).or_insert(0) += v;
                }
            }
            m
        };
        let connections_ok = sum(|r| r.connections_ok);
        let first = results.iter().map(|r| r.first_attempt_ns).min().unwrap_or(0);
        let last = results.iter().map(|r| r.last_ok_ns).max().unwrap_or(0);
        let handshakes_per_s = if connections_ok > 0 && last > first {
            connections_ok as f64 / ((last - first) as f64 / 1e9)
        } else {
            0.0
        };
        let window_s = s.window_ns as f64 / 1e9;
        let in_window = sum(|r| r.messages_in_window);
        let expected = sum(|r| r.messages_expected);
        let received = sum(|r| r.messages_received);
        let per_msg = |ns: u64| (in_window > 0).then(|| ns as f64 / in_window as f64);
        let loadgen_cpu: u64 = s.worker_cpu_ns.iter().flatten().sum::<u64>() + s.parent_cpu_ns;
        let max_fraction = s.worker_cpu_ns.iter().flatten().map(|&c| c as f64 / s.window_ns as f64).fold(0.0, f64::max);
        let mut warnings = Vec::new();
        if max_fraction > CLIENT_BUSY_FRACTION {
            warnings.push(format!(
                "a loadgen process used {:.0}% of a core during the window: the client may be the limit \
                 (use more --procs, or fewer connections per process)",
                max_fraction * 100.0
            ));
        }
        let approximate = results.iter().any(|r| r.ranges_dropped);
        if approximate {
            warnings.push("some stream had more than 1024 open gaps: loss counts are approximate".into());
        }
        let lost_tail = sum(|r| r.messages_lost_tail);
        if lost_tail > 0 && h.max() as f64 > args.grace * 1e9 {
            warnings.push(format!(
                "{lost_tail} messages had not arrived by the end of the grace period and latency reached {:.1} s \
                 (> --grace {} s): they are probably late, not lost; raise --grace to tell",
                h.max() as f64 / 1e9,
                args.grace
            ));
        }
        let echo = matches!(mode, Mode::Echo { .. });
        let figures = RunFigures {
            connections_ok,
            connections_failed: sum(|r| r.connections_failed),
            window_s,
            messages_in_window: in_window,
            messages_lost: expected.saturating_sub(received),
            messages_lost_tail: lost_tail,
            duplicates: sum(|r| r.duplicates),
            reorders: sum(|r| r.reorders),
            unparsed: sum(|r| r.unparsed),
        };
        let topics = topics.map(|plan| TopicReport::build(plan, results, &figures));
        let verdict_failures = topics.as_ref().map(|t| t.failures(&figures)).unwrap_or_default();
        let verdict = topics.as_ref().map(|_| if verdict_failures.is_empty() { "pass" } else { "fail" });
        Ok(Report {
            mode: if echo { "echo" } else { "subscribe" },
            connections: args.connections,
            procs,
            connections_ok,
            connections_failed: sum(|r| r.connections_failed),
            failure_reasons: merge(|r| &r.failure_reasons),
            handshakes_per_s,
            disconnects: sum(|r| r.disconnects),
            disconnect_reasons: merge(|r| &r.disconnect_reasons),
            warmup_s: args.warmup,
            duration_s: window_s,
            grace_s: args.grace,
            messages_in_window: in_window,
            messages_per_s: in_window as f64 / window_s.max(1e-9),
            messages_expected: expected,
            messages_received: received,
            messages_lost: expected.saturating_sub(received),
            messages_lost_tail: sum(|r| r.messages_lost_tail),
            gaps: sum(|r| r.gaps),
            duplicates: sum(|r| r.duplicates),
            reorders: sum(|r| r.reorders),
            unparsed: sum(|r| r.unparsed),
            messages_sent: echo.then(|| sum(|r| r.messages_sent)),
            sends_dropped: echo.then(|| sum(|r| r.sends_dropped)),
            latency_us: LatencyUs::from_histogram(&h),
            send_lag_us: lag.as_ref().map(LatencyUs::from_histogram),
            server_cpu_ns_per_msg: s.server_cpu_ns.and_then(per_msg),
            server_cpu_cores: s.server_cpu_ns.map(|c| c as f64 / s.window_ns as f64),
            server_rss_bytes_per_conn: match (s.server_rss_before, s.server_rss_after) {
                (Some(b), Some(a)) if connections_ok > 0 => Some((a as f64 - b as f64) / connections_ok as f64),
                _ => None,
            },
            server_cpu_us_per_conn_opened: s
                .connect
                .server_cpu_ns
                .filter(|_| connections_ok > 0)
                .map(|c| c as f64 / 1e3 / connections_ok as f64),
            connect_server_cpu_cores: s.connect.server_cpu_ns.map(|c| c as f64 / s.connect.wall_ns.max(1) as f64),
            connect_loadgen_cpu_cores: s.connect.loadgen_cpu_ns as f64 / s.connect.wall_ns.max(1) as f64,
            loadgen_cpu_ns_per_msg: per_msg(loadgen_cpu),
            loadgen_cpu_cores: loadgen_cpu as f64 / s.window_ns as f64,
            loadgen_max_proc_core_fraction: max_fraction,
            accounting_approximate: approximate,
            warnings,
            verdict,
            verdict_failures,
            topics,
            histogram: Some(h),
        })
    }

    /// The human-readable summary.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "wsgate-loadgen {}: {} connections over {} process(es)",
            self.mode, self.connections, self.procs
        );
        let _ = writeln!(
            o,
            "  connections   ok {}  failed {}  handshakes {:.0}/s  disconnects {}",
            self.connections_ok, self.connections_failed, self.handshakes_per_s, self.disconnects
        );
        if let (Some(us), Some(cores)) = (self.server_cpu_us_per_conn_opened, self.connect_server_cpu_cores) {
            let _ = writeln!(
                o,
                "  opening       server {us:.0} µs/connection ({cores:.2} cores), loadgen {:.2} cores",
                self.connect_loadgen_cpu_cores
            );
        }
        for (reason, n) in &self.failure_reasons {
            let _ = writeln!(o, "    failed: {reason}: {n}");
        }
        for (reason, n) in &self.disconnect_reasons {
            let _ = writeln!(o, "    disconnected: {reason}: {n}");
        }
        let _ = writeln!(
            o,
            "  window        {:.1} s after {:.1} s warm-up (+{:.1} s grace for late messages)",
            self.duration_s, self.warmup_s, self.grace_s
        );
        let _ = writeln!(
            o,
            "  messages      expected {}  received {}  lost {} (not arrived by the end: {})  ({:.0} msg/s in window)",
            self.messages_expected,
            self.messages_received,
            self.messages_lost,
            self.messages_lost_tail,
            self.messages_per_s
        );
        let _ = writeln!(
            o,
            "  order         gaps {}  duplicates {}  reorders {}  unparsed {}",
            self.gaps, self.duplicates, self.reorders, self.unparsed
        );
        if let (Some(sent), Some(dropped)) = (self.messages_sent, self.sends_dropped) {
            let _ = writeln!(o, "  sent          {sent}  dropped (send queue full) {dropped}");
        }
        let l = &self.latency_us;
        let _ = writeln!(
            o,
            "  latency (µs)  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  p99.99 {:.1}  max {:.1}  ({} samples)",
            l.p50, l.p90, l.p99, l.p999, l.p9999, l.max, l.count
        );
        if let Some(l) = &self.send_lag_us {
            let _ = writeln!(
                o,
                "  send lag (µs) p50 {:.1}  p99 {:.1}  max {:.1}  (client lateness, included above)",
                l.p50, l.p99, l.max
            );
        }
        match (self.server_cpu_ns_per_msg, self.server_cpu_cores) {
            (Some(ns), Some(cores)) => {
                let _ = writeln!(o, "  server CPU    {ns:.0} ns/msg  ({cores:.2} cores)");
            }
            (None, Some(cores)) => {
                let _ = writeln!(o, "  server CPU    {cores:.2} cores (no message in window)");
            }
            _ => {}
        }
        if let Some(b) = self.server_rss_bytes_per_conn {
            let _ = writeln!(o, "  server RSS    {b:.0} B/connection");
        }
        let _ = writeln!(
            o,
            "  loadgen CPU   {} ns/msg  ({:.2} cores; busiest process {:.0}% of a core)",
            self.loadgen_cpu_ns_per_msg.map_or("-".into(), |v| format!("{v:.0}")),
            self.loadgen_cpu_cores,
            self.loadgen_max_proc_core_fraction * 100.0
        );
        if let Some(t) = &self.topics {
            t.render(&mut o);
        }
        for w in &self.warnings {
            let _ = writeln!(o, "  WARNING: {w}");
        }
        match self.verdict {
            Some("pass") => {
                let _ = writeln!(
                    o,
                    "  VERDICT       pass: every message once, in order, per topic (gaps only where announced)"
                );
            }
            Some(_) => {
                let _ = writeln!(o, "  VERDICT       FAIL: {}", self.verdict_failures.join("; "));
            }
            None => {}
        }
        o
    }

    /// A `--topics` run whose verdict is "fail".
    pub fn verdict_failed(&self) -> bool {
        self.verdict == Some("fail")
    }

    /// Prints the summary and writes `--json` / `--hgrm`.
    pub fn emit(&self, args: &CommonArgs) -> Result<(), String> {
        print!("{}", self.render());
        if let Some(path) = &args.json {
            let text = serde_json::to_string_pretty(self).expect("report serializes");
            std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        if let (Some(path), Some(h)) = (&args.hgrm, &self.histogram) {
            let mut out = Vec::new();
            hist::write_hgrm(h, &mut out).expect("writing to a Vec cannot fail");
            std::fs::write(path, out).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(())
    }
}
