//! Command-line subcommands; each in its own file.
pub mod capture;
mod stop;

pub use stop::StopSignal;
