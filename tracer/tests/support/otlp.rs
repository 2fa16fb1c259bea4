//! A real OTLP receiver for tests: gRPC (tonic, `opentelemetry-proto`'s service) and HTTP
//! (`POST /v1/traces`, protobuf), collecting every span it is sent.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{SocketAddr, TcpListener as StdListener},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::any_value::Value,
};
use prost::Message;
use tokio::{net::TcpSocket, sync::oneshot};
use tonic::transport::server::TcpIncoming;

/// One received span, flattened for assertions.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub service: String,
    pub resource: HashMap<String, String>,
    pub name: String,
    /// OTLP span kind: 2 SERVER, 3 CLIENT.
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub attributes: HashMap<String, String>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    pub status_message: String,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
}

/// The one span `pred` picks; panics with what matched when there is not exactly one.
pub fn find<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    pred: impl Fn(&ReceivedSpan) -> bool,
) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| pred(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {what}, found {found:#?}"
    );
    found[0]
}

/// Every name, attribute, resource value and status message, to check what never leaves.
pub fn everything(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {:?} {:?} {}\n",
                s.name, s.attributes, s.resource, s.status_message
            )
        })
        .collect()
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map(String::as_str).unwrap_or("")
    }

    /// The `process.pid` of its resource (0 if absent).
    pub fn pid(&self) -> u32 {
        self.resource
            .get("process.pid")
            .and_then(|p| p.parse().ok())
            .unwrap_or_default()
    }
}

/// The SERVER span of the request for `path`, if received.
pub fn served<'a>(spans: &'a [ReceivedSpan], path: &str) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.kind == 2 && s.attr("url.path") == path)
}

type Store = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

pub struct Receiver {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    store: Store,
    stop: Vec<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

#[derive(Clone)]
struct Collector(Store);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A local port held for a receiver that is not there yet: bound but not listening, so
/// connections to it are refused as by a receiver that is down, and no other socket (a
/// service's listener, an outgoing connection's local port) can take it meanwhile.
pub struct ReservedPort {
    socket: TcpSocket,
    pub port: u16,
}

pub fn reserve_port() -> ReservedPort {
    let socket = bound(0, "reserved");
    let port = socket
        .local_addr()
        .expect("a bound socket's address")
        .port();
    ReservedPort { socket, port }
}

/// A socket bound to `127.0.0.1:port` (0: any free port), not yet listening. Without
/// `SO_REUSEADDR`, so no other socket can bind the port while this one holds it.
fn bound(port: u16, what: &str) -> TcpSocket {
    let socket = TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(([127, 0, 0, 1], port).into())
        .unwrap_or_else(|error| {
            panic!("the test OTLP receiver cannot bind its {what} port 127.0.0.1:{port}: {error}")
        });
    socket
}

impl Receiver {
    pub fn start() -> Self {
        Self::serve(bound(0, "gRPC"), bound(0, "HTTP"))
    }

    /// Listens on a reserved port (a receiver coming up where agents were sent spans).
    pub fn start_reserved(grpc: ReservedPort) -> Self {
        Self::serve(grpc.socket, bound(0, "HTTP"))
    }

    /// Both ports are bound before this is called and listening when it returns: no
    /// window in which a span could be refused or another socket take a port.
    fn serve(grpc_socket: TcpSocket, http_socket: TcpSocket) -> Self {
        let store: Store = Arc::default();
        let grpc = grpc_socket.local_addr().expect("the gRPC port");
        let http = http_socket.local_addr().expect("the HTTP port");
        let (grpc_stop, grpc_stopped) = oneshot::channel::<()>();
        let (http_stop, mut http_stopped) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let collector = Collector(store.clone());
        let http_store = store.clone();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let grpc_listener = grpc_socket.listen(1024).expect("listening on the gRPC port");
                let listener = http_socket.listen(1024).expect("listening on the HTTP port");
                let grpc_server = tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(collector))
                    .serve_with_incoming_shutdown(TcpIncoming::from(grpc_listener), async {
                        let _ = grpc_stopped.await;
                    });
                let grpc_task = tokio::spawn(grpc_server);
                ready_tx.send(()).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut http_stopped => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let store = http_store.clone();
                            tokio::spawn(async move {
                                let service = service_fn(move |request| handle_http(request, store.clone()));
                                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                            });
                        }
                    }
                }
                if let Ok(Err(error)) = grpc_task.await {
                    eprintln!("the test OTLP/gRPC receiver stopped with an error: {error}");
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("OTLP receiver did not start");
        Self {
            grpc,
            http,
            store,
            stop: vec![grpc_stop, http_stop],
            thread: Some(thread),
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}/v1/traces", self.http)
    }

    /// Stops listening on both ports.
    pub fn stop(mut self) {
        for stop in self.stop.drain(..) {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        flatten(&self.store.lock().unwrap())
    }

    /// Every request received, whole (resources, scopes, spans, events, links), as text:
    /// what a leak check must search.
    pub fn raw(&self) -> String {
        format!("{:?}", self.store.lock().unwrap())
    }

    /// Waits until `done` holds for the spans received so far; panics with what arrived.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        self.try_wait_for(timeout, done).unwrap_or_else(|spans| {
            let summary: Vec<String> = spans
                .iter()
                .map(|s| {
                    format!(
                        "{} {} kind={} {}",
                        s.service,
                        s.name,
                        s.kind,
                        s.attr("url.path")
                    )
                })
                .collect();
            panic!(
                "timed out waiting for {what}; received {} spans:\n{}",
                spans.len(),
                summary.join("\n")
            );
        })
    }

    /// Waits until `done` holds for the spans received so far: `Err` with what arrived if it
    /// does not within `timeout` (for a caller that reports more than the spans).
    pub fn try_wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Result<Vec<ReceivedSpan>, Vec<ReceivedSpan>> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            if Instant::now() > deadline {
                return Err(spans);
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        for stop in self.stop.drain(..) {
            let _ = stop.send(());
        }
    }
}

async fn handle_http(
    request: Request<hyper::body::Incoming>,
    store: Store,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path_ok = request.uri().path() == "/v1/traces";
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let response = match (path_ok, ExportTraceServiceRequest::decode(body)) {
        (true, Ok(decoded)) => {
            store.lock().unwrap().push(decoded);
            let body = ExportTraceServiceResponse::default().encode_to_vec();
            Response::builder()
                .status(200)
                .header("content-type", "application/x-protobuf")
                .body(Full::new(body.into()))
        }
        _ => Response::builder()
            .status(400)
            .body(Full::new(Bytes::from_static(b"bad request"))),
    };
    Ok(response.unwrap())
}

fn value_string(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn flatten(requests: &[ExportTraceServiceRequest]) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for request in requests {
        for resource_spans in &request.resource_spans {
            let resource: HashMap<String, String> = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .map(|kv| (kv.key.clone(), value_string(&kv.value)))
                .collect();
            for scope in &resource_spans.scope_spans {
                for span in &scope.spans {
                    spans.push(ReceivedSpan {
                        service: resource.get("service.name").cloned().unwrap_or_default(),
                        resource: resource.clone(),
                        name: span.name.clone(),
                        kind: span.kind,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), value_string(&kv.value)))
                            .collect(),
                        status: span.status.as_ref().map_or(0, |s| s.code),
                        status_message: span
                            .status
                            .as_ref()
                            .map(|s| s.message.clone())
                            .unwrap_or_default(),
                        links: span
                            .links
                            .iter()
                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                        start_unix_nano: span.start_time_unix_nano,
                        end_unix_nano: span.end_time_unix_nano,
                    });
                }
            }
        }
    }
    spans
}
