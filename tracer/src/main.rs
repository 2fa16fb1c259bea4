//! The `tracer` command.
use clap::{Parser, Subcommand};
use tracer::cli;

#[derive(Parser)]
#[command(
    name = "tracer",
    version,
    about = "eBPF zero-instrumentation tracer: see unmodified services' conversations as spans"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what the kernel side captures: connections and their bytes, per process.
    Capture(cli::capture::CaptureArgs),
    /// Run the agent: HTTP conversations of every process as OpenTelemetry spans (OTLP).
    Run(cli::run::RunArgs),
    /// Work with configuration files.
    Config(cli::config::ConfigArgs),
    /// Print the HMAC of an order or user id: its trace id and its pseudonym.
    HashId(cli::hash_id::HashIdArgs),
    /// Order journeys: where each order is, since when, and which are stuck.
    Orders(cli::orders::OrdersArgs),
    /// The journey service: receives OTLP from many agents, keeps journeys in PostgreSQL.
    Journey(cli::journey::JourneyArgs),
}

/// glibc returns large blocks to the kernel and maps them again on the next batch: each
/// batch of events then pays page faults (18 % of the agent's time under load). Keep them.
fn keep_freed_memory() {
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// mimalloc: spans are built on the pipeline thread and freed on the export and journey
/// threads; glibc's arenas spent a third of the agent's CPU on that (lock, consolidation).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    keep_freed_memory();
    if !tracer::agent::memory::without_transparent_huge_pages() {
        // Not fatal: only slower where the host enables them.
        eprintln!("tracer: could not turn transparent huge pages off for the agent");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRACER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: journald, kubectl logs and files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Capture(args) => cli::capture::run(args),
        Command::Run(args) => cli::run::run(args),
        Command::Config(args) => cli::config::run(args),
        Command::HashId(args) => cli::hash_id::run(args),
        Command::Orders(args) => cli::orders::run(args),
        Command::Journey(args) => cli::journey::run(args),
    }
}
