//! What HTTP/2 extraction rules read: the `http_*` sources of every HTTP version, and for
//! gRPC the top-level fields of the first message each way (`name` = field number).
use super::grpc::Messages;
use crate::protocols::{
    http::record::HttpRecord,
    record::{lookup, Record, Source, SourceShape},
};

/// The `http_*` sources of every HTTP version, and gRPC's messages.
pub static SOURCES: [Source; 7] = {
    let http = crate::protocols::http::record::SOURCES;
    [
        http[0],
        http[1],
        http[2],
        http[3],
        http[4],
        Source::new(
            "grpc_request_field",
            SourceShape::Named {
                case_insensitive: false,
            },
        ),
        Source::new(
            "grpc_response_field",
            SourceShape::Named {
                case_insensitive: false,
            },
        ),
    ]
};

#[derive(Debug)]
pub struct Http2Record {
    pub http: HttpRecord,
    /// gRPC calls only.
    pub grpc: Option<Messages>,
}

impl Record for Http2Record {
    fn text(&self, source: &str) -> Option<&str> {
        self.http.text(source)
    }

    fn named(&self, source: &str, name: &str) -> Option<&str> {
        let grpc = self.grpc.as_ref();
        match source {
            "grpc_request_field" => lookup(&grpc?.request, name, false),
            "grpc_response_field" => lookup(&grpc?.response, name, false),
            _ => self.http.named(source, name),
        }
    }

    fn is_telemetry_export(&self) -> bool {
        self.http.is_otlp()
    }
}
