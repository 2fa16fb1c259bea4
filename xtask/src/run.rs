//! `cargo xtask build` and `cargo xtask run`.
use std::process::Command;

use clap::Args;

use crate::{
    exec::{exec, is_root},
    setup,
};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Arguments for tracer (default: `run` exporting over OTLP to localhost:4317 and to
    /// target/tracer-spans.jsonl).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn build_release() -> anyhow::Result<()> {
    if setup::needed() {
        setup::run()?;
    }
    exec(Command::new("cargo").args(["build", "--release", "--package", "tracer"]))
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    build_release()?;
    let binary = "target/release/tracer";
    let args = if args.args.is_empty() {
        vec!["capture".to_owned()]
    } else {
        args.args
    };
    eprintln!("tracer: live capture of every process's TCP traffic; stop with Ctrl-C.");
    eprintln!(
        "tracer: narrow it with e.g. `cargo xtask run -- capture --port 8080 --format jsonl`."
    );
    let mut cmd = if is_root() {
        Command::new(binary)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.args(["-E", binary]);
        sudo
    };
    exec(cmd.args(&args))
}
