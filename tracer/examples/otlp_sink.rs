//! A real OTLP/gRPC receiver for `cargo xtask bench`: accepts `TraceService/Export` on
//! 127.0.0.1:PORT (tonic, the service's path and gRPC framing as a collector serves them)
//! and prints the running count of spans received on stdout, one line per export.
//!
//! It reads each request's protobuf only as deep as it must to count spans: resource spans
//! and scope spans are decoded, each span is kept as its undecoded bytes. The receiver
//! shares the bench's two cores with the traced programs, so a receiver that decoded every
//! attribute (as the generated service does: a fifth of the host's CPU at saturation)
//! would be charged to the traced rounds; a collector runs elsewhere in production.
//! Usage: `otlp_sink PORT`.
use std::{
    convert::Infallible,
    io::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::{
    body::Body,
    codegen::{BoxFuture, Service, StdError},
    server::{Grpc, NamedService, UnaryService},
};

/// `ExportTraceServiceRequest` down to its spans (field numbers from the OTLP protos).
#[derive(Clone, PartialEq, prost::Message)]
struct CountedRequest {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<CountedResourceSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CountedResourceSpans {
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<CountedScopeSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CountedScopeSpans {
    #[prost(bytes = "bytes", repeated, tag = "2")]
    spans: Vec<prost::bytes::Bytes>,
}

#[derive(Clone, Default)]
struct Sink {
    spans: Arc<AtomicU64>,
}

impl UnaryService<CountedRequest> for Sink {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<tonic::Response<Self::Response>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<CountedRequest>) -> Self::Future {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        let total = self.spans.fetch_add(spans as u64, Ordering::Relaxed) + spans as u64;
        let _ = writeln!(std::io::stdout().lock(), "{total}");
        Box::pin(async { Ok(tonic::Response::new(ExportTraceServiceResponse::default())) })
    }
}

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl<B> Service<http::Request<B>> for Sink
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let sink = self.clone();
        if request.uri().path() != EXPORT {
            return Box::pin(async {
                Ok(tonic::Status::unimplemented("only TraceService/Export").into_http())
            });
        }
        Box::pin(async move {
            let mut grpc = Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(sink, request).await)
        })
    }
}

impl NamedService for Sink {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("usage: otlp_sink PORT"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tonic::transport::Server::builder()
            .add_service(Sink::default())
            .serve(([127, 0, 0, 1], port).into())
            .await
    })?;
    Ok(())
}
