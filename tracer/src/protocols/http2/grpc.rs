//! gRPC over HTTP/2: the service and method from the path, the status from the trailers
//! (`rpc.*` semantic conventions), and, for extraction rules that ask for it, the top-level
//! fields of the first protobuf message of each direction. Bodies are not read otherwise:
//! a protobuf message is not text.
use crate::protocols::{AttrValue, ExchangeKind};

pub fn is_grpc(headers: &[(String, String)]) -> bool {
    super::exchange::header(headers, "content-type")
        .is_some_and(|t| t.starts_with("application/grpc"))
}

pub struct Call {
    service: String,
    method: String,
}

impl Call {
    /// `/package.Service/Method`.
    pub fn from_path(path: &str) -> Option<Self> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        let word = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        };
        (word(service) && word(method)).then(|| Self {
            service: service.to_owned(),
            method: method.to_owned(),
        })
    }

    pub fn span_name(&self) -> String {
        format!("{}/{}", self.service, self.method)
    }

    pub fn attributes(&self, out: &mut Vec<(&'static str, AttrValue)>) {
        out.push(("rpc.system", AttrValue::fixed("grpc")));
        out.push(("rpc.service", self.service.as_str().into()));
        out.push(("rpc.method", self.method.as_str().into()));
    }
}

/// `grpc-status` and the percent-decoded `grpc-message`.
pub fn status(headers: &[(String, String)]) -> Option<(u32, String)> {
    let code = super::exchange::header(headers, "grpc-status")?
        .parse()
        .ok()?;
    let message = super::exchange::header(headers, "grpc-message")
        .map(|m| {
            percent_encoding::percent_decode_str(m)
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_else(|| format!("gRPC status {}", code_name(code)));
    Some((code, message))
}

/// Per the semantic conventions: every non-OK status fails a client call; on the server
/// only the codes that mean the server failed.
pub fn is_error(kind: ExchangeKind, code: u32) -> bool {
    match kind {
        ExchangeKind::Client => code != 0,
        _ => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    }
}

pub fn code_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN_CODE",
    }
}

/// Top-level fields of the first message each way: (field number, value) for strings
/// and integers.
#[derive(Debug, Default)]
pub struct Messages {
    pub request: Vec<(String, String)>,
    pub response: Vec<(String, String)>,
}

impl Messages {
    pub fn new(request: &[u8], response: &[u8]) -> Self {
        Self {
            request: first_message_fields(request),
            response: first_message_fields(response),
        }
    }
}

/// The top-level string and integer fields of the first length-prefixed message (an
/// uncompressed one only), as far as it was kept.
fn first_message_fields(body: &[u8]) -> Vec<(String, String)> {
    let [0, a, b, c, d, message @ ..] = body else {
        return Vec::new();
    };
    let length = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    fields(&message[..message.len().min(length)])
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Protobuf wire format, top level only; stops at the first thing it cannot read.
fn fields(mut bytes: &[u8]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    while !bytes.is_empty() {
        let Some(tag) = varint(&mut bytes) else {
            break;
        };
        let field = (tag >> 3).to_string();
        match tag & 7 {
            0 => match varint(&mut bytes) {
                Some(v) => found.push((field, v.to_string())),
                None => break,
            },
            1 | 5 => {
                let width = if tag & 7 == 1 { 8 } else { 4 };
                let Some(rest) = bytes.get(width..) else {
                    break;
                };
                bytes = rest;
            }
            2 => {
                let Some(length) = varint(&mut bytes).and_then(|l| usize::try_from(l).ok()) else {
                    break;
                };
                let Some(value) = bytes.get(..length) else {
                    break;
                };
                if let Ok(text) = std::str::from_utf8(value) {
                    found.push((field, text.to_owned()));
                }
                bytes = &bytes[length..];
            }
            _ => break,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_service_and_method() {
        let call = Call::from_path("/shop.v1.Orders/GetOrder").unwrap();
        assert_eq!(call.span_name(), "shop.v1.Orders/GetOrder");
        assert!(Call::from_path("/orders/42/files").is_none());
        assert!(Call::from_path("/").is_none());
    }

    #[test]
    fn top_level_fields_of_the_first_message() {
        // field 1: "ORD-7", field 2: 150, field 3 (fixed32) skipped, field 4: nested bytes.
        let message = b"\x0a\x05ORD-7\x10\x96\x01\x1d\x01\x02\x03\x04\x22\x02\xff\xfe";
        let mut body = vec![0, 0, 0, 0, message.len() as u8];
        body.extend_from_slice(message);
        let fields = first_message_fields(&body);
        assert_eq!(
            fields,
            vec![("1".into(), "ORD-7".into()), ("2".into(), "150".into())]
        );
        let mut compressed = body.clone();
        compressed[0] = 1;
        assert!(first_message_fields(&compressed).is_empty());
    }

    #[test]
    fn server_errors_follow_the_conventions() {
        assert!(is_error(ExchangeKind::Client, 5));
        assert!(!is_error(ExchangeKind::Server, 5));
        assert!(is_error(ExchangeKind::Server, 13));
    }
}
