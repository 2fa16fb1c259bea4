//! The journey thread: takes spans from a bounded queue (never blocking whoever offers
//! them), writes them in batches, checks for stuck orders and forgets old ones.
use std::{
    sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;

use super::{stuck, JourneySpan, Journeys};
use crate::export::ExportQueues;

/// Spans waiting for the journey thread.
const QUEUE: usize = 20_000;
const BATCH: usize = 1_000;
/// After a span arrives, how long more are gathered before one transaction writes them
/// all: a busy agent commits a few times a second, not once per span.
const GATHER: Duration = Duration::from_millis(250);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Where spans are offered to the journey thread. Dropping every handle stops it.
#[derive(Clone)]
pub struct JourneyHandle {
    tx: SyncSender<JourneySpan>,
    dropped: Counter,
}

impl JourneyHandle {
    /// Never blocks: a full queue drops the span and counts it.
    pub fn offer(&self, span: JourneySpan) -> bool {
        match self.tx.try_send(span) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
                false
            }
        }
    }
}

/// Starts the journey thread; stuck-order spans go to `export` when given.
pub fn spawn(
    journeys: Journeys,
    check_every: Duration,
    export: Option<ExportQueues>,
) -> std::io::Result<(JourneyHandle, JoinHandle<()>)> {
    let (tx, rx) = sync_channel(QUEUE);
    let handle = JourneyHandle {
        tx,
        dropped: journeys.metrics.spans_dropped.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("journey".into())
        .spawn(move || run(journeys, rx, check_every, export))?;
    Ok((handle, thread))
}

/// Adds spans to `batch` until it is full or `within` has passed; false when every
/// sender is gone.
fn gather(rx: &Receiver<JourneySpan>, batch: &mut Vec<JourneySpan>, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while batch.len() < BATCH {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(span) => batch.push(span),
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
    true
}

fn run(
    mut journeys: Journeys,
    rx: Receiver<JourneySpan>,
    check_every: Duration,
    export: Option<ExportQueues>,
) {
    let resource = stuck::resource();
    let mut last_check = Instant::now();
    let mut last_prune = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    journeys.prune();
    loop {
        let wait = check_every.saturating_sub(last_check.elapsed());
        let open = match rx.recv_timeout(wait) {
            Ok(span) => {
                batch.push(span);
                gather(&rx, &mut batch, check_every.min(GATHER))
            }
            Err(RecvTimeoutError::Timeout) => true,
            Err(RecvTimeoutError::Disconnected) => false,
        };
        journeys.observe(&batch);
        batch.clear();
        if last_check.elapsed() >= check_every || !open {
            last_check = Instant::now();
            let now = journeys.clock.now_ns();
            for order in journeys.check() {
                let span_id = stuck::span_id(&order);
                tracing::warn!(
                    order = %order.order_id,
                    status = %order.status,
                    last_service = %order.last_service,
                    trace_id = %order.trace_id,
                    "order {}",
                    order.message()
                );
                journeys.record_stuck(&order, &span_id.to_string(), now);
                if let Some(export) = &export {
                    let span = stuck::span(&order, span_id, now);
                    export.send(std::sync::Arc::new(crate::export::Exported::from_sdk(
                        resource.clone(),
                        span,
                    )));
                }
            }
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            journeys.prune();
        }
        if !open {
            return;
        }
    }
}
