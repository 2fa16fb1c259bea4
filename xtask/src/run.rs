//! `cargo xtask build` and `cargo xtask run`. The container image (deploy/Dockerfile) builds
//! with `cargo xtask build` too: one build recipe, tested by every `cargo xtask run`.
use std::{path::PathBuf, process::Command};

use clap::Args;

use crate::{
    exec::{exec, is_root},
    setup,
};

/// What `cargo xtask build` produces, relative to the workspace root.
pub const BINARY: &str = "target/release/tracer";

/// The agent's default arguments: OTLP to localhost:4317 and an OTLP/JSON file.
const DEFAULT_ARGS: &[&str] = &[
    "run",
    "--export",
    "otlp",
    "--export",
    "file:target/tracer-spans.jsonl",
];

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Arguments for tracer (default: `run` exporting over OTLP to localhost:4317 and to
    /// target/tracer-spans.jsonl).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Builds tracer and its eBPF programs (release), installing the build tools if missing.
pub fn build_release() -> anyhow::Result<PathBuf> {
    setup::build_tools()?;
    exec(Command::new("cargo").args(["build", "--release", "--package", "tracer"]))?;
    eprintln!("xtask: built {BINARY}");
    Ok(PathBuf::from(BINARY))
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let binary = build_release()?;
    setup::runtime_filesystems()?;
    let args = if args.args.is_empty() {
        eprintln!("xtask: starting the agent; stop with Ctrl-C. Other commands: `cargo xtask run -- --help`.");
        DEFAULT_ARGS.iter().map(|a| a.to_string()).collect()
    } else {
        args.args
    };
    let mut cmd = if is_root() {
        Command::new(&binary)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&binary);
        sudo
    };
    exec(cmd.args(&args))
}
