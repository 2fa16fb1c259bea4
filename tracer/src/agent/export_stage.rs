//! What happens to a span once the correlator has settled it: sampling, privacy, the
//! journey hand-off, OTLP encoding, the export queues. Runs on the pipeline thread, or on a
//! thread of its own (`--pipeline-threads 2`), where it takes the spans in the order the
//! correlator resolved them: the same spans leave either way.
use std::{
    collections::BTreeMap,
    sync::{
        mpsc::{self, Receiver, SyncSender},
        Arc, Mutex,
    },
    thread::JoinHandle,
};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use crate::{
    capture::KernelClock,
    correlate::ResolvedSpan,
    export::{ExportQueues, Exported, Services, SpanEncoder},
    journey::{JourneyHandle, JourneySpan},
    privacy::{Privacy, Redactions},
    sample::Sampler,
};

/// Spans handed to the exporters (and the journey thread) at a time.
const HANDOVER: usize = 256;
/// Batches of resolved spans waiting for the export thread; beyond, the pipeline thread
/// waits (as it would doing the work itself), and the kernel ring absorbs the burst.
const PENDING_BATCHES: usize = 64;

/// The export stage's counts, read by `Pipeline::stats`.
#[derive(Clone, Debug, Default)]
pub struct ExportTally {
    pub spans_sampled_out: u64,
    /// Calls left without a parent because several requests of their process were open
    /// and no evidence said which one they served, by service.
    pub parents_ambiguous: BTreeMap<String, u64>,
}

pub struct ExportStage {
    pub sampler: Sampler,
    pub privacy: Privacy,
    pub privacy_dry_run: bool,
    pub journey: Option<JourneyHandle>,
    pub services: Services,
    pub queues: ExportQueues,
    pub tally: Arc<Mutex<ExportTally>>,
    pub encoder: SpanEncoder,
}

impl ExportStage {
    /// Samples, cleans, encodes and queues `spans`; hands order spans to the journeys.
    pub fn export(
        &mut self,
        spans: impl ExactSizeIterator<Item = ResolvedSpan>,
        clock: &KernelClock,
    ) {
        let mut batch = Vec::with_capacity(spans.len().min(HANDOVER));
        let mut journey_spans = Vec::new();
        let mut tally = ExportTally::default();
        for mut span in spans {
            if span.parent_ambiguous {
                let service = Services::name_of(&self.services.resource(&span.connection.process));
                *tally.parents_ambiguous.entry(service).or_default() += 1;
            }
            let keep = self.sampler.keep(&span);
            // An order's journey must not depend on whether its trace was sampled.
            let journey = self
                .journey
                .as_ref()
                .filter(|_| keep || !span.exchange.order_ids.is_empty());
            if !keep && journey.is_none() {
                tally.spans_sampled_out += 1;
                continue;
            }
            let redactions = self.privacy.apply(&mut span, self.privacy_dry_run);
            let resource = self.services.resource(&span.connection.process);
            if journey.is_some_and(|journey| journey.wants(&span)) {
                let service = Services::name_of(&resource);
                journey_spans.push(JourneySpan::from_resolved(service, &span, clock));
            }
            if !keep {
                tally.spans_sampled_out += 1;
                continue;
            }
            let exported = Exported {
                resource,
                span: self.encoder.encode(&span, clock),
            };
            if self.privacy_dry_run {
                print_dry_run(&exported, &redactions);
                continue;
            }
            batch.push(Arc::new(exported));
            // A burst hands over a chunk at a time: few wake-ups, and spans a full queue
            // drops are freed at once rather than held until the burst is encoded.
            if batch.len() >= HANDOVER {
                self.queues.send_all(std::mem::take(&mut batch));
            }
            if journey_spans.len() >= HANDOVER {
                self.offer_journeys(std::mem::take(&mut journey_spans));
            }
        }
        self.queues.send_all(batch);
        self.offer_journeys(journey_spans);
        if tally.spans_sampled_out > 0 || !tally.parents_ambiguous.is_empty() {
            let mut total = self.tally.lock().unwrap_or_else(|e| e.into_inner());
            total.spans_sampled_out += tally.spans_sampled_out;
            for (service, n) in tally.parents_ambiguous {
                *total.parents_ambiguous.entry(service).or_default() += n;
            }
        }
    }

    fn offer_journeys(&self, spans: Vec<JourneySpan>) {
        if let Some(journey) = &self.journey {
            journey.offer_all(spans);
        }
    }
}

/// The export stage where it runs.
pub enum Exporter {
    Inline(Box<ExportStage>),
    Thread(ExportThread),
}

pub struct ExportThread {
    /// None once finished.
    spans: Option<SyncSender<(Vec<ResolvedSpan>, KernelClock)>>,
    worker: Option<JoinHandle<()>>,
}

impl Exporter {
    /// The stage on a thread of its own.
    pub fn into_thread(self) -> Self {
        let stage = match self {
            Self::Inline(stage) => stage,
            thread => return thread,
        };
        let (tx, rx) = mpsc::sync_channel(PENDING_BATCHES);
        let worker = std::thread::Builder::new()
            .name("export-stage".into())
            .spawn(move || run(*stage, rx))
            .expect("spawning the export stage's thread");
        Self::Thread(ExportThread {
            spans: Some(tx),
            worker: Some(worker),
        })
    }

    /// A stand-in while the stage moves.
    pub fn none() -> Self {
        Self::Thread(ExportThread {
            spans: None,
            worker: None,
        })
    }

    /// Exports `spans` (on the export thread: hands them over, in order).
    pub fn export(&mut self, spans: &mut Vec<ResolvedSpan>, clock: &KernelClock) {
        match self {
            Self::Inline(stage) => stage.export(spans.drain(..), clock),
            Self::Thread(ExportThread {
                spans: Some(tx), ..
            }) if !spans.is_empty() => {
                // The thread ends only when the sender is dropped, or by a panic (a bug):
                // then the agent stops, as it does when the stage panics inline, rather
                // than drop every span from here on without a word.
                if tx.send((std::mem::take(spans), *clock)).is_err() {
                    panic!("the export stage's thread has ended (it panicked: see above)");
                }
            }
            Self::Thread(_) => spans.clear(),
        }
    }

    /// Waits until every span handed over has been exported (at shutdown).
    pub fn finish(&mut self) {
        if let Self::Thread(thread) = self {
            thread.finish();
        }
    }
}

impl ExportThread {
    fn finish(&mut self) {
        self.spans.take();
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                tracing::error!("the export stage's thread panicked; spans it held were lost");
            }
        }
    }
}

impl Drop for ExportThread {
    fn drop(&mut self) {
        self.finish();
    }
}

fn run(mut stage: ExportStage, spans: Receiver<(Vec<ResolvedSpan>, KernelClock)>) {
    for (batch, clock) in spans {
        stage.export(batch.into_iter(), &clock);
    }
}

/// One JSON line per span as it would be exported; `why` names, per attribute, what the
/// privacy stage did to it (dropped, templated, redacted, sanitised, masked, pseudonymised).
fn print_dry_run(exported: &Exported, redactions: &Redactions) {
    let span = exported.decoded();
    let attributes: BTreeMap<&str, String> = span
        .attributes
        .iter()
        .map(|kv| {
            (
                kv.key.as_str(),
                crate::export::value_text(kv.value.as_ref()),
            )
        })
        .collect();
    let kind = SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified);
    let trace_id: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
    let line = serde_json::json!({
        "service": Services::name_of(&exported.resource),
        "name": span.name,
        "kind": crate::export::kind_name(kind),
        "trace_id": trace_id,
        "attributes": attributes,
        "why": redactions,
    });
    println!("{line}");
}
