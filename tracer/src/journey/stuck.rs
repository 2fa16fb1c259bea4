//! The span tracer adds to an order's trace when the order is stuck: an INTERNAL span from
//! the time it entered the status until now, marked `tracer.synthesized`, parented on the
//! last span that saw the order, with the status message support staff read in Jaeger.
use std::{borrow::Cow, sync::Arc, time::Duration};

use opentelemetry::{
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue,
};
use opentelemetry_sdk::{
    trace::{SpanData, SpanEvents, SpanLinks},
    Resource,
};
use sha2::{Digest, Sha256};

use super::{span::SYNTHESIZED, StuckOrder};
use crate::extract::{ORDER_ID, ORDER_STATUS};

/// `service.name` of what tracer itself reports.
pub const SERVICE: &str = "tracer-journey";

pub fn resource() -> Arc<Resource> {
    Arc::new(
        Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", SERVICE),
                KeyValue::new("telemetry.sdk.name", "tracer"),
            ])
            .build(),
    )
}

/// The same order stuck in the same status gets the same span id, whoever reports it.
pub fn span_id(stuck: &StuckOrder) -> SpanId {
    let digest = Sha256::new()
        .chain_update(stuck.order_id.as_bytes())
        .chain_update([0])
        .chain_update(stuck.status.as_bytes())
        .chain_update(stuck.since_ns.to_be_bytes())
        .finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    SpanId::from_bytes(bytes)
}

pub fn span(stuck: &StuckOrder, span_id: SpanId, now_ns: i64) -> SpanData {
    let at = |ns: i64| std::time::UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
    let message = stuck.message();
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_hex(&stuck.trace_id).unwrap_or(TraceId::INVALID),
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::from_hex(&stuck.parent_span_id).unwrap_or(SpanId::INVALID),
        parent_span_is_remote: true,
        span_kind: SpanKind::Internal,
        name: Cow::Owned(format!("order stuck in {}", stuck.status)),
        start_time: at(stuck.since_ns),
        end_time: at(now_ns),
        attributes: vec![
            KeyValue::new(SYNTHESIZED, "true"),
            KeyValue::new(ORDER_ID, stuck.order_id.clone()),
            KeyValue::new(ORDER_STATUS, stuck.status.clone()),
            KeyValue::new("tracer.journey.dwell_s", stuck.dwell_ns / 1_000_000_000),
            KeyValue::new("tracer.journey.max_dwell_s", stuck.limit.as_secs() as i64),
            KeyValue::new("tracer.journey.last_service", stuck.last_service.clone()),
            KeyValue::new("error.type", "order_stuck"),
        ],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::error(message),
        instrumentation_scope: InstrumentationScope::builder("tracer")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    }
}
