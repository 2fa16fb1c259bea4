//! OTLP export (gRPC through tonic, HTTP/protobuf through reqwest; the standard
//! `OTEL_EXPORTER_OTLP_*` endpoint and headers variables), one request per batch with
//! every service in it, a bounded retry buffer and exponential back-off.
use std::{
    collections::VecDeque,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use tokio::time::Instant;

use super::{request, ExportItem, ExportStats, QueueReceiver};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// Spans held that start an export at once (else every `FLUSH_EVERY`).
const BATCH: usize = 512;
/// Spans per export request when more are held: a backlog drains in few round trips
/// (~1 MB of protobuf, a quarter of a collector's default 4 MiB message limit).
const MAX_REQUEST: usize = 2048;
const FLUSH_EVERY: Duration = Duration::from_millis(500);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where OTLP goes: flags first, then the standard environment variables, then gRPC on
/// localhost:4317. Returns a description for the start-up log.
pub fn resolve(
    protocol: Option<OtlpProtocol>,
    endpoint: Option<String>,
) -> (OtlpProtocol, Option<String>, String) {
    let protocol = protocol.unwrap_or_else(|| {
        let env = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"));
        match env.as_deref() {
            Ok("http/protobuf") => OtlpProtocol::HttpProtobuf,
            _ => OtlpProtocol::Grpc,
        }
    });
    let endpoint = endpoint.map(|url| match protocol {
        // A bare collector address gets the standard traces path, as the env variable does.
        OtlpProtocol::HttpProtobuf if url.trim_end_matches('/').matches('/').count() <= 2 => {
            format!("{}/v1/traces", url.trim_end_matches('/'))
        }
        _ => url,
    });
    let shown = endpoint
        .clone()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok())
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok());
    let shown = shown.unwrap_or_else(|| match protocol {
        OtlpProtocol::Grpc => "http://localhost:4317".into(),
        OtlpProtocol::HttpProtobuf => "http://localhost:4318/v1/traces".into(),
    });
    let name = match protocol {
        OtlpProtocol::Grpc => "OTLP/gRPC",
        OtlpProtocol::HttpProtobuf => "OTLP/HTTP",
    };
    (protocol, endpoint, format!("{name} {shown}"))
}

/// Where a batch goes: the OTLP services, fed the request bytes `request::protobuf`
/// writes (each span encoded from the shared span, no per-target copy).
enum Client {
    Grpc {
        grpc: tonic::client::Grpc<tonic::transport::Channel>,
        metadata: tonic::metadata::MetadataMap,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: reqwest::header::HeaderMap,
    },
}

/// `OTEL_EXPORTER_OTLP_TRACES_<name>`, else `OTEL_EXPORTER_OTLP_<name>`.
fn env(name: &str) -> Option<String> {
    std::env::var(format!("OTEL_EXPORTER_OTLP_TRACES_{name}"))
        .or_else(|_| std::env::var(format!("OTEL_EXPORTER_OTLP_{name}")))
        .ok()
        .filter(|v| !v.is_empty())
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `key=value,key2=value2` (values URL-encoded).
fn headers() -> anyhow::Result<Vec<(String, String)>> {
    env("HEADERS").map_or(Ok(Vec::new()), |list| parse_headers(&list))
}

fn parse_headers(list: &str) -> anyhow::Result<Vec<(String, String)>> {
    list.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("OTEL_EXPORTER_OTLP_HEADERS: {pair:?} is not key=value")
            })?;
            let value = percent_encoding::percent_decode_str(value.trim()).decode_utf8_lossy();
            Ok((key.trim().to_ascii_lowercase(), value.into_owned()))
        })
        .collect()
}

fn build(protocol: OtlpProtocol, endpoint: Option<String>) -> anyhow::Result<Client> {
    let headers = headers()?;
    match protocol {
        OtlpProtocol::Grpc => {
            let url = endpoint
                .or_else(|| env("ENDPOINT"))
                .unwrap_or_else(|| "http://localhost:4317".into());
            let channel = tonic::transport::Endpoint::from_shared(url.clone())
                .map_err(|e| anyhow::anyhow!("OTLP/gRPC endpoint {url:?}: {e}"))?
                .connect_timeout(EXPORT_TIMEOUT)
                .timeout(EXPORT_TIMEOUT)
                .connect_lazy();
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (key, value) in &headers {
                let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes())
                    .map_err(|e| anyhow::anyhow!("OTEL_EXPORTER_OTLP_HEADERS: {key:?}: {e}"))?;
                let value = value
                    .parse()
                    .map_err(|e| anyhow::anyhow!("OTEL_EXPORTER_OTLP_HEADERS: {key}: {e}"))?;
                metadata.insert(key, value);
            }
            Ok(Client::Grpc {
                grpc: tonic::client::Grpc::new(channel),
                metadata,
            })
        }
        OtlpProtocol::HttpProtobuf => {
            let url = endpoint
                .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok())
                .or_else(|| {
                    let base = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok()?;
                    Some(format!("{}/v1/traces", base.trim_end_matches('/')))
                })
                .unwrap_or_else(|| "http://localhost:4318/v1/traces".into());
            let mut map = reqwest::header::HeaderMap::new();
            for (key, value) in &headers {
                map.insert(
                    reqwest::header::HeaderName::from_bytes(key.as_bytes())?,
                    reqwest::header::HeaderValue::from_str(value)?,
                );
            }
            let client = reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build()?;
            Ok(Client::Http {
                client,
                url,
                headers: map,
            })
        }
    }
}

/// A gRPC codec whose requests are batches of already-encoded spans, written as one
/// `ExportTraceServiceRequest` straight into the frame buffer.
#[derive(Default)]
struct Encoded;

impl tonic::codec::Codec for Encoded {
    type Encode = Vec<ExportItem>;
    type Decode = ExportTraceServiceResponse;
    type Encoder = Encoded;
    type Decoder = Encoded;

    fn encoder(&mut self) -> Self::Encoder {
        Encoded
    }
    fn decoder(&mut self) -> Self::Decoder {
        Encoded
    }
}

impl tonic::codec::Encoder for Encoded {
    type Item = Vec<ExportItem>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        batch: Vec<ExportItem>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        let request = request::Protobuf::new(&batch);
        dst.reserve(request.encoded_len());
        request.write(dst);
        Ok(())
    }
}

impl tonic::codec::Decoder for Encoded {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Self::Item>, Self::Error> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl Client {
    async fn export(&mut self, batch: &[ExportItem]) -> anyhow::Result<()> {
        match self {
            Client::Grpc { grpc, metadata } => {
                grpc.ready()
                    .await
                    .map_err(|e| anyhow::anyhow!("OTLP/gRPC receiver unreachable: {e}"))?;
                // Shared spans: the batch is kept for a retry, its copy costs a pointer each.
                let mut request = tonic::Request::new(batch.to_vec());
                *request.metadata_mut() = metadata.clone();
                let path = tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH);
                grpc.unary(request, path, Encoded)
                    .await
                    .map_err(|status| anyhow::anyhow!("OTLP/gRPC export: {status}"))?;
                Ok(())
            }
            Client::Http {
                client,
                url,
                headers,
            } => {
                let response = client
                    .post(url.as_str())
                    .headers(headers.clone())
                    .header("content-type", "application/x-protobuf")
                    .body(request::protobuf(batch))
                    .send()
                    .await?;
                if !response.status().is_success() {
                    anyhow::bail!("OTLP/HTTP export: {}", response.status());
                }
                Ok(())
            }
        }
    }
}

/// Runs until `rx` closes, then makes a last attempt to send what it holds.
pub async fn run_otlp_export(
    protocol: OtlpProtocol,
    endpoint: Option<String>,
    mut rx: QueueReceiver,
    max_held: usize,
    stats: Arc<ExportStats>,
) -> anyhow::Result<()> {
    // Spans held while the receiver is unreachable; older ones are dropped (and counted).
    let max_held = max_held.max(1);
    let mut client = build(protocol, endpoint)?;
    let mut held: VecDeque<ExportItem> = VecDeque::new();
    let mut backoff = Duration::from_millis(100);
    let mut next_attempt = Instant::now();
    let mut last_flush = Instant::now();
    let mut open = true;
    while open || !held.is_empty() {
        let due = if held.len() >= BATCH {
            next_attempt
        } else {
            next_attempt.max(last_flush + FLUSH_EVERY)
        };
        tokio::select! {
            items = rx.recv(), if open => match items {
                Some(items) => hold(&mut held, items, max_held, &stats),
                None => open = false,
            },
            _ = tokio::time::sleep_until(due), if !held.is_empty() => {}
        }
        let now = Instant::now();
        let ready = held.len() >= BATCH || now >= last_flush + FLUSH_EVERY || !open;
        if held.is_empty() || now < next_attempt || !ready {
            continue;
        }
        last_flush = now;
        let batch: Vec<ExportItem> = held.drain(..held.len().min(MAX_REQUEST)).collect();
        // Keep taking spans in while the export is in flight, so a slow or unreachable
        // receiver never backs up into the agent's queue.
        let result = {
            let in_flight = export(&mut client, &batch);
            tokio::pin!(in_flight);
            loop {
                tokio::select! {
                    result = &mut in_flight => break result,
                    items = rx.recv(), if open => match items {
                        Some(items) => hold(&mut held, items, max_held, &stats),
                        None => open = false,
                    },
                }
            }
        };
        match result {
            Ok(()) => {
                stats
                    .spans_exported
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                backoff = Duration::from_millis(100);
            }
            Err(error) => {
                stats.export_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, spans = batch.len(), retry_in = ?backoff, "OTLP export failed");
                if !open {
                    // Shutting down and the receiver is still not there: give up, counted.
                    stats
                        .spans_dropped_export_failed
                        .fetch_add((batch.len() + held.len()) as u64, Ordering::Relaxed);
                    held.clear();
                    break;
                }
                for item in batch.into_iter().rev() {
                    held.push_front(item);
                }
                trim(&mut held, max_held, &stats);
                next_attempt = now + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    Ok(())
}

fn hold(
    held: &mut VecDeque<ExportItem>,
    items: Vec<ExportItem>,
    max_held: usize,
    stats: &ExportStats,
) {
    held.extend(items);
    trim(held, max_held, stats);
}

fn trim(held: &mut VecDeque<ExportItem>, max_held: usize, stats: &ExportStats) {
    while held.len() > max_held {
        held.pop_front();
        stats
            .spans_dropped_export_failed
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// One request for the whole batch, every resource in it.
async fn export(client: &mut Client, batch: &[ExportItem]) -> anyhow::Result<()> {
    client.export(batch).await
}

#[cfg(test)]
mod tests {
    use super::parse_headers;

    #[test]
    fn otlp_headers_are_key_value_pairs_with_url_encoded_values() {
        let parsed = parse_headers("api-key=s3cr%3Dt, X-Tenant = shop ,").unwrap();
        assert_eq!(
            parsed,
            vec![
                ("api-key".to_owned(), "s3cr=t".to_owned()),
                ("x-tenant".to_owned(), "shop".to_owned())
            ]
        );
        let error = parse_headers("api-key").unwrap_err().to_string();
        assert!(error.contains("not key=value"), "{error}");
    }
}
