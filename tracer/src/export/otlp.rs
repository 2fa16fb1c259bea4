//! OTLP export through `opentelemetry-otlp`'s `SpanExporter`, one batch per service
//! resource, with a bounded retry buffer and exponential back-off.
use std::{
    collections::VecDeque,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::SpanExporter as _;
use tokio::{sync::mpsc, time::Instant};

use super::{ExportItem, ExportStats};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

const BATCH: usize = 512;
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

fn build(protocol: OtlpProtocol, endpoint: Option<String>) -> anyhow::Result<SpanExporter> {
    let exporter = match protocol {
        OtlpProtocol::Grpc => {
            let mut builder = SpanExporter::builder()
                .with_tonic()
                .with_timeout(EXPORT_TIMEOUT);
            if let Some(endpoint) = endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            builder.build()?
        }
        OtlpProtocol::HttpProtobuf => {
            let mut builder = SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_timeout(EXPORT_TIMEOUT);
            if let Some(endpoint) = endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            builder.build()?
        }
    };
    Ok(exporter)
}

/// Runs until `rx` closes, then makes a last attempt to send what it holds.
pub async fn run_otlp_export(
    protocol: OtlpProtocol,
    endpoint: Option<String>,
    mut rx: mpsc::Receiver<ExportItem>,
    max_held: usize,
    stats: Arc<ExportStats>,
) -> anyhow::Result<()> {
    // Spans held while the receiver is unreachable; older ones are dropped (and counted).
    let max_held = max_held.max(1);
    let mut exporter = build(protocol, endpoint)?;
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
            item = rx.recv(), if open => match item {
                Some(item) => hold(&mut held, item, max_held, &stats),
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
        let batch: Vec<ExportItem> = held.drain(..held.len().min(BATCH)).collect();
        // Keep taking spans in while the export is in flight, so a slow or unreachable
        // receiver never backs up into the agent's queue.
        let result = {
            let in_flight = export(&mut exporter, &batch);
            tokio::pin!(in_flight);
            loop {
                tokio::select! {
                    result = &mut in_flight => break result,
                    item = rx.recv(), if open => match item {
                        Some(item) => hold(&mut held, item, max_held, &stats),
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
    let _ = exporter.shutdown();
    Ok(())
}

fn hold(held: &mut VecDeque<ExportItem>, item: ExportItem, max_held: usize, stats: &ExportStats) {
    held.push_back(item);
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

/// One export call per resource in the batch (the exporter carries one resource at a time).
async fn export(exporter: &mut SpanExporter, batch: &[ExportItem]) -> anyhow::Result<()> {
    for (resource, spans) in super::group_by_resource(batch) {
        exporter.set_resource(&resource);
        exporter
            .export(spans)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}
