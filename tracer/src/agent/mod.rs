//! The running agent: capture → protocols → correlate → export, read top to bottom.
#[cfg(test)]
mod golden;
mod pipeline;

pub use pipeline::{Pipeline, PipelineStats, Request, Stages};
