//! The business metrics the company asked for, in Prometheus/OpenMetrics form: order lead
//! time, time per status, stuck orders, errors by service and operation, orders reaching
//! each status (conversion), and SLA compliance.
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub service: String,
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlaLabels {
    pub sla: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetricLabel {
    pub metric: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlaLabel {
    pub sla: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

const MINUTE: f64 = 60.0;
const HOUR: f64 = 3600.0;
const DAY: f64 = 86_400.0;

fn lead_time_histogram() -> Histogram {
    Histogram::new([
        MINUTE,
        10.0 * MINUTE,
        HOUR,
        6.0 * HOUR,
        DAY,
        3.0 * DAY,
        7.0 * DAY,
        14.0 * DAY,
        21.0 * DAY,
        30.0 * DAY,
        60.0 * DAY,
        90.0 * DAY,
    ])
}

fn dwell_histogram() -> Histogram {
    Histogram::new([
        1.0,
        10.0,
        MINUTE,
        5.0 * MINUTE,
        10.0 * MINUTE,
        30.0 * MINUTE,
        HOUR,
        6.0 * HOUR,
        DAY,
        3.0 * DAY,
        7.0 * DAY,
    ])
}

#[derive(Clone)]
pub struct JourneyMetrics {
    pub lead_time: Histogram,
    pub dwell: Histograms<StatusLabel>,
    pub stuck: Family<StatusLabel, Gauge>,
    pub stuck_reported: Family<StatusLabel, Counter>,
    pub errors: Family<OperationLabels, Counter>,
    pub orders_seen: Counter,
    pub reached: Family<StatusLabel, Counter>,
    pub sla: Family<SlaLabels, Counter>,
    pub sla_ratio: Family<SlaLabel, Gauge<f64, AtomicU64>>,
    pub spans_dropped: Counter,
    pub store_errors: Counter,
    pub labels_capped: Family<MetricLabel, Counter>,
}

impl JourneyMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            lead_time: lead_time_histogram(),
            dwell: Family::new_with_constructor(dwell_histogram),
            stuck: Family::default(),
            stuck_reported: Family::default(),
            errors: Family::default(),
            orders_seen: Counter::default(),
            reached: Family::default(),
            sla: Family::default(),
            sla_ratio: Family::default(),
            spans_dropped: Counter::default(),
            store_errors: Counter::default(),
            labels_capped: Family::default(),
        };
        let r = registry;
        r.register(
            "tracer_order_lead_time_seconds",
            "Time from an order's first sighting to its final status",
            metrics.lead_time.clone(),
        );
        r.register(
            "tracer_order_status_dwell_seconds",
            "Time orders spent in a status before moving on",
            metrics.dwell.clone(),
        );
        r.register(
            "tracer_orders_stuck",
            "Orders now in a status longer than its configured maximum",
            metrics.stuck.clone(),
        );
        r.register(
            "tracer_orders_stuck_reported",
            "Orders reported stuck (log line and synthesized span), by status",
            metrics.stuck_reported.clone(),
        );
        r.register(
            "tracer_span_errors",
            "Failed operations, by service and operation",
            metrics.errors.clone(),
        );
        r.register(
            "tracer_orders_seen",
            "Orders seen for the first time",
            metrics.orders_seen.clone(),
        );
        r.register(
            "tracer_orders_reached_status",
            "Orders that reached a status (conversion: SUBMITTED over seen)",
            metrics.reached.clone(),
        );
        r.register(
            "tracer_sla_operations",
            "Operations with an SLA, by outcome (met or breached)",
            metrics.sla.clone(),
        );
        r.register(
            "tracer_sla_ratio",
            "Share of operations with an SLA that met it",
            metrics.sla_ratio.clone(),
        );
        r.register(
            "tracer_journey_spans_dropped",
            "Spans the journey could not take (queue full)",
            metrics.spans_dropped.clone(),
        );
        r.register(
            "tracer_journey_store_errors",
            "Failed writes to the journey store",
            metrics.store_errors.clone(),
        );
        r.register(
            "tracer_metric_labels_capped",
            "Label values replaced by `other` (a status the journey config does not name, or operations beyond the cap)",
            metrics.labels_capped.clone(),
        );
        for metric in ["status", "operation"] {
            let _ = metrics.labels_capped.get_or_create(&MetricLabel { metric });
        }
        metrics
    }

    pub fn label_capped(&self, metric: &'static str) {
        self.labels_capped
            .get_or_create(&MetricLabel { metric })
            .inc();
    }

    pub fn capped(&self, metric: &'static str) -> u64 {
        self.labels_capped
            .get_or_create(&MetricLabel { metric })
            .get()
    }

    pub fn status(status: &str) -> StatusLabel {
        StatusLabel {
            status: status.to_owned(),
        }
    }

    /// Counts one operation against its SLA and updates the ratio.
    pub fn sla_outcome(&self, sla: &str, met: bool) {
        let label = |outcome| SlaLabels {
            sla: sla.to_owned(),
            outcome,
        };
        self.sla
            .get_or_create(&label(if met { "met" } else { "breached" }))
            .inc();
        let met_count = self.sla.get_or_create(&label("met")).get() as f64;
        let breached = self.sla.get_or_create(&label("breached")).get() as f64;
        self.sla_ratio
            .get_or_create(&SlaLabel {
                sla: sla.to_owned(),
            })
            .set(met_count / (met_count + breached));
    }
}
