//! The built-in simulated market feed: JSON ticks from a random walk per symbol, paced on a fixed schedule.
//!
//! Message `n` (counted from the schedule's start) is due at `start + n / rate`, so the pace does not drift
//! with loop latency. All due messages are published as one batch, then the sink is flushed once. If the
//! thread falls more than [`MAX_LAG`] behind, the backlog is skipped (logged) rather than burst out.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::warn;

use super::pump::Out;
use super::rng::Rng;
use super::{DemoConfig, Sink};

/// Lag after which the schedule restarts from now instead of catching up.
const MAX_LAG: Duration = Duration::from_secs(1);
/// Relative size of one random-walk step (5 basis points).
const STEP: f64 = 0.0005;
/// Bid/ask spread relative to the mid price (1 basis point), at least one tick.
const SPREAD: f64 = 0.0001;

#[derive(Debug)]
struct Symbol {
    /// The symbol, which is also the topic of its ticks.
    name: String,
    /// `{"type":"tick","symbol":"<escaped>","seq":`, built once.
    prefix: Vec<u8>,
    mid: f64,
    /// Price increment; prices are whole ticks.
    tick: f64,
    decimals: usize,
    seq: u64,
}

/// The demo generator; see the module docs.
#[derive(Debug)]
pub(super) struct Demo {
    symbols: Vec<Symbol>,
    rate: u64,
    start: Instant,
    /// Messages published since `start`; message `sent` is the next one due.
    sent: u64,
    /// Round-robin position in `symbols`.
    next_symbol: usize,
    rng: Rng,
    /// Reused message buffer.
    buf: Vec<u8>,
}

impl Demo {
    /// Starts the schedule at `now` (`cfg` validated: rate > 0, symbols not empty).
    pub(super) fn new(cfg: &DemoConfig, now: Instant, rng: Rng) -> Self {
        let symbols = cfg
            .symbols
            .iter()
            .map(|name| {
                let mid = initial_price(name);
                let decimals = if mid >= 50.0 {
                    2
                } else if mid >= 1.0 {
                    4
                } else {
                    6
                };
                let mut prefix = b"{\"type\":\"tick\",\"symbol\":".to_vec();
                write_json_str(&mut prefix, name);
                prefix.extend_from_slice(b",\"seq\":");
                Symbol { name: name.clone(), prefix, mid, tick: 10f64.powi(-(decimals as i32)), decimals, seq: 0 }
            })
            .collect();
        Demo {
            symbols,
            rate: u64::from(cfg.rate_per_sec),
            start: now,
            sent: 0,
            next_symbol: 0,
            rng,
            buf: Vec::with_capacity(256),
        }
    }

    /// When the next message is due.
    pub(super) fn next_due(&self) -> Instant {
        self.start + offset(self.sent, self.rate)
    }

    /// Publishes every message due by `now`, then flushes once if any was published.
    pub(super) fn handle_timeout<S: Sink>(&mut self, now: Instant, out: &mut Out<'_, S>) -> u64 {
        let lag = now.saturating_duration_since(self.next_due());
        if lag > MAX_LAG {
            warn!(?lag, "demo feed fell behind; skipping the backlog");
            self.start = now;
            self.sent = 0;
        }
        let ts_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut published = 0;
        // A sink without room (backpressure) stops the burst; the schedule catches up (or skips) later.
        while self.next_due() <= now && (published % 64 != 0 || out.ready()) {
            let i = self.next_symbol;
            self.next_symbol = (i + 1) % self.symbols.len();
            self.buf.clear();
            tick(&mut self.symbols[i], &mut self.rng, ts_ms, &mut self.buf);
            out.publish_one(&self.symbols[i].name, &self.buf, &"demo");
            self.sent += 1;
            published += 1;
        }
        if published > 0 {
            out.flush();
        }
        published
    }
}

/// Time from the schedule's start until message `n` is due.
fn offset(n: u64, rate: u64) -> Duration {
    let nanos = u128::from(n) * 1_000_000_000 / u128::from(rate);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Advances the symbol's random walk and writes one tick message into `buf`.
fn tick(sym: &mut Symbol, rng: &mut Rng, ts_ms: u64, buf: &mut Vec<u8>) {
    sym.mid = (sym.mid * (1.0 + STEP * (2.0 * rng.next_f64() - 1.0))).max(sym.tick * 100.0);
    sym.seq += 1;
    let spread_ticks = ((sym.mid * SPREAD / sym.tick).round() as u64).max(1);
    let bid_ticks = (sym.mid / sym.tick - spread_ticks as f64 / 2.0).floor();
    let bid = bid_ticks * sym.tick;
    let ask = (bid_ticks + spread_ticks as f64) * sym.tick;
    let last = (bid_ticks + rng.below(spread_ticks + 1) as f64) * sym.tick;
    let size = (1 + rng.below(500)) as f64 / 100.0;
    let d = sym.decimals;
    buf.extend_from_slice(&sym.prefix);
    // Writing into a Vec cannot fail.
    let _ = write!(
        buf,
        "{},\"ts_ms\":{ts_ms},\"bid\":{bid:.d$},\"ask\":{ask:.d$},\"last\":{last:.d$},\"size\":{size:.2}}}",
        sym.seq
    );
}

/// A plausible starting price for well-known symbols, 100 for others.
fn initial_price(symbol: &str) -> f64 {
    match symbol {
        "BTC-USD" => 64_000.0,
        "ETH-USD" => 3_200.0,
        "SOL-USD" => 150.0,
        "AAPL" => 190.0,
        "MSFT" => 420.0,
        "EUR-USD" => 1.08,
        _ => 100.0,
    }
}

/// Writes `s` as a JSON string literal.
fn write_json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    for c in s.chars() {
        match c {
            '"' => buf.extend_from_slice(b"\\\""),
            '\\' => buf.extend_from_slice(b"\\\\"),
            c if c < ' ' => {
                let _ = write!(buf, "\\u{:04x}", c as u32);
            }
            c => buf.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    buf.push(b'"');
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::upstream::pump::with_out;
    use crate::upstream::test_support::{channel_sink, RecordSink};

    /// The text after `"field":` up to the next `,` or `}`.
    fn field<'a>(msg: &'a str, name: &str) -> &'a str {
        let key = format!("\"{name}\":");
        let start = msg.find(&key).unwrap_or_else(|| panic!("no {name} in {msg}")) + key.len();
        let rest = &msg[start..];
        &rest[..rest.find([',', '}']).unwrap()]
    }

    /// Checks one message has the documented tick shape; returns (symbol, seq).
    pub(crate) fn check_tick(msg: &str) -> (String, u64) {
        assert!(msg.starts_with("{\"type\":\"tick\",\"symbol\":\""), "{msg}");
        assert!(msg.ends_with('}'), "{msg}");
        let symbol = field(msg, "symbol").trim_matches('"').to_owned();
        let seq: u64 = field(msg, "seq").parse().unwrap();
        let ts: u64 = field(msg, "ts_ms").parse().unwrap();
        assert!(ts > 1_600_000_000_000, "{msg}");
        let num = |n: &str| -> f64 { field(msg, n).parse().unwrap_or_else(|_| panic!("{n} in {msg}")) };
        let (bid, ask, last, size) = (num("bid"), num("ask"), num("last"), num("size"));
        assert!(bid > 0.0 && bid < ask && bid <= last && last <= ask && size > 0.0, "{msg}");
        (symbol, seq)
    }

    fn run(demo: &mut Demo, now: Instant) -> Vec<String> {
        let (mut sink, rx, _) = channel_sink();
        with_out(&mut sink, 64, now, |out| demo.handle_timeout(now, out));
        rx.try_iter().collect()
    }

    #[test]
    fn each_symbol_is_a_topic() {
        let t0 = Instant::now();
        let mut demo = Demo::new(&DemoConfig { rate_per_sec: 1000, ..DemoConfig::default() }, t0, Rng::from_seed(5));
        let (tx, rx) = std::sync::mpsc::channel();
        let now = t0 + Duration::from_millis(11);
        with_out(&mut RecordSink(tx), 64, now, |out| demo.handle_timeout(now, out));
        let msgs: Vec<_> = rx.try_iter().collect();
        assert_eq!(msgs.len(), 12);
        for (i, m) in msgs.iter().enumerate() {
            let (symbol, _) = check_tick(std::str::from_utf8(&m.payload).unwrap());
            assert_eq!(m.topic, symbol);
            assert_eq!(m.seq, i as u64 + 1);
            // Six symbols round-robin: the previous message of a topic is six back.
            assert_eq!(m.prev, if i < 6 { 0 } else { i as u64 - 5 });
        }
    }

    #[test]
    fn schedule_does_not_drift_and_batches() {
        let t0 = Instant::now();
        let cfg = DemoConfig { rate_per_sec: 10, ..DemoConfig::default() };
        let mut demo = Demo::new(&cfg, t0, Rng::from_seed(3));
        assert_eq!(run(&mut demo, t0).len(), 1, "message 0 is due at start");
        assert_eq!(run(&mut demo, t0 + Duration::from_millis(99)).len(), 0);
        // Late wake-ups publish everything due, and the schedule stays anchored to t0.
        assert_eq!(run(&mut demo, t0 + Duration::from_millis(450)).len(), 4);
        assert_eq!(demo.next_due(), t0 + Duration::from_millis(500));
        assert_eq!(run(&mut demo, t0 + Duration::from_secs(1)).len(), 6);
    }

    #[test]
    fn skips_backlog_when_far_behind() {
        let t0 = Instant::now();
        let cfg = DemoConfig { rate_per_sec: 1000, ..DemoConfig::default() };
        let mut demo = Demo::new(&cfg, t0, Rng::from_seed(3));
        assert_eq!(run(&mut demo, t0 + Duration::from_secs(5)).len(), 1);
        assert_eq!(demo.next_due(), t0 + Duration::from_secs(5) + Duration::from_millis(1));
    }

    #[test]
    fn ticks_have_the_shape_and_per_symbol_seq() {
        let t0 = Instant::now();
        let cfg =
            DemoConfig { rate_per_sec: 1000, symbols: vec!["BTC-USD".into(), "EUR-USD".into(), "odd\"sym".into()] };
        let mut demo = Demo::new(&cfg, t0, Rng::from_seed(11));
        let msgs = run(&mut demo, t0 + Duration::from_millis(899));
        assert_eq!(msgs.len(), 900);
        let mut last_seq = std::collections::HashMap::new();
        for m in &msgs {
            let (sym, seq) = check_tick(m);
            let prev = last_seq.insert(sym, seq).unwrap_or(0);
            assert_eq!(seq, prev + 1, "per-symbol seq increments by one");
        }
        assert_eq!(last_seq.len(), 3);
        assert!(msgs[2].contains(r#""symbol":"odd\"sym""#), "{}", msgs[2]);
        assert!(msgs[1].contains("\"bid\":1.0") || msgs[1].contains("\"bid\":1.1"), "{}", msgs[1]);
    }
}
