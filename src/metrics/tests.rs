use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::*;

#[derive(Debug)]
pub enum Color {}

impl LabelSet for Color {
    const LABEL: &'static str = "color";
    fn values() -> &'static [&'static str] {
        &["red", "blue"]
    }
}

declare_stats! {
    prefix "test_";
    /// A struct like ShardStats.
    #[derive(Debug, Default)]
    pub struct Sample {
        /// Things that happened,
        /// over two lines.
        pub counter events: AtomicU64,
        /// Things held now.
        pub gauge held: AtomicU64,
        /// Things by color.
        pub counter painted: PerLabel<Color, 2>,
        /// How long things took.
        pub histogram took_seconds: Histogram,
    }
    internal {
        /// Not exported.
        pub hidden: AtomicBool,
    }
}

#[test]
fn declared_fields_become_named_metrics_with_their_doc_as_help() {
    let names: Vec<&str> = Sample::METRICS.iter().map(|m| m.name).collect();
    assert_eq!(names, ["test_events_total", "test_held", "test_painted_total", "test_took_seconds"]);
    let kinds: Vec<Kind> = Sample::METRICS.iter().map(|m| m.kind).collect();
    assert_eq!(kinds, [Kind::Counter, Kind::Gauge, Kind::Counter, Kind::Histogram]);
    assert_eq!(
        Sample::METRICS[0].help.split_whitespace().collect::<Vec<_>>().join(" "),
        "Things that happened, over two lines."
    );
    let s = Sample::default();
    s.hidden.store(true, Relaxed); // declared, not exported
}

#[test]
fn render_writes_one_family_per_metric_and_one_series_per_source() {
    let (a, b) = (Sample::default(), Sample::default());
    a.events.store(3, Relaxed);
    b.events.store(4, Relaxed);
    a.held.store(7, Relaxed);
    b.painted.add(1, 5);
    b.took_seconds.observe(Duration::from_micros(30)); // 25 µs < x <= 50 µs
    b.took_seconds.observe(Duration::from_millis(2)); // <= 2.5 ms
    b.took_seconds.observe(Duration::from_secs(10)); // above every bound
    let mut out = Exposition::new();
    render(Sample::METRICS, &[(&[("loop", "0")], &a), (&[("loop", "1")], &b)], &mut out);
    let text = out.finish();
    let expect_lines = [
        "# HELP test_events_total Things that happened, over two lines.",
        "# TYPE test_events_total counter",
        "test_events_total{loop=\"0\"} 3",
        "test_events_total{loop=\"1\"} 4",
        "# TYPE test_held gauge",
        "test_held{loop=\"0\"} 7",
        "test_painted_total{loop=\"0\",color=\"red\"} 0",
        "test_painted_total{loop=\"1\",color=\"blue\"} 5",
        "# TYPE test_took_seconds histogram",
        "test_took_seconds_bucket{loop=\"1\",le=\"0.000025\"} 0",
        "test_took_seconds_bucket{loop=\"1\",le=\"0.00005\"} 1",
        "test_took_seconds_bucket{loop=\"1\",le=\"0.001\"} 1",
        "test_took_seconds_bucket{loop=\"1\",le=\"0.0025\"} 2",
        "test_took_seconds_bucket{loop=\"1\",le=\"2.5\"} 2",
        "test_took_seconds_bucket{loop=\"1\",le=\"+Inf\"} 3",
        "test_took_seconds_sum{loop=\"1\"} 10.00203",
        "test_took_seconds_count{loop=\"1\"} 3",
        "test_took_seconds_count{loop=\"0\"} 0",
    ];
    for line in expect_lines {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains("hidden"));
    check_format(&text);
}

#[test]
fn a_duration_on_a_bound_falls_in_that_bucket() {
    let h = Histogram::default();
    h.observe(Duration::from_micros(10));
    h.observe(Duration::ZERO);
    let mut out = Exposition::new();
    h.write("h", &[], &mut out);
    let text = out.finish();
    assert!(text.contains("h_bucket{le=\"0.00001\"} 2\n"), "{text}");
    assert_eq!(h.count(), 2);
}

#[test]
fn bucket_bounds_rise_and_their_labels_say_the_same_seconds() {
    for pair in BUCKETS.windows(2) {
        assert!(pair[0].0 < pair[1].0);
    }
    for (ns, le) in BUCKETS {
        let secs: f64 = le.parse().unwrap();
        assert!((secs * 1e9 - ns as f64).abs() < 1.0, "{le} vs {ns} ns");
    }
}

#[test]
fn label_values_and_help_are_escaped() {
    let mut out = Exposition::new();
    out.family("m", "a \\ b\nnext line", Kind::Gauge);
    out.sample("m", "", &[("k", "q\"uote\\back\nnl")], 1);
    let text = out.finish();
    assert_eq!(text, "# HELP m a \\\\ b next line\n# TYPE m gauge\nm{k=\"q\\\"uote\\\\back\\nnl\"} 1\n");
    check_format(&text);
}

/// A strict reading of the text format: comments are `# HELP name text` / `# TYPE name kind`, each family's
/// TYPE comes before its samples and only once, samples are `name{k="v",...} value` with a finite or `+Inf`
/// value, and every sample belongs to the family declared last.
pub(crate) fn check_format(text: &str) {
    let mut families = std::collections::HashSet::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            assert!(rest.split_once(' ').is_some(), "HELP without text: {line:?}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line:?}");
            assert!(families.insert(name.to_string()), "family {name} declared twice");
            current = Some((name.to_string(), kind.to_string()));
        } else {
            let (series, value) = line.rsplit_once(' ').expect("sample: series value");
            assert!(value == "+Inf" || value.parse::<f64>().is_ok_and(f64::is_finite), "{line:?}");
            let name = series.split('{').next().unwrap();
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line:?}");
            let (family, kind) = current.as_ref().expect("a sample before any TYPE");
            let ok = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"].iter().any(|s| name == format!("{family}{s}")),
                _ => name == family,
            };
            assert!(ok, "sample {name} outside its family {family}");
            if let Some(labels) = series.strip_prefix(name) {
                if !labels.is_empty() {
                    assert!(labels.starts_with('{') && labels.ends_with('}'), "{line:?}");
                }
            }
        }
    }
}
