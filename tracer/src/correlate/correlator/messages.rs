//! The messaging half of the correlator: publishes matched to deliveries by fingerprint,
//! what the broker's own sockets say about entry and exit, queue residence, and messages
//! that were never delivered.
use std::collections::VecDeque;

use opentelemetry_sdk::trace::IdGenerator;

use super::{Correlator, NodeId, ResolvedSpan};
use crate::protocols::{
    AttrValue, BrokerEvent, Exchange, ExchangeId, ExchangeKind, ExchangeStatus,
};

/// Broker-side records kept per fingerprint.
const MAX_BROKER_BACKLOG: usize = 10_000;

impl Correlator {
    /// A message entered or left the broker (seen on the broker's own sockets).
    pub fn broker(&mut self, event: BrokerEvent) {
        if event.entered {
            let entered = self.broker_entered.entry(event.fingerprint).or_default();
            entered.push_back(event.ktime_ns);
            if entered.len() > MAX_BROKER_BACKLOG {
                entered.pop_front();
            }
            return;
        }
        let Some(entered) = self
            .broker_entered
            .get_mut(&event.fingerprint)
            .and_then(VecDeque::pop_front)
        else {
            return;
        };
        let delivered = self.broker_delivered.entry(event.fingerprint).or_default();
        delivered.push_back((entered, event.ktime_ns));
        if delivered.len() > MAX_BROKER_BACKLOG {
            delivered.pop_front();
        }
        // The oldest undelivered producer of this message is delivered now.
        if let Some(producers) = self.producers_by_message.get(&event.fingerprint) {
            let nodes = &mut self.nodes;
            if let Some(id) = producers
                .iter()
                .find(|p| nodes.get(p).is_some_and(|n| !n.delivered))
                .copied()
            {
                if let Some(producer) = nodes.get_mut(&id) {
                    producer.delivered = true;
                }
            }
        }
    }

    /// Pairs a CONSUMER span with the oldest unmatched PRODUCER span of its message.
    pub(super) fn match_producer(&mut self, consumer: NodeId) {
        let Some(node) = self.nodes.get(&consumer) else {
            return;
        };
        let (Some(fingerprint), None, start) = (node.message_in, node.producer, node.start_ns)
        else {
            return;
        };
        let Some(producers) = self.producers_by_message.get_mut(&fingerprint) else {
            return;
        };
        let nodes = &self.nodes;
        let Some(index) = producers
            .iter()
            .position(|p| nodes.get(p).is_some_and(|n| n.start_ns <= start))
        else {
            return;
        };
        let producer = producers.remove(index).expect("index from position");
        if producers.is_empty() {
            self.producers_by_message.remove(&fingerprint);
        }
        if let Some(p) = self.nodes.get_mut(&producer) {
            p.delivered = true;
        }
        if let Some(c) = self.nodes.get_mut(&consumer) {
            c.producer = Some(producer);
        }
    }

    /// How long a consumed message sat in the broker: from the broker's own sockets when
    /// we saw them, else from the producer's publish to this delivery.
    pub(super) fn residence(&mut self, id: NodeId) -> Option<(u64, &'static str)> {
        let node = self.nodes.get(&id)?;
        let fingerprint = node.message_in?;
        let start = node.start_ns;
        let producer_start = node
            .producer
            .and_then(|p| self.nodes.get(&p))
            .map(|p| p.start_ns);
        if let Some(delivered) = self.broker_delivered.get_mut(&fingerprint) {
            if let Some(index) = delivered
                .iter()
                .position(|(_, left)| *left <= start + 1_000_000_000)
            {
                let (entered, left) = delivered.remove(index).expect("index from position");
                return Some((left.saturating_sub(entered), "broker"));
            }
        }
        producer_start.map(|p| (start.saturating_sub(p), "clients"))
    }

    /// Producers whose message was not delivered in time: counted, logged, and a span
    /// saying so in the producer's trace.
    pub(super) fn check_deliveries(&mut self, now_ns: u64, out: &mut Vec<ResolvedSpan>) {
        while let Some(&(deadline, id)) = self.awaiting_delivery.front() {
            if deadline > now_ns {
                break;
            }
            self.awaiting_delivery.pop_front();
            let Some(node) = self.nodes.get(&id) else {
                continue;
            };
            if node.delivered {
                continue;
            }
            let Some((connection, protocol, mut attributes)) = node.published.as_deref().cloned()
            else {
                continue;
            };
            let (producer_span, start_ns, tid) =
                (node.span_id, node.end_ns.unwrap_or(node.start_ns), node.tid);
            let node_orders = node.order_ids.to_vec();
            // The broker's own sockets took the message in (and never let it out).
            let taken_in = node.message_out.is_some_and(|fingerprint| {
                let since = node.start_ns.saturating_sub(1_000_000_000);
                self.broker_entered
                    .get(&fingerprint)
                    .is_some_and(|entered| entered.iter().any(|&at| at >= since))
            });
            let waited_s = self.stuck_after_ns as f64 / 1e9;
            let trace_id = self.trace_of(id);
            self.stats.messages_stuck += 1;
            let destination = attributes
                .iter()
                .find(|(k, _)| *k == "messaging.destination.name")
                .map(|(_, v)| match v {
                    AttrValue::Str(s) => s.to_string(),
                    AttrValue::Int(i) => i.to_string(),
                })
                .unwrap_or_default();
            // Names in logs are templated like exported names: no ids, no free text.
            let destination = crate::protocols::http::route::template_segments(&destination, '.');
            let what = if taken_in {
                "taken in by the broker and not delivered: dropped by the broker (e.g. a queue length limit) or never consumed"
            } else {
                "stuck in a queue or lost"
            };
            tracing::warn!(
                trace_id = %trace_id,
                pid = connection.id.tgid,
                "message published to {destination} was not delivered within {waited_s} s: {what}"
            );
            attributes.push(("tracer.synthesized", AttrValue::fixed("true")));
            attributes.push((
                "tracer.message.waited_ms",
                ((self.stuck_after_ns / 1_000_000) as i64).into(),
            ));
            attributes.push((
                "tracer.messaging.broker_received",
                if taken_in { "true" } else { "unknown" }.into(),
            ));
            let exchange = Exchange {
                protocol,
                id: ExchangeId::Sequence(u64::MAX),
                kind: ExchangeKind::Internal,
                name: crate::journey::NOT_DELIVERED.into(),
                start_ktime_ns: start_ns,
                end_ktime_ns: deadline.max(start_ns),
                tid,
                attributes,
                status: ExchangeStatus::Error {
                    error_type: "not_delivered".into(),
                    message: format!("no delivery within {waited_s} s: {what}"),
                },
                traceparent: None,
                record: Exchange::no_record(),
                // The producer's own order (its trace's, if it named none).
                business: node_orders
                    .first()
                    .map(|id| (crate::extract::ORDER_ID.to_owned(), id.clone()))
                    .into_iter()
                    .collect(),
                order_ids: node_orders,
            };
            out.push(ResolvedSpan {
                trace_id,
                span_id: self.ids.new_span_id(),
                parent_span_id: Some(producer_span),
                parent_is_remote: false,
                links: Vec::new(),
                order_trace: self.nodes.get(&id).is_some_and(|n| n.order_trace),
                known_ids: self.known_ids(id, trace_id),
                exchange,
                connection,
                // About the producer's message, and under it.
                parent_source: Some(super::source::MESSAGE),
                parent_ambiguous: false,
            });
        }
    }
}
