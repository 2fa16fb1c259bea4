//! `cargo xtask bench`: what tracer costs the traced applications and what it loses,
//! always against a baseline measured in the same run (untraced and traced rounds
//! alternate). Writes a Markdown table to stdout and target/bench/report.md.
mod agent;
mod agent_instructions;
mod causality;
mod corpus;
mod https;
mod idle;
mod instructions;
mod load;
mod syscalls;

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use agent::{Agent, BpfStats};
use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::Value;

use crate::{
    exec::{exec, stdout_of},
    infra::{self, free_port, wait_for_port, Started},
    run::build_release,
    setup,
};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Untraced/traced round pairs per measurement.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Seconds per HTTP round.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Where the report and the runs' files go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// An older `tracer` binary: the HTTP and event-loop chain rounds also run it,
    /// alternating with this build, and report both agents' CPU per request.
    #[arg(long)]
    baseline_tracer: Option<PathBuf>,
    /// Run only these parts (comma-separated): http, loss, idle, chain, https, amqp,
    /// syscalls, pipeline, instructions (the whole running agent under callgrind; with
    /// `--baseline-tracer`, that build too).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Record the pipeline bench's corpus from real programs (tracer capture) and stop.
    #[arg(long)]
    record_corpus: bool,
}

/// One `wrk` run.
#[derive(Clone, Copy, Debug, Default)]
struct Wrk {
    requests_per_s: f64,
    requests: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Wrk {
    /// Two runs as one: each figure their mean.
    fn mean(a: Self, b: Self) -> Self {
        let mid = |x: f64, y: f64| (x + y) / 2.0;
        Self {
            requests_per_s: mid(a.requests_per_s, b.requests_per_s),
            requests: mid(a.requests, b.requests),
            p50_us: mid(a.p50_us, b.p50_us),
            p99_us: mid(a.p99_us, b.p99_us),
        }
    }
}

fn micros(text: &str) -> Option<f64> {
    let (number, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| text.split_at(i))?;
    let value: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => value,
        "ms" => value * 1e3,
        "s" => value * 1e6,
        _ => return None,
    })
}

fn wrk(port: u16, seconds: u32) -> anyhow::Result<Wrk> {
    wrk_url(&format!("http://127.0.0.1:{port}/bench"), seconds)
}

fn wrk_url(url: &str, seconds: u32) -> anyhow::Result<Wrk> {
    wrk_with(url, seconds, &[])
}

/// `wrk` with 16 connections for `seconds`, with extra arguments (`-s script.lua`).
fn wrk_with(url: &str, seconds: u32, extra: &[&str]) -> anyhow::Result<Wrk> {
    let output = Command::new("wrk")
        .args(["-t1", "-c16", &format!("-d{seconds}s"), "--latency"])
        .args(extra)
        .arg(url)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut result = Wrk::default();
    for line in text.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Requests/sec:", v] => result.requests_per_s = v.parse()?,
            [n, "requests", "in", ..] => result.requests = n.parse()?,
            ["50%", v] => result.p50_us = micros(v).unwrap_or_default(),
            ["99%", v] => result.p99_us = micros(v).unwrap_or_default(),
            _ => {}
        }
    }
    if result.requests == 0.0 {
        bail!("wrk measured nothing:\n{text}");
    }
    Ok(result)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// HTTP server spans per path prefix in an OTLP/JSON file.
fn server_spans(file: &Path, prefix: &str) -> u64 {
    let server_on = |span: &Value| {
        let server =
            span["kind"] == 2 || span["kind"].as_str().is_some_and(|k| k.contains("SERVER"));
        let path = span["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "url.path")
            .and_then(|a| a["value"]["stringValue"].as_str());
        server && path.is_some_and(|p| p.starts_with(prefix))
    };
    infra::otlp_file_spans(file)
        .iter()
        .filter(|s| server_on(s))
        .count() as u64
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if setup::needed() {
        setup::run()?;
    }
    setup::debian_packages_named(&["wrk"])?;
    let tracer = fs::canonicalize(build_release()?)?;
    setup::runtime_filesystems()?;
    fs::create_dir_all(&args.out)?;
    let out = fs::canonicalize(&args.out)?;
    if args.record_corpus {
        return corpus::record(&tracer, &out);
    }
    let _stats = BpfStats::enable();
    let mut report = String::new();
    writeln!(report, "# tracer benchmark\n")?;
    writeln!(
        report,
        "{} · {} · kernel {} · {} rounds of {} s, untraced and traced alternating\n",
        stdout_of(Command::new("date").arg("-u")).unwrap_or_default(),
        stdout_of(&mut Command::new("nproc"))
            .map(|n| format!("{n} cores"))
            .unwrap_or_default(),
        stdout_of(Command::new("uname").arg("-r")).unwrap_or_default(),
        args.rounds,
        args.seconds
    )?;
    writeln!(
        report,
        "| measure | untraced | traced | ratio / delta | target |\n|---|---|---|---|---|"
    )?;

    let wanted = |part: &str| args.only.is_empty() || args.only.iter().any(|p| p == part);
    if wanted("http") || wanted("loss") {
        let (mut server, port) = bench_server(&out.join("server.log"))?;
        if wanted("http") {
            let server_pid = server.child.id();
            http_overhead(&args, &tracer, &out, (port, server_pid), &mut report)?;
        }
        if wanted("loss") {
            loss_curve(&tracer, &out, port, &mut report)?;
        }
        server.stop(Duration::from_secs(5));
    }
    if wanted("idle") {
        idle::rss(&tracer, "this build", &out, &mut report)?;
        if let Some(baseline) = &args.baseline_tracer {
            idle::rss(baseline, "--baseline-tracer", &out, &mut report)?;
        }
    }
    if wanted("chain") {
        causality::chain(&args, &tracer, &out, &mut report)?;
    }
    if wanted("https") {
        https::overhead(&args, &tracer, &out, &mut report)?;
    }
    if wanted("amqp") {
        amqp_overhead(&tracer, &out, &mut report)?;
    }
    if wanted("syscalls") {
        syscalls::hooks(&args, &tracer, &out, &mut report)?;
    }
    if wanted("pipeline") {
        pipeline(&mut report)?;
        instructions::per_span(&out, &mut report)?;
    }
    if wanted("instructions") {
        let baseline = args.baseline_tracer.as_ref();
        agent_instructions::per_request(&tracer, baseline, &out, &mut report)?;
    }
    fs::write(out.join("report.md"), &report)?;
    println!("{report}");
    eprintln!("bench: report in {}", out.join("report.md").display());
    Ok(())
}

/// The bench's Node.js HTTP server (`xtask/bench/server.js`) on a free port, listening.
fn bench_server(log: &Path) -> anyhow::Result<(Started, u16)> {
    let port = free_port();
    let server = Started::spawn(
        "bench server",
        Command::new("node")
            .arg("xtask/bench/server.js")
            .arg(port.to_string()),
        log,
    )?;
    wait_for_port(port, "the bench server", Duration::from_secs(10))?;
    Ok((server, port))
}

/// One traced round's cost, read once everything it caused was exported.
#[derive(Default)]
struct Cost {
    wrk: Wrk,
    cpu_s: f64,
    spans: f64,
    bpf_ns: f64,
}

impl Cost {
    fn per_100k_requests(&self) -> f64 {
        self.cpu_s / self.wrk.requests * 1e5
    }
    fn per_100k_spans(&self) -> f64 {
        self.cpu_s / self.spans.max(1.0) * 1e5
    }
    fn spans_per_request(&self) -> f64 {
        self.spans / self.wrk.requests
    }
}

/// A traced `wrk` round: the agent's CPU from before the load until every span of it has
/// been exported (the count at the receiver, or the file, stops growing).
fn traced_round(
    tracer: &Path,
    out: &Path,
    port: u16,
    seconds: u32,
    setup: &agent::Setup,
) -> anyhow::Result<Cost> {
    let agent = Agent::start_as(tracer, out, setup, &[])?;
    let exported = || match setup {
        agent::Setup::Default { sink } | agent::Setup::Sampled { sink } => sink.spans(),
        agent::Setup::File { spans } | agent::Setup::Light { spans } => {
            fs::metadata(spans).map(|m| m.len()).unwrap_or(0)
        }
    };
    let before = agent::exported(exported, Duration::from_secs(30))?;
    let (cpu0, bpf0) = (agent.cpu_seconds(), agent.bpf_run_time());
    let wrk = wrk(port, seconds)?;
    let bpf1 = agent.bpf_run_time();
    let after = agent::exported(exported, Duration::from_secs(120))?;
    let cpu_s = agent.cpu_seconds() - cpu0;
    agent.stop();
    let spans = match setup {
        agent::Setup::Default { .. } | agent::Setup::Sampled { .. } => (after - before) as f64,
        agent::Setup::File { spans } | agent::Setup::Light { spans } => {
            let found = infra::otlp_file_spans(spans).len() as f64;
            let _ = fs::remove_file(spans);
            found
        }
    };
    Ok(Cost {
        wrk,
        cpu_s,
        spans,
        bpf_ns: (bpf1.0 - bpf0.0) as f64,
    })
}

/// The load of a busy host rather than a saturated one: the agent's cost per request when
/// the CPUs are not also fought over by a client and server running flat out.
const STEADY_RATE: u32 = 5_000;

/// A traced round at `STEADY_RATE` requests/s: requests sent, spans exported, agent CPU.
struct Steady {
    requests: f64,
    spans: f64,
    cpu_s: f64,
}

fn steady_round(
    tracer: &Path,
    out: &Path,
    port: u16,
    seconds: u32,
    sink: &agent::Sink,
    round: u32,
) -> anyhow::Result<Steady> {
    let agent = Agent::start_as(tracer, out, &agent::Setup::Default { sink }, &[])?;
    let before = agent::exported(|| sink.spans(), Duration::from_secs(30))?;
    let cpu0 = agent.cpu_seconds();
    // Words, not numbers, in paths: the privacy stage templates segments with digits.
    let prefix = format!(
        "/steady-round-{}/",
        ["a", "b", "c", "d", "e"][round as usize % 5]
    );
    let sent = load::paced(port, &prefix, STEADY_RATE, seconds as f64, 8);
    let after = agent::exported(|| sink.spans(), Duration::from_secs(120))?;
    let cpu_s = agent.cpu_seconds() - cpu0;
    agent.stop();
    Ok(Steady {
        requests: sent.requests.max(1) as f64,
        spans: (after - before) as f64,
        cpu_s,
    })
}

/// "1.23 (1.01–1.57)": median, min and max.
/// Builds one of tracer's examples (`tracer/examples/<name>.rs`) and returns its path.
fn example(name: &str) -> anyhow::Result<PathBuf> {
    exec(Command::new("cargo").args([
        "build",
        "--release",
        "--quiet",
        "--package",
        "tracer",
        "--example",
        name,
    ]))?;
    Ok(PathBuf::from("target/release/examples").join(name))
}

fn spread(values: impl IntoIterator<Item = f64>, decimals: usize) -> String {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    let (min, max) = (values[0], values[values.len() - 1]);
    let median = median(values);
    format!("{median:.decimals$} ({min:.decimals$}–{max:.decimals$})")
}

/// A row of `what` for the `--baseline-tracer` build and this one, measured in the same
/// alternating rounds: each side's spread, and the spread of the per-round ratios.
fn before_and_after(
    report: &mut String,
    what: &str,
    unit: &str,
    then: Vec<f64>,
    now: Vec<f64>,
) -> anyhow::Result<()> {
    let ratios: Vec<f64> = now.iter().zip(&then).map(|(n, t)| n / t).collect();
    writeln!(
        report,
        "| {what} `--baseline-tracer` (before) → this build, alternating rounds | {} {unit} | {} {unit} | {} | |",
        spread(then, 2),
        spread(now, 2),
        spread(ratios, 2)
    )?;
    Ok(())
}

fn http_overhead(
    args: &BenchArgs,
    tracer: &Path,
    out: &Path,
    (port, server): (u16, u32),
    report: &mut String,
) -> anyhow::Result<()> {
    let sink = agent::Sink::start(out)?;
    let file = out.join("spans-http.jsonl");
    let (mut untraced, mut default, mut filed) = (Vec::new(), Vec::new(), Vec::new());
    let mut sampled = Vec::new();
    let (mut server_cpu, mut before) = (Vec::new(), Vec::new());
    let (mut steady, mut steady_before) = (Vec::new(), Vec::new());
    wrk(port, 1)?; // warm-up
    for round in 0..args.rounds {
        eprintln!("bench: HTTP round {} of {}", round + 1, args.rounds);
        let cpu = agent::cpu_seconds(server);
        let run = wrk(port, args.seconds)?;
        server_cpu.push((agent::cpu_seconds(server) - cpu) / run.requests * 1e5);
        let setup = agent::Setup::Default { sink: &sink };
        default.push(traced_round(tracer, out, port, args.seconds, &setup)?);
        // Untraced on both sides of the traced round: the host's speed drifts within a
        // minute, and one untraced run before it alone made ratios of 0.55 to 1.46.
        untraced.push(Wrk::mean(run, wrk(port, args.seconds)?));
        let setup = agent::Setup::File { spans: &file };
        filed.push(traced_round(tracer, out, port, args.seconds, &setup)?);
        let setup = agent::Setup::Sampled { sink: &sink };
        sampled.push(traced_round(tracer, out, port, args.seconds, &setup)?);
        if let Some(baseline) = &args.baseline_tracer {
            let setup = agent::Setup::Default { sink: &sink };
            before.push(traced_round(baseline, out, port, args.seconds, &setup)?);
        }
        steady.push(steady_round(tracer, out, port, args.seconds, &sink, round)?);
        if let Some(baseline) = &args.baseline_tracer {
            steady_before.push(steady_round(
                baseline,
                out,
                port,
                args.seconds,
                &sink,
                round,
            )?);
        }
    }
    sink.stop();
    let rounds = || untraced.iter().zip(&default);
    let pick = |runs: &[Wrk], f: fn(&Wrk) -> f64| median(runs.iter().map(f).collect());
    let traced: Vec<Wrk> = default.iter().map(|c| c.wrk).collect();
    let (u_rps, t_rps) = (
        pick(&untraced, |w| w.requests_per_s),
        pick(&traced, |w| w.requests_per_s),
    );
    let (u50, t50) = (pick(&untraced, |w| w.p50_us), pick(&traced, |w| w.p50_us));
    let (u99, t99) = (pick(&untraced, |w| w.p99_us), pick(&traced, |w| w.p99_us));
    writeln!(
        report,
        "Traced rounds run the agent as shipped (order journeys in SQLite, OTLP/gRPC to a real receiver), every span exported (`--sample-success-ratio 1`); its CPU is read once the receiver has stopped getting spans from the round. The untraced figures of a round are the mean of an untraced run just before and one just after its traced run. Figures: median (min–max) over the rounds; ratios and deltas per round pair.\n"
    )?;
    writeln!(report, "| HTTP throughput (wrk, 16 keep-alive connections, Node.js server) | {u_rps:.0} req/s | {t_rps:.0} req/s | **{}** | ≥ 0.80 |", spread(rounds().map(|(u, t)| t.wrk.requests_per_s / u.requests_per_s), 3))?;
    writeln!(
        report,
        "| HTTP p50 latency | {u50:.0} µs | {t50:.0} µs | +{} µs | |",
        spread(rounds().map(|(u, t)| t.wrk.p50_us - u.p50_us), 0)
    )?;
    writeln!(
        report,
        "| HTTP p99 latency | {u99:.0} µs | {t99:.0} µs | **+{} µs** | ≤ +500 µs |",
        spread(rounds().map(|(u, t)| t.wrk.p99_us - u.p99_us), 0)
    )?;
    writeln!(report, "| agent CPU per 100k HTTP requests, as shipped | | **{} CPU-s** | | ≤ 1.0 CPU-s (DeepFlow ≈ 1.1, Coroot ≈ 2.0) |", spread(default.iter().map(Cost::per_100k_requests), 2))?;
    writeln!(
        report,
        "| the same, against the traced Node.js server's own CPU per 100k requests ({} CPU-s untraced) | | | **{}** | < 1 |",
        spread(server_cpu.iter().copied(), 2),
        spread(default.iter().zip(&server_cpu).map(|(c, s)| c.per_100k_requests() / s), 2)
    )?;
    writeln!(
        report,
        "| agent CPU per 100k spans, as shipped ({} spans per request) | | {} CPU-s | | |",
        spread(default.iter().map(Cost::spans_per_request), 2),
        spread(default.iter().map(Cost::per_100k_spans), 2)
    )?;
    writeln!(
        report,
        "| agent CPU per 100k HTTP requests, OTLP/JSON file instead of gRPC (per 100k spans: {}) | | {} CPU-s | | |",
        spread(filed.iter().map(Cost::per_100k_spans), 2),
        spread(filed.iter().map(Cost::per_100k_requests), 2)
    )?;
    writeln!(
        report,
        "| agent CPU per 100k HTTP requests, as shipped with its sampling too (all errors, 10 % of successes: {} spans per request exported) | | {} CPU-s | | |",
        spread(sampled.iter().map(Cost::spans_per_request), 2),
        spread(sampled.iter().map(Cost::per_100k_requests), 2)
    )?;
    writeln!(
        report,
        "| agent CPU per 100k HTTP requests, as shipped, at a steady {STEADY_RATE} requests/s (paced client, 8 connections; {} spans per request) | | {} CPU-s | | |",
        spread(steady.iter().map(|s: &Steady| s.spans / s.requests), 2),
        spread(steady.iter().map(|s| s.cpu_s / s.requests * 1e5), 2)
    )?;
    writeln!(
        report,
        "| in-kernel BPF time per HTTP request (all programs, `bpf_stats`) | | **{} µs** | | ≤ 2.0 µs |",
        spread(default.iter().map(|c| c.bpf_ns / c.wrk.requests / 1e3), 2)
    )?;
    if !steady_before.is_empty() {
        let per_request = |s: &Steady| s.cpu_s / s.requests * 1e5;
        let (then, now) = (
            steady_before.iter().map(per_request),
            steady.iter().map(per_request),
        );
        let what =
            format!("agent CPU per 100k HTTP requests at a steady {STEADY_RATE} requests/s,");
        before_and_after(report, &what, "CPU-s", then.collect(), now.collect())?;
    }
    if !before.is_empty() {
        let per_request = |costs: &[Cost]| costs.iter().map(Cost::per_100k_requests).collect();
        let what = "agent CPU per 100k HTTP requests, as shipped:";
        before_and_after(
            report,
            what,
            "CPU-s",
            per_request(&before),
            per_request(&default),
        )?;
        let bpf_per_request = |costs: &[Cost]| {
            (costs.iter())
                .map(|c| c.bpf_ns / c.wrk.requests / 1e3)
                .collect()
        };
        let what = "in-kernel BPF time per HTTP request,";
        before_and_after(
            report,
            what,
            "µs",
            bpf_per_request(&before),
            bpf_per_request(&default),
        )?;
        writeln!(
            report,
            "| HTTP throughput traced/untraced, `--baseline-tracer` (before) → this build | {} | {} | | |",
            spread(rounds().zip(&before).map(|((u, _), b)| b.wrk.requests_per_s / u.requests_per_s), 3),
            spread(rounds().map(|(u, t)| t.wrk.requests_per_s / u.requests_per_s), 3)
        )?;
        writeln!(
            report,
            "| HTTP p99 latency traced − untraced, `--baseline-tracer` (before) → this build | +{} µs | +{} µs | | |",
            spread(rounds().zip(&before).map(|((u, _), b)| b.wrk.p99_us - u.p99_us), 0),
            spread(rounds().map(|(u, t)| t.wrk.p99_us - u.p99_us), 0)
        )?;
    }
    Ok(())
}

fn loss_curve(tracer: &Path, out: &Path, port: u16, report: &mut String) -> anyhow::Result<()> {
    let spans = out.join("spans-loss.jsonl");
    let _ = fs::remove_file(&spans);
    let agent = Agent::start(tracer, out, &spans)?;
    let mut offered = Vec::new();
    // Words, not numbers: the privacy stage templates path segments with digits (`{id}`).
    let rates = [
        (1_000u32, "one"),
        (2_500, "two-and-a-half"),
        (5_000, "five"),
        (10_000, "ten"),
        (20_000, "twenty"),
    ];
    let prefix = |label: &str| format!("/loss-{label}-thousand/");
    for (rate, label) in rates {
        eprintln!("bench: loss curve at {rate} requests/s");
        let sent = load::paced(port, &prefix(label), rate, 3.0, 8);
        offered.push((rate, label, sent));
    }
    let file_size = || fs::metadata(&spans).map(|m| m.len()).unwrap_or(0);
    agent::exported(file_size, Duration::from_secs(120))?;
    let ring_lost = agent.metric("tracer_events_lost_total{reason=\"data_ring_full\"}");
    let all_lost = agent.metric("tracer_events_lost_total");
    let spans_dropped = agent.metric("tracer_spans_dropped_total");
    agent.stop();
    writeln!(report, "\n| offered rate | achieved | requests | without a span | loss | target |\n|---|---|---|---|---|---|")?;
    for (rate, label, sent) in offered {
        let found = server_spans(&spans, &prefix(label));
        let missing = sent.requests.saturating_sub(found);
        writeln!(
            report,
            "| {rate}/s | {:.0}/s | {} | {missing} | **{:.2} %** | 0 at 10k/s |",
            sent.requests as f64 / sent.seconds,
            sent.requests,
            100.0 * missing as f64 / sent.requests.max(1) as f64
        )?;
    }
    writeln!(
        report,
        "\nKernel events lost over the loss curve: {all_lost} (ring buffer full: {ring_lost}); spans the agent dropped (export queue full or export failed): {spans_dropped}. The paced client is the limit of the achieved rate on a 2-core machine."
    )?;
    Ok(())
}

/// Publishes and consumes `count` messages (pika with confirms → RabbitMQ → amqplib).
fn amqp_round(amqp: u16, queue: &str, count: u32) -> anyhow::Result<f64> {
    let start = Instant::now();
    let peers = "tracer/tests/peers";
    exec(
        Command::new("python3")
            .arg(format!("{peers}/amqp_publisher.py"))
            .args([
                "--port",
                &amqp.to_string(),
                "--queue",
                queue,
                "--routing-key",
                queue,
            ])
            .args(["--count", &count.to_string(), "--confirm"])
            .stdout(std::process::Stdio::null()),
    )?;
    exec(
        Command::new("node")
            .arg(format!("{peers}/amqp_consumer.js"))
            .args([&amqp.to_string(), queue, &count.to_string()])
            .stdout(std::process::Stdio::null()),
    )?;
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

fn amqp_overhead(tracer: &Path, out: &Path, report: &mut String) -> anyhow::Result<()> {
    let (mut broker, amqp) = infra::rabbitmq(out)?;
    let spans = out.join("spans-amqp.jsonl");
    let (mut untraced, mut traced) = (Vec::new(), Vec::new());
    amqp_round(amqp, "bench.warmup", 200)?;
    for round in 0..3 {
        eprintln!("bench: AMQP round {}", round + 1);
        untraced.push(amqp_round(amqp, &format!("bench.u{round}"), 2000)?);
        let agent = Agent::start(tracer, out, &spans)?;
        traced.push(amqp_round(amqp, &format!("bench.t{round}"), 2000)?);
        agent.stop();
    }
    broker.stop(Duration::from_secs(10));
    let (u, t) = (median(untraced), median(traced));
    writeln!(
        report,
        "\n| measure | untraced | traced | ratio | target |\n|---|---|---|---|---|"
    )?;
    writeln!(report, "| AMQP publish (confirms) + consume, 2000 messages, process start included | {u:.0} msg/s | {t:.0} msg/s | **{:.3}** | ≥ 0.97 |", t / u)?;
    Ok(())
}

/// Runs the pipeline bench (`tracer/benches/pipeline.rs`) with `env`; its JSON line.
fn pipeline_bench(env: &[(&str, String)]) -> anyhow::Result<Value> {
    let output = Command::new("cargo")
        .args(["bench", "--quiet", "-p", "tracer", "--bench", "pipeline"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .context("running the pipeline bench")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let result = text
        .lines()
        .find_map(|l| serde_json::from_str::<Value>(l).ok());
    match result.filter(|_| output.status.success()) {
        Some(result) => Ok(result),
        None => bail!(
            "the pipeline bench printed no result:\n{text}{}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

fn pipeline(report: &mut String) -> anyhow::Result<()> {
    eprintln!("bench: userspace pipeline on the recorded corpus");
    let result = pipeline_bench(&[])?;
    let shown = |figure: &Value, decimals: usize| -> String {
        let v = |i: usize| figure[i].as_f64().unwrap_or_default();
        format!(
            "{:.decimals$} ({:.decimals$}–{:.decimals$})",
            v(1),
            v(0),
            v(2)
        )
    };
    let mb = |v: &Value| v.as_f64().unwrap_or_default() / 1e6;
    writeln!(
        report,
        "\n| userspace, per CPU-second of the process (journey thread included), {} rounds | MB/s | spans/s | target |\n|---|---|---|---|",
        result["rounds"]
    )?;
    writeln!(
        report,
        "| `httparse` (heads) + `serde_json` (JSON bodies) over the corpus's HTTP streams ({:.1} MB, {} messages), wall clock | {} | | |",
        mb(&result["baseline_http_bytes"]),
        result["baseline_messages"],
        shown(&result["baseline_mb_per_s"], 0)
    )?;
    let shop = &result["shop"];
    writeln!(report, "| recorded corpus (HTTP with bodies, AMQP with the broker's side, PostgreSQL clients; {:.1} MB, {} spans): reassembly → sessions → extraction → correlation with eviction → sampling → privacy → SQLite journeys → OTLP protobuf | **{}** | {} | ≥ 250 MB/s |", mb(&shop["bytes"]), shop["spans"], shown(&shop["mb_per_cpu_s"], 1), shown(&shop["spans_per_cpu_s"], 0))?;
    let two = &result["shop_2_threads"];
    writeln!(report, "| the same corpus, spans per second of wall clock: 1 pipeline thread (and the journey thread) → 2 (`--pipeline-threads 2`: sampling, privacy, journeys and encoding on the second) | {} → {} MB/s per CPU-second | **{} → {}** spans/s | |", shown(&shop["mb_per_cpu_s"], 1), shown(&two["mb_per_cpu_s"], 1), shown(&shop["spans_per_s"], 0), shown(&two["spans_per_s"], 0))?;
    let h2 = &result["http2"];
    writeln!(report, "| recorded HTTP/2 and gRPC fixtures (Node.js, grpcio; {:.1} MB, {} spans), the same path | {} | {} | |", mb(&h2["bytes"]), h2["spans"], shown(&h2["mb_per_cpu_s"], 1), shown(&h2["spans_per_cpu_s"], 0))?;
    Ok(())
}
