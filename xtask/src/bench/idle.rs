//! The agent with 10,000 idle connections, as shipped (SQLite journeys, OTLP/gRPC):
//! resident set and CPU with nothing open, then once every socket of them is followed,
//! and the same for connections that each carried one request first (a pool's keep-alive
//! connections between requests: the agent holds their streams and parsers).
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
/// How long the agent's CPU is read while nothing happens.
const QUIET: Duration = Duration::from_secs(5);

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

/// The agent's CPU over `QUIET`, in milliseconds per second.
fn quiet_cpu_ms_per_s(agent: &Agent) -> f64 {
    let before = agent.cpu_seconds();
    std::thread::sleep(QUIET);
    (agent.cpu_seconds() - before) * 1000.0 / QUIET.as_secs_f64()
}

/// What one agent showed: with nothing open, then holding the connections.
struct Held {
    rss_before: u64,
    cpu_before: f64,
    rss: u64,
    cpu: f64,
    followed: f64,
    lost: f64,
    /// Spans exported (of the two per connection with a request) when CPU was read.
    exported: f64,
}

/// Starts an agent, reads it quiet, opens `CONNECTIONS` (after one request each with
/// `request`), waits until the agent follows them (and exported their spans), reads it
/// again while they sit idle.
fn hold(tracer: &Path, out: &Path, request: bool) -> anyhow::Result<Held> {
    let sink = Sink::start(out)?;
    let agent = Agent::start_as(tracer, out, &Setup::Default { sink: &sink }, &[])?;
    let followed_now = || agent.metric("tracer_connections");
    let base = followed_now();
    let rss_before = rss_bytes(agent.pid());
    let cpu_before = quiet_cpu_ms_per_s(&agent);
    let mut holder = Command::new("python3");
    holder.arg("tracer/tests/peers/idle_connections.py").args([
        "--count",
        &CONNECTIONS.to_string(),
        "--seconds",
        "60",
    ]);
    if request {
        holder.arg("--request");
    }
    let mut holder = holder
        .stdout(Stdio::piped())
        .spawn()
        .context("starting idle_connections.py")?;
    let mut lines = BufReader::new(holder.stdout.take().context("holder stdout")?).lines();
    let open = lines.next().context("the holder's first line")??;
    if open != format!("OPEN {CONNECTIONS}") {
        bail!("idle_connections.py: {open}");
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    let wanted = base + 2.0 * CONNECTIONS as f64;
    let spans = if request {
        2.0 * CONNECTIONS as f64
    } else {
        0.0
    };
    let mut followed = followed_now();
    while (followed < wanted || agent.metric("tracer_spans_exported") < spans)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(250));
        followed = followed_now();
    }
    // Read as it stands: an agent still busy with the connections' spans shows it here.
    let exported = agent.metric("tracer_spans_exported");
    let cpu = quiet_cpu_ms_per_s(&agent);
    let rss = rss_bytes(agent.pid());
    let lost = agent.metric("tracer_events_lost_total");
    let _ = holder.kill();
    let _ = holder.wait();
    agent.stop();
    sink.stop();
    Ok(Held {
        rss_before,
        cpu_before,
        rss,
        cpu,
        followed: followed - base,
        lost,
        exported,
    })
}

pub fn rss(tracer: &Path, label: &str, out: &Path, report: &mut String) -> anyhow::Result<()> {
    eprintln!("bench: the agent at {CONNECTIONS} idle connections");
    let idle = hold(tracer, out, false)?;
    eprintln!("bench: the agent at {CONNECTIONS} idle keep-alive connections after a request each");
    let pooled = hold(tracer, out, true)?;
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    writeln!(
        report,
        "\n| agent ({label}), as shipped, {CONNECTIONS} connections | nothing open | idle ({} of {} sockets followed, {} kernel events lost) | idle after one request each ({} followed, {} lost, {} of {} spans exported by then) | target |\n|---|---|---|---|---|\n| resident set (VmRSS) | {:.0} MiB | **{:.0} MiB** | {:.0} MiB | ≤ 150 MiB idle |\n| CPU while they sit idle | {:.1} ms/s | {:.1} ms/s | **{:.1} ms/s** | |",
        idle.followed,
        2 * CONNECTIONS,
        idle.lost,
        pooled.followed,
        pooled.lost,
        pooled.exported,
        2 * CONNECTIONS,
        mib(idle.rss_before),
        mib(idle.rss),
        mib(pooled.rss),
        idle.cpu_before,
        idle.cpu,
        pooled.cpu,
    )?;
    Ok(())
}
