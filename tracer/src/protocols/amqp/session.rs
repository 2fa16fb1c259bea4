//! One AMQP connection. On a client (a process that connected to the broker): PRODUCER
//! spans from publish to the broker's confirm, CONSUMER spans from delivery to the
//! client's ack/nack/reject. On the broker's own sockets: when each message entered and
//! left the broker, for queue residence and stuck-message detection.
use std::collections::{BTreeMap, HashMap, VecDeque};

use amq_protocol::{
    frame::AMQPFrame,
    protocol::{basic, channel, confirm, AMQPClass},
};

use super::{
    frames::{FrameReader, GapOutcome, Read, TimedFrame},
    message::{Assembler, Carrier, Message},
};
use crate::{
    capture::{Direction, Role},
    protocols::{
        AttrValue, BrokerEvent, Exchange, ExchangeEvent, ExchangeKind, ExchangeStart,
        ExchangeStatus, ProtocolSession, SessionOptions,
    },
};

struct Open {
    sequence: u64,
    message: Message,
    queue: Option<String>,
    /// Set by a Return or Channel.Close before the span ends.
    error: Option<(String, String)>,
}

#[derive(Default)]
struct ChannelState {
    confirms: bool,
    /// Delivery tag the broker will use to confirm the next publish.
    next_confirm_tag: u64,
    unconfirmed: BTreeMap<u64, Open>,
    /// Delivered and not yet acked, by delivery tag.
    deliveries: BTreeMap<u64, Open>,
    /// Queue of the last Basic.Get, for its Get-Ok.
    get_queue: Option<(String, bool)>,
    /// Consumes whose tag the broker will choose (Consume-Ok), in order.
    consumes_awaiting_tag: VecDeque<(String, bool)>,
}

pub struct AmqpSession {
    broker_side: bool,
    egress: FrameReader,
    ingress: FrameReader,
    egress_content: Assembler,
    ingress_content: Assembler,
    channels: HashMap<u16, ChannelState>,
    /// consumer tag → (queue, no_ack)
    consumers: HashMap<String, (String, bool)>,
    next_sequence: u64,
}

impl AmqpSession {
    pub fn new(role: Role, options: &SessionOptions, mid_stream: bool) -> Self {
        Self {
            broker_side: role == Role::Server,
            egress: FrameReader::new(mid_stream),
            ingress: FrameReader::new(mid_stream),
            egress_content: Assembler::new(options.body_prefix_bytes),
            ingress_content: Assembler::new(options.body_prefix_bytes),
            channels: HashMap::new(),
            consumers: HashMap::new(),
            next_sequence: 0,
        }
    }

    fn drain(&mut self, direction: Direction, out: &mut Vec<ExchangeEvent>) {
        loop {
            let reader = match direction {
                Direction::Egress => &mut self.egress,
                Direction::Ingress => &mut self.ingress,
            };
            match reader.next() {
                None => return,
                Some(Read::Frame(frame)) => self.frame(direction, *frame, out),
                Some(Read::Body {
                    channel,
                    bytes,
                    ktime_ns,
                }) => {
                    let content = match direction {
                        Direction::Egress => &mut self.egress_content,
                        Direction::Ingress => &mut self.ingress_content,
                    };
                    if let Some(message) = content.body(channel, &bytes) {
                        self.message(direction, channel, message, ktime_ns, out);
                    }
                }
            }
        }
    }

    fn frame(&mut self, direction: Direction, timed: TimedFrame, out: &mut Vec<ExchangeEvent>) {
        let TimedFrame {
            frame,
            ktime_ns,
            tid,
        } = timed;
        let content = match direction {
            Direction::Egress => &mut self.egress_content,
            Direction::Ingress => &mut self.ingress_content,
        };
        let complete = match frame {
            AMQPFrame::Method(channel, method) => {
                if let Some(message) = carried_message(&method, ktime_ns, tid) {
                    content.begin(channel, message);
                    None
                } else {
                    self.method(direction, channel, method, ktime_ns, out);
                    None
                }
            }
            AMQPFrame::Header(channel, header) => {
                content.header(channel, &header).map(|m| (channel, m))
            }
            // Body frames normally stream through `Read::Body`; a whole one can still come
            // from the protocol-header path.
            AMQPFrame::Body(channel, bytes) => content.body(channel, &bytes).map(|m| (channel, m)),
            AMQPFrame::ProtocolHeader(_)
            | AMQPFrame::Heartbeat
            | AMQPFrame::InvalidHeartbeat(_) => None,
        };
        if let Some((channel, message)) = complete {
            self.message(direction, channel, message, ktime_ns, out);
        }
    }

    /// A complete message (method + header + body).
    fn message(
        &mut self,
        direction: Direction,
        channel: u16,
        message: Message,
        end_ns: u64,
        out: &mut Vec<ExchangeEvent>,
    ) {
        if self.broker_side {
            let entered = match (&message.carrier, direction) {
                (Carrier::Publish, Direction::Ingress) => true,
                (Carrier::Deliver { .. } | Carrier::GetOk { .. }, Direction::Egress) => false,
                _ => return,
            };
            out.push(ExchangeEvent::Broker(BrokerEvent {
                fingerprint: message.fingerprint(),
                entered,
                ktime_ns: end_ns,
            }));
            return;
        }
        let state = self.channels.entry(channel).or_default();
        let sequence = self.next_sequence;
        match (&message.carrier, direction) {
            (Carrier::Publish, Direction::Egress) => {
                self.next_sequence += 1;
                out.push(ExchangeEvent::Started(start(
                    sequence,
                    ExchangeKind::Producer,
                    &message,
                    true,
                )));
                let open = Open {
                    sequence,
                    message,
                    queue: None,
                    error: None,
                };
                if state.confirms {
                    state.unconfirmed.insert(state.next_confirm_tag, open);
                    state.next_confirm_tag += 1;
                } else {
                    out.push(ExchangeEvent::Finished(finish(
                        open,
                        end_ns,
                        ExchangeKind::Producer,
                    )));
                }
            }
            (
                Carrier::Deliver {
                    consumer_tag,
                    delivery_tag,
                },
                Direction::Ingress,
            ) => {
                self.next_sequence += 1;
                let consumer = self
                    .consumers
                    .get(consumer_tag)
                    .cloned()
                    .unwrap_or_default();
                delivered(
                    state,
                    sequence,
                    *delivery_tag,
                    consumer,
                    message,
                    end_ns,
                    out,
                );
            }
            (Carrier::GetOk { delivery_tag }, Direction::Ingress) => {
                self.next_sequence += 1;
                let consumer = state.get_queue.take().unwrap_or_default();
                delivered(
                    state,
                    sequence,
                    *delivery_tag,
                    consumer,
                    message,
                    end_ns,
                    out,
                );
            }
            (
                Carrier::Return {
                    reply_code,
                    reply_text,
                },
                Direction::Ingress,
            ) => {
                // The broker could not route a mandatory publish; its confirm follows.
                let error = (reply_code.to_string(), format!("returned: {reply_text}"));
                if let Some(open) = state.unconfirmed.values_mut().find(|o| {
                    o.error.is_none()
                        && o.message.exchange == message.exchange
                        && o.message.routing_key == message.routing_key
                }) {
                    open.error = Some(error);
                }
            }
            _ => {}
        }
    }

    /// Methods without content: confirms, acks, consumer bookkeeping, closes.
    fn method(
        &mut self,
        direction: Direction,
        channel: u16,
        method: AMQPClass,
        ktime_ns: u64,
        out: &mut Vec<ExchangeEvent>,
    ) {
        if self.broker_side {
            return;
        }
        let state = self.channels.entry(channel).or_default();
        match (method, direction) {
            (AMQPClass::Confirm(confirm::AMQPMethod::Select(_)), Direction::Egress) => {
                state.confirms = true;
                state.next_confirm_tag = 1;
            }
            (AMQPClass::Basic(basic::AMQPMethod::Consume(c)), Direction::Egress) => {
                let queue = (c.queue.as_str().to_owned(), c.no_ack);
                if c.consumer_tag.as_str().is_empty() {
                    state.consumes_awaiting_tag.push_back(queue);
                } else {
                    self.consumers
                        .insert(c.consumer_tag.as_str().to_owned(), queue);
                }
            }
            (AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)), Direction::Ingress) => {
                if let Some(queue) = state.consumes_awaiting_tag.pop_front() {
                    self.consumers
                        .entry(ok.consumer_tag.as_str().to_owned())
                        .or_insert(queue);
                }
            }
            (AMQPClass::Basic(basic::AMQPMethod::Get(get)), Direction::Egress) => {
                state.get_queue = Some((get.queue.as_str().to_owned(), get.no_ack));
            }
            // Publisher confirms from the broker.
            (AMQPClass::Basic(basic::AMQPMethod::Ack(ack)), Direction::Ingress) => {
                for open in take_tags(&mut state.unconfirmed, ack.delivery_tag, ack.multiple) {
                    out.push(ExchangeEvent::Finished(finish(
                        open,
                        ktime_ns,
                        ExchangeKind::Producer,
                    )));
                }
            }
            (AMQPClass::Basic(basic::AMQPMethod::Nack(nack)), Direction::Ingress) => {
                for mut open in take_tags(&mut state.unconfirmed, nack.delivery_tag, nack.multiple)
                {
                    open.error = Some(("nack".into(), "the broker nacked the message".into()));
                    out.push(ExchangeEvent::Finished(finish(
                        open,
                        ktime_ns,
                        ExchangeKind::Producer,
                    )));
                }
            }
            // The consumer's verdict on deliveries.
            (AMQPClass::Basic(basic::AMQPMethod::Ack(ack)), Direction::Egress) => {
                for open in take_tags(&mut state.deliveries, ack.delivery_tag, ack.multiple) {
                    out.push(ExchangeEvent::Finished(finish(
                        open,
                        ktime_ns,
                        ExchangeKind::Consumer,
                    )));
                }
            }
            (AMQPClass::Basic(basic::AMQPMethod::Nack(nack)), Direction::Egress) => {
                for mut open in take_tags(&mut state.deliveries, nack.delivery_tag, nack.multiple) {
                    open.error = Some((
                        "nack".into(),
                        format!("nacked by the consumer (requeue: {})", nack.requeue),
                    ));
                    out.push(ExchangeEvent::Finished(finish(
                        open,
                        ktime_ns,
                        ExchangeKind::Consumer,
                    )));
                }
            }
            (AMQPClass::Basic(basic::AMQPMethod::Reject(reject)), Direction::Egress) => {
                for mut open in take_tags(&mut state.deliveries, reject.delivery_tag, false) {
                    open.error = Some((
                        "reject".into(),
                        format!("rejected by the consumer (requeue: {})", reject.requeue),
                    ));
                    out.push(ExchangeEvent::Finished(finish(
                        open,
                        ktime_ns,
                        ExchangeKind::Consumer,
                    )));
                }
            }
            (AMQPClass::Channel(channel::AMQPMethod::Close(close)), _) => {
                let reason = (
                    close.reply_code.to_string(),
                    close.reply_text.as_str().to_owned(),
                );
                self.close_channel(channel, Some(reason), ktime_ns, out);
            }
            _ => {}
        }
    }

    /// Ends every open span of a channel (Channel.Close, connection end).
    fn close_channel(
        &mut self,
        channel: u16,
        reason: Option<(String, String)>,
        ktime_ns: u64,
        out: &mut Vec<ExchangeEvent>,
    ) {
        let Some(state) = self.channels.remove(&channel) else {
            return;
        };
        self.egress_content.reset(channel);
        self.ingress_content.reset(channel);
        let reason = reason.unwrap_or_else(|| ("channel_closed".into(), "channel closed".into()));
        for (kind, spans) in [
            (ExchangeKind::Producer, state.unconfirmed),
            (ExchangeKind::Consumer, state.deliveries),
        ] {
            for mut open in spans.into_values() {
                open.error.get_or_insert_with(|| reason.clone());
                out.push(ExchangeEvent::Finished(finish(open, ktime_ns, kind)));
            }
        }
    }
}

/// A delivery (Deliver or Get-Ok) starts a CONSUMER span; it ends at the client's verdict
/// on the delivery tag, or at once when the consumer does not acknowledge (no-ack).
fn delivered(
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
fn carried_message(method: &AMQPClass, ktime_ns: u64, tid: u32) -> Option<Message> {
    let (carrier, exchange, routing_key) = match method {
        AMQPClass::Basic(basic::AMQPMethod::Publish(p)) => {
            (Carrier::Publish, &p.exchange, &p.routing_key)
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

fn start(sequence: u64, kind: ExchangeKind, message: &Message, produced: bool) -> ExchangeStart {
    let fingerprint = message.fingerprint();
    ExchangeStart {
        sequence,
        kind,
        start_ktime_ns: message.start_ktime_ns,
        tid: message.tid,
        traceparent: message.traceparent().map(str::to_owned),
        message_out: produced.then_some(fingerprint),
        message_in: (!produced).then_some(fingerprint),
    }
}

fn finish(open: Open, end_ktime_ns: u64, kind: ExchangeKind) -> Exchange {
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
            queue.clone().unwrap_or_else(|| exchange_name.to_owned()),
        ),
        (_, ExchangeKind::Consumer) => (
            "deliver",
            "process",
            queue.clone().unwrap_or_else(|| exchange_name.to_owned()),
        ),
        _ => ("publish", "send", exchange_name.to_owned()),
    };
    let mut attributes: Vec<(&'static str, AttrValue)> = vec![
        ("messaging.system", "rabbitmq".into()),
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
        ("network.protocol.name", "amqp".into()),
        ("network.protocol.version", "0.9.1".into()),
    ];
    if let Some(id) = &message.message_id {
        attributes.push(("messaging.message.id", id.as_str().into()));
    }
    if let Some(id) = &message.correlation_id {
        attributes.push(("messaging.message.conversation_id", id.as_str().into()));
    }
    if let Some(queue) = &queue {
        attributes.push((
            "messaging.destination.subscription.name",
            queue.as_str().into(),
        ));
    }
    if let Carrier::Deliver { delivery_tag, .. } | Carrier::GetOk { delivery_tag } =
        &message.carrier
    {
        attributes.push((
            "messaging.rabbitmq.message.delivery_tag",
            (*delivery_tag as i64).into(),
        ));
    }
    let mut fields = BTreeMap::new();
    fields.insert(
        "body".to_owned(),
        String::from_utf8_lossy(&message.body_prefix).into_owned(),
    );
    fields.insert("exchange".to_owned(), message.exchange.clone());
    fields.insert("routing_key".to_owned(), message.routing_key.clone());
    for (name, value) in &message.headers {
        fields.insert(format!("header.{name}"), value.clone());
    }
    if let Some(id) = &message.message_id {
        fields.insert("message_id".to_owned(), id.clone());
    }
    if let Some(id) = &message.correlation_id {
        fields.insert("correlation_id".to_owned(), id.clone());
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
        sequence,
        kind,
        name: format!("{operation} {destination}"),
        start_ktime_ns: message.start_ktime_ns,
        end_ktime_ns,
        tid: message.tid,
        attributes,
        status,
        traceparent: message.traceparent().map(str::to_owned),
        fields,
        order_ids: Vec::new(),
        business: Vec::new(),
    }
}

impl ProtocolSession for AmqpSession {
    fn feed(
        &mut self,
        direction: Direction,
        bytes: &[u8],
        ktime_ns: u64,
        tid: u32,
        out: &mut Vec<ExchangeEvent>,
    ) {
        match direction {
            Direction::Egress => self.egress.push(bytes, ktime_ns, tid),
            Direction::Ingress => self.ingress.push(bytes, ktime_ns, tid),
        }
        self.drain(direction, out);
    }

    fn gap(
        &mut self,
        direction: Direction,
        length: u64,
        ktime_ns: u64,
        out: &mut Vec<ExchangeEvent>,
    ) {
        let (reader, content) = match direction {
            Direction::Egress => (&mut self.egress, &mut self.egress_content),
            Direction::Ingress => (&mut self.ingress, &mut self.ingress_content),
        };
        let complete = match reader.gap(length) {
            GapOutcome::BodySkipped { channel, bytes } => content
                .skip(channel, bytes)
                .map(|m| (channel, m))
                .into_iter()
                .collect(),
            GapOutcome::Lost => content.gap(),
        };
        for (channel, message) in complete {
            self.message(direction, channel, message, ktime_ns, out);
        }
        self.drain(direction, out);
    }

    fn close(&mut self, ktime_ns: u64, out: &mut Vec<ExchangeEvent>) {
        let channels: Vec<u16> = self.channels.keys().copied().collect();
        for channel in channels {
            let reason = Some((
                "connection_closed".to_owned(),
                "connection closed before confirm or ack".to_owned(),
            ));
            self.close_channel(channel, reason, ktime_ns, out);
        }
    }

    fn bytes_skipped(&self) -> u64 {
        self.egress.skipped() + self.ingress.skipped()
    }
}
