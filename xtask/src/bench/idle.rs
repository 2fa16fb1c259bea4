//! Agent memory with 10,000 idle connections, as shipped (SQLite journeys, OTLP/gRPC):
//! resident set before and once every socket of them is followed.
use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::agent::{Agent, Setup, Sink};

const CONNECTIONS: u32 = 10_000;

/// VmRSS of `pid` in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

pub fn rss(tracer: &Path, out: &Path, report: &mut String) -> anyhow::Result<()> {
    eprintln!("bench: agent memory at {CONNECTIONS} idle connections");
    let sink = Sink::start(out)?;
    let agent = Agent::start_as(tracer, out, &Setup::Default { sink: &sink }, &[])?;
    let followed_now = || agent.metric("tracer_connections");
    let base = followed_now();
    let before = rss_bytes(agent.pid());
    let mut holder = Command::new("python3")
        .arg("tracer/tests/peers/idle_connections.py")
        .args(["--count", &CONNECTIONS.to_string(), "--seconds", "20"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting idle_connections.py")?;
    let mut lines = BufReader::new(holder.stdout.take().context("holder stdout")?).lines();
    let open = lines.next().context("the holder's first line")??;
    if open != format!("OPEN {CONNECTIONS}") {
        bail!("idle_connections.py: {open}");
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let wanted = base + 2.0 * CONNECTIONS as f64;
    let mut followed = followed_now();
    while followed < wanted && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        followed = followed_now();
    }
    let during = rss_bytes(agent.pid());
    let lost = agent.metric("tracer_events_lost_total");
    let _ = holder.kill();
    let _ = holder.wait();
    agent.stop();
    sink.stop();
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    writeln!(
        report,
        "\n| agent memory, as shipped | idle | {CONNECTIONS} idle connections ({} of {} sockets followed, {lost} kernel events lost) | target |\n|---|---|---|---|\n| resident set (VmRSS) | {:.0} MiB | **{:.0} MiB** | ≤ 150 MiB |",
        followed - base,
        2 * CONNECTIONS,
        mib(before),
        mib(during)
    )?;
    Ok(())
}
