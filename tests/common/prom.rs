//! A small strict parser of the Prometheus text format (0.0.4), to check `/metrics` without another dependency.
//! It refuses what Prometheus would refuse and a little more: a sample outside the family its `# TYPE` declared
//! last, a family declared twice, a duplicate series, a malformed label or value, a histogram whose buckets are
//! not cumulative or lack `+Inf`.

use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
pub struct Scrape {
    /// Family name → kind.
    pub families: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// The sum of every sample named `name` whose labels include all of `with`.
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.matching(name, with).map(|s| s.value).sum()
    }

    pub fn matching<'a>(&'a self, name: &'a str, with: &'a [(&str, &str)]) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| s.name == name && with.iter().all(|(k, v)| s.label(k) == Some(v)))
    }

    /// Whether `name` is a family or a sample name of the scrape.
    pub fn has(&self, name: &str) -> bool {
        self.families.contains_key(name) || self.samples.iter().any(|s| s.name == name)
    }
}

pub fn parse(text: &str) -> Result<Scrape, String> {
    let mut scrape = Scrape::default();
    let mut current: Option<(String, String)> = None;
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let err = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        if line.is_empty() {
            return Err(err("empty line"));
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').ok_or_else(|| err("HELP without text"))?;
            check_name(name).map_err(|e| err(&e))?;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or_else(|| err("TYPE without kind"))?;
            check_name(name).map_err(|e| err(&e))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(err("unknown kind"));
            }
            if scrape.families.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(err("family declared twice"));
            }
            current = Some((name.to_string(), kind.to_string()));
            continue;
        }
        if line.starts_with('#') {
            return Err(err("unknown comment"));
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| err("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| err("bad value"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                (name, parse_labels(rest.strip_suffix('}').ok_or_else(|| err("no }"))?).map_err(|e| err(&e))?)
            }
        };
        check_name(name).map_err(|e| err(&e))?;
        let (family, kind) = current.as_ref().ok_or_else(|| err("sample before any TYPE"))?;
        let belongs = match kind.as_str() {
            "histogram" => ["_bucket", "_sum", "_count"].iter().any(|s| name == format!("{family}{s}")),
            _ => name == family,
        };
        if !belongs {
            return Err(err(&format!("sample outside family {family}")));
        }
        if !seen.insert(series.to_string()) {
            return Err(err("duplicate series"));
        }
        scrape.samples.push(Sample { name: name.to_string(), labels, value });
    }
    check_histograms(&scrape)?;
    Ok(scrape)
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if ok {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

fn parse_labels(mut s: &str) -> Result<Vec<(String, String)>, String> {
    let mut labels = Vec::new();
    while !s.is_empty() {
        let (k, rest) = s.split_once("=\"").ok_or("label without =\"")?;
        check_name(k)?;
        let mut v = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    'n' => v.push('\n'),
                    c @ ('\\' | '"') => v.push(c),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, c) => v.push(c),
            }
        };
        if labels.iter().any(|(n, _): &(String, String)| n == k) {
            return Err(format!("label {k} twice"));
        }
        labels.push((k.to_string(), v));
        s = &rest[end + 1..];
        if let Some(r) = s.strip_prefix(',') {
            s = r;
        } else if !s.is_empty() {
            return Err("labels not separated by ,".into());
        }
    }
    Ok(labels)
}

/// The labels of one series.
type Labels = Vec<(String, String)>;

/// Buckets of each histogram series rise with `le`, end with `+Inf`, and `+Inf` equals `_count`.
fn check_histograms(scrape: &Scrape) -> Result<(), String> {
    for (family, kind) in &scrape.families {
        if kind != "histogram" {
            continue;
        }
        let bucket = format!("{family}_bucket");
        let mut series: HashMap<Labels, Vec<(f64, f64)>> = HashMap::new();
        for s in scrape.samples.iter().filter(|s| s.name == bucket) {
            let le: f64 = match s.label("le").ok_or(format!("{bucket} without le"))? {
                "+Inf" => f64::INFINITY,
                v => v.parse().map_err(|_| format!("{bucket}: bad le {v}"))?,
            };
            let rest: Vec<_> = s.labels.iter().filter(|(k, _)| k != "le").cloned().collect();
            series.entry(rest).or_default().push((le, s.value));
        }
        if series.is_empty() {
            return Err(format!("histogram {family} without buckets"));
        }
        for (labels, buckets) in series {
            if buckets.windows(2).any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1) {
                return Err(format!("{family} {labels:?}: buckets not rising and cumulative: {buckets:?}"));
            }
            let (le, inf) = *buckets.last().unwrap();
            if le != f64::INFINITY {
                return Err(format!("{family} {labels:?}: no +Inf bucket"));
            }
            let with: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let count = scrape.sum(&format!("{family}_count"), &with);
            if count != inf {
                return Err(format!("{family} {labels:?}: +Inf {inf} != count {count}"));
            }
        }
    }
    Ok(())
}
