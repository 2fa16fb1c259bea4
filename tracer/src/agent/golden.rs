//! Pipeline golden tests: real conversations of both ends, recorded with `tracer capture
//! --format jsonl` from the test peers (`src/protocols/<protocol>/fixtures/*.capture.jsonl`),
//! through the whole userspace path — protocol sessions, extraction, correlation, sampling,
//! privacy, span building — to the spans as exported, compared with `<name>.spans.jsonl`
//! beside each capture. Every protocol's captures are found by the folder walk: a new
//! protocol's fixtures are tested without a line here. `TRACER_BLESS=1` rewrites the
//! expected files after a reviewed change; a mismatch writes `<name>.spans.actual.jsonl`.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
};

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use serde_json::{json, Value};

use super::{Pipeline, Stages};
use crate::{
    capture::{recording::Replay, KernelClock},
    config::Config,
    correlate::Correlator,
    export::{kind_name, value_text, ExportQueues, ExportStats, Services},
    privacy::IdKey,
    protocols::{golden, SessionOptions},
};

fn captures() -> Vec<PathBuf> {
    let protocols = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protocols");
    let mut found = Vec::new();
    for folder in std::fs::read_dir(protocols).unwrap().flatten() {
        let Ok(files) = std::fs::read_dir(folder.path().join("fixtures")) else {
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            if path.to_string_lossy().ends_with(".capture.jsonl") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// How the pipeline runs in a golden test.
#[derive(Clone, Copy)]
struct Run {
    /// The export stage on its own thread (`--pipeline-threads 2`).
    export_thread: bool,
    /// Resolve and export every this many records, as the agent's ticks do (else all
    /// at the end).
    tick_every: Option<usize>,
}

const AT_THE_END: Run = Run {
    export_thread: false,
    tick_every: None,
};

/// The spans the pipeline exports for a capture, as JSON lines: ids replaced by the
/// position of their trace and the name of their parent, times left out (they are the
/// recording's), in start order.
fn spans_of(capture: &Path, run: Run) -> String {
    let mut config = Config::default();
    config.sampling.success_ratio = 1.0;
    config.privacy.pseudonymise_ids = Some(true);
    let key = IdKey::from_bytes(b"pipeline golden tests");
    let (tx, mut rx) = crate::export::queue(100_000);
    let mut pipeline = Pipeline::new(
        Correlator::new(0, 300_000_000_000, key.clone()),
        Services::new(Vec::new()),
        ExportQueues::new(vec![tx], Arc::new(ExportStats::default())),
        SessionOptions::default(),
        Stages::from_config(&config, key).unwrap(),
    );
    if run.export_thread {
        pipeline = pipeline.with_export_thread();
    }
    let clock = KernelClock::new();
    let mut replay = Replay::default();
    let mut requests = Vec::new();
    for (n, record) in golden::capture(capture).into_iter().enumerate() {
        if let Some(event) = replay.event(&record) {
            pipeline.handle(event, record.time, &mut requests);
        }
        if run.tick_every.is_some_and(|every| n % every == every - 1) {
            pipeline.tick(record.time, &clock);
        }
    }
    pipeline.finish(&clock);
    let mut spans = Vec::new();
    for item in rx.drain() {
        spans.push((Services::name_of(&item.resource), item.decoded()));
    }
    spans.sort_by(|a, b| {
        (a.1.start_time_unix_nano, &a.1.name, a.0.as_str()).cmp(&(
            b.1.start_time_unix_nano,
            &b.1.name,
            b.0.as_str(),
        ))
    });
    let names: HashMap<&[u8], String> = spans
        .iter()
        .map(|(service, s)| (&s.span_id[..], format!("{service} {}", s.name)))
        .collect();
    let mut traces = Vec::new();
    let mut out = String::new();
    for (service, span) in &spans {
        let trace = &span.trace_id;
        if !traces.contains(&trace) {
            traces.push(trace);
        }
        let attributes: BTreeMap<&str, String> = span
            .attributes
            .iter()
            .filter(|kv| !kv.key.ends_with(".port")) // the recording's, not ours
            .map(|kv| (kv.key.as_str(), value_text(kv.value.as_ref())))
            .collect();
        let parent = match &span.parent_span_id[..] {
            [] => Value::Null,
            parent => json!(names
                .get(parent)
                .cloned()
                .unwrap_or_else(|| "remote".into())),
        };
        // As the OpenTelemetry SDK prints a status.
        let status = match &span.status {
            Some(s) if s.code == StatusCode::Error as i32 => {
                format!("Error {{ description: {:?} }}", s.message)
            }
            Some(s) if s.code == StatusCode::Ok as i32 => "Ok".into(),
            _ => "Unset".into(),
        };
        let kind = SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified);
        let line = json!({
            "service": service,
            "kind": kind_name(kind),
            "name": span.name,
            "status": status,
            "trace": traces.iter().position(|t| *t == trace),
            "parent": parent,
            "links": span.links.len(),
            "attributes": attributes,
        });
        out.push_str(&format!("{line}\n"));
    }
    out
}

#[test]
fn recorded_conversations_become_the_expected_spans() {
    let captures = captures();
    assert!(
        captures.len() >= 3,
        "the protocol folders hold their recorded conversations: {captures:?}"
    );
    for capture in captures {
        let actual = spans_of(&capture, AT_THE_END);
        assert!(!actual.is_empty(), "{} gave no spans", capture.display());
        let stem = capture.to_string_lossy().replace(".capture.jsonl", "");
        let expected_path = PathBuf::from(format!("{stem}.spans.jsonl"));
        if std::env::var("TRACER_BLESS").is_ok_and(|v| v == "1") {
            std::fs::write(&expected_path, &actual).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            let actual_path = format!("{stem}.spans.actual.jsonl");
            std::fs::write(&actual_path, &actual).unwrap();
            panic!(
                "{}: spans differ from {}; see {actual_path}",
                capture.display(),
                expected_path.display()
            );
        }
    }
}

/// With the export stage on its own thread the same spans leave, batch after batch.
#[test]
fn an_export_thread_exports_the_same_spans() {
    for capture in captures() {
        for tick_every in [None, Some(7)] {
            let inline = spans_of(
                &capture,
                Run {
                    export_thread: false,
                    tick_every,
                },
            );
            let threaded = spans_of(
                &capture,
                Run {
                    export_thread: true,
                    tick_every,
                },
            );
            assert!(!inline.is_empty(), "{} gave no spans", capture.display());
            assert_eq!(
                inline,
                threaded,
                "{} (ticks every {tick_every:?} records)",
                capture.display()
            );
        }
    }
}
