//! `ResolvedSpan` → the OTLP protobuf `Span`, built once per span and shared by every
//! export target; network attributes from the connection.
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_proto::tonic::{
    common::v1::{any_value::Value, AnyValue, KeyValue},
    trace::v1::{
        span::{Link, SpanKind},
        status::StatusCode,
        Span, Status,
    },
};

use crate::{
    capture::KernelClock,
    correlate::ResolvedSpan,
    protocols::{AttrValue, ExchangeKind, ExchangeStatus},
};

fn kv(key: impl Into<String>, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

fn int(key: &str, value: i64) -> KeyValue {
    kv(key, Value::IntValue(value))
}

fn flag(key: &str) -> KeyValue {
    kv(key, Value::BoolValue(true))
}

/// W3C trace flags: sampled.
const SAMPLED: u32 = 1;

pub fn to_otlp(span: ResolvedSpan, clock: &KernelClock) -> Span {
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
    let mut attributes: Vec<KeyValue> = Vec::with_capacity(exchange.attributes.len() + 16);
    attributes.extend(exchange.attributes.into_iter().map(|(key, value)| match value {
        AttrValue::Str(s) => text(key, s),
        AttrValue::Int(i) => int(key, i),
    }));
    if let Some(remote) = connection.remote {
        attributes.push(text("network.peer.address", remote.ip().to_string()));
        attributes.push(int("network.peer.port", i64::from(remote.port())));
    }
    if let Some(local) = connection.local {
        attributes.push(text("network.local.address", local.ip().to_string()));
        attributes.push(int("network.local.port", i64::from(local.port())));
    }
    attributes.push(text("network.transport", "tcp"));
    if let Some(source) = parent_source {
        attributes.push(text("tracer.parent.source", source));
    }
    if parent_ambiguous {
        // Made while several requests of its process were open, none shown to be its.
        attributes.push(flag("tracer.parent.ambiguous"));
    }
    if connection.tls {
        attributes.push(flag("tls.established"));
    }
    attributes.extend(exchange.business.into_iter().map(|(k, v)| text(k, v)));
    let (kind, server) = match exchange.kind {
        ExchangeKind::Server => {
            if let Some(remote) = connection.remote {
                attributes.push(text("client.address", remote.ip().to_string()));
                attributes.push(int("client.port", i64::from(remote.port())));
            }
            (SpanKind::Server, connection.local)
        }
        ExchangeKind::Client => (SpanKind::Client, connection.remote),
        ExchangeKind::Producer => (SpanKind::Producer, connection.remote),
        ExchangeKind::Consumer => (SpanKind::Consumer, connection.remote),
        ExchangeKind::Internal => (SpanKind::Internal, None),
    };
    if let Some(server) = server {
        attributes.push(text("server.address", server.ip().to_string()));
        attributes.push(int("server.port", i64::from(server.port())));
    }
    let status = match exchange.status {
        ExchangeStatus::Ok => None,
        ExchangeStatus::Error {
            error_type,
            message,
        } => {
            attributes.push(text("error.type", error_type));
            Some(Status {
                message,
                code: StatusCode::Error as i32,
            })
        }
    };
    let unix_ns = |ktime: u64| super::unix_nanos(clock.wall_time(ktime));
    // The W3C flags, and bits 8-9: whether the parent is known to be remote.
    let remote_flags = |remote: bool| SAMPLED | 0x100 | if remote { 0x200 } else { 0 };
    Span {
        trace_id: trace_id.to_bytes().to_vec(),
        span_id: span_id.to_bytes().to_vec(),
        trace_state: String::new(),
        parent_span_id: parent_span_id
            .map(|p| p.to_bytes().to_vec())
            .unwrap_or_default(),
        flags: remote_flags(parent_is_remote),
        name: exchange.name,
        kind: kind as i32,
        start_time_unix_nano: unix_ns(exchange.start_ktime_ns),
        end_time_unix_nano: unix_ns(exchange.end_ktime_ns.max(exchange.start_ktime_ns)),
        attributes,
        dropped_attributes_count: 0,
        events: Vec::new(),
        dropped_events_count: 0,
        links: links.into_iter().map(link).collect(),
        dropped_links_count: 0,
        status,
    }
}

fn link((trace_id, span_id): (TraceId, SpanId)) -> Link {
    Link {
        trace_id: trace_id.to_bytes().to_vec(),
        span_id: span_id.to_bytes().to_vec(),
        trace_state: String::new(),
        attributes: vec![text("tracer.link", "message")],
        dropped_attributes_count: 0,
        flags: SAMPLED | 0x100,
    }
}
