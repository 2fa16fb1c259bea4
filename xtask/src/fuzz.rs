//! `cargo xtask fuzz --seconds N`: every fuzz target in fuzz/ (the reassembler and each
//! protocol session) for N seconds each, seeded from the protocols' golden fixtures; prints
//! how long each ran, how many inputs it tried, and whether anything crashed.
use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context as _};
use clap::Args;

use crate::{
    exec::{exec, probe},
    setup,
};

const TARGETS: &[&str] = &["reassembly", "http", "amqp", "postgres"];

#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Only these targets (default: all).
    targets: Vec<String>,
}

/// A recorded conversation (fixtures/*.bin: direction byte E/I, u64 time, u32 length,
/// bytes) in the fuzz targets' input format: a selector byte, then steps of a control byte
/// (bit 7 direction, bits 0-5 length - 1) and at most 64 bytes.
fn seed_from_fixture(raw: &[u8]) -> Vec<u8> {
    let mut seed = vec![0u8];
    let mut at = 0;
    while at + 13 <= raw.len() {
        let egress = raw[at] == b'E';
        let length = u32::from_be_bytes(raw[at + 9..at + 13].try_into().unwrap()) as usize;
        let bytes = &raw[at + 13..(at + 13 + length).min(raw.len())];
        for chunk in bytes.chunks(64) {
            seed.push(((egress as u8) << 7) | (chunk.len() as u8 - 1));
            seed.extend_from_slice(chunk);
        }
        at += 13 + length;
    }
    seed
}

fn http_seed() -> Vec<u8> {
    let request = b"POST /orders/ORD-7/files?x=1 HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let response = b"HTTP/1.1 201 Created\r\nContent-Length: 17\r\n\r\n{\"order_id\": \"7\"}";
    let mut seed = vec![0u8];
    for (egress, bytes) in [(0u8, &request[..]), (1, &response[..])] {
        for chunk in bytes.chunks(64) {
            seed.push((egress << 7) | (chunk.len() as u8 - 1));
            seed.extend_from_slice(chunk);
        }
    }
    seed
}

fn seed_corpus(target: &str) -> anyhow::Result<()> {
    let corpus = Path::new("fuzz/corpus").join(target);
    fs::create_dir_all(&corpus)?;
    let fixtures = Path::new("tracer/src/protocols")
        .join(target)
        .join("fixtures");
    if let Ok(entries) = fs::read_dir(&fixtures) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "bin") {
                let name = path.file_stem().unwrap().to_string_lossy();
                fs::write(
                    corpus.join(format!("fixture-{name}")),
                    seed_from_fixture(&fs::read(&path)?),
                )?;
            }
        }
    }
    if target == "http" {
        fs::write(corpus.join("seed-chunked"), http_seed())?;
    }
    Ok(())
}

pub fn run(args: FuzzArgs) -> anyhow::Result<()> {
    setup::build_tools()?;
    let installed = probe(Command::new("cargo").args(["+nightly", "fuzz", "--version"]))
        .is_some_and(|o| o.status.success());
    if !installed {
        exec(Command::new("cargo").args(["+nightly", "install", "cargo-fuzz", "--locked"]))?;
    }
    let targets: Vec<String> = if args.targets.is_empty() {
        TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        args.targets
    };
    let mut summary = Vec::new();
    for target in &targets {
        if !TARGETS.contains(&target.as_str()) {
            bail!("no fuzz target {target:?}; there are {TARGETS:?}");
        }
        seed_corpus(target)?;
        eprintln!("fuzz: {target} for {} s", args.seconds);
        let output = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target])
            .arg(format!("fuzz/corpus/{target}"))
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            .args(["-rss_limit_mb=2048", "-print_final_stats=1"])
            // The parsers need no eBPF object.
            .env("TRACER_EBPF_STUB", "1")
            .output()
            .context("running cargo fuzz")?;
        let log = String::from_utf8_lossy(&output.stderr);
        fs::write(format!("fuzz/{target}.log"), log.as_bytes())?;
        let runs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| "?".into());
        let verdict = if output.status.success() {
            "no crash"
        } else {
            "CRASHED (see fuzz/artifacts)"
        };
        summary.push(format!(
            "| {target} | {} s | {runs} | {verdict} |",
            args.seconds
        ));
        if !output.status.success() {
            eprintln!("{log}");
        }
    }
    println!(
        "| target | time | inputs run | result |\n|---|---|---|---|\n{}",
        summary.join("\n")
    );
    if summary.iter().any(|s| s.contains("CRASHED")) {
        bail!("a fuzz target crashed");
    }
    Ok(())
}
