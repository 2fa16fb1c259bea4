//! What HTTP extraction rules read, for every HTTP version: the request's path, query and
//! headers, and the prefixes of both bodies.
use super::headers::Headers;
use crate::protocols::record::{Record, Source, SourceShape};

/// Every HTTP version's sources (HTTP/2 offers them too).
pub const SOURCES: [Source; 5] = [
    Source::new(
        "http_path",
        SourceShape::Template {
            separator: '/',
            id_after_word: true,
        },
    ),
    Source::new("http_query", SourceShape::Form),
    Source::new(
        "http_header",
        SourceShape::Named {
            case_insensitive: true,
        },
    ),
    Source::new("http_request_body", SourceShape::Body),
    Source::new("http_response_body", SourceShape::Body),
];

#[derive(Debug, Default)]
pub struct HttpRecord {
    pub path: String,
    pub query: String,
    /// Request headers as sent (names in any case).
    pub headers: Headers,
    /// `None` where a body is not offered to rules (gRPC's protobuf messages).
    pub request_body: Option<String>,
    pub response_body: Option<String>,
}

impl HttpRecord {
    /// OTLP: the collector's gRPC services, or OTLP/HTTP's paths with its content types.
    pub fn is_otlp(&self) -> bool {
        if self.path.starts_with("/opentelemetry.proto.collector.") {
            return true;
        }
        let otlp_path = matches!(
            self.path.as_str(),
            "/v1/traces" | "/v1/metrics" | "/v1/logs"
        );
        otlp_path
            && self
                .headers
                .get_ignore_case("content-type")
                .is_some_and(|t| {
                    t.starts_with("application/x-protobuf") || t.starts_with("application/json")
                })
    }
}

impl Record for HttpRecord {
    fn text(&self, source: &str) -> Option<&str> {
        match source {
            "http_path" => Some(&self.path),
            "http_query" => Some(&self.query),
            "http_request_body" => self.request_body.as_deref(),
            "http_response_body" => self.response_body.as_deref(),
            _ => None,
        }
    }

    fn named(&self, source: &str, name: &str) -> Option<&str> {
        (source == "http_header")
            .then(|| self.headers.get_ignore_case(name))
            .flatten()
    }

    fn is_telemetry_export(&self) -> bool {
        self.is_otlp()
    }
}
