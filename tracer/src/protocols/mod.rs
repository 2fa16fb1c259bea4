//! Application protocols: inferred from a connection's first bytes, then parsed per
//! connection into `Exchange`s. Adding a protocol is one folder plus one registry line.
pub mod amqp;
mod exchange;
#[cfg(test)]
mod golden;
pub mod http;
pub mod postgres;

pub use exchange::{
    AttrValue, BrokerEvent, Exchange, ExchangeKind, ExchangeStart, ExchangeStatus, Peer,
};

use crate::capture::{Direction, Role};

/// What a protocol says about a connection's first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inference {
    Yes,
    No,
    /// Too few bytes to tell.
    NeedMore,
}

/// Settings every protocol session gets.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Body bytes kept per message for business rules (order ids, …).
    pub body_prefix_bytes: usize,
    /// Configured route templates (`/orders/{order_id}`), tried before automatic templating.
    pub route_templates: Vec<String>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            body_prefix_bytes: 4096,
            route_templates: Vec::new(),
        }
    }
}

/// What a session reports: an exchange began (so children can find it while it is still
/// open), or it ended.
#[derive(Clone, Debug)]
pub enum ExchangeEvent {
    Started(ExchangeStart),
    Finished(Exchange),
    Broker(BrokerEvent),
}

pub trait Protocol: Sync {
    fn name(&self) -> &'static str;
    /// Looks at the first bytes seen in `direction`. `mid_stream` is true for connections
    /// that predate the agent, whose first bytes may be anywhere in a message.
    fn infer(&self, bytes: &[u8], direction: Direction, mid_stream: bool) -> Inference;
    fn session(
        &self,
        role: Role,
        first_direction: Direction,
        mid_stream: bool,
        options: &SessionOptions,
    ) -> Box<dyn ProtocolSession>;
}

/// One connection's parser. Must never panic on any input: bad bytes are skipped and counted.
pub trait ProtocolSession: Send {
    fn feed(
        &mut self,
        direction: Direction,
        bytes: &[u8],
        ktime_ns: u64,
        tid: u32,
        out: &mut Vec<ExchangeEvent>,
    );
    /// `length` bytes of the stream were not captured.
    fn gap(
        &mut self,
        direction: Direction,
        length: u64,
        ktime_ns: u64,
        out: &mut Vec<ExchangeEvent>,
    );
    /// The connection closed: finish what can be finished.
    fn close(&mut self, ktime_ns: u64, out: &mut Vec<ExchangeEvent>);
    /// Bytes skipped as unparseable so far (for `parse_errors_total{protocol}`).
    fn bytes_skipped(&self) -> u64;
}

/// The registry: every protocol tracer understands, tried in this order.
pub static PROTOCOLS: &[&dyn Protocol] = &[&http::Http, &amqp::Amqp, &postgres::Postgres];

/// The first protocol that claims these bytes; `Err(true)` when some protocol needs more.
pub fn infer(
    bytes: &[u8],
    direction: Direction,
    mid_stream: bool,
) -> Result<&'static dyn Protocol, bool> {
    let mut need_more = false;
    for protocol in PROTOCOLS {
        match protocol.infer(bytes, direction, mid_stream) {
            Inference::Yes => return Ok(*protocol),
            Inference::NeedMore => need_more = true,
            Inference::No => {}
        }
    }
    Err(need_more)
}

/// Whether bytes start with a TLS record header: content type 20–23 (change_cipher_spec,
/// alert, handshake, application_data) and version 3.0–3.4.
pub fn is_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [20..=23, 3, 0..=4, ..])
}
