//! What the journey needs of a span, from the agent's own spans or from OTLP received by
//! `tracer journey`: both paths end here, so both keep journeys the same way.
use std::time::SystemTime;

use opentelemetry_proto::tonic::{
    common::v1::{any_value::Value, AnyValue, KeyValue},
    trace::v1::{span::SpanKind as ProtoKind, status::StatusCode, Span},
};

use crate::{
    capture::KernelClock,
    correlate::ResolvedSpan,
    extract::{ORDER_FROM_TRACE, ORDER_ID, ORDER_STATUS, USER_ID},
    protocols::{AttrValue, ExchangeStatus},
};

pub const SYNTHESIZED: &str = "tracer.synthesized";
/// The name of the correlator's span for a message published and never delivered.
pub const NOT_DELIVERED: &str = "message not delivered";

#[derive(Clone, Debug, Default, PartialEq)]
pub struct JourneySpan {
    pub service: String,
    /// The operation: the span's name (`POST /orders/{order_id}/submit`, `publish orders`).
    pub name: String,
    pub kind: &'static str,
    pub trace_id: String,
    pub span_id: String,
    /// Unix time, nanoseconds.
    pub start_ns: i64,
    pub end_ns: i64,
    /// The error, when the span failed.
    pub error: Option<String>,
    pub order_id: Option<String>,
    pub user_id: Option<String>,
    pub status: Option<String>,
    pub synthesized: bool,
    /// A message's way through a broker, when the span is about one.
    pub queue: Option<QueueView>,
}

/// What a messaging span says about the queue its message passed (or did not leave).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueView {
    /// `messaging.system`: `rabbitmq`.
    pub system: String,
    /// The queue: the consumer's subscription, else the routing key of a message sent to
    /// the default exchange (which names the queue), else the exchange.
    pub queue: String,
    /// CONSUMER: how long the message sat in the queue before this delivery.
    pub residence_ns: Option<i64>,
}

impl QueueView {
    fn read(attr: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let system = attr("messaging.system")?;
        let exchange = attr("messaging.destination.name").unwrap_or_default();
        let queue = attr("messaging.destination.subscription.name")
            .or_else(|| {
                attr("messaging.rabbitmq.destination.routing_key")
                    .filter(|_| exchange.is_empty() || exchange == "amq.default")
            })
            .unwrap_or(exchange);
        let residence_ns = attr("tracer.messaging.queue_residence_ms")
            .and_then(|ms| ms.parse::<i64>().ok())
            .map(|ms| ms * 1_000_000);
        Some(Self {
            system,
            queue,
            residence_ns,
        })
    }
}

impl JourneySpan {
    /// One of the agent's own spans, as it is exported.
    pub fn from_resolved(service: String, span: &ResolvedSpan, clock: &KernelClock) -> Self {
        let exchange = &span.exchange;
        let attr = |name: &str| {
            let own = exchange.attributes.iter().find(|(k, _)| *k == name);
            let own = own.map(|(_, v)| match v {
                AttrValue::Str(s) => s.to_string(),
                AttrValue::Int(i) => i.to_string(),
            });
            own.or_else(|| {
                let business = exchange.business.iter().find(|(k, _)| k == name);
                business.map(|(_, v)| v.clone())
            })
        };
        let error = match &exchange.status {
            ExchangeStatus::Ok => None,
            ExchangeStatus::Error {
                error_type,
                message,
            } => Some(if message.is_empty() {
                error_type.clone()
            } else {
                message.clone()
            }),
        };
        let unix_ns = |ktime: u64| unix_ns(clock.wall_time(ktime));
        Self {
            service,
            name: exchange.name.clone(),
            kind: exchange.kind.name(),
            trace_id: span.trace_id.to_string(),
            span_id: span.span_id.to_string(),
            start_ns: unix_ns(exchange.start_ktime_ns),
            end_ns: unix_ns(exchange.end_ktime_ns.max(exchange.start_ktime_ns)),
            error,
            // Only spans that name the order themselves are steps of its journey.
            order_id: attr(ORDER_ID).filter(|_| attr(ORDER_FROM_TRACE).is_none_or(|v| v != "true")),
            user_id: attr(USER_ID),
            status: attr(ORDER_STATUS),
            synthesized: attr(SYNTHESIZED).is_some_and(|v| v == "true"),
            queue: QueueView::read(attr),
        }
    }

    /// A span received over OTLP; `resource` is its resource's attributes.
    pub fn from_proto(resource: &[KeyValue], span: &Span) -> Self {
        let service = resource
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .and_then(text);
        Self::from_otlp(service.unwrap_or_default(), span)
    }

    /// An OTLP span of `service` (the agent's own, or one received).
    pub fn from_otlp(service: String, span: &Span) -> Self {
        let find = |list: &[KeyValue], name: &str| {
            list.iter()
                .find(|kv| kv.key == name)
                .and_then(|kv| kv.value.as_ref())
                .and_then(text)
        };
        let attr = |name: &str| find(&span.attributes, name);
        let status = span.status.as_ref();
        let error = status
            .filter(|s| s.code == StatusCode::Error as i32)
            .map(|s| {
                Some(s.message.clone())
                    .filter(|m| !m.is_empty())
                    .or_else(|| attr("error.type"))
                    .unwrap_or_else(|| "error".into())
            });
        Self {
            service,
            name: span.name.clone(),
            kind: match ProtoKind::try_from(span.kind).unwrap_or(ProtoKind::Internal) {
                ProtoKind::Server => "server",
                ProtoKind::Client => "client",
                ProtoKind::Producer => "producer",
                ProtoKind::Consumer => "consumer",
                _ => "internal",
            },
            trace_id: hex(&span.trace_id),
            span_id: hex(&span.span_id),
            start_ns: span.start_time_unix_nano as i64,
            end_ns: span.end_time_unix_nano as i64,
            error,
            // Only spans that name the order themselves are steps of its journey.
            order_id: attr(ORDER_ID).filter(|_| attr(ORDER_FROM_TRACE).is_none_or(|v| v != "true")),
            user_id: attr(USER_ID),
            status: attr(ORDER_STATUS),
            synthesized: attr(SYNTHESIZED).is_some_and(|v| v == "true"),
            queue: QueueView::read(attr),
        }
    }

    /// A synthesized report that this span's message never left its queue.
    pub fn not_delivered(&self) -> bool {
        self.synthesized && self.name == NOT_DELIVERED && self.queue.is_some()
    }
}

fn text(value: &AnyValue) -> Option<String> {
    match value.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unix_ns(time: SystemTime) -> i64 {
    crate::export::unix_nanos(time) as i64
}
