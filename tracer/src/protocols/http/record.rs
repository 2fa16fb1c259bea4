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
    /// The request target as sent (path, then `?` and the query), owned once: the head's
    /// own text, not a copy per part.
    target: String,
    /// Where the path ends in `target`.
    path_len: usize,
    /// Request headers as sent (names in any case).
    pub headers: Headers,
    /// `None` where a body is not offered to rules (gRPC's protobuf messages).
    pub request_body: Option<String>,
    pub response_body: Option<String>,
}

impl HttpRecord {
    /// A record of the request target `target` (path, optionally `?` and a query).
    pub fn with_target(target: String) -> Self {
        let path_len = target.find('?').unwrap_or(target.len());
        Self {
            target,
            path_len,
            ..Self::default()
        }
    }

    pub fn path(&self) -> &str {
        &self.target[..self.path_len]
    }

    /// The query without its `?` (empty when there is none).
    pub fn query(&self) -> &str {
        self.target.get(self.path_len + 1..).unwrap_or_default()
    }

    /// OTLP: the collector's gRPC services, or OTLP/HTTP's paths with its content types.
    pub fn is_otlp(&self) -> bool {
        if self.path().starts_with("/opentelemetry.proto.collector.") {
            return true;
        }
        let otlp_path = matches!(self.path(), "/v1/traces" | "/v1/metrics" | "/v1/logs");
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
            "http_path" => Some(self.path()),
            "http_query" => Some(self.query()),
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

    fn named_values(&self, source: &str, names: &[String], out: &mut Vec<String>) {
        if source == "http_header" {
            self.headers.first_values(names, out);
        }
    }

    fn is_telemetry_export(&self) -> bool {
        self.is_otlp()
    }
}

#[cfg(test)]
mod tests {
    use super::HttpRecord;

    #[test]
    fn the_target_splits_into_path_and_query_at_the_first_question_mark() {
        let parts = |target: &str| {
            let record = HttpRecord::with_target(target.to_owned());
            (record.path().to_owned(), record.query().to_owned())
        };
        assert_eq!(
            parts("/orders/7?x=1&next=/a?b"),
            ("/orders/7".into(), "x=1&next=/a?b".into())
        );
        assert_eq!(parts("/orders?"), ("/orders".into(), String::new()));
        assert_eq!(parts("/orders"), ("/orders".into(), String::new()));
        assert_eq!(parts(""), (String::new(), String::new()));
    }
}
