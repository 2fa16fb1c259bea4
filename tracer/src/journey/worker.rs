//! The journey thread: takes spans from a bounded queue (never blocking whoever offers
//! them), writes them in batches, checks for stuck orders and forgets old ones.
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;

use super::{stuck, JourneySpan, Journeys};
use crate::{
    config::{Glob, SlaRule},
    correlate::ResolvedSpan,
    export::ExportQueues,
    extract::ORDER_ID,
    protocols::{Exchange, ExchangeStatus},
};

/// Spans waiting for the journey thread.
const QUEUE: usize = 20_000;
const BATCH: usize = 1_000;
/// After a span arrives, how long more are gathered before one transaction writes them
/// all: a busy agent commits a few times a second, not once per span.
const GATHER: Duration = Duration::from_millis(250);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Where spans are offered to the journey thread, in batches (one wake-up per batch).
/// Dropping every handle stops it.
#[derive(Clone)]
pub struct JourneyHandle {
    tx: SyncSender<Vec<JourneySpan>>,
    /// Spans queued, bounded by `QUEUE`.
    held: Arc<AtomicUsize>,
    dropped: Counter,
    /// The SLA rules (span kind, span name), to tell which spans without an order still
    /// count.
    slas: Arc<[(Option<String>, Glob)]>,
}

impl JourneyHandle {
    /// Whether the journey thread can learn anything from `span` (made safe to export): it
    /// names an order, failed, passed a queue, or an SLA rule covers it. Other spans would
    /// only cost it time (most of a busy host's traffic names no order).
    pub fn wants(&self, span: &ResolvedSpan) -> bool {
        teaches(&self.slas, &span.exchange)
    }

    /// Never blocks: spans beyond a full queue are dropped and counted. False if any was.
    pub fn offer_all(&self, mut spans: Vec<JourneySpan>) -> bool {
        let n = spans.len();
        if n == 0 {
            return true;
        }
        let before = self.held.fetch_add(n, Ordering::AcqRel);
        let excess = (before + n).saturating_sub(QUEUE).min(n);
        spans.truncate(n - excess);
        let kept = spans.len();
        let sent = kept == 0 || self.tx.try_send(spans).is_ok();
        let lost = if sent { excess } else { n };
        if lost > 0 {
            self.held.fetch_sub(lost.min(n), Ordering::AcqRel);
            self.dropped.inc_by(lost as u64);
        }
        lost == 0
    }
}

/// The SLA rules as `teaches` reads them: each span pattern split once.
fn compiled(slas: &[SlaRule]) -> Arc<[(Option<String>, Glob)]> {
    (slas.iter())
        .map(|sla| (sla.kind.clone(), Glob::new(&sla.span)))
        .collect()
}

/// Whether the journey thread learns anything from `exchange`'s span (see `wants`).
fn teaches(slas: &[(Option<String>, Glob)], exchange: &Exchange) -> bool {
    let failed = !matches!(exchange.status, ExchangeStatus::Ok);
    let names_order = || {
        exchange.business.iter().any(|(k, _)| k == ORDER_ID)
            || exchange
                .attributes
                .iter()
                .any(|(k, _)| *k == ORDER_ID || *k == "messaging.system")
    };
    let kind = exchange.kind.name();
    failed
        || names_order()
        || slas.iter().any(|(sla_kind, span)| {
            sla_kind.as_deref().is_none_or(|k| k == kind) && span.matches(&exchange.name)
        })
}

/// Starts the journey thread; stuck-order spans go to `export` when given.
pub fn spawn(
    journeys: Journeys,
    check_every: Duration,
    export: Option<ExportQueues>,
) -> std::io::Result<(JourneyHandle, JoinHandle<()>)> {
    let (tx, rx) = sync_channel(QUEUE);
    let held = Arc::new(AtomicUsize::new(0));
    let handle = JourneyHandle {
        tx,
        held: held.clone(),
        dropped: journeys.metrics.spans_dropped.clone(),
        slas: compiled(&journeys.config.slas),
    };
    let queue = Queue { rx, held };
    let thread = std::thread::Builder::new()
        .name("journey".into())
        .spawn(move || run(journeys, queue, check_every, export))?;
    Ok((handle, thread))
}

/// The journey thread's end of the queue.
struct Queue {
    rx: Receiver<Vec<JourneySpan>>,
    held: Arc<AtomicUsize>,
}

impl Queue {
    fn recv_timeout(&self, wait: Duration) -> Result<Vec<JourneySpan>, RecvTimeoutError> {
        let spans = self.rx.recv_timeout(wait)?;
        self.held.fetch_sub(spans.len(), Ordering::AcqRel);
        Ok(spans)
    }

    /// Adds spans to `batch` until it is full or `within` has passed; false when every
    /// sender is gone.
    fn gather(&self, batch: &mut Vec<JourneySpan>, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while batch.len() < BATCH {
            match self.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(spans) => batch.extend(spans),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
        true
    }
}

// Never inlined: `cargo xtask bench` counts the instructions run inside it (callgrind);
// inlined into its thread's closure, the journey thread went uncounted.
#[inline(never)]
fn run(mut journeys: Journeys, queue: Queue, check_every: Duration, export: Option<ExportQueues>) {
    let resource = stuck::resource();
    let mut last_check = Instant::now();
    let mut last_prune = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    journeys.prune();
    loop {
        let wait = check_every.saturating_sub(last_check.elapsed());
        let open = match queue.recv_timeout(wait) {
            Ok(spans) => {
                batch.extend(spans);
                queue.gather(&mut batch, check_every.min(GATHER))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::ExchangeKind;

    fn exchange(kind: ExchangeKind, name: &str) -> Exchange {
        Exchange::for_tests(kind, name)
    }

    #[test]
    fn journeys_are_handed_spans_of_orders_errors_queues_and_slas_only() {
        let slas = compiled(&crate::config::JourneyConfig::default().slas); // server `* */calculate`
        let plain = exchange(ExchangeKind::Server, "GET /health");
        assert!(!teaches(&slas, &plain), "nothing to learn");
        let mut order = plain.clone();
        order.business.push((ORDER_ID.into(), "ORD-1".into()));
        assert!(teaches(&slas, &order), "names an order");
        let mut failed = plain.clone();
        failed.status = ExchangeStatus::Error {
            error_type: "500".into(),
            message: "HTTP 500".into(),
        };
        assert!(teaches(&slas, &failed), "errors are counted by operation");
        let mut queued = exchange(ExchangeKind::Consumer, "process orders");
        queued
            .attributes
            .push(("messaging.system", "rabbitmq".into()));
        assert!(teaches(&slas, &queued), "a queue's residence is timed");
        let sla = exchange(ExchangeKind::Server, "POST /b2b/calculate");
        assert!(teaches(&slas, &sla), "an SLA rule covers it");
        let other_kind = exchange(ExchangeKind::Client, "POST /b2b/calculate");
        assert!(!teaches(&slas, &other_kind), "the rule is for servers");
    }
}
