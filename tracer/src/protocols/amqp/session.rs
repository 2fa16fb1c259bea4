//! One AMQP connection. On a client (a process that connected to the broker): PRODUCER
//! spans from publish to the broker's confirm, CONSUMER spans from delivery to the
//! client's ack/nack/reject. On the broker's own sockets: when each message entered and
//! left the broker, for queue residence and stuck-message detection.
use std::collections::{BTreeMap, VecDeque};

use foldhash::HashMap;

use amq_protocol::{
    frame::AMQPFrame,
    protocol::{basic, channel, confirm, connection, AMQPClass},
};

use super::{
    calls::{self, Call, Calls},
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
    calls: Calls,
}

/// A mandatory publish without publisher confirms, held for a Basic.Return: the broker
/// returns an unroutable one at once, before it answers anything asked after it.
struct Held {
    open: Open,
    published_ns: u64,
    /// Calls made on its channel before it: an answer to a later one shows it was routed.
    calls_before: u64,
}

/// A held publish is taken as routed once the client has read from the broker this long
/// after it without a Return among the bytes.
const RETURN_WAIT_NS: u64 = 1_000_000_000;
/// … or, if the client reads nothing, after this long (counted as unverified).
const RETURN_GIVE_UP_NS: u64 = 30_000_000_000;
/// Held publishes per channel; beyond, the oldest is let go unverified.
const MAX_HELD: usize = 1024;

pub struct AmqpSession {
    broker_side: bool,
    egress: FrameReader,
    ingress: FrameReader,
    egress_content: Assembler,
    ingress_content: Assembler,
    channels: HashMap<u16, ChannelState>,
    /// consumer tag → (queue, no_ack)
    consumers: HashMap<String, (String, bool)>,
    /// Mandatory publishes without confirms, by channel, oldest first (kept apart from
    /// the channel's state: a client's Channel.Close does not settle them, its Close-Ok does).
    held: HashMap<u16, VecDeque<Held>>,
    /// Held publishes let go without proof they were routed (no read, or too many held).
    returns_unverified: u64,
    /// Returns matching no publish still open (read after it was let go).
    returns_unmatched: u64,
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
            channels: HashMap::default(),
            consumers: HashMap::default(),
            held: HashMap::default(),
            returns_unverified: 0,
            returns_unmatched: 0,
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
                    self.method(direction, channel, method, (ktime_ns, tid), out);
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
                (Carrier::Publish { .. }, Direction::Ingress) => true,
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
            (&Carrier::Publish { mandatory }, Direction::Egress) => {
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
                } else if mandatory {
                    let held = self.held.entry(channel).or_default();
                    if held.len() == MAX_HELD {
                        let oldest = held.pop_front().expect("full");
                        self.returns_unverified += 1;
                        let end = oldest.published_ns;
                        out.push(ExchangeEvent::Finished(finish(
                            oldest.open,
                            end,
                            ExchangeKind::Producer,
                        )));
                    }
                    held.push_back(Held {
                        open,
                        published_ns: end_ns,
                        calls_before: state.calls.made,
                    });
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
                state.calls.answered();
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
                // The broker could not route a mandatory publish: without confirms it is
                // held for this; with confirms its confirm follows.
                let error = (reply_code.to_string(), format!("returned: {reply_text}"));
                let same = |o: &Open| {
                    o.error.is_none()
                        && o.message.exchange == message.exchange
                        && o.message.routing_key == message.routing_key
                };
                let held = self.held.entry(channel).or_default();
                if let Some(at) = held.iter().position(|h| same(&h.open)) {
                    let mut returned = held.remove(at).expect("found").open;
                    returned.error = Some(error);
                    out.push(ExchangeEvent::Finished(finish(
                        returned,
                        end_ns,
                        ExchangeKind::Producer,
                    )));
                } else if let Some(open) = state.unconfirmed.values_mut().find(|o| same(o)) {
                    open.error = Some(error);
                } else {
                    self.returns_unmatched += 1;
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
        (ktime_ns, tid): (u64, u32),
        out: &mut Vec<ExchangeEvent>,
    ) {
        if self.broker_side {
            return;
        }
        let state = self.channels.entry(channel).or_default();
        match direction {
            Direction::Egress => {
                if let Some(call) = calls::call(&method, ktime_ns, tid) {
                    state.calls.add(call);
                }
            }
            Direction::Ingress if calls::is_answer(&method) => {
                state.calls.answered();
                let answered = state.calls.answered;
                self.release(channel, |h| h.calls_before < answered, out);
            }
            Direction::Ingress => {}
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
            (AMQPClass::Channel(channel::AMQPMethod::Close(close)), direction) => {
                let reason = (close.reply_code, close.reply_text.as_str());
                if direction == Direction::Ingress {
                    // The broker closes the channel: it refused a call (or a publish).
                    self.refused(channel, "channel.close", reason, (ktime_ns, tid), out);
                }
                let reason = (reason.0.to_string(), reason.1.to_owned());
                self.close_channel(channel, Some(reason), ktime_ns, out);
            }
            (AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)), Direction::Ingress) => {
                // The broker has processed everything sent before the client's Close.
                self.release(channel, |_| true, out);
                self.channels.remove(&channel);
            }
            (AMQPClass::Connection(connection::AMQPMethod::Close(close)), Direction::Ingress) => {
                let reason = (close.reply_code, close.reply_text.as_str());
                self.refused(channel, "connection.close", reason, (ktime_ns, tid), out);
                let failed = reason.0 >= 300;
                let reason = (reason.0.to_string(), reason.1.to_owned());
                let channels: Vec<u16> = self.held.keys().copied().collect();
                for channel in channels {
                    if failed {
                        self.fail_held(channel, &reason, ktime_ns, out);
                    } else {
                        // A normal close: the broker processed everything before it.
                        self.release(channel, |_| true, out);
                    }
                }
            }
            _ => {}
        }
    }

    /// A broker-initiated close with an error code: an error span for the call it refused
    /// when the text names that call's target (or, on channel 0, the connection's open);
    /// else the publish whose exchange it names, or all still open, carry the error; else a
    /// span named `close_operation`. Held publishes the broker processed before the cause
    /// are routed; the rest share the error.
    fn refused(
        &mut self,
        channel: u16,
        close_operation: &'static str,
        (reply_code, reply_text): (u16, &str),
        (ktime_ns, tid): (u64, u32),
        out: &mut Vec<ExchangeEvent>,
    ) {
        if reply_code < 300 {
            return;
        }
        let reason = (reply_code.to_string(), reply_text.to_owned());
        let state = self.channels.entry(channel).or_default();
        let named = |call: &Call| match &call.target {
            _ if call.operation == "connection.open" => true,
            Some(target) => reply_text.contains(&format!("'{target}'")),
            None => false,
        };
        let unconfirmed = !state.unconfirmed.is_empty();
        let call = match state.calls.refused().filter(named) {
            Some(call) => {
                let index = call.index;
                self.release(channel, |h| h.calls_before < index, out);
                call
            }
            None => {
                let held = self.held.get(&channel);
                let names_exchange =
                    |h: &Held| reply_text.contains(&format!("'{}'", h.open.message.exchange));
                if let Some(cause) = held.and_then(|held| held.iter().position(names_exchange)) {
                    let mut before = 0;
                    self.release(
                        channel,
                        |_| {
                            before += 1;
                            before <= cause
                        },
                        out,
                    );
                }
                if unconfirmed || self.held.get(&channel).is_some_and(|h| !h.is_empty()) {
                    // The publishes still open carry the error.
                    self.fail_held(channel, &reason, ktime_ns, out);
                    return;
                }
                Call {
                    operation: close_operation,
                    target: None,
                    index: 0,
                    start_ktime_ns: ktime_ns,
                    tid,
                }
            }
        };
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let (start, exchange) = calls::refused(sequence, call, (reply_code, reply_text), ktime_ns);
        out.push(ExchangeEvent::Started(start));
        out.push(ExchangeEvent::Finished(exchange));
        self.fail_held(channel, &reason, ktime_ns, out);
    }

    /// Ends the held publishes of a channel that `proven` says were routed, oldest first.
    fn release(
        &mut self,
        channel: u16,
        mut proven: impl FnMut(&Held) -> bool,
        out: &mut Vec<ExchangeEvent>,
    ) {
        let Some(held) = self.held.get_mut(&channel) else {
            return;
        };
        while held.front().is_some_and(&mut proven) {
            let routed = held.pop_front().expect("front exists");
            out.push(ExchangeEvent::Finished(finish(
                routed.open,
                routed.published_ns,
                ExchangeKind::Producer,
            )));
        }
    }

    /// Ends a channel's held publishes with the broker's error.
    fn fail_held(
        &mut self,
        channel: u16,
        reason: &(String, String),
        ktime_ns: u64,
        out: &mut Vec<ExchangeEvent>,
    ) {
        for mut held in self.held.remove(&channel).unwrap_or_default() {
            held.open.error = Some(reason.clone());
            out.push(ExchangeEvent::Finished(finish(
                held.open,
                ktime_ns,
                ExchangeKind::Producer,
            )));
        }
    }

    /// Lets go of held publishes published at least `wait_ns` before `now_ns`.
    fn release_waited(&mut self, now_ns: u64, wait_ns: u64, out: &mut Vec<ExchangeEvent>) -> u64 {
        let channels: Vec<u16> = self.held.keys().copied().collect();
        let before: usize = self.held.values().map(VecDeque::len).sum();
        for channel in channels {
            self.release(
                channel,
                |h| now_ns.saturating_sub(h.published_ns) >= wait_ns,
                out,
            );
        }
        self.held.retain(|_, held| !held.is_empty());
        let after: usize = self.held.values().map(VecDeque::len).sum();
        (before - after) as u64
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
        if direction == Direction::Ingress && !self.held.is_empty() {
            // The client has read what the broker sent: no Return for these.
            self.release_waited(ktime_ns, RETURN_WAIT_NS, out);
        }
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
        // Every byte the broker sent has been read: no Return came for what is held.
        self.release_waited(u64::MAX, 0, out);
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

    fn deadline(&self) -> Option<u64> {
        let oldest = self
            .held
            .values()
            .filter_map(|h| h.front())
            .map(|h| h.published_ns)
            .min()?;
        Some(oldest.saturating_add(RETURN_GIVE_UP_NS))
    }

    fn expire(&mut self, now_ns: u64, out: &mut Vec<ExchangeEvent>) {
        self.returns_unverified += self.release_waited(now_ns, RETURN_GIVE_UP_NS, out);
    }

    fn events(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("mandatory_publish_unverified", self.returns_unverified),
            ("return_unmatched", self.returns_unmatched),
        ]
    }
}
