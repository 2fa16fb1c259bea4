//! The journey engine: spans in, order state out (memory + store), metrics, and stuck-order
//! detection. The agent (`tracer run`) and the journey service (`tracer journey`) both run
//! exactly this.
use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use foldhash::{HashMap, HashSet};

use super::{
    clock::human, diagnose::QUEUE_PREFIX, labels::LabelBudget, Clock, JourneyMetrics, JourneySpan,
    Order, Step, Store,
};
use crate::config::{glob_match, JourneyConfig, StatusAt};

/// Span ids remembered to ignore a span delivered twice (OTLP is at-least-once).
const RECENT_SPANS: usize = 100_000;

/// An order found in a status longer than allowed.
#[derive(Clone, Debug, PartialEq)]
pub struct StuckOrder {
    pub order_id: String,
    pub status: String,
    pub since_ns: i64,
    pub dwell_ns: i64,
    pub limit: Duration,
    pub last_service: String,
    pub trace_id: String,
    pub parent_span_id: String,
}

impl StuckOrder {
    /// "stuck in SUBMITTED for 26 h, last seen by crm"
    pub fn message(&self) -> String {
        format!(
            "stuck in {} for {}, last seen by {}",
            self.status,
            human(self.dwell_ns),
            self.last_service
        )
    }
}

pub struct Journeys {
    pub(super) config: JourneyConfig,
    store: Store,
    orders: HashMap<String, Order>,
    recent: HashSet<String>,
    recent_order: VecDeque<String>,
    pub metrics: JourneyMetrics,
    labels: LabelBudget,
    pub clock: Clock,
}

impl Journeys {
    /// Loads the orders the store still holds (within retention): a restarted agent
    /// carries on where it stopped.
    pub fn open(
        config: JourneyConfig,
        mut store: Store,
        metrics: JourneyMetrics,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let (before, errors_before) = config.retention_window(clock.now_ns());
        let orders: HashMap<String, Order> = store
            .load(before.min(errors_before))?
            .into_iter()
            .filter(|o| retained(o, before, errors_before))
            .map(|o| (o.id.clone(), o))
            .collect();
        tracing::info!(orders = orders.len(), "journeys loaded");
        let journeys = Self {
            labels: LabelBudget::new(&config),
            config,
            store,
            orders,
            recent: HashSet::default(),
            recent_order: VecDeque::new(),
            metrics,
            clock,
        };
        // Every status with a limit has its series from the start, so "none reported" reads
        // as 0 rather than as a missing metric.
        for status in journeys.config.max_dwell.keys() {
            let _ = journeys
                .metrics
                .stuck_reported
                .get_or_create(&JourneyMetrics::status(status));
        }
        journeys.update_stuck_gauges(journeys.clock.now_ns());
        Ok(journeys)
    }

    pub fn order_count(&self) -> usize {
        self.orders.len()
    }

    /// Takes a batch of spans; writes what changed in one transaction.
    pub fn observe(&mut self, spans: &[JourneySpan]) {
        let mut changed = Vec::new();
        let mut steps = Vec::new();
        for span in spans {
            if !self.first_delivery(span) {
                continue;
            }
            let queue = queue_step(span);
            self.count(span, queue.as_ref());
            let Some(order_id) = span.order_id.as_deref().filter(|id| !id.is_empty()) else {
                continue;
            };
            let status = self.status_of(span);
            let final_status = self.config.final_status.clone();
            let order = self.orders.entry(order_id.to_owned()).or_insert_with(|| {
                self.metrics.orders_seen.inc();
                Order::new(order_id, span)
            });
            let applied = order.apply_at(
                span,
                status.as_ref().map(|(s, at)| (s.as_str(), *at)),
                &final_status,
            );
            if let Some(status) = &applied.reached {
                let label = self.labels.status(status, &self.metrics);
                self.metrics.reached.get_or_create(&label).inc();
            }
            if let Some((status, dwell)) = &applied.left {
                let label = self.labels.status(status, &self.metrics);
                self.metrics
                    .dwell
                    .get_or_create(&label)
                    .observe(*dwell as f64 / 1e9);
            }
            if let Some(lead) = applied.lead_time_ns {
                self.metrics.lead_time.observe(lead as f64 / 1e9);
            }
            // Plain steps beyond the cap are not kept; status changes and errors always are.
            if order.steps < self.config.max_steps_per_order as i64
                || status.is_some()
                || span.error.is_some()
            {
                order.steps += 1;
                if let Some(queue) = queue {
                    steps.push(Step {
                        order_id: order_id.to_owned(),
                        ..queue
                    });
                }
                if span.not_delivered() {
                    // Told as the queue's step (above), not as the producer's.
                    changed.push(order_id.to_owned());
                    continue;
                }
                steps.push(Step {
                    order_id: order_id.to_owned(),
                    span_id: span.span_id.clone(),
                    trace_id: span.trace_id.clone(),
                    start_ns: span.start_ns,
                    end_ns: span.end_ns,
                    service: span.service.clone(),
                    operation: span.name.clone(),
                    kind: span.kind.to_owned(),
                    status_at_ns: status.as_ref().map_or(0, |(_, at)| *at),
                    status: status.map(|(s, _)| s),
                    error: span.error.clone(),
                    synthesized: span.synthesized,
                });
            }
            changed.push(order_id.to_owned());
        }
        self.save(&changed, &steps);
    }

    fn first_delivery(&mut self, span: &JourneySpan) -> bool {
        if !self.recent.insert(span.span_id.clone()) {
            return false;
        }
        self.recent_order.push_back(span.span_id.clone());
        if self.recent_order.len() > RECENT_SPANS {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
        true
    }

    /// Errors and SLAs, for every span (with an order or not), and its queue's residence.
    fn count(&mut self, span: &JourneySpan, queue: Option<&Step>) {
        if span.synthesized {
            return;
        }
        if span.error.is_some() {
            let label = self
                .labels
                .operation(&span.service, &span.name, &self.metrics);
            self.metrics.errors.get_or_create(&label).inc();
        }
        let took = span.end_ns - span.start_ns;
        self.sla(&span.name, span.kind, took, span.error.is_none());
        if let Some(step) = queue {
            self.sla(
                &step.operation,
                "internal",
                step.end_ns - step.start_ns,
                true,
            );
        }
    }

    fn sla(&self, operation: &str, kind: &str, took_ns: i64, ok: bool) {
        for sla in &self.config.slas {
            let kind_matches = sla.kind.as_deref().is_none_or(|k| k == kind);
            if kind_matches && glob_match(&sla.span, operation) {
                let took = Duration::from_nanos(took_ns.max(0) as u64);
                self.metrics
                    .sla_outcome(&sla.name, ok && took <= sla.within);
            }
        }
    }

    /// The status a span moves its order to, and when: a configured rule, else
    /// `app.order.status` (at the span's end).
    fn status_of(&self, span: &JourneySpan) -> Option<(String, i64)> {
        if span.synthesized {
            return None;
        }
        let rule = self.config.status_rules.iter().find(|rule| {
            glob_match(&rule.span, &span.name)
                && rule.service.as_deref().is_none_or(|s| s == span.service)
                && rule.kind.as_deref().is_none_or(|k| k == span.kind)
                && (span.error.is_none() || rule.on_error)
        });
        match rule {
            Some(rule) => {
                let at = match rule.at {
                    StatusAt::Start => span.start_ns,
                    StatusAt::End => span.end_ns,
                };
                Some((rule.status.clone(), at))
            }
            None if span.error.is_none() => span.status.clone().map(|s| (s, span.end_ns)),
            None => None,
        }
    }

    fn save(&mut self, changed: &[String], steps: &[Step]) {
        if changed.is_empty() && steps.is_empty() {
            return;
        }
        let orders: Vec<&Order> = changed
            .iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .filter_map(|id| self.orders.get(id))
            .collect();
        if let Err(error) = self.store.save(&orders, steps) {
            self.metrics.store_errors.inc();
            tracing::error!(error = format!("{error:#}"), "journey store write failed; the orders stay in memory and are written with their next change");
        }
    }

    /// Finds orders newly past their status's maximum dwell, records each as a
    /// synthesized step, and refreshes the stuck gauges.
    pub fn check(&mut self) -> Vec<StuckOrder> {
        let now = self.clock.now_ns();
        let mut stuck = Vec::new();
        for order in self.orders.values_mut() {
            let Some(change) = order.status().cloned() else {
                continue;
            };
            if change.status == self.config.final_status {
                continue;
            }
            let Some(limit) = self.config.max_dwell.get(&change.status) else {
                continue;
            };
            let dwell = now - change.at_ns;
            if dwell <= limit.as_nanos() as i64
                || order.stuck_status.as_ref() == Some(&change.status)
            {
                continue;
            }
            order.stuck_status = Some(change.status.clone());
            stuck.push(StuckOrder {
                order_id: order.id.clone(),
                status: change.status.clone(),
                since_ns: change.at_ns,
                dwell_ns: dwell,
                limit: *limit,
                last_service: order.last_service.clone(),
                trace_id: order.last_trace_id.clone(),
                parent_span_id: order.last_span_id.clone(),
            });
        }
        self.update_stuck_gauges(now);
        stuck
    }

    /// Records the synthesized span reporting `stuck` in the order's timeline.
    pub fn record_stuck(&mut self, stuck: &StuckOrder, span_id: &str, now_ns: i64) {
        self.metrics
            .stuck_reported
            .get_or_create(&JourneyMetrics::status(&stuck.status))
            .inc();
        let step = Step {
            order_id: stuck.order_id.clone(),
            span_id: span_id.to_owned(),
            trace_id: stuck.trace_id.clone(),
            start_ns: stuck.since_ns,
            end_ns: now_ns,
            service: super::stuck::SERVICE.to_owned(),
            operation: format!("order stuck in {}", stuck.status),
            kind: "internal".into(),
            status: None,
            status_at_ns: 0,
            error: Some(stuck.message()),
            synthesized: true,
        };
        self.save(std::slice::from_ref(&stuck.order_id), &[step]);
    }

    fn update_stuck_gauges(&self, now: i64) {
        let mut counts: BTreeMap<&str, i64> = self
            .config
            .max_dwell
            .keys()
            .map(|s| (s.as_str(), 0))
            .collect();
        for order in self.orders.values() {
            if let Some((status, dwell)) = order.dwell_ns(now) {
                if status == self.config.final_status {
                    continue;
                }
                if let Some(limit) = self.config.max_dwell.get(status) {
                    if dwell > limit.as_nanos() as i64 {
                        *counts.entry(status).or_default() += 1;
                    }
                }
            }
        }
        for (status, count) in counts {
            self.metrics
                .stuck
                .get_or_create(&JourneyMetrics::status(status))
                .set(count);
        }
    }

    /// Applies retention in memory and in the store (see [`Store::prune`]).
    pub fn prune(&mut self) {
        let (before, errors_before) = self.config.retention_window(self.clock.now_ns());
        self.orders
            .retain(|_, o| retained(o, before, errors_before));
        match self.store.prune(before, errors_before) {
            Ok((0, 0)) => {}
            Ok((orders, steps)) => {
                tracing::info!(orders, steps, "journeys and steps past retention forgotten")
            }
            Err(error) => {
                self.metrics.store_errors.inc();
                tracing::error!(
                    error = format!("{error:#}"),
                    "pruning the journey store failed"
                );
            }
        }
    }
}

/// The time a message spent in its queue, as a step of the broker's (`rabbitmq`,
/// `queue mes.orders`): from a delivery whose residence is known (observed), or from the
/// report that the message never left (synthesized, failed). Its `order_id` is the span's
/// order, filled in where it has one.
fn queue_step(span: &JourneySpan) -> Option<Step> {
    let queue = span.queue.as_ref()?;
    let (start_ns, end_ns) = if span.not_delivered() {
        (span.start_ns, span.end_ns)
    } else if span.kind == "consumer" && !span.synthesized {
        let residence = queue.residence_ns?;
        (span.start_ns - residence, span.start_ns)
    } else {
        return None;
    };
    Some(Step {
        order_id: String::new(),
        span_id: format!("{}.queue", span.span_id),
        trace_id: span.trace_id.clone(),
        start_ns,
        end_ns,
        service: queue.system.clone(),
        operation: format!("{QUEUE_PREFIX}{}", queue.queue),
        kind: "internal".into(),
        status: None,
        status_at_ns: 0,
        error: span.error.clone().filter(|_| span.synthesized),
        synthesized: span.synthesized,
    })
}

/// Kept: seen within retention, or with errors and seen within error retention.
fn retained(order: &Order, before: i64, errors_before: i64) -> bool {
    order.last_seen_ns >= before || (order.errors > 0 && order.last_seen_ns >= errors_before)
}

#[cfg(test)]
mod tests {

    fn stuck_in_submitted(journeys: &Journeys) -> i64 {
        journeys
            .metrics
            .stuck
            .get_or_create(&JourneyMetrics::status("SUBMITTED"))
            .get()
    }
    use super::*;
    use crate::journey::StoreLocation;
    use prometheus_client::registry::Registry;

    const S: i64 = 1_000_000_000;

    fn span(id: &str, service: &str, name: &str, at_ns: i64, status: Option<&str>) -> JourneySpan {
        JourneySpan {
            service: service.into(),
            name: name.into(),
            kind: "server",
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: id.into(),
            start_ns: at_ns - S / 10,
            end_ns: at_ns,
            error: None,
            order_id: Some("J-1".into()),
            user_id: None,
            status: status.map(str::to_owned),
            synthesized: false,
            queue: None,
        }
    }

    fn open(path: &std::path::Path, clock: Clock) -> Journeys {
        let config: JourneyConfig = toml::from_str(
            r#"
            max_dwell = { SUBMITTED = "24h" }
            [[status]]
            status = "SUBMITTED"
            span = "POST /orders/*/submit"
            "#,
        )
        .unwrap();
        let store = Store::open(&StoreLocation::Sqlite(path.into()))
            .unwrap()
            .unwrap();
        let metrics = JourneyMetrics::register(&mut Registry::default());
        Journeys::open(config, store, metrics, clock).unwrap()
    }

    #[test]
    fn an_order_held_past_its_limit_is_stuck_once_and_survives_a_restart() {
        let dir = std::env::temp_dir();
        let db = dir.join(format!(
            "tracer-journeys-test-{}.sqlite",
            std::process::id()
        ));
        let offset = dir.join(format!("tracer-journeys-clock-{}", std::process::id()));
        let _ = std::fs::remove_file(&db);
        std::fs::write(&offset, "").unwrap();
        let clock = Clock::with_offset_file(offset.clone());
        let now = clock.now_ns();
        let mut journeys = open(&db, clock.clone());
        journeys.observe(&[
            span("a1", "shop", "POST /orders", now - 3 * S, Some("INITIATED")),
            span(
                "a2",
                "shop",
                "POST /orders/{order_id}/submit",
                now - 2 * S,
                None,
            ),
            span("a3", "crm", "publish orders", now - S, Some("SUBMITTED")),
            // Delivered twice: counted once.
            span("a3", "crm", "publish orders", now - S, Some("SUBMITTED")),
        ]);
        assert!(journeys.check().is_empty(), "not stuck yet");
        std::fs::write(&offset, "26h").unwrap();
        let stuck = journeys.check();
        assert_eq!(stuck.len(), 1);
        assert_eq!(
            stuck[0].message(),
            "stuck in SUBMITTED for 26 h, last seen by crm"
        );
        journeys.record_stuck(&stuck[0], "00f067aa0ba902b7", clock.now_ns());
        assert!(journeys.check().is_empty(), "reported once");
        assert_eq!(stuck_in_submitted(&journeys), 1);
        drop(journeys);

        let mut journeys = open(&db, clock);
        assert_eq!(journeys.order_count(), 1);
        assert!(
            journeys.check().is_empty(),
            "the report survives the restart"
        );
        assert_eq!(stuck_in_submitted(&journeys), 1);
        let (order, steps) = journeys.store.order("J-1").unwrap().unwrap();
        let statuses: Vec<&str> = order.history.iter().map(|c| c.status.as_str()).collect();
        assert_eq!(statuses, ["INITIATED", "SUBMITTED"]);
        assert_eq!(
            order.history[1].service, "shop",
            "the submit request moved it"
        );
        assert_eq!(steps.len(), 4, "three spans and the stuck report");
        assert!(steps[2].synthesized, "{steps:#?}");
        assert_eq!(
            steps[2].start_ns, steps[1].end_ns,
            "the stuck span starts when SUBMITTED began"
        );
        let _ = std::fs::remove_file(&db);
        let _ = std::fs::remove_file(&offset);
    }

    #[test]
    fn a_delivery_and_a_lost_message_become_steps_of_the_queue() {
        let queue = crate::journey::QueueView {
            system: "rabbitmq".into(),
            queue: "mes.orders".into(),
            residence_ns: Some(9 * S),
        };
        let delivered = JourneySpan {
            kind: "consumer",
            queue: Some(queue.clone()),
            ..span("c1", "mes", "deliver mes.orders", 20 * S, None)
        };
        let step = queue_step(&delivered).unwrap();
        assert_eq!(
            (
                step.service.as_str(),
                step.operation.as_str(),
                step.kind.as_str()
            ),
            ("rabbitmq", "queue mes.orders", "internal")
        );
        assert_eq!(
            (step.start_ns, step.end_ns),
            (delivered.start_ns - 9 * S, delivered.start_ns)
        );
        assert!(!step.synthesized && step.error.is_none());

        let lost = JourneySpan {
            kind: "internal",
            synthesized: true,
            error: Some("no delivery within 5 s".into()),
            queue: Some(crate::journey::QueueView {
                residence_ns: None,
                ..queue
            }),
            ..span("l1", "crm", crate::journey::NOT_DELIVERED, 20 * S, None)
        };
        let step = queue_step(&lost).unwrap();
        assert!(step.synthesized);
        assert_eq!(step.error.as_deref(), Some("no delivery within 5 s"));
        assert_eq!(step.operation, "queue mes.orders");
        let published = JourneySpan {
            kind: "producer",
            ..delivered
        };
        assert!(queue_step(&published).is_none(), "only deliveries");
    }
}
