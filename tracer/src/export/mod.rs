//! Spans out of the agent: OTLP (gRPC or HTTP/protobuf) and OTLP/JSON files, behind
//! bounded queues with retry and counted drops.
mod file;
mod kubernetes;
mod otlp;
pub mod request;
mod service;
mod span;

use std::{
    path::PathBuf,
    str::FromStr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::SystemTime,
};

pub use file::run_file_export;
pub use kubernetes::{LogDirs, PodIdentity};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_sdk::{trace::SpanData, Resource};
pub use otlp::{resolve as resolve_otlp, run_otlp_export, OtlpProtocol};
use prost::Message as _;
pub use service::Services;
pub use span::Encoder as SpanEncoder;
use tokio::sync::mpsc;

/// A span as exported, an encoded OTLP protobuf `Span` message, and the resource (service)
/// it belongs to.
#[derive(Debug)]
pub struct Exported {
    pub resource: Arc<Resource>,
    pub span: Vec<u8>,
}

impl Exported {
    /// A span built with the OpenTelemetry SDK (the journey's stuck-order spans).
    pub fn from_sdk(resource: Arc<Resource>, span: SpanData) -> Self {
        Self {
            resource,
            span: Span::from(span).encode_to_vec(),
        }
    }

    /// The span decoded (the file exporter, dry runs and tests).
    pub fn decoded(&self) -> Span {
        Span::decode(&self.span[..]).expect("spans are encoded by tracer itself")
    }
}

/// Built once, shared by every export target and retry.
pub type ExportItem = Arc<Exported>;

/// An attribute value as text: strings as they are, numbers and booleans printed.
pub fn value_text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// `Server`, `Client`, `Producer`, `Consumer`, `Internal`: as the SDK names span kinds.
pub fn kind_name(kind: opentelemetry_proto::tonic::trace::v1::span::SpanKind) -> &'static str {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    match kind {
        SpanKind::Server => "Server",
        SpanKind::Client => "Client",
        SpanKind::Producer => "Producer",
        SpanKind::Consumer => "Consumer",
        SpanKind::Internal | SpanKind::Unspecified => "Internal",
    }
}

/// Nanoseconds since the Unix epoch (0 before it).
pub fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportTarget {
    /// OTLP; protocol and endpoint from flags, else `OTEL_EXPORTER_OTLP_*`, else gRPC on
    /// `http://localhost:4317`.
    Otlp {
        protocol: Option<OtlpProtocol>,
        endpoint: Option<String>,
    },
    /// OTLP/JSON lines, as the OpenTelemetry Collector's file exporter writes them.
    File(PathBuf),
}

impl FromStr for ExportTarget {
    type Err = String;

    /// `otlp`, `otlp-grpc[=URL]`, `otlp-http[=URL]` or `file:PATH`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, endpoint) = match s.split_once('=') {
            Some((kind, url)) => (kind, Some(url.to_owned())),
            None => (s, None),
        };
        match kind {
            "otlp" => Ok(Self::Otlp { protocol: None, endpoint }),
            "otlp-grpc" => Ok(Self::Otlp { protocol: Some(OtlpProtocol::Grpc), endpoint }),
            "otlp-http" => Ok(Self::Otlp { protocol: Some(OtlpProtocol::HttpProtobuf), endpoint }),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(Self::File(PathBuf::from(path))),
                _ => Err(format!("unknown export target {s:?}: use otlp, otlp-grpc[=URL], otlp-http[=URL] or file:PATH")),
            },
        }
    }
}

/// Counters every exporter shares, for logs and `/metrics`.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub spans_exported: AtomicU64,
    pub spans_dropped_queue_full: AtomicU64,
    pub spans_dropped_export_failed: AtomicU64,
    pub export_errors: AtomicU64,
}

impl ExportStats {
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "spans_exported": self.spans_exported.load(Ordering::Relaxed),
            "spans_dropped": {
                "queue_full": self.spans_dropped_queue_full.load(Ordering::Relaxed),
                "export_failed": self.spans_dropped_export_failed.load(Ordering::Relaxed),
            },
            "export_errors": self.export_errors.load(Ordering::Relaxed),
        })
    }
}

/// One export target's queue: batches of spans (one wake-up of the exporter per batch,
/// not per span), bounded by the spans it holds.
pub fn queue(max_spans: usize) -> (QueueSender, QueueReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let held = Arc::new(AtomicUsize::new(0));
    (
        QueueSender {
            tx,
            held: held.clone(),
            max: max_spans,
        },
        QueueReceiver { rx, held },
    )
}

#[derive(Clone)]
pub struct QueueSender {
    tx: mpsc::UnboundedSender<Vec<ExportItem>>,
    held: Arc<AtomicUsize>,
    max: usize,
}

impl QueueSender {
    /// Queues what fits; returns how many spans did not.
    fn send(&self, mut batch: Vec<ExportItem>) -> usize {
        let n = batch.len();
        let before = self.held.fetch_add(n, Ordering::AcqRel);
        let excess = (before + n).saturating_sub(self.max).min(n);
        if excess > 0 {
            self.held.fetch_sub(excess, Ordering::AcqRel);
            batch.truncate(n - excess);
        }
        if !batch.is_empty() && self.tx.send(batch).is_err() {
            self.held.fetch_sub(n - excess, Ordering::AcqRel);
            return n;
        }
        excess
    }
}

pub struct QueueReceiver {
    rx: mpsc::UnboundedReceiver<Vec<ExportItem>>,
    held: Arc<AtomicUsize>,
}

impl QueueReceiver {
    /// The next batch; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Vec<ExportItem>> {
        let batch = self.rx.recv().await?;
        self.held.fetch_sub(batch.len(), Ordering::AcqRel);
        Some(batch)
    }

    /// Every span queued now, without waiting.
    pub fn drain(&mut self) -> Vec<ExportItem> {
        let mut all = Vec::new();
        while let Ok(batch) = self.rx.try_recv() {
            self.held.fetch_sub(batch.len(), Ordering::AcqRel);
            all.extend(batch);
        }
        all
    }
}

/// The pipeline's handle on all export targets. Sending never blocks: a full queue drops
/// the spans that do not fit and counts them, so the capture path is never slowed by a
/// slow receiver.
#[derive(Clone)]
pub struct ExportQueues {
    senders: Vec<QueueSender>,
    pub stats: Arc<ExportStats>,
}

impl ExportQueues {
    pub fn new(senders: Vec<QueueSender>, stats: Arc<ExportStats>) -> Self {
        Self { senders, stats }
    }

    pub fn send(&self, item: ExportItem) {
        self.send_all(vec![item]);
    }

    /// Every target gets the whole batch (shared spans, no copies).
    pub fn send_all(&self, batch: Vec<ExportItem>) {
        if batch.is_empty() {
            return;
        }
        let Some((last, others)) = self.senders.split_last() else {
            return;
        };
        let mut dropped = others.iter().map(|s| s.send(batch.clone())).sum::<usize>();
        dropped += last.send(batch);
        if dropped > 0 {
            self.stats
                .spans_dropped_queue_full
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
    }
}

/// Starts the exporter for one target on `runtime`, reading `rx`.
pub fn spawn(
    target: ExportTarget,
    rx: QueueReceiver,
    max_held: usize,
    stats: Arc<ExportStats>,
    runtime: &tokio::runtime::Handle,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    match target {
        ExportTarget::Otlp { protocol, endpoint } => {
            let (protocol, endpoint, shown) = resolve_otlp(protocol, endpoint);
            eprintln!("tracer: exporting spans over {shown}");
            runtime.spawn(run_otlp_export(protocol, endpoint, rx, max_held, stats))
        }
        ExportTarget::File(path) => {
            eprintln!(
                "tracer: writing spans as OTLP/JSON lines to {}",
                path.display()
            );
            runtime.spawn(run_file_export(path, rx, stats))
        }
    }
}

/// Waits (up to 15 s) for exporters whose queues are closed to deliver what they hold.
pub fn finish(
    exporters: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    runtime: &tokio::runtime::Runtime,
) {
    runtime.block_on(async {
        for exporter in exporters {
            match tokio::time::timeout(std::time::Duration::from_secs(15), exporter).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => tracing::error!(%error, "exporter failed"),
                Ok(Err(error)) => tracing::error!(%error, "exporter task failed"),
                Err(_) => {
                    tracing::warn!("exporter did not finish within 15 s; remaining spans dropped")
                }
            }
        }
    });
}

/// Splits a batch by resource, keeping order within each resource.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_targets_parse() {
        assert_eq!(
            "otlp".parse(),
            Ok(ExportTarget::Otlp {
                protocol: None,
                endpoint: None
            })
        );
        assert_eq!(
            "otlp-http=http://c:4318".parse(),
            Ok(ExportTarget::Otlp {
                protocol: Some(OtlpProtocol::HttpProtobuf),
                endpoint: Some("http://c:4318".into())
            })
        );
        assert_eq!(
            "file:/tmp/x.jsonl".parse(),
            Ok(ExportTarget::File("/tmp/x.jsonl".into()))
        );
        assert!("kafka".parse::<ExportTarget>().is_err());
        assert!("file:".parse::<ExportTarget>().is_err());
    }
}
