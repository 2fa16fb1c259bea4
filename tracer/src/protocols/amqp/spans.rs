//! What AMQP exchanges look like as spans: messaging semantic-convention attributes, the
//! fields business rules read, and the bookkeeping of open publishes and deliveries.
use std::collections::BTreeMap;

use amq_protocol::protocol::{basic, AMQPClass};

use super::{
    message::{Carrier, Message},
    session::ChannelState,
};
use crate::{
    capture::Direction,
    protocols::{
        identifiers::{self, Identifier},
        AttrValue, Exchange, ExchangeEvent, ExchangeId, ExchangeKind, ExchangeStart,
        ExchangeStatus,
    },
};

pub struct Open {
    pub sequence: u64,
    pub message: Message,
    pub queue: Option<String>,
    /// Set by a Return or Channel.Close before the span ends.
    pub error: Option<(String, String)>,
}

/// A delivery (Deliver or Get-Ok) starts a CONSUMER span; it ends at the client's verdict
/// on the delivery tag, or at once when the consumer does not acknowledge (no-ack).
pub fn delivered(
    state: &mut ChannelState,
    sequence: u64,
    delivery_tag: u64,
    (queue, no_ack): (String, bool),
    message: Message,
    end_ns: u64,
    out: &mut Vec<ExchangeEvent>,
) {
    out.push(ExchangeEvent::Started(start(
        sequence,
        ExchangeKind::Consumer,
        &message,
        false,
    )));
    let open = Open {
        sequence,
        message,
        queue: Some(queue).filter(|q| !q.is_empty()),
        error: None,
    };
    if no_ack {
        out.push(ExchangeEvent::Finished(finish(
            open,
            end_ns,
            ExchangeKind::Consumer,
        )));
    } else {
        state.deliveries.insert(delivery_tag, open);
    }
}

/// Methods that are followed by content frames, as the start of a message.
pub fn carried_message(method: &AMQPClass, ktime_ns: u64, tid: u32) -> Option<Message> {
    let (carrier, exchange, routing_key) = match method {
        AMQPClass::Basic(basic::AMQPMethod::Publish(p)) => {
            let carrier = Carrier::Publish {
                mandatory: p.mandatory,
            };
            (carrier, &p.exchange, &p.routing_key)
        }
        AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => (
            Carrier::Deliver {
                consumer_tag: d.consumer_tag.as_str().to_owned(),
                delivery_tag: d.delivery_tag,
            },
            &d.exchange,
            &d.routing_key,
        ),
        AMQPClass::Basic(basic::AMQPMethod::GetOk(g)) => (
            Carrier::GetOk {
                delivery_tag: g.delivery_tag,
            },
            &g.exchange,
            &g.routing_key,
        ),
        AMQPClass::Basic(basic::AMQPMethod::Return(r)) => (
            Carrier::Return {
                reply_code: r.reply_code,
                reply_text: r.reply_text.as_str().to_owned(),
            },
            &r.exchange,
            &r.routing_key,
        ),
        _ => return None,
    };
    Some(Message {
        carrier,
        exchange: exchange.as_str().to_owned(),
        routing_key: routing_key.as_str().to_owned(),
        message_id: None,
        correlation_id: None,
        headers: BTreeMap::new(),
        body_size: 0,
        body_prefix: Vec::new(),
        start_ktime_ns: ktime_ns,
        tid,
    })
}

/// Removes `tag` (or, with `multiple`, every tag up to it; 0 means all).
fn take_tags(open: &mut BTreeMap<u64, Open>, tag: u64, multiple: bool) -> Vec<Open> {
    if multiple {
        let keep = if tag == 0 {
            BTreeMap::new()
        } else {
            open.split_off(&(tag + 1))
        };
        std::mem::replace(open, keep).into_values().collect()
    } else {
        open.remove(&tag).into_iter().collect()
    }
}

pub fn start(
    sequence: u64,
    kind: ExchangeKind,
    message: &Message,
    produced: bool,
) -> ExchangeStart {
    let fingerprint = message.fingerprint();
    ExchangeStart {
        id: ExchangeId::Sequence(sequence),
        kind,
        start_ktime_ns: message.start_ktime_ns,
        tid: message.tid,
        traceparent: message.traceparent().map(str::to_owned),
        message_out: produced.then_some(fingerprint),
        message_in: (!produced).then_some(fingerprint),
        identifiers: message_identifiers(message),
    }
}

/// A message's evidence for causality: its message and correlation ids, string headers
/// (but trace context) and body prefix. A reply carries its request's message id as its
/// correlation id, so a consumer that answers is tied to the delivery it answers.
fn message_identifiers(message: &Message) -> Vec<Identifier> {
    let mut found = Vec::new();
    for id in [&message.message_id, &message.correlation_id]
        .into_iter()
        .flatten()
    {
        identifiers::collect(id.as_bytes(), &mut found);
    }
    for (name, value) in &message.headers {
        if identifiers::header_is_evidence(name) {
            identifiers::collect(value.as_bytes(), &mut found);
        }
    }
    identifiers::collect(&message.body_prefix, &mut found);
    found
}

pub fn finish(open: Open, end_ktime_ns: u64, kind: ExchangeKind) -> Exchange {
    let Open {
        sequence,
        message,
        queue,
        error,
    } = open;
    let exchange_name = if message.exchange.is_empty() {
        "amq.default"
    } else {
        message.exchange.as_str()
    };
    let (operation, operation_type, destination) = match (&message.carrier, kind) {
        (Carrier::GetOk { .. }, _) => (
            "get",
            "receive",
            queue
                .clone()
                .unwrap_or_else(|| format!("{exchange_name} {}", message.routing_key)),
        ),
        // The consumer's Basic.Consume predates the agent: name it by what is known.
        (_, ExchangeKind::Consumer) => (
            "deliver",
            "process",
            queue
                .clone()
                .unwrap_or_else(|| format!("{exchange_name} {}", message.routing_key)),
        ),
        _ => ("publish", "send", exchange_name.to_owned()),
    };
    let mut attributes: Vec<(&'static str, AttrValue)> = vec![
        ("messaging.system", AttrValue::fixed("rabbitmq")),
        ("messaging.operation.type", operation_type.into()),
        ("messaging.operation.name", operation.into()),
        ("messaging.destination.name", exchange_name.into()),
        (
            "messaging.rabbitmq.destination.routing_key",
            message.routing_key.as_str().into(),
        ),
        (
            "messaging.message.body.size",
            (message.body_size as i64).into(),
        ),
        ("network.protocol.name", AttrValue::fixed("amqp")),
        ("network.protocol.version", AttrValue::fixed("0.9.1")),
    ];
    if let Some(id) = &message.message_id {
        attributes.push(("messaging.message.id", id.as_str().into()));
    }
    if let Some(id) = &message.correlation_id {
        attributes.push(("messaging.message.conversation_id", id.as_str().into()));
    }
    match &queue {
        Some(queue) => attributes.push((
            "messaging.destination.subscription.name",
            queue.as_str().into(),
        )),
        None if kind == ExchangeKind::Consumer => {
            attributes.push(("tracer.messaging.queue_unknown", AttrValue::fixed("true")))
        }
        None => {}
    }
    if let Carrier::Deliver { delivery_tag, .. } | Carrier::GetOk { delivery_tag } =
        &message.carrier
    {
        attributes.push((
            "messaging.rabbitmq.message.delivery_tag",
            (*delivery_tag as i64).into(),
        ));
    }
    let status = match error {
        Some((error_type, message)) => ExchangeStatus::Error {
            error_type,
            message,
        },
        None => ExchangeStatus::Ok,
    };
    Exchange {
        protocol: "amqp",
        id: ExchangeId::Sequence(sequence),
        kind,
        name: format!("{operation} {destination}"),
        start_ktime_ns: message.start_ktime_ns,
        end_ktime_ns,
        tid: message.tid,
        attributes,
        status,
        traceparent: message.traceparent().map(str::to_owned),
        record: std::sync::Arc::new(super::record::AmqpRecord::from(message)),
        order_ids: Vec::new(),
        business: Vec::new(),
    }
}

/// A confirm from the broker (publishes) or a consumer's ack, nack or reject (deliveries).
pub struct Verdict {
    pub tag: u64,
    pub multiple: bool,
    /// (error.type, message) for negative verdicts.
    pub error: Option<(String, String)>,
}

/// Publisher confirms (from the broker) end PRODUCER spans; the consumer's ack, nack and
/// reject end CONSUMER spans. Anything else is not a verdict.
pub fn verdict(method: &AMQPClass, direction: Direction) -> Option<(ExchangeKind, Verdict)> {
    use basic::AMQPMethod::{Ack, Nack, Reject};
    let settles = |tag, multiple, error| Verdict {
        tag,
        multiple,
        error,
    };
    Some(match (method, direction) {
        (AMQPClass::Basic(Ack(a)), Direction::Ingress) => (
            ExchangeKind::Producer,
            settles(a.delivery_tag, a.multiple, None),
        ),
        (AMQPClass::Basic(Nack(n)), Direction::Ingress) => {
            let error = ("nack".into(), "the broker nacked the message".into());
            (
                ExchangeKind::Producer,
                settles(n.delivery_tag, n.multiple, Some(error)),
            )
        }
        (AMQPClass::Basic(Ack(a)), Direction::Egress) => (
            ExchangeKind::Consumer,
            settles(a.delivery_tag, a.multiple, None),
        ),
        (AMQPClass::Basic(Nack(n)), Direction::Egress) => {
            let error = (
                "nack".into(),
                format!("nacked by the consumer (requeue: {})", n.requeue),
            );
            (
                ExchangeKind::Consumer,
                settles(n.delivery_tag, n.multiple, Some(error)),
            )
        }
        (AMQPClass::Basic(Reject(r)), Direction::Egress) => {
            let error = (
                "reject".into(),
                format!("rejected by the consumer (requeue: {})", r.requeue),
            );
            (
                ExchangeKind::Consumer,
                settles(r.delivery_tag, false, Some(error)),
            )
        }
        _ => return None,
    })
}

/// Ends the spans a verdict covers.
pub fn settle(
    open: &mut BTreeMap<u64, Open>,
    verdict: Verdict,
    kind: ExchangeKind,
    ktime_ns: u64,
    out: &mut Vec<ExchangeEvent>,
) {
    for mut span in take_tags(open, verdict.tag, verdict.multiple) {
        if let Some(error) = &verdict.error {
            span.error = Some(error.clone());
        }
        out.push(ExchangeEvent::Finished(finish(span, ktime_ns, kind)));
    }
}
