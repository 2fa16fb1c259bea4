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

const TEST_FEATURES: &str = "tracer/test-clock";

pub fn run(args: TestArgs) -> anyhow::Result<()> {
    if setup::needed() {
        setup::run()?;
    }
    if !is_root() {
        bail!("the end-to-end tests load eBPF programs and must run as root (try `sudo -E cargo xtask test`)");
    }
    let filter: Vec<String> = args.filter.into_iter().collect();
    // Default members only: tracer-ebpf is built for the BPF target by tracer/build.rs.
    // The test-only clock (journeys tests move it a day on) is compiled in here alone.
    exec(Command::new("cargo").args(["build", "--all-targets", "--features", TEST_FEATURES]))?;
    exec(
        Command::new("cargo")
            .args(["test", "--features", TEST_FEATURES, "--lib", "--bins", "--"])
            .args(&filter),
    )?;
    exec(
        Command::new("cargo")
            .args([
                "test",
                "--package",
                "tracer",
                "--features",
                TEST_FEATURES,
                "--test",
                "*",
                "--",
                "--test-threads=1",
            ])
            .args(&filter),
    )
}
