//! A real OTLP/gRPC receiver for `cargo xtask bench`: accepts `TraceService/Export` on
//! 127.0.0.1:PORT (tonic, `opentelemetry-proto`'s service, as a collector would) and
//! prints the running count of spans received on stdout, one line per export.
//! Usage: `otlp_sink PORT`.
use std::{
    io::Write as _,
    sync::atomic::{AtomicU64, Ordering},
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

#[derive(Default)]
struct Sink {
    spans: AtomicU64,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        let total = self.spans.fetch_add(spans as u64, Ordering::Relaxed) + spans as u64;
        let _ = writeln!(std::io::stdout().lock(), "{total}");
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
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
            .add_service(TraceServiceServer::new(Sink::default()))
            .serve(([127, 0, 0, 1], port).into())
            .await
    })?;
    Ok(())
}
