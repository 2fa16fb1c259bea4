//! Ordered per-connection, per-direction byte streams from position-stamped records.
mod stream;

pub use stream::{GapReason, Limits, Reassembler, ReassemblyStats, StreamEvent};

#[cfg(test)]
mod tests;
