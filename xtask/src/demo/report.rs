//! What the demo prints, read from tracer's own outputs only: `tracer orders … --json`
//! (journeys, statuses, the diagnosed problem) and the OTLP/JSON span file. The manifest
//! written by the customers' driver says what was injected, to compare.
use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde_json::Value;

pub struct Placed {
    pub order_id: String,
    pub scenario: String,
    pub customer_saw: String,
}

pub fn manifest(path: &Path) -> anyhow::Result<Vec<Placed>> {
    let all: Value = serde_json::from_str(&fs::read_to_string(path)?)?;
    Ok(all
        .as_array()
        .context("orders.json is a list")?
        .iter()
        .map(|o| Placed {
            order_id: o["order_id"].as_str().unwrap_or_default().to_owned(),
            scenario: o["scenario"].as_str().unwrap_or_default().to_owned(),
            customer_saw: o["customer_saw"].as_str().unwrap_or_default().to_owned(),
        })
        .collect())
}

fn orders(tracer: &Path, out: &Path, config: &str, args: &[&str]) -> anyhow::Result<Value> {
    let output = Command::new(tracer)
        .arg("orders")
        .args(args)
        .args(["--json", "--config", config, "--store"])
        .arg(format!("sqlite:{}", out.join("journeys.sqlite").display()))
        .output()?;
    if !output.status.success() {
        bail!(
            "tracer orders {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// Waits until every order has shipped or has a problem named, and nothing changed for
/// 5 s (late spans of slow steps).
pub fn wait_until_settled(
    tracer: &Path,
    out: &Path,
    config: &str,
    placed: &[String],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    let mut quiet_since = Instant::now();
    loop {
        let now = orders(tracer, out, config, &["list", "--limit", "1000"])?;
        let settled = placed.iter().all(|id| {
            now.as_array().into_iter().flatten().any(|o| {
                o["order_id"] == id.as_str()
                    && (o["status"] == "SHIPPED" || !o["problem"].is_null())
            })
        });
        // What changes when a span arrives (not the growing dwell times in the details).
        let state: Value = now
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| {
                serde_json::json!([
                    o["order_id"],
                    o["status"],
                    o["last_seen_ns"],
                    o["errors"],
                    o["problem"]["problem"],
                    o["problem"]["service"],
                    o["problem"]["operation"]
                ])
            })
            .collect();
        if state != last {
            last = state;
            quiet_since = Instant::now();
        } else if settled && quiet_since.elapsed() >= Duration::from_secs(5) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the orders did not settle within {timeout:?}; see {}",
                out.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn spans_per_trace(path: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for span in crate::infra::otlp_file_spans(path) {
        if let Some(trace) = span["traceId"].as_str() {
            *counts.entry(trace.to_lowercase()).or_default() += 1;
        }
    }
    counts
}

fn seconds(ns: i64) -> String {
    format!("{:.1} s", ns as f64 / 1e9)
}

/// The per-order report; also written to report.json in `out`.
pub fn build(
    tracer: &Path,
    out: &Path,
    config: &str,
    manifest_path: &Path,
    traffic_ended: Instant,
) -> anyhow::Result<String> {
    let spans = spans_per_trace(&out.join("spans.jsonl"));
    let mut text = String::new();
    let mut json = Vec::new();
    writeln!(
        text,
        "\nWhat tracer found (from `tracer orders` and {}):\n",
        out.join("spans.jsonl").display()
    )?;
    for placed in manifest(manifest_path)? {
        let Ok(order) = orders(tracer, out, config, &["show", &placed.order_id]) else {
            writeln!(
                text,
                "{}  injected {:<18} — tracer has no journey for it",
                placed.order_id, placed.scenario
            )?;
            continue;
        };
        let history = order["history"].as_array().cloned().unwrap_or_default();
        let end = order["last_seen_ns"].as_i64().unwrap_or_default();
        let steps: Vec<String> = history
            .iter()
            .enumerate()
            .map(|(i, change)| {
                let at = change["at_ns"].as_i64().unwrap_or_default();
                let until = history
                    .get(i + 1)
                    .and_then(|n| n["at_ns"].as_i64())
                    .unwrap_or(end);
                format!(
                    "{} {}",
                    change["status"].as_str().unwrap_or("?"),
                    seconds(until - at)
                )
            })
            .collect();
        let trace = order["trace_id"].as_str().unwrap_or_default();
        let problem = &order["problem"];
        let verdict = if problem.is_null() {
            "no problem".to_owned()
        } else {
            format!(
                "{} at {}: {} — {}",
                problem["problem"]
                    .as_str()
                    .unwrap_or_default()
                    .replace('_', " "),
                problem["service"].as_str().unwrap_or_default(),
                problem["operation"].as_str().unwrap_or_default(),
                problem["detail"].as_str().unwrap_or_default()
            )
        };
        writeln!(
            text,
            "{}  injected {:<18} ended {:<24} {}\n    steps:   {}\n    at fault: {}\n    customer saw: {}",
            placed.order_id,
            placed.scenario,
            order["status"].as_str().unwrap_or("-"),
            if order["stuck"] == true { "(stuck)" } else { "" },
            steps.join(" → "),
            verdict,
            placed.customer_saw,
        )?;
        writeln!(
            text,
            "    trace:   {trace} ({} spans in the OTLP file) {}",
            spans.get(trace).copied().unwrap_or(0),
            order["jaeger_url"].as_str().unwrap_or_default()
        )?;
        json.push(serde_json::json!({
            "order_id": placed.order_id,
            "injected": placed.scenario,
            "status": order["status"],
            "steps": steps,
            "problem": problem,
            "trace_id": trace,
            "spans": spans.get(trace).copied().unwrap_or(0),
        }));
    }
    let took = traffic_ended.elapsed();
    fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "orders": json,
            "report_after_traffic_s": took.as_secs_f64(),
        }))?,
    )?;
    writeln!(
        text,
        "\nReport complete {:.0} s after the last order was placed.\nFiles: {} (spans, journeys, logs, report.json)",
        took.as_secs_f64(),
        out.display()
    )?;
    Ok(text)
}
