//! Prometheus text exposition (format 0.0.4) of the gateway's counters, and the types they are declared with.
//!
//! Every counter lives in a per-thread stats struct (`shard::ShardStats`, `reactor::IoStats`,
//! `upstream::FeedStats`) declared with `declare_stats!`: one line per metric gives its field, its kind and, in
//! its doc comment, its help text, and the macro derives the metric name and a table of [`Metric`]s from it. So a
//! counter added later is exported by declaring it once. The writer thread bumps plain relaxed atomics on its own
//! cache line; a scrape reads each thread's values and writes one series per thread (label `loop`), so nothing
//! on the hot path knows that metrics exist.
//!
//! Pure code: no clock, no sockets. [`Exposition`] writes the text; [`render`] writes a table over its sources.
//! What this module does not do: aggregation across threads (Prometheus's `sum by` does), metric timestamps,
//! exemplars, OpenMetrics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

mod declare;

pub(crate) use declare::{declare_stats, metric_kind, metric_name};

/// The kind of a metric (its `# TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (its name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Fixed buckets of observed durations, in seconds (`_bucket`, `_sum`, `_count`).
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One exported metric of a stats struct `T`: what `declare_stats!` makes of each field.
pub struct Metric<T: 'static> {
    /// Full metric name (`wsgate_…`, counters end in `_total`).
    pub name: &'static str,
    /// The field's doc comment, lines joined.
    pub help: &'static str,
    pub kind: Kind,
    /// The field.
    pub get: fn(&T) -> &dyn Export,
}

/// A value that writes its samples: a plain counter or gauge, one per label value, or a histogram.
pub trait Export {
    /// Writes this value's samples of metric `name`, each with `labels` first.
    fn write(&self, name: &str, labels: &[(&str, &str)], out: &mut Exposition);
}

impl Export for AtomicU64 {
    fn write(&self, name: &str, labels: &[(&str, &str)], out: &mut Exposition) {
        out.sample(name, "", labels, self.load(Relaxed));
    }
}

/// The values one label takes, in the order of the array that counts them.
pub trait LabelSet {
    /// The label's name.
    const LABEL: &'static str;
    /// Its values, by index.
    fn values() -> &'static [&'static str];
}

/// One counter (or gauge) per value of label `L`: `N` must be `L::values().len()` (checked by a unit test of
/// each label set, and by [`PerLabel::write`] in debug builds).
#[derive(Debug)]
pub struct PerLabel<L, const N: usize> {
    values: [AtomicU64; N],
    _label: std::marker::PhantomData<fn() -> L>,
}

impl<L, const N: usize> Default for PerLabel<L, N> {
    fn default() -> Self {
        Self { values: std::array::from_fn(|_| AtomicU64::new(0)), _label: std::marker::PhantomData }
    }
}

impl<L, const N: usize> PerLabel<L, N> {
    /// The counter of label value `i`.
    pub fn at(&self, i: usize) -> &AtomicU64 {
        &self.values[i]
    }

    pub fn add(&self, i: usize, n: u64) {
        self.values[i].fetch_add(n, Relaxed);
    }

    pub fn sub(&self, i: usize, n: u64) {
        self.values[i].fetch_sub(n, Relaxed);
    }

    pub fn get(&self, i: usize) -> u64 {
        self.values[i].load(Relaxed)
    }

    /// The sum over every label value.
    pub fn total(&self) -> u64 {
        self.values.iter().map(|v| v.load(Relaxed)).sum()
    }
}

impl<L: LabelSet, const N: usize> Export for PerLabel<L, N> {
    fn write(&self, name: &str, labels: &[(&str, &str)], out: &mut Exposition) {
        debug_assert_eq!(L::values().len(), N, "{name}: label values and counters differ");
        let mut all: Vec<(&str, &str)> = labels.to_vec();
        all.push((L::LABEL, ""));
        for (v, label) in self.values.iter().zip(L::values()) {
            *all.last_mut().expect("pushed above") = (L::LABEL, label);
            out.sample(name, "", &all, v.load(Relaxed));
        }
    }
}

/// Bucket upper bounds of every [`Histogram`], in nanoseconds and as written in `le`: 10 µs to 2.5 s, about
/// three per decade. Fixed, so that series of every thread and every process can be summed.
pub const BUCKETS: [(u64, &str); 17] = [
    (10_000, "0.00001"),
    (25_000, "0.000025"),
    (50_000, "0.00005"),
    (100_000, "0.0001"),
    (250_000, "0.00025"),
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
];

/// Durations in [`BUCKETS`] (plus one bucket above the last bound), their count and their sum; read at scrape
/// time.
///
/// INVARIANT: one thread observes (its loop thread), so an observation is a relaxed load and store per value,
/// without a locked read-modify-write.
#[derive(Debug)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is above every bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum_ns: AtomicU64::new(0) }
    }
}

impl Histogram {
    /// Counts one duration: a search over 17 bounds and two single-writer adds. Only the owning thread calls it.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKETS.partition_point(|&(bound, _)| bound < ns);
        let bucket = &self.buckets[i];
        bucket.store(bucket.load(Relaxed) + 1, Relaxed);
        self.sum_ns.store(self.sum_ns.load(Relaxed).wrapping_add(ns), Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }
}

impl Export for Histogram {
    fn write(&self, name: &str, labels: &[(&str, &str)], out: &mut Exposition) {
        let mut all: Vec<(&str, &str)> = labels.to_vec();
        all.push(("le", ""));
        let mut cumulative = 0;
        for (i, &(_, le)) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            *all.last_mut().expect("pushed above") = ("le", le);
            out.sample(name, "_bucket", &all, cumulative);
        }
        cumulative += self.buckets[BUCKETS.len()].load(Relaxed);
        *all.last_mut().expect("pushed above") = ("le", "+Inf");
        out.sample(name, "_bucket", &all, cumulative);
        // The sum is read after the buckets: at worst it includes an observation the buckets missed.
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        out.sample_f64(name, "_sum", labels, sum);
        out.sample(name, "_count", labels, cumulative);
    }
}

/// The text being written: families, each a `# HELP` and a `# TYPE` line followed by its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts family `name`. `help` may be several lines (a doc comment): whitespace runs become one space.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) {
        self.text.push_str("# HELP ");
        self.text.push_str(name);
        self.text.push(' ');
        let mut first = true;
        for word in help.split_whitespace() {
            if !first {
                self.text.push(' ');
            }
            first = false;
            for c in word.chars() {
                match c {
                    '\\' => self.text.push_str("\\\\"),
                    c => self.text.push(c),
                }
            }
        }
        let _ = writeln!(self.text, "\n# TYPE {name} {}", kind.as_str());
    }

    /// One integer sample: `name` + `suffix`, its labels, its value.
    pub fn sample(&mut self, name: &str, suffix: &str, labels: &[(&str, &str)], value: u64) {
        self.series(name, suffix, labels);
        let _ = writeln!(self.text, " {value}");
    }

    /// One sample with a fractional value.
    pub fn sample_f64(&mut self, name: &str, suffix: &str, labels: &[(&str, &str)], value: f64) {
        self.series(name, suffix, labels);
        let _ = writeln!(self.text, " {value}");
    }

    fn series(&mut self, name: &str, suffix: &str, labels: &[(&str, &str)]) {
        self.text.push_str(name);
        self.text.push_str(suffix);
        if labels.is_empty() {
            return;
        }
        self.text.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.text.push(',');
            }
            self.text.push_str(k);
            self.text.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.text.push_str("\\\\"),
                    '"' => self.text.push_str("\\\""),
                    '\n' => self.text.push_str("\\n"),
                    c => self.text.push(c),
                }
            }
            self.text.push('"');
        }
        self.text.push('}');
    }

    /// One family with one unlabelled gauge sample (process-wide values: uptime, memory).
    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, help, Kind::Gauge);
        self.sample(name, "", &[], value);
    }

    pub fn finish(self) -> String {
        self.text
    }
}

/// Writes every metric of `table`, one family each, with one series per source (`labels` first).
pub fn render<T>(table: &[Metric<T>], sources: &[(&[(&str, &str)], &T)], out: &mut Exposition) {
    for m in table {
        out.family(m.name, m.help, m.kind);
        for (labels, source) in sources {
            (m.get)(source).write(m.name, labels, out);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
