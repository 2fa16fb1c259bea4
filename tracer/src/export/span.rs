//! `ResolvedSpan` → `opentelemetry_sdk::trace::SpanData`, with network attributes from
//! the connection.
use std::borrow::Cow;

use opentelemetry::trace::{Link, TraceId};
use opentelemetry::{
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceState},
    InstrumentationScope, KeyValue,
};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::{
    capture::KernelClock,
    correlate::ResolvedSpan,
    protocols::{AttrValue, ExchangeKind, ExchangeStatus},
};

pub fn to_span_data(span: ResolvedSpan, clock: &KernelClock) -> SpanData {
    let ResolvedSpan {
        trace_id,
        span_id,
        parent_span_id,
        parent_is_remote,
        links,
        exchange,
        connection,
        parent_source,
        parent_ambiguous,
        ..
    } = span;
    let mut attributes: Vec<KeyValue> = exchange
        .attributes
        .into_iter()
        .map(|(key, value)| match value {
            AttrValue::Str(s) => KeyValue::new(key, s),
            AttrValue::Int(i) => KeyValue::new(key, i),
        })
        .collect();
    if let Some(remote) = connection.remote {
        attributes.push(KeyValue::new(
            "network.peer.address",
            remote.ip().to_string(),
        ));
        attributes.push(KeyValue::new("network.peer.port", i64::from(remote.port())));
    }
    if let Some(local) = connection.local {
        attributes.push(KeyValue::new(
            "network.local.address",
            local.ip().to_string(),
        ));
        attributes.push(KeyValue::new("network.local.port", i64::from(local.port())));
    }
    attributes.push(KeyValue::new("network.transport", "tcp"));
    if let Some(source) = parent_source {
        attributes.push(KeyValue::new("tracer.parent.source", source));
    }
    if parent_ambiguous {
        // Made while several requests of its process were open, none shown to be its.
        attributes.push(KeyValue::new("tracer.parent.ambiguous", true));
    }
    if connection.tls {
        attributes.push(KeyValue::new("tls.established", true));
    }
    attributes.extend(
        exchange
            .business
            .into_iter()
            .map(|(k, v)| KeyValue::new(k, v)),
    );
    let (kind, server) = match exchange.kind {
        ExchangeKind::Server => {
            if let Some(remote) = connection.remote {
                attributes.push(KeyValue::new("client.address", remote.ip().to_string()));
                attributes.push(KeyValue::new("client.port", i64::from(remote.port())));
            }
            (SpanKind::Server, connection.local)
        }
        ExchangeKind::Client => (SpanKind::Client, connection.remote),
        ExchangeKind::Producer => (SpanKind::Producer, connection.remote),
        ExchangeKind::Consumer => (SpanKind::Consumer, connection.remote),
        ExchangeKind::Internal => (SpanKind::Internal, None),
    };
    if let Some(server) = server {
        attributes.push(KeyValue::new("server.address", server.ip().to_string()));
        attributes.push(KeyValue::new("server.port", i64::from(server.port())));
    }
    let status = match exchange.status {
        ExchangeStatus::Ok => Status::Unset,
        ExchangeStatus::Error {
            error_type,
            message,
        } => {
            attributes.push(KeyValue::new("error.type", error_type));
            Status::error(message)
        }
    };
    SpanData {
        span_context: SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: parent_span_id.unwrap_or(SpanId::INVALID),
        parent_span_is_remote: parent_is_remote,
        span_kind: kind,
        name: Cow::Owned(exchange.name),
        start_time: clock.wall_time(exchange.start_ktime_ns),
        end_time: clock.wall_time(exchange.end_ktime_ns.max(exchange.start_ktime_ns)),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: span_links(links),
        status,
        instrumentation_scope: InstrumentationScope::builder("tracer")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    }
}

fn span_links(links: Vec<(TraceId, SpanId)>) -> SpanLinks {
    let mut span_links = SpanLinks::default();
    span_links.links = links
        .into_iter()
        .map(|(trace_id, span_id)| {
            let context = SpanContext::new(
                trace_id,
                span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            );
            Link::new(context, vec![KeyValue::new("tracer.link", "message")], 0)
        })
        .collect();
    span_links
}
