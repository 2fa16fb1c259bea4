//! `cargo xtask bench`: what tracer costs the traced applications and what it loses,
//! always against a baseline measured in the same run (untraced and traced rounds
//! alternate). Writes a Markdown table to stdout and target/bench/report.md.
mod agent;
mod causality;
mod corpus;
mod https;
mod load;

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
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds per HTTP round.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Where the report and the runs' files go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// An older `tracer` binary: the event-loop chain rounds also run it, alternating with
    /// this build, and report both agents' CPU per request.
    #[arg(long)]
    baseline_tracer: Option<PathBuf>,
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

    let port = free_port();
    let mut server = Started::spawn(
        "bench server",
        Command::new("node")
            .arg("xtask/bench/server.js")
            .arg(port.to_string()),
        &out.join("server.log"),
    )?;
    wait_for_port(port, "the bench server", Duration::from_secs(10))?;
    http_overhead(&args, &tracer, &out, port, &mut report)?;
    loss_curve(&tracer, &out, port, &mut report)?;
    server.stop(Duration::from_secs(5));
    causality::chain(&args, &tracer, &out, &mut report)?;
    https::overhead(&args, &tracer, &out, &mut report)?;
    amqp_overhead(&tracer, &out, &mut report)?;
    pipeline(&mut report)?;
    fs::write(out.join("report.md"), &report)?;
    println!("{report}");
    eprintln!("bench: report in {}", out.join("report.md").display());
    Ok(())
}

fn http_overhead(
    args: &BenchArgs,
    tracer: &Path,
    out: &Path,
    port: u16,
    report: &mut String,
) -> anyhow::Result<()> {
    let spans = out.join("spans-http.jsonl");
    let (mut untraced, mut traced) = (Vec::new(), Vec::new());
    let (mut cpu, mut bpf_ns, mut requests) = (0.0, 0u64, 0.0);
    wrk(port, 1)?; // warm-up
    for round in 0..args.rounds {
        eprintln!("bench: HTTP round {} of {}", round + 1, args.rounds);
        untraced.push(wrk(port, args.seconds)?);
        let agent = Agent::start(tracer, out, &spans)?;
        let (cpu0, bpf0) = (agent.cpu_seconds(), agent.bpf_run_time());
        let result = wrk(port, args.seconds)?;
        let (cpu1, bpf1) = (agent.cpu_seconds(), agent.bpf_run_time());
        agent.stop();
        let _ = fs::remove_file(&spans);
        cpu += cpu1 - cpu0;
        bpf_ns += bpf1.0 - bpf0.0;
        requests += result.requests;
        traced.push(result);
    }
    let pick = |runs: &[Wrk], f: fn(&Wrk) -> f64| median(runs.iter().map(f).collect());
    let (u_rps, t_rps) = (
        pick(&untraced, |w| w.requests_per_s),
        pick(&traced, |w| w.requests_per_s),
    );
    let (u50, t50) = (pick(&untraced, |w| w.p50_us), pick(&traced, |w| w.p50_us));
    let (u99, t99) = (pick(&untraced, |w| w.p99_us), pick(&traced, |w| w.p99_us));
    writeln!(report, "| HTTP throughput (wrk, 16 keep-alive connections, Node.js server) | {u_rps:.0} req/s | {t_rps:.0} req/s | **{:.3}** | ≥ 0.97 |", t_rps / u_rps)?;
    writeln!(
        report,
        "| HTTP p50 latency | {u50:.0} µs | {t50:.0} µs | +{:.0} µs | |",
        t50 - u50
    )?;
    writeln!(
        report,
        "| HTTP p99 latency | {u99:.0} µs | {t99:.0} µs | **+{:.0} µs** | ≤ +100 µs |",
        t99 - u99
    )?;
    writeln!(report, "| agent CPU per 100k HTTP requests | | {:.2} CPU-s | | ≤ 1 CPU-s (DeepFlow ≈ 1.1, Coroot ≈ 2.0) |", cpu / requests * 1e5)?;
    writeln!(
        report,
        "| in-kernel BPF time per HTTP request (all programs) | | {:.1} µs | | |",
        bpf_ns as f64 / requests / 1e3
    )?;
    Ok(())
}

fn loss_curve(tracer: &Path, out: &Path, port: u16, report: &mut String) -> anyhow::Result<()> {
    let spans = out.join("spans-loss.jsonl");
    let _ = fs::remove_file(&spans);
    let agent = Agent::start(tracer, out, &spans)?;
    let mut offered = Vec::new();
    for rate in [1_000u32, 2_500, 5_000, 10_000, 20_000] {
        eprintln!("bench: loss curve at {rate} requests/s");
        let sent = load::paced(port, &format!("/loss-{rate}/"), rate, 3.0, 8);
        offered.push((rate, sent));
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_secs(2));
    let ring_lost = agent.metric("tracer_events_lost_total{reason=\"data_ring_full\"}");
    let all_lost = agent.metric("tracer_events_lost_total");
    agent.stop();
    writeln!(report, "\n| offered rate | achieved | requests | without a span | loss | target |\n|---|---|---|---|---|---|")?;
    for (rate, sent) in offered {
        let found = server_spans(&spans, &format!("/loss-{rate}/"));
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
        "\nKernel events lost over the loss curve: {all_lost} (ring buffer full: {ring_lost})."
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

fn pipeline(report: &mut String) -> anyhow::Result<()> {
    eprintln!("bench: userspace pipeline on recorded-shape traffic");
    let output = Command::new("cargo")
        .args(["bench", "--quiet", "-p", "tracer", "--bench", "pipeline"])
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let Some(result) = text
        .lines()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
    else {
        bail!(
            "the pipeline bench printed no result:\n{text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let f = |k: &str| result[k].as_f64().unwrap_or_default();
    writeln!(report, "\n| userspace, one core, {} HTTP exchanges ({:.1} MB) | MB/s | spans/s | target |\n|---|---|---|---|", result["exchanges"], f("bytes") / 1e6)?;
    writeln!(
        report,
        "| `httparse` alone (heads, bodies skipped) | {:.0} | | |",
        f("httparse_mb_per_s")
    )?;
    writeln!(report, "| reassembly + HTTP + extraction + correlation + privacy + OTLP protobuf | **{:.0}** | {:.0} | ≥ 500 MB/s |", f("pipeline_mb_per_s"), f("pipeline_spans_per_s"))?;
    writeln!(report, "| the same exchanges over HTTP/2 (HPACK, DATA frames, a stream each) | **{:.0}** | {:.0} | |", f("http2_pipeline_mb_per_s"), f("http2_pipeline_spans_per_s"))?;
    Ok(())
}
