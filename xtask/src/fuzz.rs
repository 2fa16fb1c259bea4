//! `cargo xtask fuzz --seconds N`: every fuzz target in fuzz/ (the reassembler, and every
//! protocol session of the registry) for N seconds each, seeded from each protocol folder's
//! recorded conversations; prints how long each ran, how many inputs it tried, and whether
//! anything crashed.
use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context as _};
use clap::Args;

use crate::{
    exec::{exec, probe},
    setup,
};

const TARGETS: &[&str] = &["reassembly", "protocols"];
const PROTOCOLS_DIR: &str = "tracer/src/protocols";

#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Only these targets (default: all).
    targets: Vec<String>,
}

/// One step of the protocols target's input: a control byte (bit 7 direction, bits 0-5
/// length - 1) and at most 64 bytes.
fn push_steps(seed: &mut Vec<u8>, egress: bool, bytes: &[u8]) {
    for chunk in bytes.chunks(64) {
        seed.push(((egress as u8) << 7) | (chunk.len() as u8 - 1));
        seed.extend_from_slice(chunk);
    }
}

/// A recorded conversation (fixtures/*.bin: direction byte E/I, u64 time, u32 length,
/// bytes) as steps.
fn steps_from_bin(raw: &[u8], seed: &mut Vec<u8>) {
    let mut at = 0;
    while at + 13 <= raw.len() {
        let egress = raw[at] == b'E';
        let length = u32::from_be_bytes(raw[at + 9..at + 13].try_into().unwrap()) as usize;
        push_steps(
            seed,
            egress,
            &raw[at + 13..(at + 13 + length).min(raw.len())],
        );
        at += 13 + length;
    }
}

/// The server end of a `tracer capture --format jsonl` recording (fixtures/*.capture.jsonl)
/// as steps.
fn steps_from_capture(text: &str, seed: &mut Vec<u8>) -> anyhow::Result<()> {
    use base64::Engine as _;
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line)?;
        if record["type"] != "data" || record["role"] != "server" {
            continue;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(record["data"].as_str().unwrap_or_default())?;
        push_steps(seed, record["direction"] == "egress", &bytes);
    }
    Ok(())
}

/// Protocol folders, sorted: a protocol's index here is the fuzz input's first byte (the
/// target sorts the registry's names the same way; each protocol's folder bears its name).
fn protocol_folders() -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(PROTOCOLS_DIR)?
        .flatten()
        .filter(|e| e.path().join("mod.rs").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

fn seed_corpus(target: &str) -> anyhow::Result<()> {
    let corpus = Path::new("fuzz/corpus").join(target);
    fs::create_dir_all(&corpus)?;
    if target != "protocols" {
        return Ok(());
    }
    for (index, protocol) in protocol_folders()?.iter().enumerate() {
        let fixtures = Path::new(PROTOCOLS_DIR).join(protocol).join("fixtures");
        let Ok(entries) = fs::read_dir(&fixtures) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            // Selector, then role (server) and not mid-stream.
            let mut seed = vec![index as u8, 0];
            if name.ends_with(".bin") {
                steps_from_bin(&fs::read(&path)?, &mut seed);
            } else if name.ends_with(".capture.jsonl") {
                steps_from_capture(&fs::read_to_string(&path)?, &mut seed)?;
            } else {
                continue;
            }
            fs::write(corpus.join(format!("{protocol}-{name}")), seed)?;
        }
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
