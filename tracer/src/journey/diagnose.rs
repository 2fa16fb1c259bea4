//! Where an order went wrong, from its journey alone: the slowest step over its SLA, else
//! the deepest failed step, else the status it is stuck in and who saw it last.
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
    // 3. Stuck: where the order stopped moving. Since it entered its status, the last
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
