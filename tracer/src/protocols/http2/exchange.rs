//! An HTTP/2 stream as an exchange: HTTP semantic-convention attributes from its pseudo-
//! headers, gRPC's from its path and trailers, and the record extraction rules read.
use std::sync::Arc;

use super::grpc;
use crate::protocols::{
    http::{self, record::HttpRecord, route},
    identifiers::Identifier,
    AttrValue, Exchange, ExchangeId, ExchangeKind, ExchangeStatus,
};

/// A header block: decoded, or not decodable (HPACK state unknown).
#[derive(Clone, Debug)]
pub enum Block {
    Known(Vec<(String, String)>),
    Unknown,
}

#[derive(Default)]
pub struct Body {
    pub size: u64,
    pub prefix: Vec<u8>,
}

impl Body {
    /// `length` bytes of body, of which `kept` are the ones that were captured.
    pub fn add(&mut self, kept: &[u8], length: usize, limit: usize) {
        self.size += length as u64;
        let room = limit.saturating_sub(self.prefix.len());
        self.prefix.extend_from_slice(&kept[..kept.len().min(room)]);
    }
}

pub struct Stream {
    pub start_ktime_ns: u64,
    pub tid: u32,
    /// `None`: the stream began before we looked.
    pub request: Option<Block>,
    pub request_ended: bool,
    pub response: Option<Block>,
    pub trailers: Option<Block>,
    pub request_body: Body,
    pub response_body: Body,
    /// RST_STREAM: its error code, and whether the client sent it.
    pub reset: Option<(u32, bool)>,
    pub identifiers: Vec<Identifier>,
    /// Bytes of the connection were lost while it was open.
    pub lossy: bool,
}

impl Stream {
    pub fn new(start_ktime_ns: u64, tid: u32) -> Self {
        Self {
            start_ktime_ns,
            tid,
            request: None,
            request_ended: false,
            response: None,
            trailers: None,
            request_body: Body::default(),
            response_body: Body::default(),
            reset: None,
            identifiers: Vec::new(),
            lossy: false,
        }
    }
}

pub struct Options {
    pub body_prefix_bytes: usize,
    pub route_templates: std::sync::Arc<[String]>,
    pub scheme: &'static str,
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

pub fn status(headers: &[(String, String)]) -> Option<u16> {
    header(headers, ":status")?.parse().ok()
}

fn known(block: &Option<Block>) -> Option<&[(String, String)]> {
    match block {
        Some(Block::Known(headers)) => Some(headers),
        _ => None,
    }
}

/// RST_STREAM and GOAWAY error codes (RFC 9113 §7).
fn error_code_name(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => "UNKNOWN_ERROR",
    }
}

pub fn build(
    id: u32,
    kind: ExchangeKind,
    stream: Stream,
    end_ktime_ns: u64,
    options: &Options,
) -> Exchange {
    let request = known(&stream.request);
    let response = known(&stream.response);
    let trailers = known(&stream.trailers);
    let mut attributes: Vec<(&'static str, AttrValue)> = vec![
        ("network.protocol.name", AttrValue::fixed("http")),
        ("network.protocol.version", AttrValue::fixed("2")),
        (
            "http.request.body.size",
            (stream.request_body.size as i64).into(),
        ),
    ];
    let mut record = HttpRecord::default();
    let mut name = "HTTP".to_owned();
    let mut grpc_call = None;
    match request {
        Some(headers) => {
            let method = header(headers, ":method").unwrap_or("");
            let target = header(headers, ":path").unwrap_or("");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let route = match route::match_template(path, &options.route_templates) {
                Some(configured) => configured.to_owned(),
                None => route::template(path),
            };
            attributes.push(("http.request.method", method.into()));
            attributes.push(("url.path", path.into()));
            attributes.push(("http.route", route.clone().into()));
            if !query.is_empty() {
                attributes.push(("url.query", query.into()));
            }
            let scheme = header(headers, ":scheme").filter(|s| *s == "http" || *s == "https");
            attributes.push(("url.scheme", scheme.unwrap_or(options.scheme).into()));
            if let Some(authority) = header(headers, ":authority") {
                attributes.push(("http.request.header.host", authority.into()));
            }
            name = format!("{method} {route}");
            if grpc::is_grpc(headers) {
                grpc_call = grpc::Call::from_path(path);
            }
            record = HttpRecord::with_target(target.to_owned());
            record.headers = headers
                .iter()
                .filter(|(n, _)| !n.starts_with(':'))
                .cloned()
                .collect();
        }
        None => attributes.push(("tracer.http2.headers_unknown", AttrValue::fixed("true"))),
    }
    if let Some(headers) = response {
        if let Some(code) = status(headers) {
            attributes.push(("http.response.status_code", i64::from(code).into()));
        }
    } else if stream.response.is_some() {
        attributes.push(("tracer.http2.headers_unknown", AttrValue::fixed("true")));
    }
    if stream.response.is_some() || stream.response_body.size > 0 {
        attributes.push((
            "http.response.body.size",
            (stream.response_body.size as i64).into(),
        ));
    }
    if stream.lossy {
        attributes.push(("tracer.capture.incomplete", AttrValue::fixed("true")));
    }
    let mut status = match (response, &stream.response) {
        (Some(headers), _) => match status(headers) {
            Some(code) => http::status_for(kind, code),
            None => ExchangeStatus::Ok,
        },
        (None, Some(_)) => ExchangeStatus::Ok, // answered, with headers we cannot read
        (None, None) => ExchangeStatus::Error {
            error_type: "no_response".into(),
            message: "stream ended before a response".into(),
        },
    };
    let grpc_record = match grpc_call {
        Some(call) => {
            // An RPC is described by the rpc.* conventions: its path is its service and
            // method, its HTTP status is always 200.
            name = call.span_name();
            attributes.retain(|(key, _)| !key.starts_with("http.") && !key.starts_with("url."));
            call.attributes(&mut attributes);
            // Trailers carry the status; a reply without a body has it in its headers.
            let code = trailers
                .and_then(grpc::status)
                .or_else(|| response.and_then(grpc::status));
            if let Some((code, message)) = code {
                attributes.push(("rpc.grpc.status_code", i64::from(code).into()));
                if grpc::is_error(kind, code) {
                    status = ExchangeStatus::Error {
                        error_type: grpc::code_name(code).into(),
                        message,
                    };
                }
            }
            Some(grpc::Messages::new(
                &stream.request_body.prefix,
                &stream.response_body.prefix,
            ))
        }
        None => {
            record.request_body =
                Some(String::from_utf8_lossy(&stream.request_body.prefix).into_owned());
            record.response_body =
                Some(String::from_utf8_lossy(&stream.response_body.prefix).into_owned());
            None
        }
    };
    if let Some((code, by_client)) = stream.reset {
        let code_name = error_code_name(code);
        attributes.push((
            "tracer.http2.reset_by",
            if by_client { "client" } else { "server" }.into(),
        ));
        status = ExchangeStatus::Error {
            error_type: format!("RST_STREAM {code_name}"),
            message: format!(
                "stream reset by the {} ({code_name})",
                if by_client { "client" } else { "server" }
            ),
        };
    }
    Exchange {
        protocol: "http2",
        id: ExchangeId::Stream(id),
        kind,
        name,
        start_ktime_ns: stream.start_ktime_ns,
        end_ktime_ns,
        tid: stream.tid,
        attributes,
        status,
        traceparent: request
            .and_then(|h| header(h, "traceparent"))
            .map(str::to_owned),
        record: Arc::new(super::record::Http2Record {
            http: record,
            grpc: grpc_record,
        }),
        order_ids: Vec::new(),
        business: Vec::new(),
    }
}
