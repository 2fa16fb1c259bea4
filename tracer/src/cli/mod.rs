//! Command-line subcommands; each in its own file.
pub mod capture;
pub mod config;
pub mod hash_id;
pub mod journey;
pub mod orders;
pub mod run;
mod stop;

pub use stop::StopSignal;
