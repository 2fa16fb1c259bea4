//! `--export file:PATH`: one OTLP/JSON `ExportTraceServiceRequest` per line, the format of
//! the OpenTelemetry Collector's file exporter.
use std::{
    io::Write,
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
};

use super::{request, ExportStats, QueueReceiver};

pub async fn run_file_export(
    path: PathBuf,
    mut rx: QueueReceiver,
    stats: Arc<ExportStats>,
) -> anyhow::Result<()> {
    let file = crate::privacy::files::open_private_append(&path)
        .map_err(|e| anyhow::anyhow!("cannot open export file {}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    while let Some(batch) = rx.recv().await {
        let written = request::json(&batch, &mut out).and_then(|()| out.flush());
        match written {
            Ok(()) => stats
                .spans_exported
                .fetch_add(batch.len() as u64, Ordering::Relaxed),
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "writing spans failed");
                stats
                    .spans_dropped_export_failed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed)
            }
        };
    }
    Ok(())
}
