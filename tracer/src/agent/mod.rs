//! The running agent: capture → protocols → correlate → export, read top to bottom.
mod export_stage;
#[cfg(test)]
mod golden;
pub mod memory;
mod pipeline;
pub mod priority;

pub use pipeline::{Pipeline, PipelineStats, Request, Stages};
