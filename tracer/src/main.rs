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
/// batch of events then pays page faults (18 % of the agent's time under load). Keep them
/// (glibc's malloc still serves the C libraries, SQLite's among them).
///
/// mimalloc the same: it gives memory unused for a second back to the kernel, and under a
/// steady load the spans of the next seconds fault it in again (a third of the agent's
/// page faults at 30k requests/s). Memory unused for 10 s goes back, so a burst's still
/// does. `MIMALLOC_PURGE_DELAY` in the environment wins.
fn keep_freed_memory() {
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options, which it reads when it next purges.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) };
    }
}

/// `mi_option_purge_delay` in mimalloc.h (libmimalloc-sys does not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_is_the_one_mimalloc_defaults_to_a_second() {
        // mimalloc's options.c: purge_delay defaults to 1000 ms; no option near it does.
        let default = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 1000, "option 15 is not mimalloc's purge delay");
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
