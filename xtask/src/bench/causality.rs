//! What deciding parents costs where it is hardest: wrk (16 connections, a new id in each
//! request) → a Node.js event-loop service that calls another service for every request,
//! passing the id on (`tracer/tests/peers/relay/relay.js`). Agent CPU per 100k requests for
//! this build and, given `--baseline-tracer` (an older build), for that one in alternating
//! rounds of the same run, so the two figures share the machine's noise.
use std::{fmt::Write as _, path::Path, process::Command, time::Duration};

use super::{agent::Agent, median, wrk_with, BenchArgs};
use crate::infra::{free_port, wait_for_port, Started};

fn wrk_ids(port: u16, seconds: u32) -> anyhow::Result<f64> {
    let url = format!("http://127.0.0.1:{port}/");
    Ok(wrk_with(&url, seconds, &["-s", "xtask/bench/ids.lua"])?.requests)
}

/// Agent CPU-seconds per 100k requests over one traced round.
fn round(tracer: &Path, out: &Path, port: u16, seconds: u32) -> anyhow::Result<f64> {
    let spans = out.join("spans-chain.jsonl");
    let agent = Agent::start(tracer, out, &spans)?;
    let cpu0 = agent.cpu_seconds();
    let requests = wrk_ids(port, seconds)?;
    let cpu1 = agent.cpu_seconds();
    agent.stop();
    let _ = std::fs::remove_file(&spans);
    Ok((cpu1 - cpu0) / requests * 1e5)
}

pub fn chain(
    args: &BenchArgs,
    tracer: &Path,
    out: &Path,
    report: &mut String,
) -> anyhow::Result<()> {
    let (c_port, b_port) = (free_port(), free_port());
    let mut c = Started::spawn(
        "chain downstream",
        Command::new("node")
            .arg("xtask/bench/server.js")
            .arg(c_port.to_string()),
        &out.join("chain-c.log"),
    )?;
    let mut b = Started::spawn(
        "chain relay",
        Command::new("node").args([
            "tracer/tests/peers/relay/relay.js",
            &c_port.to_string(),
            "id",
            &b_port.to_string(),
        ]),
        &out.join("chain-b.log"),
    )?;
    wait_for_port(c_port, "the chain's downstream", Duration::from_secs(10))?;
    wait_for_port(b_port, "the chain's relay", Duration::from_secs(10))?;
    wrk_ids(b_port, 1)?; // warm-up
    let (mut this, mut baseline) = (Vec::new(), Vec::new());
    // Twice the usual rounds: two builds compared on a shared, noisy machine.
    let rounds = args.rounds * 2;
    for n in 0..rounds {
        eprintln!("bench: event-loop chain round {} of {rounds}", n + 1);
        this.push(round(tracer, out, b_port, args.seconds)?);
        if let Some(older) = &args.baseline_tracer {
            baseline.push(round(older, out, b_port, args.seconds)?);
        }
    }
    b.stop(Duration::from_secs(5));
    c.stop(Duration::from_secs(5));
    let shown = format!("{} CPU-s", super::spread(this.iter().copied(), 2));
    let this = median(this);
    match baseline.is_empty() {
        true => writeln!(report, "| agent CPU per 100k requests, event-loop service calling another (wrk → Node.js → Node.js, a new id per request), median (min–max) | | {shown} | | |")?,
        false => {
            let before_shown = format!("{} CPU-s", super::spread(baseline.iter().copied(), 2));
            let before = median(baseline);
            writeln!(report, "| agent CPU per 100k requests, event-loop service calling another (wrk → Node.js → Node.js, a new id per request), median (min–max): baseline build → this build | {before_shown} | {shown} | **{:.3}** | ≤ 1.10 |", this / before)?
        }
    }
    Ok(())
}
