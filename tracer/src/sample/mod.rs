//! Per-trace sampling that every agent computes identically, keyed by the trace id:
//! errors and slow spans always, order traces at `order_ratio`, the rest at
//! `success_ratio`. Invented spans (stuck messages) are always kept.
use opentelemetry::trace::TraceId;

use crate::{
    config::SamplingConfig,
    correlate::ResolvedSpan,
    protocols::{ExchangeKind, ExchangeStatus},
};

pub struct Sampler {
    success_ratio: f64,
    order_ratio: f64,
    slow_ns: u64,
}

impl Sampler {
    pub fn new(config: &SamplingConfig) -> Self {
        Self {
            success_ratio: config.success_ratio,
            order_ratio: config.order_ratio,
            slow_ns: config.slow_threshold_ms.saturating_mul(1_000_000),
        }
    }

    pub fn keep(&self, span: &ResolvedSpan) -> bool {
        let exchange = &span.exchange;
        if matches!(exchange.status, ExchangeStatus::Error { .. })
            || exchange.kind == ExchangeKind::Internal
        {
            return true;
        }
        if exchange
            .end_ktime_ns
            .saturating_sub(exchange.start_ktime_ns)
            >= self.slow_ns
        {
            return true;
        }
        let ratio = if span.order_trace {
            self.order_ratio
        } else {
            self.success_ratio
        };
        position(span.trace_id) < ratio
    }
}

/// Where a trace falls in [0, 1): its low 8 bytes, which are uniform for random and
/// HMAC-derived trace ids alike.
fn position(trace_id: TraceId) -> f64 {
    let bytes = trace_id.to_bytes();
    let low = u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"));
    low as f64 / 18_446_744_073_709_551_616.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_uniform_enough_for_ten_percent() {
        let ids = opentelemetry_sdk::trace::RandomIdGenerator::default();
        use opentelemetry_sdk::trace::IdGenerator;
        let kept = (0..100_000)
            .filter(|_| position(ids.new_trace_id()) < 0.1)
            .count();
        assert!((9_000..11_000).contains(&kept), "{kept}");
    }
}
