//! The whole running agent's instructions per request, counted by callgrind: every thread
//! (reading the rings, parsing, correlation, export over gRPC, journeys), as shipped, on
//! real traffic from the kernel — where the pipeline's count (`instructions.rs`) replays a
//! recording through the userspace path only. CPU seconds on these shared hosts move by a
//! fifth between rounds; this count moves by a few percent, so a change of a tenth shows.
//!
//! One agent runs under valgrind; its counters are zeroed, a paced load runs at one rate
//! until every span is exported, the counters are dumped; then again at a higher rate for
//! as long. Both windows hold the same per-second work (ring polls, ticks, metrics), so the
//! difference in instructions over the difference in requests is the cost of one more
//! request. valgrind slows the agent some fiftyfold: the rates are low enough for it to
//! keep up, which the span count checks.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use super::{
    agent::{self, Agent, Sink},
    load,
};
use crate::setup;

/// Requests per second of the two windows, each `SECONDS` long.
const RATES: [u32; 2] = [150, 450];
const SECONDS: f64 = 15.0;

/// One window: requests sent, spans exported, instructions counted.
#[derive(Clone, Copy, Debug)]
struct Window {
    requests: u64,
    spans: u64,
    instructions: u64,
}

/// The marginal cost of a request and of a span, in instructions.
#[derive(Clone, Copy, Debug)]
struct Marginal {
    per_request: f64,
    per_span: f64,
    windows: [Window; 2],
}

/// Appends the whole agent's instructions per request (and the baseline build's, with the
/// ratio) to `report`.
pub fn per_request(
    tracer: &Path,
    baseline: Option<&PathBuf>,
    out: &Path,
    report: &mut String,
) -> anyhow::Result<()> {
    eprintln!("bench: the whole agent's instructions per request (callgrind)");
    setup::debian_packages_named(&["valgrind"])?;
    let (mut server, port) = super::bench_server(&out.join("server-instructions.log"))?;
    let this = measure(tracer, "this", port, out);
    let before = baseline.map(|b| measure(b, "baseline", port, out));
    server.stop(Duration::from_secs(5));
    let this = this?;
    let [low, high] = this.windows;
    writeln!(
        report,
        "| whole agent, instructions per HTTP request (callgrind on the running agent, every thread, as shipped; {} → {} requests/s for {SECONDS} s each: {} → {} requests, {} → {} spans; per-second work cancelled out; repeatable on a busy host) | | **{:.0}** (per span {:.0}) | | |",
        RATES[0], RATES[1], low.requests, high.requests, low.spans, high.spans, this.per_request, this.per_span
    )?;
    if let Some(before) = before {
        let before = before?;
        writeln!(
            report,
            "| the same, `--baseline-tracer` (before) → this build | {:.0} | {:.0} | **{:.3}** | |",
            before.per_request,
            this.per_request,
            this.per_request / before.per_request
        )?;
    }
    Ok(())
}

fn measure(tracer: &Path, label: &str, port: u16, out: &Path) -> anyhow::Result<Marginal> {
    let sink = Sink::start(out)?;
    let profile = out.join(format!("callgrind-agent-{label}.out"));
    for dump in [1, 2] {
        let _ = fs::remove_file(dump_path(&profile, dump));
    }
    let wrapper = [
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", profile.display()),
    ];
    let setup = agent::Setup::Default { sink: &sink };
    // Loading the programs and compiling the rules under valgrind takes a minute or two.
    let agent = Agent::start_under(&wrapper, tracer, out, &setup, &[], Duration::from_secs(600));
    let agent = match agent {
        Ok(agent) => agent,
        Err(error) => {
            sink.stop();
            return Err(error.context(format!("the agent ({label}) under callgrind")));
        }
    };
    let windows = windows(&agent, &sink, &profile, port, label);
    agent.stop();
    sink.stop();
    let [low, high] = windows?;
    if high.requests <= low.requests || high.instructions <= low.instructions {
        bail!("the faster window gave no more requests or instructions: {low:?} → {high:?}");
    }
    let requests = (high.requests - low.requests) as f64;
    let instructions = (high.instructions - low.instructions) as f64;
    Ok(Marginal {
        per_request: instructions / requests,
        per_span: instructions / (high.spans.saturating_sub(low.spans)).max(1) as f64,
        windows: [low, high],
    })
}

fn windows(
    agent: &Agent,
    sink: &Sink,
    profile: &Path,
    port: u16,
    label: &str,
) -> anyhow::Result<[Window; 2]> {
    // Warm-up: connections opened, processes and their TLS libraries looked at.
    load::paced(port, "/warm-up/", 50, 3.0, 4);
    agent::exported(|| sink.spans(), Duration::from_secs(300))?;
    let mut windows = Vec::new();
    for (n, rate) in RATES.into_iter().enumerate() {
        callgrind_control(agent.pid(), "--zero")?;
        let before = sink.spans();
        // Words, not numbers, in paths: the privacy stage templates segments with digits.
        let prefix = format!("/instructions-{label}-{}/", ["slow", "fast"][n]);
        let sent = load::paced(port, &prefix, rate, SECONDS, 4);
        let after = agent::exported(|| sink.spans(), Duration::from_secs(300))?;
        callgrind_control(agent.pid(), "--dump")?;
        let window = Window {
            requests: sent.requests,
            spans: after - before,
            instructions: dumped_instructions(&dump_path(profile, n + 1))?,
        };
        // Two spans a request (client and server): fewer means the agent under valgrind
        // fell behind and lost events, and the count would be of less work.
        if sent.failed > 0 || window.spans < 2 * window.requests {
            bail!("the agent ({label}) under callgrind did not export two spans per request at {rate}/s: {window:?}, {} requests failed", sent.failed);
        }
        windows.push(window);
    }
    Ok([windows[0], windows[1]])
}

/// callgrind names its n-th dump `<file>.<n>`.
fn dump_path(profile: &Path, n: usize) -> PathBuf {
    PathBuf::from(format!("{}.{n}", profile.display()))
}

fn callgrind_control(pid: u32, action: &str) -> anyhow::Result<()> {
    let status = Command::new("callgrind_control")
        .arg(action)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .context("running callgrind_control")?;
    if !status.success() {
        bail!("callgrind_control {action} {pid} failed: {status}");
    }
    Ok(())
}

/// The instructions in a dump (all threads), once callgrind has written it.
fn dumped_instructions(dump: &Path) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = fs::read_to_string(dump).unwrap_or_default();
        let total = text.lines().find_map(|l| {
            l.strip_prefix("totals: ")
                .or_else(|| l.strip_prefix("summary: "))
        });
        if let Some(total) = total.and_then(|n| n.trim().parse::<u64>().ok()) {
            return Ok(total);
        }
        if Instant::now() > deadline {
            bail!("callgrind wrote no totals to {}", dump.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
