//! What the kernel programs add per syscall of a traced process, for each place the data
//! path can hook (`tracer run --data-hook`): the syscall tracepoints of the eight data
//! syscalls (shipped) or one program at `raw_syscalls:sys_exit`. `syscall_cost`
//! (`tracer/examples/syscall_cost.rs`) measures its own thread's CPU time per syscall,
//! untraced and under each hook, in alternating rounds (the order rotates per round).
use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::Context as _;
use serde_json::Value;

use super::{
    agent::{Agent, BpfStats},
    example, spread, BenchArgs,
};

const HOOKS: [&str; 2] = ["syscall-tracepoints", "raw-syscalls"];
const KINDS: [(&str, &str); 3] = [
    (
        "http",
        "HTTP over loopback TCP (followed socket, bytes copied)",
    ),
    ("pipe", "64-byte pipe write/read (a file, not a socket)"),
    ("other", "`getppid` (no data)"),
];

/// ns per syscall of each kind, from one run of `program`.
fn measure(program: &Path) -> anyhow::Result<Value> {
    let output = Command::new(program)
        .arg("100000")
        .output()
        .context("running syscall_cost")?;
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.trim()).with_context(|| format!("syscall_cost printed {text:?}"))
}

pub fn hooks(
    args: &BenchArgs,
    tracer: &Path,
    out: &Path,
    report: &mut String,
) -> anyhow::Result<()> {
    let program = example("syscall_cost")?;
    let _stats = BpfStats::disable();
    let spans = out.join("spans-syscalls.jsonl");
    // [untraced, per hook] × runs
    let mut runs: Vec<Vec<Value>> = vec![Vec::new(); 1 + HOOKS.len()];
    measure(&program)?; // warm-up
    for round in 0..args.rounds as usize {
        eprintln!("bench: syscall cost round {} of {}", round + 1, args.rounds);
        for step in 0..runs.len() {
            let setup = (round + step) % runs.len();
            let agent = match setup {
                0 => None,
                n => Some(Agent::start_with(
                    tracer,
                    out,
                    &spans,
                    &["--no-tls", "--data-hook", HOOKS[n - 1]],
                )?),
            };
            runs[setup].push(measure(&program)?);
            if let Some(agent) = agent {
                agent.stop();
            }
            let _ = std::fs::remove_file(&spans);
        }
    }
    for (kind, what) in KINDS {
        let values = |setup: usize| -> Vec<f64> {
            runs[setup]
                .iter()
                .map(|run| run[kind].as_f64().unwrap_or(f64::NAN))
                .collect()
        };
        let untraced = values(0);
        let mut traced = String::new();
        let mut added = String::new();
        for (n, hook) in HOOKS.iter().enumerate() {
            let hooked = values(n + 1);
            // Per round: the hooked run against the untraced run of the same round.
            let deltas = hooked.iter().zip(&untraced).map(|(h, u)| h - u);
            write!(traced, "{hook}: {} ns; ", spread(hooked.clone(), 0))?;
            write!(added, "{hook}: **+{}** ns; ", spread(deltas, 0))?;
        }
        writeln!(
            report,
            "| CPU per syscall of a traced process, {what} (BPF statistics off) | {} ns | {} | {} | |",
            spread(untraced, 0),
            traced.trim_end_matches("; "),
            added.trim_end_matches("; ")
        )?;
    }
    Ok(())
}
