//! Synchronous AMQP calls (declare, bind, open, qos, …): the broker answers each with its
//! `-Ok` method in order, or refuses it by closing the channel or the connection. A refusal
//! is what an operator looks for when a service "cannot send" (a missing vhost, a
//! conflicting declare, a passive declare of a missing queue), so it becomes an error span
//! named after the call it refused; calls that succeed leave no span.
use std::collections::VecDeque;

use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, tx, AMQPClass};

use crate::protocols::{
    AttrValue, Exchange, ExchangeId, ExchangeKind, ExchangeStart, ExchangeStatus,
};

/// A call the client made and the broker has not answered yet.
#[derive(Clone, Debug)]
pub struct Call {
    /// `exchange.declare`, `queue.declare`, `connection.open`, …
    pub operation: &'static str,
    /// The exchange or queue it names (a vhost for `connection.open`).
    pub target: Option<String>,
    /// Its place among the channel's calls (1 for the first), set when made.
    pub index: u64,
    pub start_ktime_ns: u64,
    pub tid: u32,
}

/// The call a client method makes, if the broker will answer it (no `nowait`).
pub fn call(method: &AMQPClass, ktime_ns: u64, tid: u32) -> Option<Call> {
    use AMQPClass as C;
    let named = |operation, target: &amq_protocol::types::ShortString| {
        (operation, Some(target.as_str().to_owned()))
    };
    let (operation, target) = match method {
        C::Connection(connection::AMQPMethod::Open(o)) => named("connection.open", &o.virtual_host),
        C::Channel(channel::AMQPMethod::Open(_)) => ("channel.open", None),
        C::Channel(channel::AMQPMethod::Flow(_)) => ("channel.flow", None),
        C::Channel(channel::AMQPMethod::Close(_)) => ("channel.close", None),
        C::Exchange(exchange::AMQPMethod::Declare(d)) if !d.nowait => {
            named("exchange.declare", &d.exchange)
        }
        C::Exchange(exchange::AMQPMethod::Delete(d)) if !d.nowait => {
            named("exchange.delete", &d.exchange)
        }
        C::Exchange(exchange::AMQPMethod::Bind(b)) if !b.nowait => {
            named("exchange.bind", &b.destination)
        }
        C::Exchange(exchange::AMQPMethod::Unbind(u)) if !u.nowait => {
            named("exchange.unbind", &u.destination)
        }
        C::Queue(queue::AMQPMethod::Declare(d)) if !d.nowait => named("queue.declare", &d.queue),
        C::Queue(queue::AMQPMethod::Bind(b)) if !b.nowait => named("queue.bind", &b.queue),
        C::Queue(queue::AMQPMethod::Purge(p)) if !p.nowait => named("queue.purge", &p.queue),
        C::Queue(queue::AMQPMethod::Delete(d)) if !d.nowait => named("queue.delete", &d.queue),
        C::Queue(queue::AMQPMethod::Unbind(u)) => named("queue.unbind", &u.queue),
        C::Basic(basic::AMQPMethod::Qos(_)) => ("basic.qos", None),
        C::Basic(basic::AMQPMethod::Consume(c)) if !c.nowait => named("basic.consume", &c.queue),
        C::Basic(basic::AMQPMethod::Cancel(c)) if !c.nowait => ("basic.cancel", None),
        C::Basic(basic::AMQPMethod::Get(g)) => named("basic.get", &g.queue),
        C::Basic(basic::AMQPMethod::Recover(_)) => ("basic.recover", None),
        C::Confirm(confirm::AMQPMethod::Select(s)) if !s.nowait => ("confirm.select", None),
        C::Tx(tx::AMQPMethod::Select(_)) => ("tx.select", None),
        C::Tx(tx::AMQPMethod::Commit(_)) => ("tx.commit", None),
        C::Tx(tx::AMQPMethod::Rollback(_)) => ("tx.rollback", None),
        _ => return None,
    };
    Some(Call {
        operation,
        target: target.filter(|t| !t.is_empty()),
        index: 0,
        start_ktime_ns: ktime_ns,
        tid,
    })
}

/// Whether a broker method answers the oldest open call (Get-Ok is content-carrying and
/// counted where messages are assembled).
pub fn is_answer(method: &AMQPClass) -> bool {
    use AMQPClass as C;
    matches!(
        method,
        C::Connection(connection::AMQPMethod::OpenOk(_))
            | C::Channel(channel::AMQPMethod::OpenOk(_))
            | C::Channel(channel::AMQPMethod::FlowOk(_))
            | C::Channel(channel::AMQPMethod::CloseOk(_))
            | C::Exchange(
                exchange::AMQPMethod::DeclareOk(_)
                    | exchange::AMQPMethod::DeleteOk(_)
                    | exchange::AMQPMethod::BindOk(_)
                    | exchange::AMQPMethod::UnbindOk(_)
            )
            | C::Queue(
                queue::AMQPMethod::DeclareOk(_)
                    | queue::AMQPMethod::BindOk(_)
                    | queue::AMQPMethod::PurgeOk(_)
                    | queue::AMQPMethod::DeleteOk(_)
                    | queue::AMQPMethod::UnbindOk(_)
            )
            | C::Basic(
                basic::AMQPMethod::QosOk(_)
                    | basic::AMQPMethod::ConsumeOk(_)
                    | basic::AMQPMethod::CancelOk(_)
                    | basic::AMQPMethod::GetEmpty(_)
                    | basic::AMQPMethod::RecoverOk(_)
            )
            | C::Confirm(confirm::AMQPMethod::SelectOk(_))
            | C::Tx(
                tx::AMQPMethod::SelectOk(_)
                    | tx::AMQPMethod::CommitOk(_)
                    | tx::AMQPMethod::RollbackOk(_)
            )
    )
}

/// The calls of one channel, in order, and how many the broker has answered.
#[derive(Default)]
pub struct Calls {
    open: VecDeque<Call>,
    /// Calls made / answered on this channel so far: an answer to a call made after a
    /// publish shows the broker has processed that publish.
    pub made: u64,
    pub answered: u64,
}

impl Calls {
    /// The client made `call` (numbered here).
    pub fn add(&mut self, mut call: Call) {
        self.made += 1;
        call.index = self.made;
        // Bounded: a client that never reads its answers must not grow this.
        if self.open.len() == MAX_OPEN {
            self.open.pop_front();
        }
        self.open.push_back(call);
    }

    pub fn answered(&mut self) {
        self.answered += 1;
        self.open.pop_front();
    }

    /// The call a broker-initiated close refuses: the oldest unanswered one.
    pub fn refused(&mut self) -> Option<Call> {
        self.open.pop_front()
    }
}

const MAX_OPEN: usize = 64;

/// The span of a call the broker refused (`reply_code` ≥ 300), or of a broker-initiated
/// close no open call explains (then named `channel.close` / `connection.close`).
pub fn refused(
    sequence: u64,
    call: Call,
    (reply_code, reply_text): (u16, &str),
    end_ktime_ns: u64,
) -> (ExchangeStart, Exchange) {
    let id = ExchangeId::Sequence(sequence);
    let mut attributes: Vec<(&'static str, AttrValue)> = vec![
        ("messaging.system", AttrValue::fixed("rabbitmq")),
        ("messaging.operation.name", call.operation.into()),
        ("network.protocol.name", AttrValue::fixed("amqp")),
        ("network.protocol.version", AttrValue::fixed("0.9.1")),
        (
            "messaging.rabbitmq.reply_code",
            i64::from(reply_code).into(),
        ),
    ];
    if let Some(target) = &call.target {
        let key = if call.operation == "connection.open" {
            "messaging.rabbitmq.vhost"
        } else {
            "messaging.destination.name"
        };
        attributes.push((key, target.as_str().into()));
    }
    let start = ExchangeStart {
        id,
        kind: ExchangeKind::Client,
        start_ktime_ns: call.start_ktime_ns,
        tid: call.tid,
        traceparent: None,
        message_out: None,
        message_in: None,
        identifiers: Vec::new(),
    };
    let exchange = Exchange {
        protocol: "amqp",
        id,
        kind: ExchangeKind::Client,
        name: call.operation.to_owned(),
        start_ktime_ns: call.start_ktime_ns,
        end_ktime_ns,
        tid: call.tid,
        attributes,
        status: ExchangeStatus::Error {
            error_type: reply_code.to_string(),
            message: reply_text.to_owned(),
        },
        traceparent: None,
        record: std::sync::Arc::new(super::record::AmqpRecord::default()),
        order_ids: Vec::new(),
        business: Vec::new(),
    };
    (start, exchange)
}
