//! Application protocols: inferred from a connection's first bytes, then parsed per
//! connection into `Exchange`s. Adding a protocol is one folder plus one registry line:
//! the folder holds its inference, parser, session, record (with the extraction sources it
//! offers) and tests; the registry below is the only list of protocols in the agent.
pub mod amqp;
mod exchange;
#[cfg(test)]
pub(crate) mod golden;
pub mod http;
pub mod http2;
pub mod identifiers;
pub mod postgres;
pub mod record;

pub use exchange::{
    AttrValue, BrokerEvent, Exchange, ExchangeId, ExchangeKind, ExchangeStart, ExchangeStatus, Peer,
};
pub use record::{Record, Source, SourceShape};

use crate::{
    capture::{Direction, Role},
    privacy::Policy,
};

/// What a protocol says about a connection's first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inference {
    Yes,
    No,
    /// Too few bytes to tell.
    NeedMore,
}

/// What a session is told about its connection when it is made.
#[derive(Clone, Copy, Debug)]
pub struct SessionContext {
    pub role: Role,
    /// The direction of the first bytes seen.
    pub first_direction: Direction,
    /// The connection predates the agent (or bytes were lost): the first bytes may be
    /// anywhere in a message, and connection state (e.g. HPACK tables) is unknown.
    pub mid_stream: bool,
    /// The bytes are TLS plaintext from the uprobes.
    pub tls: bool,
}

impl SessionContext {
    /// A plaintext connection.
    pub fn new(role: Role, first_direction: Direction, mid_stream: bool) -> Self {
        Self {
            role,
            first_direction,
            mid_stream,
            tls: false,
        }
    }
}

/// Settings every protocol session gets.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Body bytes kept per message for business rules (order ids, …).
    pub body_prefix_bytes: usize,
    /// Configured route templates (`/orders/{order_id}`), tried before automatic templating;
    /// shared by every session (a copy per connection was a copy per followed socket).
    pub route_templates: std::sync::Arc<[String]>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            body_prefix_bytes: 4096,
            route_templates: std::sync::Arc::default(),
        }
    }
}

/// What a session reports: an exchange began (so children can find it while it is still
/// open), or it ended.
#[derive(Clone, Debug)]
pub enum ExchangeEvent {
    Started(ExchangeStart),
    /// More identifiers of a started exchange (e.g. from a request body read after its
    /// head), for the correlator's causality evidence.
    Identified {
        id: ExchangeId,
        identifiers: Vec<identifiers::Identifier>,
    },
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
        context: SessionContext,
        options: &SessionOptions,
    ) -> Box<dyn ProtocolSession>;
    /// Attributes of its own beyond the common ones the privacy allow-list knows, with
    /// what each may carry: an attribute no one declares never leaves the agent.
    fn attribute_policies(&self) -> &'static [(&'static str, Policy)] {
        &[]
    }
    /// The extraction sources its records offer (`source = "…"` in extraction rules).
    /// Protocols that share semantics share sources (HTTP/1 and HTTP/2: `http_path`, …).
    fn sources(&self) -> &'static [Source];
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
    /// Protocol-specific events worth counting (closed connections only), e.g. HTTP/2
    /// header blocks that could not be decoded: `tracer_protocol_events_total{protocol,event}`.
    fn events(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// The kernel time at which the session wants `expire` called though no bytes came
    /// (e.g. to let go of what it holds for an answer that may never come).
    fn deadline(&self) -> Option<u64> {
        None
    }
    /// Kernel time has reached `now_ns` (at or after `deadline`).
    fn expire(&mut self, _now_ns: u64, _out: &mut Vec<ExchangeEvent>) {}
}

/// The registry: every protocol tracer understands, tried in this order.
pub static PROTOCOLS: &[&dyn Protocol] =
    &[&http2::Http2, &http::Http, &amqp::Amqp, &postgres::Postgres];

/// The extraction source of this name, from whichever protocol declares it.
pub fn source(name: &str) -> Option<&'static Source> {
    PROTOCOLS
        .iter()
        .flat_map(|p| p.sources())
        .find(|s| s.name == name)
}

/// What a protocol-declared attribute may carry, if a protocol declares it.
pub fn attribute_policy(key: &str) -> Option<Policy> {
    PROTOCOLS
        .iter()
        .flat_map(|p| p.attribute_policies())
        .find(|(k, _)| *k == key)
        .map(|(_, policy)| *policy)
}

/// Every extraction source, once each (for error messages and the built-in rules).
pub fn sources() -> Vec<&'static Source> {
    let mut all: Vec<&'static Source> = Vec::new();
    for source in PROTOCOLS.iter().flat_map(|p| p.sources()) {
        if !all.iter().any(|s| s.name == source.name) {
            all.push(source);
        }
    }
    all
}

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

#[cfg(test)]
mod tls_tests {
    use super::*;

    #[test]
    fn tls_records_are_told_from_the_protocols_we_parse() {
        let client_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        let application_data = b"\x17\x03\x03\x00\x45";
        assert!(is_tls_record(client_hello));
        assert!(is_tls_record(application_data));
        for plain in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"AMQP\x00\x00\x09\x01",
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f", // PostgreSQL SSLRequest
            b"\x16\x03",                         // too short to tell
            b"\x18\x03\x03",                     // heartbeat is not a type we expect first
        ] {
            assert!(!is_tls_record(plain), "{plain:?}");
        }
        assert!(infer(client_hello, Direction::Egress, false).is_err());
    }

    #[test]
    fn every_protocol_has_its_folder_of_the_same_name() {
        // `cargo xtask fuzz` and the golden tests find a protocol's fixtures by its name.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protocols");
        for protocol in PROTOCOLS {
            let folder = dir.join(protocol.name());
            assert!(folder.join("mod.rs").exists(), "{}", folder.display());
        }
    }

    #[test]
    fn protocols_that_share_a_source_agree_on_its_shape() {
        for a in PROTOCOLS.iter().flat_map(|p| p.sources()) {
            let b = source(a.name).unwrap();
            assert_eq!(a.shape, b.shape, "{}", a.name);
        }
        assert!(source("http_path").is_some() && source("nope").is_none());
    }
}
