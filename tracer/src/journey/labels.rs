//! Metric label values come from traffic (span names, status values), so they are
//! bounded: a status is a label only if the journey config names it, a (service,
//! operation) pair only up to a cap; the rest read `other`, and each capping is counted
//! (`tracer_metric_labels_capped_total{metric}`) so a flood of new values is visible.
use std::collections::{BTreeSet, HashSet};

use super::metrics::{JourneyMetrics, OperationLabels, StatusLabel};
use crate::config::JourneyConfig;

/// Distinct (service, operation) pairs with their own series.
pub const MAX_OPERATIONS: usize = 500;
pub const OTHER: &str = "other";

pub struct LabelBudget {
    statuses: BTreeSet<String>,
    operations: HashSet<(String, String)>,
}

impl LabelBudget {
    /// Statuses the config names: its list, limits, status rules and the final status.
    pub fn new(config: &JourneyConfig) -> Self {
        let mut statuses: BTreeSet<String> = config.statuses.iter().cloned().collect();
        statuses.extend(config.max_dwell.keys().cloned());
        statuses.extend(config.status_rules.iter().map(|r| r.status.clone()));
        statuses.insert(config.final_status.clone());
        Self {
            statuses,
            operations: HashSet::new(),
        }
    }

    pub fn status(&self, status: &str, metrics: &JourneyMetrics) -> StatusLabel {
        if self.statuses.contains(status) {
            JourneyMetrics::status(status)
        } else {
            metrics.label_capped("status");
            JourneyMetrics::status(OTHER)
        }
    }

    pub fn operation(
        &mut self,
        service: &str,
        operation: &str,
        metrics: &JourneyMetrics,
    ) -> OperationLabels {
        let pair = (service.to_owned(), operation.to_owned());
        if self.operations.contains(&pair) || self.operations.len() < MAX_OPERATIONS {
            self.operations.insert(pair.clone());
            return OperationLabels {
                service: pair.0,
                operation: pair.1,
            };
        }
        metrics.label_capped("operation");
        OperationLabels {
            service: OTHER.into(),
            operation: OTHER.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_statuses_and_operations_beyond_the_cap_read_other() {
        let config: JourneyConfig = toml::from_str("max_dwell = { SUBMITTED = \"24h\" }").unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = JourneyMetrics::register(&mut registry);
        let mut budget = LabelBudget::new(&config);
        assert_eq!(budget.status("SUBMITTED", &metrics).status, "SUBMITTED");
        assert_eq!(budget.status("SHIPPED", &metrics).status, "SHIPPED");
        assert_eq!(budget.status("INITIATED", &metrics).status, "INITIATED");
        assert_eq!(budget.status("anna@example.com", &metrics).status, OTHER);
        for i in 0..MAX_OPERATIONS {
            budget.operation("shop", &format!("GET /{i}"), &metrics);
        }
        assert_eq!(
            budget.operation("shop", "GET /0", &metrics).operation,
            "GET /0"
        );
        assert_eq!(
            budget.operation("shop", "GET /new", &metrics).operation,
            OTHER
        );
        assert_eq!(metrics.capped("status"), 1);
        assert_eq!(metrics.capped("operation"), 1);
    }
}
