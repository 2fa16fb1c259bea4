//! tracer: an eBPF zero-instrumentation tracer. The kernel side (`tracer-ebpf`) copies
//! socket bytes of unmodified processes; this crate turns them into ordered streams and,
//! from there, into spans.
pub mod agent;
pub mod capture;
pub mod cli;
pub mod config;
pub mod correlate;
pub mod export;
pub mod extract;
pub mod journey;
pub mod listen;
pub mod metrics;
pub mod privacy;
pub mod protocols;
pub mod reassembly;
pub mod sample;
pub mod session;
pub mod tls;
