//! The running agent: capture → protocols → correlate → export, read top to bottom.
mod pipeline;

pub use pipeline::{Pipeline, PipelineStats, Request, Stages};
