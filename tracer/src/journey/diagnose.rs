//! Where an order went wrong, from its journey alone: the slowest step over its SLA (a
//! queue's residence included), else the deepest failed step, else a message about it
//! that never left its queue, else a status recorded without the step it follows from,
//! else the status it is stuck in and who saw it last.
use serde::Serialize;

use super::{human, view::stuck_limit, Order, Step};
use crate::config::{glob_match, JourneyConfig};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// A step took longer than its SLA.
    Slow,
    /// A step failed.
    Failed,
    /// A message about the order was published and never left its queue.
    Lost,
    /// One system recorded a status that what the others did does not support.
    OutOfSync,
    /// The order has been in its status longer than allowed.
    Stuck,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    pub problem: Problem,
    /// The service at fault and the step where it showed.
    pub service: String,
    pub operation: String,
    pub detail: String,
}

impl std::fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.problem {
            Problem::Slow => "slow",
            Problem::Failed => "failed",
            Problem::Lost => "lost",
            Problem::OutOfSync => "out of sync",
            Problem::Stuck => "stuck",
        };
        write!(
            f,
            "{what} at {}: {} — {}",
            self.service, self.operation, self.detail
        )
    }
}

fn duration(step: &Step) -> i64 {
    step.end_ns - step.start_ns
}

/// The order's problem, or `None` when nothing is wrong (yet).
pub fn diagnose(
    order: &Order,
    steps: &[Step],
    config: &JourneyConfig,
    now_ns: i64,
) -> Option<Diagnosis> {
    let observed = || steps.iter().filter(|s| !s.synthesized);
    // 1. The step furthest over its SLA: where the time went.
    let slow = observed()
        .filter_map(|step| {
            let sla = config.slas.iter().find(|sla| {
                glob_match(&sla.span, &step.operation)
                    && sla.kind.as_deref().is_none_or(|k| k == step.kind)
            })?;
            let within = sla.within.as_nanos() as i64;
            (duration(step) > within).then_some((
                duration(step) as f64 / within as f64,
                step,
                within,
            ))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, step, within)) = slow {
        return Some(Diagnosis {
            problem: Problem::Slow,
            service: step.service.clone(),
            operation: step.operation.clone(),
            detail: format!("took {}, SLA {}", human(duration(step)), human(within)),
        });
    }
    // 2. The failed step that started last: in a chain of calls, the deepest one, whose
    // failure the others only passed on.
    let failed = observed()
        .filter(|s| s.error.is_some())
        .max_by_key(|s| (s.start_ns, matches!(s.kind.as_str(), "server" | "consumer")));
    if let Some(step) = failed {
        return Some(Diagnosis {
            problem: Problem::Failed,
            service: step.service.clone(),
            operation: step.operation.clone(),
            detail: step.error.clone().unwrap_or_default(),
        });
    }
    // 3. Lost: a message about the order that never left its queue (the broker's view,
    // or no delivery seen), unless a later delivery from that queue was seen after all.
    let lost = steps
        .iter()
        .filter(|s| s.synthesized && is_queue_step(s) && s.error.is_some())
        .filter(|lost| {
            !observed().any(|s| s.operation == lost.operation && s.end_ns >= lost.start_ns)
        })
        .max_by_key(|s| s.start_ns);
    if let Some(step) = lost {
        return Some(Diagnosis {
            problem: Problem::Lost,
            service: step.service.clone(),
            operation: step.operation.clone(),
            detail: step.error.clone().unwrap_or_default(),
        });
    }
    // 4. Out of sync: a status one system recorded without the step it follows from.
    if let Some(diagnosis) = out_of_sync(order, steps, config, now_ns) {
        return Some(diagnosis);
    }
    // 5. Stuck: where the order stopped moving. Since it entered its status, the last
    // system that took it off a queue (a consumer), else the last that served a request
    // about it, else whoever saw it last: callers asking about an order (a price
    // request, a status page) do not hold it.
    let limit = stuck_limit(order, config, now_ns)?;
    let (status, dwell) = order.dwell_ns(now_ns)?;
    let entered = order.status().map_or(0, |c| c.at_ns);
    let since: Vec<&Step> = observed().filter(|s| s.end_ns >= entered).collect();
    let last_of = |kind: &str| {
        since
            .iter()
            .filter(|s| s.kind == kind)
            .max_by_key(|s| s.end_ns)
            .copied()
    };
    let holder = last_of("consumer")
        .or_else(|| last_of("server"))
        .or_else(|| since.iter().max_by_key(|s| s.end_ns).copied());
    Some(Diagnosis {
        problem: Problem::Stuck,
        service: holder.map_or_else(|| order.last_service.clone(), |s| s.service.clone()),
        operation: holder.map(|s| s.operation.clone()).unwrap_or_default(),
        detail: format!(
            "in {status} for {} (limit {}), nothing since",
            human(dwell),
            human(limit.as_nanos() as i64)
        ),
    })
}

/// The step a message spent in (or was lost from) its queue: `queue mes.orders`.
pub fn is_queue_step(step: &Step) -> bool {
    step.kind == "internal" && step.operation.starts_with(QUEUE_PREFIX)
}

pub const QUEUE_PREFIX: &str = "queue ";

fn out_of_sync(
    order: &Order,
    steps: &[Step],
    config: &JourneyConfig,
    now_ns: i64,
) -> Option<Diagnosis> {
    for change in &order.history {
        for rule in config
            .consistency
            .iter()
            .filter(|r| r.status == change.status)
        {
            if now_ns - change.at_ns <= rule.grace.as_nanos() as i64 {
                continue;
            }
            let supported = steps.iter().any(|s| {
                !s.synthesized
                    && glob_match(&rule.after, &s.operation)
                    && rule.service.as_deref().is_none_or(|v| v == s.service)
                    && rule.kind.as_deref().is_none_or(|k| k == s.kind)
                    && s.start_ns <= change.at_ns
            });
            if supported {
                continue;
            }
            let recorded_by = steps
                .iter()
                .filter(|s| {
                    s.status.as_deref() == Some(change.status.as_str())
                        && s.service == change.service
                })
                .min_by_key(|s| s.status_at_ns);
            return Some(Diagnosis {
                problem: Problem::OutOfSync,
                service: change.service.clone(),
                operation: recorded_by.map(|s| s.operation.clone()).unwrap_or_default(),
                detail: format!(
                    "{} recorded {}, but no {} was seen before it: the systems disagree about this order",
                    change.service, change.status, rule.after
                ),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::SlaRule;

    const S: i64 = 1_000_000_000;

    fn step(
        service: &str,
        operation: &str,
        kind: &str,
        start_s: i64,
        took_s: f64,
        error: Option<&str>,
    ) -> Step {
        Step {
            order_id: "D-1".into(),
            span_id: format!("{service}{operation}{start_s}"),
            trace_id: "t".into(),
            start_ns: start_s * S,
            end_ns: start_s * S + (took_s * 1e9) as i64,
            service: service.into(),
            operation: operation.into(),
            kind: kind.into(),
            status: None,
            status_at_ns: 0,
            error: error.map(str::to_owned),
            synthesized: false,
        }
    }

    fn order(last_service: &str, status: &str, at_s: i64) -> Order {
        let first = crate::journey::JourneySpan {
            service: last_service.into(),
            name: String::new(),
            kind: "server",
            trace_id: "t".into(),
            span_id: "s".into(),
            start_ns: 0,
            end_ns: at_s * S,
            error: None,
            order_id: None,
            user_id: None,
            status: None,
            synthesized: false,
            queue: None,
        };
        let mut order = Order::new("D-1", &first);
        order.apply(&first, Some(status), "SHIPPED");
        order
    }

    fn config() -> JourneyConfig {
        let mut max_dwell = JourneyConfig::default().max_dwell;
        max_dwell.insert("SUBMITTED".into(), Duration::from_secs(20));
        JourneyConfig {
            slas: vec![SlaRule {
                name: "storage".into(),
                span: "PUT /objects/*".into(),
                kind: Some("server".into()),
                within: Duration::from_secs(2),
            }],
            max_dwell,
            ..JourneyConfig::default()
        }
    }

    #[test]
    fn a_slow_server_is_blamed_before_the_callers_that_gave_up_on_it() {
        let steps = [
            step(
                "customer",
                "POST /orders/{id}/files",
                "client",
                1,
                3.0,
                Some("504"),
            ),
            step(
                "shop-api",
                "POST /orders/{id}/files",
                "server",
                1,
                3.0,
                Some("504"),
            ),
            step(
                "shop-api",
                "PUT /objects/{key}",
                "client",
                1,
                3.0,
                Some("no_response"),
            ),
            step("storage", "PUT /objects/{key}", "server", 1, 6.0, None),
        ];
        let d = diagnose(
            &order("shop-api", "INITIATED", 4),
            &steps,
            &config(),
            10 * S,
        )
        .unwrap();
        assert_eq!(
            (&d.problem, d.service.as_str()),
            (&Problem::Slow, "storage")
        );
        assert_eq!(
            d.to_string(),
            "slow at storage: PUT /objects/{key} — took 6 s, SLA 2 s"
        );
    }

    #[test]
    fn the_deepest_failure_is_blamed_and_a_quiet_order_past_its_limit_is_stuck() {
        let steps = [
            step(
                "shop-api",
                "POST /orders/{id}/submit",
                "server",
                1,
                0.1,
                Some("500"),
            ),
            step(
                "shop-api",
                "UPDATE orders",
                "client",
                1,
                0.01,
                Some("23514"),
            ),
        ];
        let steps = [
            steps[0].clone(),
            Step {
                start_ns: steps[0].start_ns + 1000,
                ..steps[1].clone()
            },
        ];
        let d = diagnose(
            &order("shop-api", "FILE_UPLOADED", 1),
            &steps,
            &config(),
            10 * S,
        )
        .unwrap();
        assert_eq!(
            (d.problem, d.service.as_str(), d.operation.as_str()),
            (Problem::Failed, "shop-api", "UPDATE orders")
        );

        let steps = [
            step("mes", "deliver mes.orders", "consumer", 2, 0.01, None),
            // A price request about the order, answered later: not where it is stuck.
            step(
                "b2b-api",
                "POST /b2b/{order_id}/calculate",
                "server",
                2,
                0.3,
                None,
            ),
            step(
                "customers",
                "POST /b2b/{order_id}/calculate",
                "client",
                2,
                0.31,
                None,
            ),
        ];
        let order = order("mes", "SUBMITTED", 1);
        assert_eq!(
            diagnose(&order, &steps, &config(), 5 * S),
            None,
            "within its limit"
        );
        let d = diagnose(&order, &steps, &config(), 30 * S).unwrap();
        assert_eq!(
            (d.problem, d.service.as_str(), d.operation.as_str()),
            (Problem::Stuck, "mes", "deliver mes.orders")
        );
        assert!(
            d.detail.starts_with("in SUBMITTED for 29 s"),
            "{}",
            d.detail
        );
    }
}

#[cfg(test)]
mod messaging_tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        config::{ConsistencyRule, SlaRule},
        journey::JourneySpan,
    };

    const S: i64 = 1_000_000_000;

    fn step(service: &str, operation: &str, kind: &str, start_s: i64, end_s: i64) -> Step {
        Step {
            order_id: "D-1".into(),
            span_id: format!("{service}{operation}{start_s}"),
            trace_id: "t".into(),
            start_ns: start_s * S,
            end_ns: end_s * S,
            service: service.into(),
            operation: operation.into(),
            kind: kind.into(),
            status: None,
            status_at_ns: 0,
            error: None,
            synthesized: false,
        }
    }

    /// An order moved through `statuses` by (service, status, at second).
    fn order(statuses: &[(&str, &str, i64)]) -> Order {
        let mut order = None::<Order>;
        for (service, status, at_s) in statuses {
            let span = JourneySpan {
                service: (*service).into(),
                kind: "producer",
                end_ns: at_s * S,
                ..JourneySpan::default()
            };
            order.get_or_insert_with(|| Order::new("D-1", &span)).apply(
                &span,
                Some(status),
                "SHIPPED",
            );
        }
        order.unwrap()
    }

    fn config() -> JourneyConfig {
        JourneyConfig {
            slas: vec![SlaRule {
                name: "mes_queue".into(),
                span: "queue mes.orders".into(),
                kind: None,
                within: Duration::from_secs(6),
            }],
            consistency: vec![ConsistencyRule {
                status: "PRICE_CALCULATED".into(),
                after: "deliver crm.prices".into(),
                service: None,
                kind: Some("consumer".into()),
                grace: Duration::from_secs(5),
            }],
            ..JourneyConfig::default()
        }
    }

    #[test]
    fn a_long_wait_in_the_queue_is_the_slow_step_of_the_broker() {
        let steps = [
            step("crm", "publish amq.default", "producer", 1, 1),
            step("rabbitmq", "queue mes.orders", "internal", 1, 13),
            step("mes", "deliver mes.orders", "consumer", 13, 14),
        ];
        let order = order(&[("shop-api", "SUBMITTED", 1)]);
        let d = diagnose(&order, &steps, &config(), 20 * S).unwrap();
        assert_eq!(
            (d.problem, d.service.as_str(), d.operation.as_str()),
            (Problem::Slow, "rabbitmq", "queue mes.orders")
        );
        assert_eq!(d.detail, "took 12 s, SLA 6 s");
    }

    #[test]
    fn a_message_that_never_left_its_queue_is_lost_unless_delivered_later() {
        let lost = Step {
            error: Some("no delivery within 5 s: taken in by the broker …".into()),
            synthesized: true,
            ..step("rabbitmq", "queue mes.orders", "internal", 1, 6)
        };
        let published = step("crm", "publish amq.default", "producer", 1, 1);
        let order = order(&[("shop-api", "SUBMITTED", 1)]);
        let d = diagnose(&order, &[published.clone(), lost.clone()], &config(), 7 * S).unwrap();
        assert_eq!(
            (d.problem, d.service.as_str(), d.operation.as_str()),
            (Problem::Lost, "rabbitmq", "queue mes.orders")
        );
        assert!(d.detail.contains("taken in by the broker"), "{}", d.detail);

        // Delivered after the report after all: late (within its SLA here), not lost.
        let late = step("rabbitmq", "queue mes.orders", "internal", 1, 7);
        assert_eq!(
            diagnose(&order, &[published, lost, late], &config(), 8 * S),
            None
        );
    }

    #[test]
    fn a_status_without_the_step_it_follows_from_is_out_of_sync_after_the_grace() {
        let mut recorded = step("crm", "publish shop.events", "producer", 3, 3);
        recorded.status = Some("PRICE_CALCULATED".into());
        recorded.status_at_ns = 3 * S;
        let order = order(&[("shop-api", "SUBMITTED", 1), ("crm", "PRICE_CALCULATED", 3)]);
        assert_eq!(
            diagnose(&order, std::slice::from_ref(&recorded), &config(), 6 * S),
            None,
            "within the grace: the MES's spans may still come"
        );
        let d = diagnose(&order, std::slice::from_ref(&recorded), &config(), 9 * S).unwrap();
        assert_eq!(
            (&d.problem, d.service.as_str(), d.operation.as_str()),
            (&Problem::OutOfSync, "crm", "publish shop.events")
        );
        assert_eq!(
            d.to_string(),
            "out of sync at crm: publish shop.events — crm recorded PRICE_CALCULATED, but no deliver crm.prices was seen before it: the systems disagree about this order"
        );
        // With the price delivered first, the status is supported.
        let delivered = step("crm", "deliver crm.prices", "consumer", 2, 3);
        assert_eq!(
            diagnose(&order, &[delivered, recorded], &config(), 9 * S),
            None
        );
    }
}
