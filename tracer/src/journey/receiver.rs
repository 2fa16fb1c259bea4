//! `tracer journey`'s inputs: OTLP over gRPC (`TraceService/Export`) and HTTP
//! (`POST /v1/traces`, protobuf or JSON), from any number of agents. Every span goes to
//! the same journey thread the agent uses; when its queue is full the sender is told to
//! retry (gRPC UNAVAILABLE, HTTP 503) rather than losing the span here.
use std::{convert::Infallible, net::SocketAddr};

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, Request, Response};
use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use super::{JourneyHandle, JourneySpan};
use crate::listen::{bind, serve_http1};

/// Offers every span of `request` (one batch); false when some could not be queued.
fn take(request: &ExportTraceServiceRequest, journey: &JourneyHandle) -> bool {
    let mut spans = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or_default();
        for scope in &resource_spans.scope_spans {
            for span in &scope.spans {
                spans.push(JourneySpan::from_proto(resource, span));
            }
        }
    }
    journey.offer_all(spans)
}

#[derive(Clone)]
struct Grpc(JourneyHandle);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if take(request.get_ref(), &self.0) {
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        } else {
            Err(tonic::Status::unavailable("journey queue full; retry"))
        }
    }
}

/// Starts listening (errors now, if a port is taken); serves on the current runtime.
/// Returns the bound addresses.
pub fn serve(
    grpc: Option<SocketAddr>,
    http: Option<SocketAddr>,
    journey: JourneyHandle,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<Vec<(&'static str, SocketAddr)>> {
    let _guard = runtime.enter();
    let mut bound = Vec::new();
    if let Some(addr) = grpc {
        let listener = bind(addr, "OTLP/gRPC")?;
        bound.push(("grpc", listener.local_addr()?));
        let service = TraceServiceServer::new(Grpc(journey.clone()));
        runtime.spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            if let Err(error) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                tracing::error!(%error, "OTLP/gRPC receiver stopped");
            }
        });
    }
    if let Some(addr) = http {
        let listener = bind(addr, "OTLP/HTTP")?;
        bound.push(("http", listener.local_addr()?));
        let handle = move |request| handle_http(request, journey.clone());
        serve_http1(listener, handle, runtime);
    }
    Ok(bound)
}

async fn handle_http(
    request: Request<hyper::body::Incoming>,
    journey: JourneyHandle,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: u16, body: &'static str| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("static response parts"))
    };
    if request.method() != hyper::Method::POST || request.uri().path() != "/v1/traces" {
        return reply(404, "POST OTLP traces to /v1/traces\n");
    }
    let json = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let Ok(body) = request.into_body().collect().await else {
        return reply(400, "unreadable body\n");
    };
    let body = body.to_bytes();
    let decoded = if json {
        serde_json::from_slice::<ExportTraceServiceRequest>(&body).ok()
    } else {
        ExportTraceServiceRequest::decode(body).ok()
    };
    let Some(export) = decoded else {
        return reply(400, "not an OTLP ExportTraceServiceRequest\n");
    };
    if !take(&export, &journey) {
        return reply(503, "journey queue full; retry\n");
    }
    let body = ExportTraceServiceResponse::default().encode_to_vec();
    Ok(Response::builder()
        .status(200)
        .header(
            "content-type",
            if json {
                "application/json"
            } else {
                "application/x-protobuf"
            },
        )
        .body(Full::new(Bytes::from(if json {
            b"{}".to_vec()
        } else {
            body
        })))
        .expect("static response parts"))
}
