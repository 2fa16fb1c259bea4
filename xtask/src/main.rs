//! `cargo xtask`: set up a machine, run tracer, run every test.
mod bench;
mod demo;
mod exec;
mod fuzz;
mod infra;
mod run;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "tracer's developer and operator tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent): nightly rust-src, bpf-linker,
    /// Debian packages; mount tracefs and bpffs.
    Setup,
    /// Build tracer with its eBPF programs (release).
    Build,
    /// Build and run tracer on this host (as root). Arguments after `--` go to tracer.
    Run(run::RunArgs),
    /// Run every test: unit tests, then end-to-end tests against the real kernel.
    Test(test::TestArgs),
    /// The jewellery company in a box: services, faults, orders, and what tracer finds.
    Demo(demo::DemoArgs),
    /// Overhead, cost, loss and pipeline throughput, against a baseline in the same run.
    Bench(bench::BenchArgs),
    /// Fuzz the reassembler and every protocol session (cargo fuzz, nightly).
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Build => run::build_release().map(drop),
        Command::Run(args) => run::run(args),
        Command::Test(args) => test::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Fuzz(args) => fuzz::run(args),
    }
}
