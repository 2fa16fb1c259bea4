//! `tracer orders`: journeys as support staff read them — one line per order, or one
//! order's timeline (status, service, time per step, errors, trace and Jaeger link).
use std::{fmt::Write, time::Duration};

use super::{diagnose::Diagnosis, human, Order, Step};
use crate::config::JourneyConfig;

fn time(ns: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_owned()
}

/// Is the order past its status's limit at `now_ns`? Returns the limit.
pub fn stuck_limit(order: &Order, config: &JourneyConfig, now_ns: i64) -> Option<Duration> {
    let (status, dwell) = order.dwell_ns(now_ns)?;
    if status == config.final_status {
        return None;
    }
    let limit = *config.max_dwell.get(status)?;
    (dwell > limit.as_nanos() as i64).then_some(limit)
}

pub fn list(orders: &[(Order, Option<Diagnosis>)], config: &JourneyConfig, now_ns: i64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<24} {:<12} {:<16} {:>6}  {:<32}  PROBLEM",
        "ORDER", "STATUS", "FOR", "LAST SEEN BY", "ERRORS", "TRACE"
    );
    for (order, diagnosis) in orders {
        let (status, dwell) = order
            .dwell_ns(now_ns)
            .map(|(s, d)| (s.to_owned(), human(d)))
            .unwrap_or_else(|| ("-".into(), "-".into()));
        let flag = if stuck_limit(order, config, now_ns).is_some() {
            " STUCK"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{:<20} {:<24} {:<12} {:<16} {:>6}  {:<32}  {}",
            order.id,
            format!("{status}{flag}"),
            dwell,
            order.last_service,
            order.errors,
            order.last_trace_id,
            diagnosis
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_default()
        );
    }
    if orders.is_empty() {
        out.push_str("(no orders)\n");
    }
    out
}

pub fn show(
    order: &Order,
    steps: &[Step],
    diagnosis: Option<&Diagnosis>,
    config: &JourneyConfig,
    now_ns: i64,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "order {}", order.id);
    match order.dwell_ns(now_ns) {
        Some((status, dwell)) => {
            let _ = write!(out, "  status      {status} for {}", human(dwell));
            match stuck_limit(order, config, now_ns) {
                Some(limit) => {
                    let _ = writeln!(out, " — STUCK (limit {})", human(limit.as_nanos() as i64));
                }
                None => out.push('\n'),
            }
        }
        None => out.push_str("  status      unknown (no status seen yet)\n"),
    }
    let _ = writeln!(
        out,
        "  first seen  {} UTC\n  last seen   {} UTC by {}",
        time(order.first_seen_ns),
        time(order.last_seen_ns),
        order.last_service
    );
    let services: Vec<&str> = order.services.iter().map(String::as_str).collect();
    let _ = writeln!(out, "  services    {}", services.join(", "));
    if let Some(user) = &order.user_id {
        let _ = writeln!(out, "  user        {user}");
    }
    let _ = writeln!(out, "  errors      {}", order.errors);
    if let Some(diagnosis) = diagnosis {
        let _ = writeln!(out, "  problem     {diagnosis}");
    }
    let _ = writeln!(
        out,
        "  trace       {}  {}/trace/{}",
        order.last_trace_id,
        config.jaeger_url.trim_end_matches('/'),
        order.last_trace_id
    );
    if !order.history.is_empty() {
        out.push_str("\nstatus history\n");
        for (i, change) in order.history.iter().enumerate() {
            let until = order.history.get(i + 1).map_or(now_ns, |next| next.at_ns);
            let current = if i + 1 == order.history.len() {
                " (now)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {} UTC  {:<24} {:<12} set by {}{current}",
                time(change.at_ns),
                change.status,
                human(until - change.at_ns),
                change.service
            );
        }
    }
    out.push_str("\ntimeline\n");
    let _ = writeln!(
        out,
        "  {:<19}  {:>9}  {:<16} {:<40} {:>9}  {:<20} ERROR",
        "TIME (UTC)", "+START", "SERVICE", "OPERATION", "TOOK", "STATUS"
    );
    for step in steps {
        let _ = writeln!(
            out,
            "  {:<19}  {:>9}  {:<16} {:<40} {:>9}  {:<20} {}",
            time(step.start_ns),
            human(step.start_ns - order.first_seen_ns),
            step.service,
            step.operation,
            human(step.end_ns - step.start_ns),
            step.status.as_deref().unwrap_or(""),
            step.error.as_deref().unwrap_or("")
        );
    }
    out
}
