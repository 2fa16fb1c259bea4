//! Turns exchanges into spans with trace and parent ids (see `correlator.rs` for the rules).
mod correlator;
mod traceparent;

pub use correlator::{Correlator, CorrelatorStats, KnownIds, ResolvedSpan};
pub use traceparent::TraceParent;

#[cfg(test)]
mod tests;
