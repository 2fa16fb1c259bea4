//! Scraping `/metrics` as Prometheus would, and reading samples from it.
#![allow(dead_code)]

use prometheus_parse::{Scrape, Value};

/// GETs `{base}/metrics` and parses the exposition; panics with the text if unparsable.
pub fn scrape(base: &str) -> Scrape {
    let output = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "10", &format!("{base}/metrics")])
        .output()
        .expect("curl is needed");
    assert!(output.status.success(), "scraping {base}/metrics failed");
    let text = String::from_utf8(output.stdout).expect("metrics are UTF-8");
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parsable exposition")
}

/// The value of the sample `name` whose labels include `labels`, if the agent serves it.
/// A wait that polls for a value uses this; a check uses [`value`].
pub fn try_value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .filter_map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
            Value::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map(|b| b.count),
            Value::Summary(_) => None,
        })
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches several series");
    found.first().copied()
}

/// The value of the sample `name` whose labels include `labels`. A series the agent does
/// not serve fails the test, naming it: a renamed or missing metric must never read as 0.
pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    try_value(scrape, name, labels).unwrap_or_else(|| {
        panic!(
            "/metrics has no series {name} {labels:?}; it serves {:?}",
            names(scrape)
        )
    })
}

/// Every metric name in the scrape, for failure messages.
pub fn names(scrape: &Scrape) -> Vec<String> {
    let mut names: Vec<String> = scrape.samples.iter().map(|s| s.metric.clone()).collect();
    names.sort();
    names.dedup();
    names
}
