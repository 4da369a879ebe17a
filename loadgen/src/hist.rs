//! Latency histograms: one HdrHistogram per process (nanoseconds, 3 significant digits), shipped from workers to
//! the parent as V2-serialized, base64-encoded bytes, summed there, and written out as the standard `.hgrm`
//! percentile distribution.
//!
//! Recording never allocates and never fails: values above [`MAX_NS`] are clamped to it (saturating), so a stall
//! longer than an hour reads as an hour.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;

/// Significant decimal digits kept.
pub const SIGFIG: u8 = 3;
/// Largest latency tracked: one hour, in nanoseconds.
pub const MAX_NS: u64 = 3_600_000_000_000;

/// An empty latency histogram (ns).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, SIGFIG).expect("valid histogram bounds")
}

/// V2 serialization + base64, for the worker's result line.
pub fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2Serializer::new().serialize(h, &mut bytes).expect("serializing into a Vec cannot fail");
    BASE64.encode(bytes)
}

/// Inverse of [`encode`].
pub fn decode(text: &str) -> Result<Histogram<u64>, String> {
    let bytes = BASE64.decode(text).map_err(|e| format!("histogram base64: {e}"))?;
    Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| format!("histogram: {e:?}"))
}

/// The percentiles every report quotes, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LatencyUs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

impl LatencyUs {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        if h.is_empty() {
            return LatencyUs::default();
        }
        LatencyUs {
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            p9999: us(h.value_at_quantile(0.9999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
            count: h.len(),
        }
    }
}

/// The standard HdrHistogram percentile distribution (as `outputPercentileDistribution` in the Java library
/// writes it, 5 ticks per half distance), values in microseconds: readable by the HdrHistogram plotter.
pub fn write_hgrm(h: &Histogram<u64>, out: &mut impl std::io::Write) -> std::io::Result<()> {
    const SCALE: f64 = 1000.0; // ns → µs
    writeln!(out, "{:>12} {:>14} {:>10} {:>14}", "Value", "Percentile", "TotalCount", "1/(1-Percentile)")?;
    writeln!(out)?;
    let mut total: u64 = 0;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / SCALE;
            if q < 1.0 {
                writeln!(out, "{value:12.3} {q:1.12} {total:10} {:14.2}", 1.0 / (1.0 - q))?;
            } else {
                writeln!(out, "{value:12.3} {q:1.12} {total:10}")?;
            }
        }
    }
    let (mean, stdev, max) =
        if h.is_empty() { (0.0, 0.0, 0.0) } else { (h.mean() / SCALE, h.stdev() / SCALE, h.max() as f64 / SCALE) };
    // Sub-buckets: the smallest power of two covering 2 × 10^sigfig (2048 for 3 digits).
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    writeln!(out, "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]")?;
    writeln!(out, "#[Max     = {max:12.3}, Total count    = {:12}]", h.len())?;
    writeln!(out, "#[Buckets = {:12}, SubBuckets     = {sub_buckets:12}]", h.buckets())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_base64() {
        let mut h = new_histogram();
        for v in [1_000u64, 2_000, 3_000, 1_000_000, MAX_NS * 2] {
            h.saturating_record(v);
        }
        let back = decode(&encode(&h)).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.max(), h.max());
        assert!(back.max() >= MAX_NS - MAX_NS / 1000);
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert!(decode("not base64!").is_err());
    }

    #[test]
    fn hgrm_has_the_standard_shape() {
        let mut h = new_histogram();
        for i in 1..=10_000u64 {
            h.record(i * 1_000).unwrap(); // 1 µs .. 10 ms
        }
        let mut out = Vec::new();
        write_hgrm(&h, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "       Value     Percentile TotalCount 1/(1-Percentile)");
        assert_eq!(lines[1], "");
        // Rows: value (µs), percentile, cumulative count, 1/(1-p); counts never decrease; the last row is 100%.
        let rows: Vec<Vec<&str>> =
            lines[2..].iter().take_while(|l| !l.starts_with('#')).map(|l| l.split_whitespace().collect()).collect();
        assert!(rows.len() > 20);
        let first: f64 = rows[0][0].parse().unwrap();
        assert!((first - 1.0).abs() < 0.01, "first value {first}");
        let mut last_count = 0;
        for r in &rows[..rows.len() - 1] {
            assert_eq!(r.len(), 4, "{r:?}");
            let count: u64 = r[2].parse().unwrap();
            assert!(count >= last_count);
            last_count = count;
        }
        let last = rows.last().unwrap();
        assert_eq!(last.len(), 3);
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "10000");
        let median = rows.iter().find(|r| r[1].starts_with("0.5000")).unwrap();
        let median: f64 = median[0].parse().unwrap();
        assert!((median - 5000.0).abs() < 10.0, "median {median}");
        let footer: Vec<&&str> = lines.iter().filter(|l| l.starts_with("#[")).collect();
        assert_eq!(footer.len(), 3);
        assert!(footer[0].starts_with("#[Mean    =     5000.5"), "{}", footer[0]);
        assert!(footer[1].contains("Total count    =        10000]"), "{}", footer[1]);
        assert!(footer[2].contains("SubBuckets     =         2048]"), "{}", footer[2]);
    }

    #[test]
    fn empty_histogram_writes_only_header_and_footer() {
        let mut out = Vec::new();
        write_hgrm(&new_histogram(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 5);
        assert_eq!(LatencyUs::from_histogram(&new_histogram()), LatencyUs::default());
    }
}
