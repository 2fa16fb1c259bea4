//! `ResolvedSpan` → an OTLP protobuf `Span` message, encoded once, straight from the span
//! (no intermediate message to build and free), and shared by every export target; network
//! attributes from the connection. Field numbers are those of
//! `opentelemetry/proto/trace/v1/trace.proto`; the tests decode the bytes with
//! `opentelemetry-proto`'s generated types.
use std::{
    net::{IpAddr, SocketAddr},
    ops::Range,
};

use foldhash::HashMap;
use prost::encoding::{encoded_len_varint, key_len, WireType};
use tracer_common::ConnId;

use crate::{
    capture::{Connection, KernelClock},
    correlate::ResolvedSpan,
    protocols::{AttrValue, ExchangeKind, ExchangeStatus},
};

/// W3C trace flags (sampled) and OTLP's "has is-remote" bit (0x100).
const FLAGS: u32 = 0x1 | 0x100;
/// OTLP's "is remote" bit: the parent came from another process.
const REMOTE: u32 = 0x200;
/// `Status.code` ERROR.
const STATUS_ERROR: u64 = 2;

#[derive(Clone, Copy)]
enum Value<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
}

/// A varint: one push for the small values (tags, lengths) nearly every call writes.
#[inline]
fn put_varint(mut value: u64, buf: &mut Vec<u8>) {
    while value >= 0x80 {
        buf.push(value as u8 | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

#[inline]
fn put_key(tag: u32, wire_type: WireType, buf: &mut Vec<u8>) {
    put_varint(u64::from(tag << 3 | wire_type as u32), buf);
}

fn string_len(tag: u32, value: &str) -> usize {
    key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
}

fn string(tag: u32, value: &str, buf: &mut Vec<u8>) {
    put_key(tag, WireType::LengthDelimited, buf);
    put_varint(value.len() as u64, buf);
    buf.extend_from_slice(value.as_bytes());
}

fn bytes(tag: u32, value: &[u8], buf: &mut Vec<u8>) {
    put_key(tag, WireType::LengthDelimited, buf);
    put_varint(value.len() as u64, buf);
    buf.extend_from_slice(value);
}

fn fixed64(tag: u32, value: u64, buf: &mut Vec<u8>) {
    put_key(tag, WireType::SixtyFourBit, buf);
    buf.extend_from_slice(&value.to_le_bytes());
}

fn fixed32(tag: u32, value: u32, buf: &mut Vec<u8>) {
    put_key(tag, WireType::ThirtyTwoBit, buf);
    buf.extend_from_slice(&value.to_le_bytes());
}

fn varint(tag: u32, value: u64, buf: &mut Vec<u8>) {
    put_key(tag, WireType::Varint, buf);
    put_varint(value, buf);
}

/// `AnyValue`: string_value 1, bool_value 2, int_value 3.
fn any_value_len(value: Value) -> usize {
    match value {
        Value::Str(s) => string_len(1, s),
        Value::Bool(_) => key_len(2) + 1,
        Value::Int(i) => key_len(3) + encoded_len_varint(i as u64),
    }
}

/// A `KeyValue` (key 1, value 2) as field `tag` of its message.
fn attribute(tag: u32, key: &str, value: Value, buf: &mut Vec<u8>) {
    let value_len = any_value_len(value);
    let len = string_len(1, key) + key_len(2) + encoded_len_varint(value_len as u64) + value_len;
    if tag < 16 && len < 128 {
        // Nearly every attribute: its tags and lengths are one byte each (every length
        // inside is below `len`), so each run of them is one fixed-size write rather than a
        // push per byte.
        let field = (tag << 3) as u8 | WireType::LengthDelimited as u8;
        buf.extend_from_slice(&[field, len as u8, 0x0a, key.len() as u8]);
        buf.extend_from_slice(key.as_bytes());
        match value {
            Value::Str(s) => {
                buf.extend_from_slice(&[0x12, value_len as u8, 0x0a, s.len() as u8]);
                buf.extend_from_slice(s.as_bytes());
            }
            Value::Bool(b) => buf.extend_from_slice(&[0x12, value_len as u8, 0x10, u8::from(b)]),
            Value::Int(i) => {
                buf.extend_from_slice(&[0x12, value_len as u8, 0x18]);
                put_varint(i as u64, buf);
            }
        }
        return;
    }
    put_key(tag, WireType::LengthDelimited, buf);
    put_varint(len as u64, buf);
    string(1, key, buf);
    put_key(2, WireType::LengthDelimited, buf);
    put_varint(value_len as u64, buf);
    match value {
        Value::Str(s) => string(1, s, buf),
        Value::Bool(b) => varint(2, u64::from(b), buf),
        Value::Int(i) => varint(3, i as u64, buf),
    }
}

/// A `Span.Link` (field 13): trace id 1, span id 2, attributes 4, flags 6.
fn link(trace_id: [u8; 16], span_id: [u8; 8], buf: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(80);
    bytes(1, &trace_id, &mut body);
    bytes(2, &span_id, &mut body);
    attribute(4, "tracer.link", Value::Str("message"), &mut body);
    fixed32(6, FLAGS, &mut body);
    bytes(13, &body, buf);
}

/// An address as text, appended; IPv4 (almost every address) without the formatting
/// machinery.
fn ip_text(ip: IpAddr, text: &mut String) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                text.push_str(itoa::Buffer::new().format(octet));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(text, "{v6}");
        }
    }
}

/// OTLP `SpanKind`.
fn kind(kind: ExchangeKind) -> u64 {
    match kind {
        ExchangeKind::Internal => 1,
        ExchangeKind::Server => 2,
        ExchangeKind::Client => 3,
        ExchangeKind::Producer => 4,
        ExchangeKind::Consumer => 5,
    }
}

/// Connections whose network attributes were encoded, at most this many (then forgotten
/// at once: a host with more connections than this re-encodes them, nothing else).
const MAX_CONNECTIONS: usize = 4096;

/// Encodes spans, keeping each connection's network attributes (addresses and ports under
/// their keys, transport, TLS; 8 of the ~18 attributes of an HTTP span) encoded once for all
/// of its spans: a keep-alive connection carries many.
#[derive(Default)]
pub struct Encoder {
    network: HashMap<(ConnId, bool, u8), NetworkBlock>,
}

struct NetworkBlock {
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    bytes: Vec<u8>,
}

impl Encoder {
    /// The span as an encoded OTLP `Span` message.
    pub fn encode(&mut self, span: &ResolvedSpan, clock: &KernelClock) -> Vec<u8> {
        let exchange = &span.exchange;
        let connection = &span.connection;
        let mut buf = Vec::with_capacity(768);
        bytes(1, &span.trace_id.to_bytes(), &mut buf);
        bytes(2, &span.span_id.to_bytes(), &mut buf);
        if let Some(parent) = span.parent_span_id {
            bytes(4, &parent.to_bytes(), &mut buf);
        }
        string(5, &exchange.name, &mut buf);
        varint(6, kind(exchange.kind), &mut buf);
        let unix_ns = |ktime: u64| super::unix_nanos(clock.wall_time(ktime));
        fixed64(7, unix_ns(exchange.start_ktime_ns), &mut buf);
        let end = exchange.end_ktime_ns.max(exchange.start_ktime_ns);
        fixed64(8, unix_ns(end), &mut buf);
        for (key, value) in &exchange.attributes {
            match value {
                AttrValue::Str(s) => attribute(9, key, Value::Str(s), &mut buf),
                AttrValue::Int(i) => attribute(9, key, Value::Int(*i), &mut buf),
            }
        }
        buf.extend_from_slice(self.network(connection, exchange.kind));
        if let Some(source) = span.parent_source {
            attribute(9, "tracer.parent.source", Value::Str(source), &mut buf);
        }
        if span.parent_ambiguous {
            // Made while several requests of its process were open, none shown to be its.
            attribute(9, "tracer.parent.ambiguous", Value::Bool(true), &mut buf);
        }
        for (key, value) in &exchange.business {
            attribute(9, key, Value::Str(value), &mut buf);
        }
        if let ExchangeStatus::Error { error_type, .. } = &exchange.status {
            attribute(9, "error.type", Value::Str(error_type), &mut buf);
        }
        for (trace_id, span_id) in &span.links {
            link(trace_id.to_bytes(), span_id.to_bytes(), &mut buf);
        }
        if let ExchangeStatus::Error { message, .. } = &exchange.status {
            // Status: message 2, code 3.
            let len = string_len(2, message) + key_len(3) + 1;
            put_key(15, WireType::LengthDelimited, &mut buf);
            put_varint(len as u64, &mut buf);
            string(2, message, &mut buf);
            varint(3, STATUS_ERROR, &mut buf);
        }
        let remote = if span.parent_is_remote { REMOTE } else { 0 };
        fixed32(16, FLAGS | remote, &mut buf);
        buf
    }

    /// The connection's network attributes for a span of `kind`, encoded.
    fn network(&mut self, connection: &Connection, kind: ExchangeKind) -> &[u8] {
        let key = (connection.id, connection.tls, network_side(kind));
        let current = |block: &NetworkBlock| {
            block.local == connection.local && block.remote == connection.remote
        };
        if !self.network.get(&key).is_some_and(current) {
            if self.network.len() >= MAX_CONNECTIONS {
                self.network.clear();
            }
            let mut bytes = Vec::with_capacity(256);
            network_attributes(connection, kind, &mut bytes);
            let block = NetworkBlock {
                local: connection.local,
                remote: connection.remote,
                bytes,
            };
            self.network.insert(key, block);
        }
        &self.network[&key].bytes
    }
}

/// Which end is the server for a span of `kind`: 0 the local one (SERVER), 1 the remote
/// one (calls and messages), 2 neither (INTERNAL).
fn network_side(kind: ExchangeKind) -> u8 {
    match kind {
        ExchangeKind::Server => 0,
        ExchangeKind::Internal => 2,
        _ => 1,
    }
}

/// Peer and local address and port, transport, TLS, and client/server address and port.
fn network_attributes(connection: &Connection, kind: ExchangeKind, buf: &mut Vec<u8>) {
    let attr = |buf: &mut Vec<u8>, key: &str, value: Value| attribute(9, key, value, buf);
    // Each end's address as text once (it is written under two keys), both in one buffer.
    let mut texts = String::with_capacity(96);
    let mut text_of = |at: Option<SocketAddr>| {
        at.map(|at| {
            let start = texts.len();
            ip_text(at.ip(), &mut texts);
            (start..texts.len(), at.port())
        })
    };
    let (remote, local) = (text_of(connection.remote), text_of(connection.local));
    let address = |buf: &mut Vec<u8>, ip_key: &str, port_key: &str, at: &(Range<usize>, u16)| {
        attr(buf, ip_key, Value::Str(&texts[at.0.clone()]));
        attr(buf, port_key, Value::Int(i64::from(at.1)));
    };
    if let Some(remote) = &remote {
        address(buf, "network.peer.address", "network.peer.port", remote);
    }
    if let Some(local) = &local {
        address(buf, "network.local.address", "network.local.port", local);
    }
    attr(buf, "network.transport", Value::Str("tcp"));
    if connection.tls {
        attr(buf, "tls.established", Value::Bool(true));
    }
    let server = match kind {
        ExchangeKind::Server => {
            if let Some(remote) = &remote {
                address(buf, "client.address", "client.port", remote);
            }
            local.as_ref()
        }
        ExchangeKind::Internal => None,
        _ => remote.as_ref(),
    };
    if let Some(server) = server {
        address(buf, "server.address", "server.port", server);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry::trace::{SpanId, TraceId};
    use opentelemetry_proto::tonic::{
        common::v1::any_value::Value as Any,
        trace::v1::{span::SpanKind, status::StatusCode, Span},
    };
    use prost::Message;

    use super::*;
    use crate::{
        capture::{procfs::ProcessInfo, Role},
        correlate::KnownIds,
        protocols::{Exchange, ExchangeId},
    };

    /// The span encoded by an encoder of its own (no connection seen before).
    fn encode(span: &ResolvedSpan, clock: &KernelClock) -> Vec<u8> {
        Encoder::default().encode(span, clock)
    }

    fn resolved() -> ResolvedSpan {
        let process = Arc::new(ProcessInfo {
            pid: 7,
            comm: "shop".into(),
            exe: String::new(),
            cmdline: Vec::new(),
            cgroup: String::new(),
        });
        let connection = Connection::for_tests(
            tracer_common::ConnId {
                tgid: 7,
                fd: 3,
                generation: 1,
            },
            Role::Server,
            Some("127.0.0.1:8080".parse().unwrap()),
            Some("10.0.0.2:50000".parse().unwrap()),
            process,
        );
        ResolvedSpan {
            trace_id: TraceId::from_bytes([7; 16]),
            span_id: SpanId::from_bytes([8; 8]),
            parent_span_id: Some(SpanId::from_bytes([9; 8])),
            parent_is_remote: true,
            links: vec![(TraceId::from_bytes([1; 16]), SpanId::from_bytes([2; 8]))],
            order_trace: false,
            known_ids: KnownIds::default(),
            exchange: Exchange {
                protocol: "http",
                id: ExchangeId::Sequence(1),
                kind: ExchangeKind::Server,
                name: "POST /orders".into(),
                start_ktime_ns: 1_000,
                end_ktime_ns: 2_000,
                tid: 7,
                attributes: vec![
                    ("http.request.method", "POST".into()),
                    ("http.response.status_code", AttrValue::Int(500)),
                ],
                status: ExchangeStatus::Error {
                    error_type: "500".into(),
                    message: "Internal Server Error".into(),
                },
                traceparent: None,
                record: Exchange::no_record(),
                order_ids: Vec::new(),
                business: vec![("app.order.id".into(), "ORD-1".into())],
            },
            connection,
            parent_source: Some("traceparent"),
            parent_ambiguous: true,
        }
    }

    #[test]
    fn a_connections_network_attributes_follow_its_addresses_and_the_spans_kind() {
        let clock = KernelClock::new();
        let mut encoder = Encoder::default();
        let attr = |bytes: Vec<u8>, key: &str| {
            Span::decode(&bytes[..])
                .unwrap()
                .attributes
                .into_iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value?.value)
        };
        let mut span = resolved();
        assert_eq!(
            attr(encoder.encode(&span, &clock), "server.port"),
            Some(Any::IntValue(8080))
        );
        // Encoded again from the connection's block: the same.
        let again = encoder.encode(&span, &clock);
        assert_eq!(again, encode(&span, &clock));
        assert_eq!(attr(again, "server.port"), Some(Any::IntValue(8080)));
        // A call on the same connection: the server is the other end.
        span.exchange.kind = ExchangeKind::Client;
        assert_eq!(
            attr(encoder.encode(&span, &clock), "server.port"),
            Some(Any::IntValue(50000))
        );
        // The connection's peer learnt later (from /proc): the new address is written.
        span.connection.remote = Some("10.0.0.3:50001".parse().unwrap());
        assert_eq!(
            attr(encoder.encode(&span, &clock), "network.peer.address"),
            Some(Any::StringValue("10.0.0.3".into()))
        );
        span.connection.tls = true;
        assert_eq!(
            attr(encoder.encode(&span, &clock), "tls.established"),
            Some(Any::BoolValue(true))
        );
    }

    #[test]
    fn attributes_are_the_bytes_prost_writes_for_a_key_value() {
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
        let long = "x".repeat(200);
        let cases = [
            ("http.request.method", Value::Str("GET")),
            ("url.path", Value::Str("")),
            ("url.path", Value::Str(&long)),
            (long.as_str(), Value::Str("v")),
            ("a", Value::Str(&long[..110])), // the pair just over one length byte
            ("a", Value::Str(&long[..109])), // and just under it
            ("http.response.status_code", Value::Int(200)),
            ("n", Value::Int(-1)), // a ten-byte varint
            ("n", Value::Int(i64::MAX)),
            ("n", Value::Int(0)),
            ("tls.established", Value::Bool(true)),
            ("flag", Value::Bool(false)),
        ];
        for tag in [9, 4, 16] {
            for (key, value) in cases {
                let mut ours = Vec::new();
                attribute(tag, key, value, &mut ours);
                let value = match value {
                    Value::Str(s) => Any::StringValue(s.into()),
                    Value::Int(i) => Any::IntValue(i),
                    Value::Bool(b) => Any::BoolValue(b),
                };
                let reference = KeyValue {
                    key: key.into(),
                    value: Some(AnyValue { value: Some(value) }),
                    ..Default::default()
                };
                let mut theirs = Vec::new();
                prost::encoding::message::encode(tag, &reference, &mut theirs);
                assert_eq!(ours, theirs, "tag {tag}, key of {} bytes", key.len());
            }
        }
    }

    #[test]
    fn addresses_read_as_the_standard_library_writes_them() {
        let mut text = String::new();
        for ip in ["0.0.0.0", "127.0.0.1", "10.200.3.255", "::1", "fe80::1:2"] {
            let ip: IpAddr = ip.parse().unwrap();
            text.clear();
            ip_text(ip, &mut text);
            assert_eq!(text, ip.to_string());
        }
    }

    #[test]
    fn decodes_as_the_standard_span() {
        let clock = KernelClock::new();
        let span = Span::decode(&encode(&resolved(), &clock)[..]).unwrap();
        assert_eq!(span.trace_id, vec![7; 16]);
        assert_eq!(span.span_id, vec![8; 8]);
        assert_eq!(span.parent_span_id, vec![9; 8]);
        assert_eq!(span.name, "POST /orders");
        assert_eq!(span.kind, SpanKind::Server as i32);
        assert_eq!(span.flags, 0x301, "sampled, has-remote, remote parent");
        assert_eq!(
            span.end_time_unix_nano - span.start_time_unix_nano,
            1_000,
            "kernel times to wall clock"
        );
        let attr = |key: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.clone()?.value)
        };
        assert_eq!(
            attr("http.request.method"),
            Some(Any::StringValue("POST".into()))
        );
        assert_eq!(attr("http.response.status_code"), Some(Any::IntValue(500)));
        assert_eq!(attr("app.order.id"), Some(Any::StringValue("ORD-1".into())));
        assert_eq!(attr("tracer.parent.ambiguous"), Some(Any::BoolValue(true)));
        assert_eq!(attr("server.port"), Some(Any::IntValue(8080)));
        assert_eq!(
            attr("client.address"),
            Some(Any::StringValue("10.0.0.2".into()))
        );
        assert_eq!(attr("error.type"), Some(Any::StringValue("500".into())));
        let status = span.status.unwrap();
        assert_eq!(status.code, StatusCode::Error as i32);
        assert_eq!(status.message, "Internal Server Error");
        assert_eq!(span.links.len(), 1);
        assert_eq!(span.links[0].trace_id, vec![1; 16]);
        assert_eq!(span.links[0].attributes[0].key, "tracer.link");
    }
}
