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
    spans::{carried_message, delivered, finish, settle, start, verdict, Open},
};
use crate::{
    capture::{Direction, Role},
    protocols::{BrokerEvent, ExchangeEvent, ExchangeKind, ProtocolSession, SessionOptions},
};

#[derive(Default)]
pub struct ChannelState {
    confirms: bool,
    /// Delivery tag the broker will use to confirm the next publish.
    next_confirm_tag: u64,
    unconfirmed: BTreeMap<u64, Open>,
    /// Delivered and not yet acked, by delivery tag.
    pub deliveries: BTreeMap<u64, Open>,
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
        if let Some((kind, verdict)) = verdict(&method, direction) {
            let open = match kind {
                ExchangeKind::Producer => &mut state.unconfirmed,
                _ => &mut state.deliveries,
            };
            settle(open, verdict, kind, ktime_ns, out);
            return;
        }
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
