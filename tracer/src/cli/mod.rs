//! Command-line subcommands; each in its own file.
pub mod capture;
pub mod run;
mod stop;

pub use stop::StopSignal;
