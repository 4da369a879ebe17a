//! `chart`: renders HdrHistogram percentile distributions (`.hgrm`) as one SVG latency-by-percentile chart.
//!
//! The input is the text HdrHistogram's `outputPercentileDistribution` (Java) or `hdr_percentiles_print` (C)
//! prints: a `Value Percentile TotalCount 1/(1-Percentile)` header, one row per percentile step (the 100% row
//! has no last column, or `inf`), and `#[Mean = …]` footer lines. Values are taken to be microseconds.
//!
//! The chart is drawn the standard way: x is logarithmic in 1/(1−percentile), so each decade is one more nine
//! (0%, 90%, 99%, 99.9%, …) and the tail gets as much room as the body; y is latency (linear, or logarithmic with
//! `--log-y`), in µs, ms or s depending on the largest value. The 100% row (the maximum) is drawn at the right edge. Hand-written SVG.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `wsgate-loadgen chart`.
#[derive(Debug, clap::Args)]
#[command(about = "Render .hgrm percentile distributions (values in µs) as an SVG latency-by-percentile chart")]
pub struct Args {
    /// The SVG file to write.
    #[arg(long, value_name = "FILE.svg")]
    out: PathBuf,
    /// Chart title.
    #[arg(long, default_value = "Latency by percentile")]
    title: String,
    /// Legend names, in the order of the files (default: each file's name without `.hgrm`).
    #[arg(long = "label", value_name = "NAME")]
    labels: Vec<String>,
    /// Logarithmic latency axis (shows the body and a long tail together; the default is linear).
    #[arg(long)]
    log_y: bool,
    /// HdrHistogram percentile distributions, one per run.
    #[arg(required = true, value_name = "RUN.hgrm")]
    files: Vec<PathBuf>,
}

pub fn run(args: Args) -> ExitCode {
    if args.labels.len() > args.files.len() {
        eprintln!("chart: {} --label for {} files", args.labels.len(), args.files.len());
        return ExitCode::from(2);
    }
    let mut runs = Vec::new();
    for (i, path) in args.files.iter().enumerate() {
        let label = args.labels.get(i).cloned().unwrap_or_else(|| default_label(path));
        let parsed = std::fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|t| parse_hgrm(&t, label));
        match parsed {
            Ok(run) => runs.push(run),
            Err(e) => {
                eprintln!("chart: {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if let Err(e) = std::fs::write(&args.out, render_svg(&args.title, &runs, args.log_y)) {
        eprintln!("chart: cannot write {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn default_label(path: &Path) -> String {
    path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned())
}

/// One run: (percentile as a fraction 0..=1, value in µs) rows, in file order, and the footer's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub label: String,
    pub rows: Vec<(f64, f64)>,
    pub mean: Option<f64>,
    pub max: Option<f64>,
    pub count: Option<u64>,
}

impl Run {
    /// The value at percentile `q` (fraction): the first row at or above it.
    fn at(&self, q: f64) -> Option<f64> {
        self.rows.iter().find(|&&(p, _)| p >= q - 1e-12).map(|&(_, v)| v)
    }

    fn max_value(&self) -> f64 {
        let rows = self.rows.iter().map(|&(_, v)| v).fold(0.0, f64::max);
        self.max.map_or(rows, |m| m.max(rows))
    }
}

/// Parses an `.hgrm` percentile distribution.
pub fn parse_hgrm(text: &str, label: String) -> Result<Run, String> {
    let mut run = Run { label, rows: Vec::new(), mean: None, max: None, count: None };
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("Value") {
            continue;
        }
        if let Some(footer) = line.strip_prefix("#[") {
            for pair in footer.trim_end_matches(']').split(',') {
                let Some((key, value)) = pair.split_once('=') else { continue };
                let value = value.trim();
                match key.trim() {
                    "Mean" => run.mean = value.parse().ok(),
                    "Max" => run.max = value.parse().ok(),
                    "Total count" => run.count = value.parse().ok(),
                    _ => {}
                }
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let mut cols = line.split_whitespace();
        let bad = || format!("line {}: not a percentile row: {line:?}", i + 1);
        let value: f64 = cols.next().and_then(|c| c.parse().ok()).ok_or_else(bad)?;
        let p: f64 = cols.next().and_then(|c| c.parse().ok()).ok_or_else(bad)?;
        let _count: u64 = cols.next().and_then(|c| c.parse().ok()).ok_or_else(bad)?;
        if !(0.0..=1.0).contains(&p) || !value.is_finite() || value < 0.0 {
            return Err(format!("line {}: percentile {p} or value {value} out of range", i + 1));
        }
        run.rows.push((p, value));
    }
    if run.rows.is_empty() {
        return Err("no percentile rows (expected HdrHistogram's `Value Percentile TotalCount …` output)".into());
    }
    Ok(run)
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 600.0;
const LEFT: f64 = 84.0;
const RIGHT: f64 = 48.0;
const TOP: f64 = 56.0;
const BOTTOM: f64 = 64.0;
const COLOURS: [&str; 10] =
    ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];

/// Decades of 1/(1−p) shown: at least five nines' worth (99.999%), more if some run has finer rows.
fn decades(runs: &[Run]) -> u32 {
    let finest =
        runs.iter().flat_map(|r| &r.rows).filter(|&&(p, _)| p < 1.0).map(|&(p, _)| nines(p)).fold(0.0, f64::max);
    (finest.ceil() as u32).clamp(5, 9)
}

/// log10(1/(1−p)): 0 at 0%, 1 at 90%, 2 at 99%, …
fn nines(p: f64) -> f64 {
    (1.0 / (1.0 - p)).log10()
}

fn percentile_label(k: u32) -> String {
    match k {
        0 => "0%".into(),
        1 => "90%".into(),
        _ => format!("{:.*}%", k as usize - 2, 100.0 - 100.0 / 10f64.powi(k as i32)),
    }
}

/// A "nice" axis step (1, 2 or 5 × 10^k) giving about `ticks` intervals up to `max`.
fn nice_step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * mag).find(|&s| s >= raw).unwrap_or(10.0 * mag);
    if step > 0.0 {
        step
    } else {
        1.0
    }
}

fn format_tick(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10().floor()) as usize };
    format!("{v:.decimals$}")
}

/// Latency with a unit chosen for its size (input in µs).
fn human(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

/// The latency axis, in display units (µs, ms or s): where a value goes and which ticks to label.
struct YAxis {
    log: bool,
    lo: f64,
    hi: f64,
    ticks: Vec<(f64, String)>,
}

impl YAxis {
    fn new(runs: &[Run], max: f64, scale: f64, log: bool) -> Self {
        let max = max.max(f64::MIN_POSITIVE);
        if !log {
            let step = nice_step(max, 6.0);
            let hi = (max / step).ceil().max(1.0) * step;
            let n = (hi / step).round() as u32;
            let ticks = (0..=n).map(|i| f64::from(i) * step).map(|v| (v, format_tick(v, step))).collect();
            return YAxis { log, lo: 0.0, hi, ticks };
        }
        let min = runs.iter().flat_map(|r| &r.rows).map(|&(_, v)| v / scale).filter(|&v| v > 0.0).fold(max, f64::min);
        let lo = min.log10().floor();
        let hi = max.log10().ceil().max(lo + 1.0);
        let mut ticks = Vec::new();
        for k in lo as i32..=hi as i32 {
            let base = 10f64.powi(k);
            let marks: &[f64] = if hi - lo <= 3.0 { &[1.0, 2.0, 5.0] } else { &[1.0] };
            for &m in marks {
                let v = m * base;
                if v <= 10f64.powf(hi) * 1.000_001 {
                    ticks.push((v, format_tick(v, base.min(1.0))));
                }
            }
        }
        YAxis { log, lo, hi, ticks }
    }

    /// 0 at the bottom of the plot, 1 at the top.
    fn frac(&self, v: f64) -> f64 {
        let f =
            if self.log { (v.max(10f64.powf(self.lo)).log10() - self.lo) / (self.hi - self.lo) } else { v / self.hi };
        f.clamp(0.0, 1.0)
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Renders the runs as one SVG document.
pub fn render_svg(title: &str, runs: &[Run], log_y: bool) -> String {
    let decades = decades(runs);
    let max_us = runs.iter().map(Run::max_value).fold(0.0, f64::max);
    let (unit, scale) = if max_us >= 1e6 {
        ("s", 1e6)
    } else if max_us >= 1e3 {
        ("ms", 1e3)
    } else {
        ("µs", 1.0)
    };
    let axis = YAxis::new(runs, max_us / scale, scale, log_y);
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let px = |p: f64| LEFT + pw * if p >= 1.0 { 1.0 } else { nines(p).min(f64::from(decades)) / f64::from(decades) };
    let py = |us: f64| TOP + ph * (1.0 - axis.frac(us / scale));

    let mut s = String::new();
    let _ = write!(
        s,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="13">
<rect width="100%" height="100%" fill="white"/>
<text x="{:.1}" y="32" text-anchor="middle" font-size="19" font-weight="bold">{}</text>
"##,
        LEFT + pw / 2.0,
        escape(title)
    );

    // Grid: minor lines at ×2 and ×5 inside each decade, major lines and labels at each nine.
    s.push_str("<g stroke=\"#e8e8e8\" stroke-width=\"1\">\n");
    for k in 0..decades {
        for m in [2.0f64, 5.0] {
            let x = LEFT + pw * (f64::from(k) + m.log10()) / f64::from(decades);
            let _ = writeln!(s, r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}"/>"#, TOP + ph);
        }
    }
    s.push_str("</g>\n<g stroke=\"#c8c8c8\" stroke-width=\"1\">\n");
    for k in 0..=decades {
        let x = LEFT + pw * f64::from(k) / f64::from(decades);
        let _ = writeln!(s, r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}"/>"#, TOP + ph);
    }
    for &(v, _) in &axis.ticks {
        let y = TOP + ph * (1.0 - axis.frac(v));
        let _ = writeln!(s, r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}"/>"#, LEFT + pw);
    }
    s.push_str("</g>\n<g fill=\"#333\">\n");
    for k in 0..=decades {
        let x = LEFT + pw * f64::from(k) / f64::from(decades);
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + ph + 20.0,
            percentile_label(k)
        );
    }
    for (v, label) in &axis.ticks {
        let y = TOP + ph * (1.0 - axis.frac(*v));
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#, LEFT - 8.0, y + 4.5);
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="14">Percentile</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 16.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(22 {:.1}) rotate(-90)" text-anchor="middle" font-size="14">Latency ({unit})</text>"#,
        TOP + ph / 2.0
    );
    s.push_str("</g>\n");
    let _ = writeln!(s, r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#666"/>"##);

    // One line per run; the maximum sits on the right edge. A run with a single row still gets a visible line.
    for (i, run) in runs.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut pts: Vec<(f64, f64)> = run.rows.iter().map(|&(p, v)| (px(p), py(v))).collect();
        if let Some(max) = run.max {
            if run.rows.last().is_some_and(|&(p, v)| p < 1.0 && v < max) {
                pts.push((px(1.0), py(max)));
            }
        }
        if pts.len() == 1 {
            pts.insert(0, (LEFT, pts[0].1));
        }
        let points: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2.2" stroke-linejoin="round" points="{}"><title>{}</title></polyline>"#,
            points.join(" "),
            escape(&run.label)
        );
    }

    // Legend: top left on a linear axis, bottom right on a log axis (the corner the climbing curves leave empty).
    let legend: Vec<(String, String)> = runs
        .iter()
        .map(|r| {
            let stats: Vec<String> = [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)]
                .into_iter()
                .filter_map(|(name, q)| r.at(q).map(|v| format!("{name} {}", human(v))))
                .chain(Some(format!("max {}", human(r.max_value()))))
                .collect();
            (r.label.clone(), stats.join(" · "))
        })
        .collect();
    // DejaVu Sans at 13 px averages about 7.4 px a character.
    let text_chars = legend.iter().map(|(l, st)| l.chars().count() + 2 + st.chars().count()).max().unwrap_or(0);
    let (row, box_w) = (22.0, (text_chars as f64 * 7.4 + 50.0).min(pw - 28.0));
    let box_h = row * runs.len() as f64 + 10.0;
    let (lx, ly) = if log_y { (LEFT + pw - 14.0 - box_w, TOP + ph - 14.0 - box_h) } else { (LEFT + 14.0, TOP + 14.0) };
    let _ = writeln!(
        s,
        r##"<rect x="{lx:.1}" y="{ly:.1}" width="{box_w:.1}" height="{box_h:.1}" fill="white" fill-opacity="0.9" stroke="#bbb"/>"##
    );
    for (i, (label, stats)) in legend.iter().enumerate() {
        let y = ly + 5.0 + row * (i as f64 + 0.5);
        let colour = COLOURS[i % COLOURS.len()];
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="3"/>"#,
            lx + 8.0,
            lx + 30.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}">{}  <tspan fill="#555">{}</tspan></text>"##,
            lx + 38.0,
            y + 4.5,
            escape(label),
            escape(stats)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAVA: &str = "       Value     Percentile TotalCount 1/(1-Percentile)

      52.000 0.000000000000          1           1.00
      80.000 0.500000000000        512           2.00
     120.000 0.900000000000        922          10.00
     310.000 0.990000000000       1014         100.00
     990.000 1.000000000000       1024
#[Mean    =       88.210, StdDeviation   =       41.000]
#[Max     =      990.000, Total count    =         1024]
#[Buckets =           20, SubBuckets     =         2048]
";

    #[test]
    fn parses_java_and_c_formats() {
        let run = parse_hgrm(JAVA, "a".into()).unwrap();
        assert_eq!(run.rows.len(), 5);
        assert_eq!(run.rows[4], (1.0, 990.0));
        assert_eq!((run.mean, run.max, run.count), (Some(88.21), Some(990.0), Some(1024)));
        assert_eq!(run.at(0.5), Some(80.0));
        assert_eq!(run.at(0.99), Some(310.0));
        let c = "Value Percentile TotalCount 1/(1-Percentile)\n\n1.0 0.0 1 1.00\n9.5 1.000000 2 inf\n";
        let run = parse_hgrm(c, "c".into()).unwrap();
        assert_eq!(run.rows, vec![(0.0, 1.0), (1.0, 9.5)]);
        assert_eq!(run.max, None);
        assert_eq!(run.max_value(), 9.5);
    }

    #[test]
    fn refuses_what_is_not_a_distribution() {
        assert!(parse_hgrm("", "x".into()).is_err());
        assert!(parse_hgrm("hello world\n", "x".into()).is_err());
        assert!(parse_hgrm("1.0 1.5 3 2.0\n", "x".into()).is_err());
    }

    #[test]
    fn axis_helpers() {
        assert_eq!(percentile_label(0), "0%");
        assert_eq!(percentile_label(1), "90%");
        assert_eq!(percentile_label(2), "99%");
        assert_eq!(percentile_label(3), "99.9%");
        assert_eq!(percentile_label(5), "99.999%");
        assert_eq!(nice_step(990.0, 6.0), 200.0);
        assert_eq!(nice_step(1.0, 6.0), 0.2);
        assert_eq!(format_tick(0.4, 0.2), "0.4");
        assert_eq!(human(52.0), "52 µs");
        assert_eq!(human(1500.0), "1.50 ms");
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }

    #[test]
    fn renders_one_line_per_run() {
        let a = parse_hgrm(JAVA, "wsgate <1 shard>".into()).unwrap();
        let single = parse_hgrm("7.0 1.0 1\n", "one row".into()).unwrap();
        let svg = render_svg("t & t", &[a.clone(), single.clone()], false);
        assert!(svg.starts_with("<?xml") && svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("wsgate &lt;1 shard&gt;") && svg.contains("one row") && svg.contains("t &amp; t"));
        assert!(svg.contains(">99.999%<") && svg.contains("Latency (µs)"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let log = render_svg("log", &[a, single], true);
        assert_eq!(log.matches("<polyline").count(), 2);
        assert!(log.contains(">1000<") && log.contains(">10<") && !log.contains("NaN"));
    }
}
