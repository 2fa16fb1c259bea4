//! What the TLS uprobes cost: HTTPS rounds (wrk, which uses libssl, against Node's https
//! server, OpenSSL linked in) untraced, traced without TLS hooks (`--no-tls`) and traced
//! with them, alternating in the same run.
use std::{fmt::Write as _, fs, path::Path, process::Command, time::Duration};

use anyhow::bail;

use super::{agent::Agent, median, wrk_url, BenchArgs, Wrk};
use crate::infra::{free_port, wait_for_port, Started};

/// A throw-away certificate for 127.0.0.1 (the bench server's only need).
fn certificate(out: &Path) -> anyhow::Result<(String, String)> {
    let (cert, key) = (out.join("bench-cert.pem"), out.join("bench-key.pem"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("openssl could not make the bench certificate");
    }
    Ok((cert.display().to_string(), key.display().to_string()))
}

pub fn overhead(
    args: &BenchArgs,
    tracer: &Path,
    out: &Path,
    report: &mut String,
) -> anyhow::Result<()> {
    let (cert, key) = certificate(out)?;
    let calls_pair = |label: &str| -> anyhow::Result<f64> {
        let output = Command::new("python3")
            .arg("xtask/bench/tls_calls.py")
            .args([&cert, &cert, &key, "100000"])
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.trim()
            .parse::<f64>()
            .map_err(|e| anyhow::anyhow!("tls_calls.py ({label}) printed {text:?}: {e}"))
    };
    let port = free_port();
    let mut server = Started::spawn(
        "bench HTTPS server",
        Command::new("node").arg("xtask/bench/server.js").args([
            port.to_string(),
            cert.clone(),
            key.clone(),
        ]),
        &out.join("server-https.log"),
    )?;
    wait_for_port(port, "the bench HTTPS server", Duration::from_secs(10))?;
    let url = format!("https://127.0.0.1:{port}/tls");
    let spans = out.join("spans-https.jsonl");
    let (mut untraced, mut no_tls, mut tls) = (Vec::new(), Vec::new(), Vec::new());
    let (mut pair_untraced, mut pair_no_tls, mut pair_tls) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tls_calls, mut tls_requests) = (0.0, 0.0);
    wrk_url(&url, 1)?; // warm-up
    for round in 0..args.rounds {
        eprintln!("bench: HTTPS round {} of {}", round + 1, args.rounds);
        untraced.push(wrk_url(&url, args.seconds)?);
        pair_untraced.push(calls_pair("untraced")?);
        let agent = Agent::start_with(tracer, out, &spans, &["--no-tls"])?;
        no_tls.push(wrk_url(&url, args.seconds)?);
        pair_no_tls.push(calls_pair("without TLS hooks")?);
        agent.stop();
        let agent = Agent::start(tracer, out, &spans)?;
        pair_tls.push(calls_pair("with TLS hooks")?);
        let calls0 = agent.metric("tracer_tls_calls_total");
        let result = wrk_url(&url, args.seconds)?;
        std::thread::sleep(Duration::from_millis(1500)); // one /metrics refresh
        tls_calls += agent.metric("tracer_tls_calls_total") - calls0;
        tls_requests += result.requests;
        tls.push(result);
        agent.stop();
        let _ = fs::remove_file(&spans);
    }
    server.stop(Duration::from_secs(5));
    let rps = |runs: &[Wrk]| median(runs.iter().map(|w| w.requests_per_s).collect());
    let p50 = |runs: &[Wrk]| median(runs.iter().map(|w| w.p50_us).collect());
    let (u, n, t) = (rps(&untraced), rps(&no_tls), rps(&tls));
    writeln!(report, "| HTTPS throughput (wrk + libssl → Node https, 16 connections) | {u:.0} req/s | {t:.0} req/s (without TLS hooks {n:.0}) | **{:.3}** | |", t / u)?;
    writeln!(
        report,
        "| HTTPS p50 latency | {:.0} µs | {:.0} µs | +{:.0} µs | |",
        p50(&untraced),
        p50(&tls),
        p50(&tls) - p50(&untraced)
    )?;
    // The server is one Node thread, saturated: 1/throughput is its time per request.
    let added_us = (1.0 / t - 1.0 / n) * 1e6;
    let per_request = tls_calls / tls_requests.max(1.0);
    writeln!(report, "| time tracing adds per HTTPS request over tracing without TLS hooks (server thread: uprobes of {per_request:.1} TLS calls, plus parsing the plaintext into spans) | | {added_us:.1} µs | | |")?;
    let pair = |runs: &[f64]| median(runs.to_vec());
    let (pu, pn, pt) = (pair(&pair_untraced), pair(&pair_no_tls), pair(&pair_tls));
    // A pair is one SSL_write_ex and one SSL_read_ex: two hooked calls.
    let per_call = (pt - pn) / 2.0;
    writeln!(report, "| one hooked TLS call (SSL_write_ex + SSL_read_ex pairs over memory BIOs, no network, no spans) | {pu:.2} µs per pair | {pt:.2} µs per pair (without hooks {pn:.2}) | **+{per_call:.1} µs per call** | |")?;
    Ok(())
}
