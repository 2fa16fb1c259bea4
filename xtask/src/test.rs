//! `cargo xtask test`: unit tests, then the end-to-end tests that load the real eBPF
//! programs (one at a time: kernel state is shared).
use std::process::Command;

use anyhow::bail;
use clap::Args;

use crate::{
    exec::{exec, is_root},
    setup,
};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Only tests whose name contains this.
    filter: Option<String>,
}

pub fn run(args: TestArgs) -> anyhow::Result<()> {
    if setup::needed() {
        setup::run()?;
    }
    if !is_root() {
        bail!("the end-to-end tests load eBPF programs and must run as root (try `sudo -E cargo xtask test`)");
    }
    let filter: Vec<String> = args.filter.into_iter().collect();
    // Default members only: tracer-ebpf is built for the BPF target by tracer/build.rs.
    exec(Command::new("cargo").args(["build", "--all-targets"]))?;
    exec(
        Command::new("cargo")
            .args(["test", "--lib", "--bins", "--"])
            .args(&filter),
    )?;
    exec(
        Command::new("cargo")
            .args([
                "test",
                "--package",
                "tracer",
                "--test",
                "*",
                "--",
                "--test-threads=1",
            ])
            .args(&filter),
    )
}
