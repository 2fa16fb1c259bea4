//! One order's journey: when it was first and last seen, its status history, the
//! services that touched it, its errors, and the last span that named it.
use std::collections::BTreeSet;

use super::JourneySpan;

/// The order entered `status` at `at_ns` (Unix ns, its first sighting), set by `service`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StatusChange {
    pub status: String,
    pub at_ns: i64,
    pub service: String,
    /// How much the side that `service` was on says it set the status
    /// ([`StatusChange::setter_weight`]): a stronger side, when traced, replaces it.
    #[serde(skip)]
    pub weight: u8,
}

impl StatusChange {
    /// Who set a status is the side that answered or wrote the exchange (SERVER, PRODUCER),
    /// even when the other side's read came microseconds earlier; a CONSUMER (it read the
    /// status in a message someone else wrote) only while no producer of it is known; a
    /// CLIENT (it only asked) only while no other side is. The time stays the first
    /// sighting.
    pub fn seen(&mut self, at_ns: i64, service: &str, kind: &str) {
        let weight = Self::setter_weight(kind);
        if weight > self.weight || (weight == self.weight && at_ns < self.at_ns) {
            self.service = service.to_owned();
            self.weight = weight;
        }
        self.at_ns = self.at_ns.min(at_ns);
    }

    pub fn setter_weight(kind: &str) -> u8 {
        match kind {
            "client" => 0,
            "consumer" => 1,
            _ => 2,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Order {
    pub id: String,
    pub first_seen_ns: i64,
    pub last_seen_ns: i64,
    pub last_service: String,
    pub last_trace_id: String,
    pub last_span_id: String,
    pub errors: i64,
    pub user_id: Option<String>,
    /// The status it was reported stuck in, until it moves on.
    pub stuck_status: Option<String>,
    /// In time order; consecutive entries differ in status.
    pub history: Vec<StatusChange>,
    pub services: BTreeSet<String>,
    /// Timeline steps stored for it.
    pub steps: i64,
}

/// What one span changed, for the metrics.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    pub new_order: bool,
    /// The order entered this status for the first time.
    pub reached: Option<String>,
    /// It left this status after this long (ns).
    pub left: Option<(String, i64)>,
    /// It reached the final status; lead time (ns) since first seen.
    pub lead_time_ns: Option<i64>,
}

impl Order {
    pub fn new(id: &str, span: &JourneySpan) -> Self {
        Self {
            id: id.to_owned(),
            first_seen_ns: span.start_ns,
            last_seen_ns: span.end_ns,
            last_service: span.service.clone(),
            last_trace_id: span.trace_id.clone(),
            last_span_id: span.span_id.clone(),
            errors: 0,
            user_id: None,
            stuck_status: None,
            history: Vec::new(),
            services: BTreeSet::new(),
            steps: 0,
        }
    }

    pub fn status(&self) -> Option<&StatusChange> {
        self.history.last()
    }

    /// Adds one span; `status` is the status it moves the order to, if any. Spans may
    /// arrive out of order (several agents): a late one enters the history at its place
    /// and moves the current status only if it is the latest.
    pub fn apply(
        &mut self,
        span: &JourneySpan,
        status: Option<&str>,
        final_status: &str,
    ) -> Applied {
        self.apply_at(span, status.map(|s| (s, span.end_ns)), final_status)
    }

    /// As [`Order::apply`], with the time the status was entered (the span's start or end).
    pub fn apply_at(
        &mut self,
        span: &JourneySpan,
        status: Option<(&str, i64)>,
        final_status: &str,
    ) -> Applied {
        let mut applied = Applied::default();
        self.first_seen_ns = self.first_seen_ns.min(span.start_ns);
        if span.end_ns >= self.last_seen_ns {
            self.last_seen_ns = span.end_ns;
            self.last_service = span.service.clone();
            self.last_trace_id = span.trace_id.clone();
            self.last_span_id = span.span_id.clone();
        }
        self.services.insert(span.service.clone());
        if span.error.is_some() {
            self.errors += 1;
        }
        if let Some(user) = &span.user_id {
            self.user_id = Some(user.clone());
        }
        let Some((status, at)) = status else {
            return applied;
        };
        let position = self.history.partition_point(|c| c.at_ns <= at);
        if let Some(before) = position.checked_sub(1).map(|i| &mut self.history[i]) {
            if before.status == status {
                before.seen(at, &span.service, span.kind);
                return applied;
            }
        }
        if !self.history.iter().any(|c| c.status == status) {
            applied.reached = Some(status.to_owned());
            if status == final_status {
                applied.lead_time_ns = Some(at - self.first_seen_ns);
            }
        }
        let change = StatusChange {
            status: status.to_owned(),
            at_ns: at,
            service: span.service.clone(),
            weight: StatusChange::setter_weight(span.kind),
        };
        if position == self.history.len() {
            if let Some(previous) = self.history.last() {
                applied.left = Some((previous.status.clone(), at - previous.at_ns));
            }
            self.stuck_status = None;
        } else if self.history[position].status == status {
            // The same status was already known from a later span: it started earlier.
            self.history[position].seen(at, &span.service, span.kind);
            return applied;
        }
        self.history.insert(position, change);
        applied
    }

    /// How long the order has been in its current status at `now_ns`.
    pub fn dwell_ns(&self, now_ns: i64) -> Option<(&str, i64)> {
        self.status().map(|c| (c.status.as_str(), now_ns - c.at_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(service: &str, at_s: i64, error: bool) -> JourneySpan {
        JourneySpan {
            service: service.into(),
            name: "POST /orders".into(),
            kind: "server",
            trace_id: "t".into(),
            span_id: format!("s{at_s}"),
            start_ns: at_s * 1_000_000_000 - 1,
            end_ns: at_s * 1_000_000_000,
            error: error.then(|| "boom".into()),
            order_id: Some("A-1".into()),
            user_id: None,
            status: None,
            synthesized: false,
            queue: None,
        }
    }

    const S: i64 = 1_000_000_000;

    #[test]
    fn statuses_move_forward_and_report_dwell_and_lead_time() {
        let first = span("shop", 10, false);
        let mut order = Order::new("A-1", &first);
        let a = order.apply(&first, Some("INITIATED"), "SHIPPED");
        assert_eq!(a.reached.as_deref(), Some("INITIATED"));
        assert_eq!(a.left, None);
        // Seen again in the same status: nothing new.
        assert_eq!(
            order.apply(&span("crm", 12, false), Some("INITIATED"), "SHIPPED"),
            Applied::default()
        );
        let a = order.apply(&span("crm", 15, true), Some("SUBMITTED"), "SHIPPED");
        assert_eq!(a.left, Some(("INITIATED".into(), 5 * S)));
        let a = order.apply(&span("mes", 40, false), Some("SHIPPED"), "SHIPPED");
        assert_eq!(a.lead_time_ns, Some(30 * S + 1));
        assert_eq!(order.status().unwrap().status, "SHIPPED");
        assert_eq!(order.errors, 1);
        assert_eq!(order.last_service, "mes");
        assert_eq!(order.services.len(), 3);
    }

    #[test]
    fn a_late_span_takes_its_place_in_history() {
        let submitted = span("crm", 20, false);
        let mut order = Order::new("A-1", &submitted);
        order.apply(&submitted, Some("SUBMITTED"), "SHIPPED");
        // Another agent's older span arrives later.
        let a = order.apply(&span("shop", 10, false), Some("INITIATED"), "SHIPPED");
        assert_eq!(a.reached.as_deref(), Some("INITIATED"));
        assert_eq!(a.left, None);
        let statuses: Vec<_> = order.history.iter().map(|c| c.status.as_str()).collect();
        assert_eq!(statuses, ["INITIATED", "SUBMITTED"]);
        assert_eq!(order.status().unwrap().status, "SUBMITTED");
        assert_eq!(order.last_service, "crm");
        assert_eq!(order.first_seen_ns, 10 * S - 1);
        assert_eq!(order.dwell_ns(26 * S), Some(("SUBMITTED", 6 * S)));
        // The same status seen earlier by another service: that service set it.
        order.apply(&span("mes", 19, false), Some("SUBMITTED"), "SHIPPED");
        let submitted = order.status().unwrap();
        assert_eq!(
            (submitted.at_ns, submitted.service.as_str()),
            (19 * S, "mes")
        );
    }

    #[test]
    fn the_answering_side_sets_a_status_even_when_its_client_read_it_first() {
        let customer = JourneySpan {
            kind: "client",
            ..span("customer", 20, false)
        };
        let mut order = Order::new("A-1", &customer);
        order.apply(&customer, Some("SUBMITTED"), "SHIPPED");
        // The server's write ended a moment after the client's read returned.
        order.apply_at(
            &span("crm", 21, false),
            Some(("SUBMITTED", 20 * S + 5)),
            "SHIPPED",
        );
        let submitted = order.status().unwrap();
        assert_eq!(
            (submitted.at_ns, submitted.service.as_str()),
            (20 * S, "crm")
        );
        // A later client sighting does not take it back.
        let late_client = JourneySpan {
            kind: "client",
            ..span("customer", 22, false)
        };
        order.apply(&late_client, Some("SUBMITTED"), "SHIPPED");
        assert_eq!(order.status().unwrap().service, "crm");
        assert_eq!(order.history.len(), 1);
    }

    #[test]
    fn a_status_in_a_message_was_set_by_its_producer_not_its_reader() {
        // The reader's acknowledgement ended before the writer's publish confirm came.
        let reader = JourneySpan {
            kind: "consumer",
            ..span("shop-api", 30, false)
        };
        let mut order = Order::new("A-2", &reader);
        order.apply(&reader, Some("PRICE_CALCULATED"), "SHIPPED");
        let writer = JourneySpan {
            kind: "producer",
            ..span("crm", 31, false)
        };
        order.apply(&writer, Some("PRICE_CALCULATED"), "SHIPPED");
        let priced = order.status().unwrap();
        assert_eq!((priced.at_ns, priced.service.as_str()), (30 * S, "crm"));
        order.apply(&reader, Some("PRICE_CALCULATED"), "SHIPPED");
        assert_eq!(order.status().unwrap().service, "crm", "not taken back");
    }
}
