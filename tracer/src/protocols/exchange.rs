//! The protocol-independent record of one request/response (or message) exchange.
use std::{borrow::Cow, sync::Arc};

use super::record::{NoRecord, Record};
use crate::capture::Role;

/// Which exchange of its connection a span is: the n-th request of a connection that
/// carries one exchange at a time (HTTP/1, AMQP, PostgreSQL), or a stream of a multiplexed
/// one (HTTP/2). Both ends of a connection name a stream alike; sequence numbers can differ
/// when one end was picked up mid-connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExchangeId {
    Sequence(u64),
    Stream(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeKind {
    /// The process answered a request (OTel SERVER).
    Server,
    /// The process made a request (OTel CLIENT).
    Client,
    /// The process sent a message to a broker (OTel PRODUCER).
    Producer,
    /// The process received and handled a message (OTel CONSUMER).
    Consumer,
    /// Not observed but concluded by tracer (e.g. "message not delivered"); such spans
    /// carry `tracer.synthesized = true`.
    Internal,
}

impl ExchangeKind {
    /// `server`, `client`, `producer`, `consumer` (as configuration names kinds).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "server" => Self::Server,
            "client" => Self::Client,
            "producer" => Self::Producer,
            "consumer" => Self::Consumer,
            _ => return None,
        })
    }

    /// The kind as configuration and journeys name it (`internal` for synthesized spans).
    pub fn name(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
            Self::Producer => "producer",
            Self::Consumer => "consumer",
            Self::Internal => "internal",
        }
    }

    pub fn from_role(role: Role) -> Self {
        if role == Role::Client {
            Self::Client
        } else {
            Self::Server
        }
    }
}

/// An attribute's value. Text a protocol names from a closed set (`http`, `1.1`, `https`)
/// is borrowed, not allocated per span.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(Cow<'static, str>),
    Int(i64),
}

impl AttrValue {
    /// Fixed text, shared by every span that carries it.
    pub const fn fixed(text: &'static str) -> Self {
        Self::Str(Cow::Borrowed(text))
    }
}

impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        Self::Str(Cow::Owned(v.to_owned()))
    }
}
impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        Self::Str(Cow::Owned(v))
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExchangeStatus {
    Ok,
    Error { error_type: String, message: String },
}

/// The other end of the connection as seen by this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub local: Option<std::net::SocketAddr>,
    pub remote: Option<std::net::SocketAddr>,
}

/// An exchange has begun: enough to give it an identity and find its parent.
#[derive(Clone, Debug)]
pub struct ExchangeStart {
    pub id: ExchangeId,
    pub kind: ExchangeKind,
    pub start_ktime_ns: u64,
    pub tid: u32,
    /// W3C `traceparent` carried by the request, if any.
    pub traceparent: Option<String>,
    /// Fingerprint of a message this exchange sent to a broker.
    pub message_out: Option<u64>,
    /// Fingerprint of a message this exchange received from a broker.
    pub message_in: Option<u64>,
    /// Identifiers in the request or message so far (path, query, non-standard headers,
    /// message ids, bound values): evidence of which incoming request a call serves.
    pub identifiers: Vec<super::identifiers::Identifier>,
}

/// Seen on a broker's own sockets: a message entered (was published to) or left (was
/// delivered by) the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrokerEvent {
    pub fingerprint: u64,
    pub entered: bool,
    pub ktime_ns: u64,
}

/// A finished exchange, ready to become a span.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub protocol: &'static str,
    pub id: ExchangeId,
    pub kind: ExchangeKind,
    pub name: String,
    pub start_ktime_ns: u64,
    pub end_ktime_ns: u64,
    pub tid: u32,
    pub attributes: Vec<(&'static str, AttrValue)>,
    pub status: ExchangeStatus,
    pub traceparent: Option<String>,
    /// The protocol's own record: what its extraction sources read (bodies, headers…);
    /// never exported.
    pub record: Arc<dyn Record>,
    /// Order ids found by the extraction rules, first-found first.
    pub order_ids: Vec<String>,
    /// `app.*` attributes from the extraction rules.
    pub business: Vec<(String, String)>,
}

impl Exchange {
    /// An exchange with no protocol record (synthesized spans, tests).
    pub fn no_record() -> Arc<dyn Record> {
        // One shared: privacy puts it in every span it cleans (an allocation each before).
        static NO_RECORD: std::sync::LazyLock<Arc<dyn Record>> =
            std::sync::LazyLock::new(|| Arc::new(NoRecord));
        NO_RECORD.clone()
    }

    /// A successful HTTP exchange without a record, from 1 to 2 ns on thread 1, for unit
    /// tests to adjust.
    #[cfg(test)]
    pub fn for_tests(kind: ExchangeKind, name: &str) -> Self {
        Self {
            protocol: "http",
            id: ExchangeId::Sequence(0),
            kind,
            name: name.into(),
            start_ktime_ns: 1,
            end_ktime_ns: 2,
            tid: 1,
            attributes: Vec::new(),
            status: ExchangeStatus::Ok,
            traceparent: None,
            record: Self::no_record(),
            order_ids: Vec::new(),
            business: Vec::new(),
        }
    }
}
