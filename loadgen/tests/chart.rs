//! `wsgate-loadgen chart`, driven as a binary on `.hgrm` files written exactly as HdrHistogram prints them.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_wsgate-loadgen");

/// Java `outputPercentileDistribution` (scaled to µs): the 100% row has no last column.
const JAVA: &str = "       Value     Percentile TotalCount 1/(1-Percentile)

      91.673 0.000000000000          1           1.00
     268.408 0.100000000000      30000           1.11
     313.337 0.200000000000      60000           1.25
     419.583 0.500000000000     150000           2.00
     657.407 0.900000000000     270000          10.00
     985.087 0.990000000000     297000         100.00
    5263.871 0.999000000000     299700        1000.00
   18622.463 0.999900000000     299970       10000.00
   31137.791 0.999990000000     299997      100000.00
   40599.551 1.000000000000     300000
#[Mean    =      454.138, StdDeviation   =      786.755]
#[Max     =    40599.551, Total count    =       300000]
#[Buckets =           22, SubBuckets     =         2048]
";

/// C `hdr_percentiles_print` / wrk2: the 100% row ends in `inf`.
const C: &str = "       Value   Percentile   TotalCount 1/(1-Percentile)

     120.000     0.000000            1         1.00
     380.000     0.500000         5000         2.00
    1180.000     0.990000         9900       100.00
   95045.000     1.000000        10000          inf
#[Mean    =      454.138, StdDeviation   =      786.755]
#[Max     =    95045.000, Total count    =        10000]
#[Buckets =           22, SubBuckets     =         2048]
";

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("wsgate-chart-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn renders_every_run_with_its_label() {
    let d = dir();
    let (a, b, c, out) = (d.join("a.hgrm"), d.join("b.hgrm"), d.join("few.hgrm"), d.join("chart.svg"));
    std::fs::write(&a, JAVA).unwrap();
    std::fs::write(&b, C).unwrap();
    std::fs::write(&c, "Value Percentile TotalCount 1/(1-Percentile)\n\n250.0 1.000000000000 1\n").unwrap();
    let status = Command::new(BIN)
        .args(["chart", "--out", out.to_str().unwrap(), "--title", "wsgate & uWS"])
        .args([a.to_str().unwrap(), "--label", "wsgate", b.to_str().unwrap(), "--label", "uWS <C>"])
        .arg(&c)
        .status()
        .unwrap();
    assert!(status.success());
    let svg = std::fs::read_to_string(&out).unwrap();
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 3, "one line per run");
    assert!(svg.contains(">wsgate ") && svg.contains("uWS &lt;C&gt;") && svg.contains(">few "), "legend labels");
    assert!(svg.contains("wsgate &amp; uWS"), "escaped title");
    for label in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"] {
        assert!(svg.contains(&format!(">{label}<")), "x axis label {label}");
    }
    assert!(svg.contains("Latency (ms)"), "95 ms max: the axis is in ms");
    assert!(svg.contains("max 95.0") && svg.contains("p99 985 µs"));
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
    // XML-ish: every element opened is closed or self-closed.
    let opens = svg.matches('<').count() - svg.matches("</").count() - svg.matches("<?").count();
    assert_eq!(opens, svg.matches("/>").count() + svg.matches("</").count());

    let status =
        Command::new(BIN).args(["chart", "--log-y", "--out", out.to_str().unwrap()]).arg(&a).arg(&b).status().unwrap();
    assert!(status.success());
    let svg = std::fs::read_to_string(&out).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2);
    assert!(svg.contains(">a ") && svg.contains(">b "), "labels default to the file names");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn refuses_a_file_that_is_not_a_distribution() {
    let d = dir().join("bad");
    std::fs::create_dir_all(&d).unwrap();
    let bad = d.join("bad.hgrm");
    std::fs::write(&bad, "this is not a histogram\n").unwrap();
    let out = Command::new(BIN).args(["chart", "--out"]).arg(d.join("x.svg")).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.hgrm"));
    let out = Command::new(BIN).args(["chart", "--out"]).arg(d.join("x.svg")).arg(d.join("missing.hgrm")).output();
    assert!(!out.unwrap().status.success());
    let _ = std::fs::remove_dir_all(d);
}
