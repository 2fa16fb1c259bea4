//! Decides each span's trace and parent.
//!
//! Rules, in order:
//! 1. SERVER span whose client is a traced process on this host (the connection's 4-tuple
//!    matches a CLIENT connection we follow): child of that CLIENT span.
//! 2. SERVER span with a W3C `traceparent`: continues that trace (remote parent).
//! 3. CLIENT or PRODUCER span: the child of the one SERVER or CONSUMER span of the same
//!    process that evidence ties it to, among those open when it started (see
//!    `causality.rs`: traceparent, identifiers, message, thread); when the evidence is
//!    missing or points two ways it stays a root and is counted as ambiguous.
//! 4. CONSUMER span: a `traceparent` in the message headers wins; otherwise it is the
//!    child of the PRODUCER span whose message has the same fingerprint (what the broker
//!    passes on unchanged), and links to it.
//! 5. Otherwise a new trace.
//!
//! A span's identity is fixed when its request is first seen; parents are resolved a short
//! settle time after it finishes, because the two ends of a local connection can be read
//! from the ring buffer in either order. Messages published and not delivered within
//! `stuck_after_ns` are reported: a counter, a log line, and a synthesized span in the
//! producer's trace.
use std::{
    collections::{BTreeSet, VecDeque},
    net::SocketAddr,
};

use foldhash::HashMap;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracer_common::ConnId;

mod causality;
mod messages;
mod order_traces;

use super::TraceParent;
use crate::privacy::IdKey;
use crate::{
    capture::Connection,
    protocols::{
        identifiers::Identifier, AttrValue, Exchange, ExchangeId, ExchangeKind, ExchangeStart,
    },
};
pub use causality::source;

/// A span ready for export.
#[derive(Clone, Debug)]
pub struct ResolvedSpan {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub parent_is_remote: bool,
    pub links: Vec<(TraceId, SpanId)>,
    /// The trace comes from an order id (this span's or an ancestor's).
    pub order_trace: bool,
    /// Order and user ids of this span and its ancestors in the trace: privacy replaces
    /// them wherever they occur in this span.
    pub known_ids: KnownIds,
    pub exchange: Exchange,
    pub connection: Connection,
    /// How the parent was found (`tracer.parent.source`); `None` for a root.
    pub parent_source: Option<&'static str>,
    /// A call made while several requests of its process were open, with no evidence of
    /// which one it served: left a root (counted per service).
    pub parent_ambiguous: bool,
}

/// Order and user ids known for a span's trace, nearest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KnownIds {
    pub orders: Vec<String>,
    pub users: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct CorrelatorStats {
    pub spans_started: u64,
    pub spans_resolved: u64,
    pub parents_by_peer: u64,
    pub parents_by_traceparent: u64,
    pub parents_by_thread: u64,
    pub parents_by_identifier: u64,
    pub parents_by_message: u64,
    pub parents_ambiguous: u64,
    pub messages_stuck: u64,
    pub evicted_unfinished: u64,
    /// Exported spans forgotten before their retention because the correlator held
    /// `max_kept` spans: a call or delivery reported later can no longer link to them.
    pub forgotten_early: u64,
}

type NodeId = (ConnId, ExchangeId);

#[derive(Clone, Copy, Debug)]
enum Parent {
    Local(NodeId),
    Remote(TraceParent),
    Root,
}

struct Node {
    span_id: SpanId,
    kind: ExchangeKind,
    pid: u32,
    tid: u32,
    start_ns: u64,
    end_ns: Option<u64>,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    traceparent: Option<TraceParent>,
    parent: Option<Parent>,
    trace_id: Option<TraceId>,
    /// Boxed: nodes are kept (small) long after their exchange is exported.
    finished: Option<Box<(Exchange, Connection)>>,
    message_out: Option<u64>,
    message_in: Option<u64>,
    /// CONSUMER: the PRODUCER span its message came from.
    producer: Option<NodeId>,
    /// PRODUCER: a consumer or the broker has delivered its message.
    delivered: bool,
    /// PRODUCER: what a "not delivered" span needs once the span itself is exported.
    published: Option<Box<Published>>,
    /// Order ids of this exchange (set when it finishes).
    order_ids: Box<[String]>,
    /// User ids (`app.user.id`) of this exchange (set when it finishes).
    user_ids: Box<[String]>,
    /// Whether `trace_id` came from an order id.
    order_trace: bool,
    /// Identifiers of its request or message (hashes): causality evidence.
    identifiers: Vec<Identifier>,
    /// CLIENT/PRODUCER: the SERVER/CONSUMER spans of its process open when it started.
    open_at_start: Vec<NodeId>,
    /// How `parent` was found, and whether it was left a root for want of evidence.
    parent_source: Option<&'static str>,
    parent_ambiguous: bool,
}

/// What a PRODUCER span keeps for a "not delivered" span: its connection, protocol and
/// attributes.
type Published = (Connection, &'static str, Vec<(&'static str, AttrValue)>);

/// Spans never finished (a connection we stopped seeing) are dropped after this long.
pub(super) const MAX_OPEN_NS: u64 = 15 * 60 * 1_000_000_000;

pub struct Correlator {
    /// Boxed: the table's own entries stay small (40 bytes), so growing or rehashing it
    /// under a burst moves pointers, not whole nodes.
    nodes: HashMap<NodeId, Box<Node>>,
    /// CLIENT spans by connection (local, remote), for rule 1.
    clients_by_tuple: HashMap<(SocketAddr, SocketAddr), VecDeque<NodeId>>,
    /// SERVER and CONSUMER spans of each process open now, and the last ones closed (a
    /// call's start may be read just after the end of a request it overlapped), for rule 3;
    /// with their start (and end) times, so weighing them for a call reads no node.
    open_by_pid: HashMap<u32, Vec<(NodeId, u64)>>,
    closed_by_pid: HashMap<u32, VecDeque<causality::Closed>>,
    /// CLIENT and PRODUCER spans whose parent is not decided yet: a request they overlap
    /// may still be reported (the connection's events come through another ring).
    /// By start time: a request reported late is weighed for the calls that started after
    /// it, found without walking every call still settling.
    undecided_by_pid: HashMap<u32, BTreeSet<(u64, NodeId)>>,
    /// PRODUCER spans not yet matched to a delivery, by message fingerprint, oldest first.
    producers_by_message: HashMap<u64, VecDeque<NodeId>>,
    /// Broker-side entry times of messages not yet delivered, by fingerprint.
    broker_entered: HashMap<u64, VecDeque<u64>>,
    /// Broker-side (entered, left) times of delivered messages, by fingerprint.
    broker_delivered: HashMap<u64, VecDeque<(u64, u64)>>,
    /// Producers to check for delivery: (deadline, node).
    awaiting_delivery: VecDeque<(u64, NodeId)>,
    /// Finished spans waiting for their settle time: (ready at, node).
    settling: VecDeque<(u64, NodeId)>,
    /// Exported spans in the order they were exported, with their end: eviction takes
    /// them from the front, never walking the whole table.
    exported: VecDeque<(u64, NodeId)>,
    /// Exported PRODUCER spans whose message was not delivered when they had been linkable
    /// for `LINKABLE_NS`: kept for `undelivered_retention_ns`.
    exported_undelivered: VecDeque<(u64, NodeId)>,
    last_open_scan_ns: u64,
    /// Published messages not yet delivered are kept this long after they end (their
    /// consumer's parent, and the "not delivered" report); everything else `LINKABLE_NS`.
    undelivered_retention_ns: u64,
    settle_ns: u64,
    stuck_after_ns: u64,
    last_eviction_ns: u64,
    /// Spans kept at most (beyond it, the oldest exported ones are forgotten first).
    max_kept: usize,
    ids: RandomIdGenerator,
    /// Order id → trace id (HMAC), the same on every agent sharing the key.
    orders: order_traces::OrderTraces,
    stats: CorrelatorStats,
}

/// Spans the correlator keeps at most, ~400 bytes each. At up to ~8k spans/s
/// that is every span of the last `LINKABLE_NS`; a busier host keeps the most recent ones,
/// so a burst cannot grow the agent past its memory limit (every span for 20 s at 40k
/// spans/s was over 800 MB).
const MAX_KEPT: usize = 160_000;

/// How long a finished span waits for its unfinished parent before it is exported anyway.
const MAX_PARENT_WAIT_NS: u64 = 10_000_000_000;
/// How long a resolved span stays known once it ended: as the parent (and trace) of a call
/// or delivery reported late, and as the client a server span is matched with. Beyond
/// this nothing links to it, so keeping it would only cost memory (at 20k spans/s, every
/// second kept holds ~7 MB).
pub(super) const LINKABLE_NS: u64 = 2 * MAX_PARENT_WAIT_NS;

impl Correlator {
    /// `orders` is the deployment's HMAC key: an order's trace id is derived from it.
    pub fn new(settle_ns: u64, stuck_after_ns: u64, orders: IdKey) -> Self {
        Self {
            nodes: HashMap::default(),
            clients_by_tuple: HashMap::default(),
            open_by_pid: HashMap::default(),
            closed_by_pid: HashMap::default(),
            undecided_by_pid: HashMap::default(),
            producers_by_message: HashMap::default(),
            broker_entered: HashMap::default(),
            broker_delivered: HashMap::default(),
            awaiting_delivery: VecDeque::new(),
            settling: VecDeque::new(),
            exported: VecDeque::new(),
            exported_undelivered: VecDeque::new(),
            last_open_scan_ns: 0,
            undelivered_retention_ns: stuck_after_ns + 10_000_000_000,
            settle_ns,
            stuck_after_ns,
            last_eviction_ns: 0,
            max_kept: MAX_KEPT,
            ids: RandomIdGenerator::default(),
            orders: order_traces::OrderTraces::new(orders),
            stats: CorrelatorStats::default(),
        }
    }

    pub fn stats(&self) -> CorrelatorStats {
        self.stats
    }

    /// Keeps at most `spans` spans (the default suits a host's memory limit).
    pub fn keep_at_most(mut self, spans: usize) -> Self {
        self.max_kept = spans;
        self
    }

    /// Spans held now.
    pub fn spans_held(&self) -> usize {
        self.nodes.len()
    }

    /// Entries in the indexes beside the table: calls by connection, open and recently
    /// closed requests, calls undecided, producers awaiting delivery.
    #[cfg(test)]
    pub(super) fn indexed(&self) -> [usize; 5] {
        [
            self.clients_by_tuple.values().map(VecDeque::len).sum(),
            self.open_by_pid.values().map(Vec::len).sum(),
            self.closed_by_pid.values().map(VecDeque::len).sum(),
            self.undecided_by_pid.values().map(BTreeSet::len).sum(),
            self.producers_by_message.values().map(VecDeque::len).sum(),
        ]
    }

    pub fn started(&mut self, connection: &Connection, start: &ExchangeStart) {
        let id = (connection.id, start.id);
        self.stats.spans_started += 1;
        let mut node = Node {
            span_id: self.ids.new_span_id(),
            kind: start.kind,
            pid: connection.id.tgid,
            tid: start.tid,
            start_ns: start.start_ktime_ns,
            end_ns: None,
            local: connection.local,
            remote: connection.remote,
            traceparent: start.traceparent.as_deref().and_then(TraceParent::parse),
            parent: None,
            trace_id: None,
            finished: None,
            message_out: start.message_out,
            message_in: start.message_in,
            producer: None,
            delivered: false,
            published: None,
            order_ids: Box::default(),
            user_ids: Box::default(),
            order_trace: false,
            identifiers: start.identifiers.clone(),
            open_at_start: Vec::new(),
            parent_source: None,
            parent_ambiguous: false,
        };
        match node.kind {
            ExchangeKind::Client => {
                if let (Some(local), Some(remote)) = (node.local, node.remote) {
                    self.clients_by_tuple
                        .entry((local, remote))
                        .or_default()
                        .push_back(id);
                }
            }
            ExchangeKind::Server | ExchangeKind::Consumer => {
                self.open_by_pid
                    .entry(node.pid)
                    .or_default()
                    .push((id, node.start_ns));
                self.late_request(id, node.pid, node.start_ns);
            }
            ExchangeKind::Producer | ExchangeKind::Internal => {}
        }
        if matches!(node.kind, ExchangeKind::Client | ExchangeKind::Producer) {
            node.open_at_start = self.open_requests(node.pid, node.start_ns);
            self.undecided_by_pid
                .entry(node.pid)
                .or_default()
                .insert((node.start_ns, id));
        }
        if let Some(fingerprint) = node.message_out {
            self.producers_by_message
                .entry(fingerprint)
                .or_default()
                .push_back(id);
            self.awaiting_delivery
                .push_back((node.start_ns + self.stuck_after_ns, id));
        }
        let consumes = node.message_in.is_some();
        self.nodes.insert(id, Box::new(node));
        if consumes {
            self.match_producer(id);
        }
    }

    /// `now_ns` is kernel time; the span is resolved `settle_ns` later by `poll`.
    pub fn finished(&mut self, connection: &Connection, exchange: Exchange, now_ns: u64) {
        let id = (connection.id, exchange.id);
        if !self.nodes.contains_key(&id) {
            // Its start was never reported (cannot happen with our sessions, but be safe).
            let start = ExchangeStart {
                id: exchange.id,
                kind: exchange.kind,
                start_ktime_ns: exchange.start_ktime_ns,
                tid: exchange.tid,
                traceparent: exchange.traceparent.clone(),
                message_out: None,
                message_in: None,
                identifiers: Vec::new(),
            };
            self.started(connection, &start);
        }
        let node = self.nodes.get_mut(&id).expect("inserted above");
        if matches!(node.kind, ExchangeKind::Server | ExchangeKind::Consumer) {
            let (pid, start_ns) = (node.pid, node.start_ns);
            self.close_request(pid, id, (start_ns, exchange.end_ktime_ns));
        }
        let node = self.nodes.get_mut(&id).expect("inserted above");
        if node.message_out.is_some() {
            node.published = Some(Box::new((
                connection.clone(),
                exchange.protocol,
                exchange.attributes.clone(),
            )));
        }
        node.end_ns = Some(exchange.end_ktime_ns);
        // Addresses may have become known after the start.
        node.local = node.local.or(connection.local);
        node.remote = node.remote.or(connection.remote);
        node.order_ids = exchange.order_ids.clone().into_boxed_slice();
        node.user_ids = exchange
            .business
            .iter()
            .filter(|(k, _)| k == crate::extract::USER_ID)
            .map(|(_, v)| v.clone())
            .collect();
        node.finished = Some(Box::new((exchange, connection.clone())));
        self.settling.push_back((now_ns + self.settle_ns, id));
    }

    /// Forgets a started exchange that will not become a span (telemetry export traffic).
    pub fn discard(&mut self, connection: &Connection, id: ExchangeId) {
        self.forget((connection.id, id));
    }

    /// Forgets the exchanges of a connection that will give no more spans (one found
    /// carrying telemetry exports) that have not finished: none may become a span.
    pub fn forget_connection(&mut self, conn: ConnId) {
        let open: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(id, node)| id.0 == conn && node.end_ns.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in open {
            self.forget(id);
        }
    }

    /// Removes a span from the table and from every index that names it.
    fn forget(&mut self, id: NodeId) -> Option<Box<Node>> {
        let node = self.nodes.remove(&id)?;
        match node.kind {
            ExchangeKind::Client => {
                if let (Some(local), Some(remote)) = (node.local, node.remote) {
                    let key = (local, remote);
                    if let Some(clients) = self.clients_by_tuple.get_mut(&key) {
                        // Forgotten in about the order they started: nearly always the front.
                        if clients.front() == Some(&id) {
                            clients.pop_front();
                        } else if let Some(at) = clients.iter().position(|c| *c == id) {
                            clients.remove(at);
                        }
                        if clients.is_empty() {
                            self.clients_by_tuple.remove(&key);
                        }
                    }
                }
            }
            ExchangeKind::Server | ExchangeKind::Consumer => {
                if node.end_ns.is_none() {
                    if let Some(open) = self.open_by_pid.get_mut(&node.pid) {
                        open.retain(|(other, _)| *other != id);
                    }
                }
                // Its entry in `closed_by_pid` (if 64 more have not closed since) goes at
                // the next eviction: a walk of 64 entries per forgotten span was 2 % of
                // the path, and nothing takes a forgotten span for a candidate meanwhile.
            }
            ExchangeKind::Producer | ExchangeKind::Internal => {}
        }
        if matches!(node.kind, ExchangeKind::Client | ExchangeKind::Producer) {
            self.decided(node.pid, node.start_ns, id);
        }
        if let Some(fingerprint) = node.message_out {
            if let Some(producers) = self.producers_by_message.get_mut(&fingerprint) {
                producers.retain(|other| *other != id);
                if producers.is_empty() {
                    self.producers_by_message.remove(&fingerprint);
                }
            }
        }
        Some(node)
    }

    /// Resolves spans whose settle time has passed. `now_ns` is kernel time.
    pub fn poll(&mut self, now_ns: u64, out: &mut Vec<ResolvedSpan>) {
        // Spans put back to wait for their parent rejoin the queue after this pass: with
        // no settle time they would be ready again at once, and the pass would not end.
        let mut waiting = Vec::new();
        while let Some(&(ready_at, id)) = self.settling.front() {
            if ready_at > now_ns {
                break;
            }
            self.settling.pop_front();
            if self.parent_unfinished(id, now_ns) {
                // Its parent (e.g. the server span it was called from) may still name the
                // order that decides the trace: wait for it, within reason.
                waiting.push((now_ns + self.settle_ns, id));
                continue;
            }
            if let Some(span) = self.resolve(id) {
                self.stats.spans_resolved += 1;
                out.push(span);
            }
        }
        self.settling.extend(waiting);
        self.check_deliveries(now_ns, out);
        self.evict(now_ns);
    }

    fn parent_unfinished(&mut self, id: NodeId, now_ns: u64) -> bool {
        let Parent::Local(parent) = self.parent_of(id) else {
            return false;
        };
        let end = self.nodes.get(&id).and_then(|n| n.end_ns).unwrap_or(now_ns);
        let waited_enough = now_ns.saturating_sub(end) > MAX_PARENT_WAIT_NS;
        !waited_enough && self.nodes.get(&parent).is_some_and(|p| p.end_ns.is_none())
    }

    /// Resolves everything still settling (at shutdown).
    pub fn flush(&mut self, out: &mut Vec<ResolvedSpan>) {
        while let Some((_, id)) = self.settling.pop_front() {
            if let Some(span) = self.resolve(id) {
                self.stats.spans_resolved += 1;
                out.push(span);
            }
        }
    }

    fn resolve(&mut self, id: NodeId) -> Option<ResolvedSpan> {
        let trace_id = self.trace_of(id);
        let parent = self.parent_of(id);
        // What the span needs of its node, read in one lookup.
        let node = self.nodes.get_mut(&id)?;
        let (mut exchange, connection) = *node.finished.take()?;
        let span_id = node.span_id;
        let (producer, message_in) = (node.producer, node.message_in.is_some());
        let end_ns = node.end_ns.unwrap_or(node.start_ns);
        let (order_trace, parent_source, parent_ambiguous) =
            (node.order_trace, node.parent_source, node.parent_ambiguous);
        let mut links = Vec::new();
        let (parent_span_id, parent_is_remote) = match parent {
            Parent::Local(p) => {
                let parent_trace = self.trace_of(p);
                match self.nodes.get(&p) {
                    // A parent in another trace (a different order) is a link, not a parent.
                    Some(n) if parent_trace != trace_id => {
                        links.push((parent_trace, n.span_id));
                        (None, false)
                    }
                    Some(n) => (Some(n.span_id), false),
                    None => (None, false),
                }
            }
            Parent::Remote(tp) if TraceId::from_bytes(tp.trace_id) == trace_id => {
                (Some(SpanId::from_bytes(tp.parent_id)), true)
            }
            Parent::Remote(tp) => {
                links.push((
                    TraceId::from_bytes(tp.trace_id),
                    SpanId::from_bytes(tp.parent_id),
                ));
                (None, false)
            }
            Parent::Root => (None, false),
        };
        // Every order the span names beyond the one that decided its trace is linked.
        for order in &exchange.order_ids {
            let (order_trace, anchor) = self.orders.of(order);
            if order_trace != trace_id {
                links.push((order_trace, anchor));
            }
        }
        if let Some(producer) = producer {
            let producer_trace = self.trace_of(producer);
            if let Some(p) = self.nodes.get(&producer) {
                links.push((producer_trace, p.span_id));
            }
        }
        // Only a delivered message has a time in the queue.
        if let Some((residence_ns, source)) = message_in.then(|| self.residence(id)).flatten() {
            exchange.attributes.push((
                "tracer.messaging.queue_residence_ms",
                ((residence_ns / 1_000_000) as i64).into(),
            ));
            exchange
                .attributes
                .push(("tracer.messaging.queue_residence_source", source.into()));
        }
        let known_ids = self.known_ids(id, trace_id);
        self.exported.push_back((end_ns, id));
        // A parent that became a link (another order's trace) is no parent.
        let parent_source = parent_span_id.and(parent_source);
        Some(ResolvedSpan {
            trace_id,
            span_id,
            parent_span_id,
            parent_is_remote,
            links,
            order_trace,
            known_ids,
            exchange,
            connection,
            parent_source,
            parent_ambiguous,
        })
    }

    /// The ids a node and its ancestors in `trace` named, nearest first.
    fn known_ids(&self, id: NodeId, trace: TraceId) -> KnownIds {
        let mut ids = KnownIds::default();
        let mut current = Some(id);
        for _ in 0..64 {
            let Some(node) = current.and_then(|c| self.nodes.get(&c)) else {
                break;
            };
            if node.trace_id.is_some_and(|t| t != trace) {
                break;
            }
            ids.orders.extend(node.order_ids.iter().cloned());
            ids.users.extend(node.user_ids.iter().cloned());
            current = match node.parent {
                Some(Parent::Local(parent)) => Some(parent),
                _ => None,
            };
        }
        ids
    }

    /// The trace of a node: its parent's, recursively, or a new one for a root.
    fn trace_of(&mut self, id: NodeId) -> TraceId {
        // How many nodes up from `id` have no trace yet: they all get the one found.
        let mut walked = 0;
        let mut current = id;
        let trace = loop {
            let Some(node) = self.nodes.get(&current) else {
                break (self.ids.new_trace_id(), false);
            };
            if let Some(trace) = node.trace_id {
                break (trace, node.order_trace);
            }
            walked += 1;
            // An explicit traceparent wins for the span it arrived with; then its order.
            if let Some(tp) = node.traceparent {
                break (TraceId::from_bytes(tp.trace_id), false);
            }
            if let Some(order) = node.order_ids.first() {
                break (self.orders.trace(order), true);
            }
            if walked > 64 {
                break (self.ids.new_trace_id(), false); // a cycle cannot happen, but never loop forever
            }
            match self.parent_of(current) {
                Parent::Local(parent) => current = parent,
                Parent::Remote(tp) => break (TraceId::from_bytes(tp.trace_id), false),
                Parent::Root => break (self.ids.new_trace_id(), false),
            }
        };
        let (trace, from_order) = trace;
        // The same nodes again, by the parents just decided (no list of them allocated).
        let mut current = id;
        for _ in 0..walked {
            let Some(node) = self.nodes.get_mut(&current) else {
                break;
            };
            node.trace_id = Some(trace);
            node.order_trace = from_order;
            match node.parent {
                Some(Parent::Local(parent)) => current = parent,
                _ => break,
            }
        }
        trace
    }

    /// The parent of a node by the rules at the top of this file (computed once).
    fn parent_of(&mut self, id: NodeId) -> Parent {
        let Some(node) = self.nodes.get(&id) else {
            return Parent::Root;
        };
        if let Some(parent) = node.parent {
            return parent;
        }
        let node = if node.kind == ExchangeKind::Consumer && node.producer.is_none() {
            // The producer's start may have been read after this consumer's.
            self.match_producer(id);
            let Some(node) = self.nodes.get(&id) else {
                return Parent::Root;
            };
            node
        } else {
            node
        };
        let (parent, source) = match node.kind {
            ExchangeKind::Server => match self.peer_client(id, node) {
                Some(client) => {
                    self.stats.parents_by_peer += 1;
                    (Parent::Local(client), Some(source::PEER))
                }
                None => match node.traceparent {
                    Some(tp) => {
                        self.stats.parents_by_traceparent += 1;
                        (Parent::Remote(tp), Some(source::TRACEPARENT))
                    }
                    None => (Parent::Root, None),
                },
            },
            ExchangeKind::Consumer => match (node.traceparent, node.producer) {
                (Some(tp), _) => {
                    self.stats.parents_by_traceparent += 1;
                    (Parent::Remote(tp), Some(source::TRACEPARENT))
                }
                (None, Some(producer)) => {
                    self.stats.parents_by_message += 1;
                    (Parent::Local(producer), Some(source::MESSAGE))
                }
                (None, None) => (Parent::Root, None),
            },
            ExchangeKind::Client | ExchangeKind::Producer => self.causal_parent(id),
            ExchangeKind::Internal => (Parent::Root, None),
        };
        if let Some(node) = self.nodes.get_mut(&id) {
            node.parent = Some(parent);
            node.parent_source = source;
            // Decided once: the evidence a call weighed is not needed again (a request's
            // own identifiers are, for calls still to be decided).
            if matches!(node.kind, ExchangeKind::Client | ExchangeKind::Producer) {
                node.open_at_start = Vec::new();
                node.identifiers = Vec::new();
                let (pid, start_ns) = (node.pid, node.start_ns);
                self.decided(pid, start_ns, id);
            }
        }
        parent
    }

    /// Rule 1: the CLIENT span at the other end of this SERVER span's connection.
    fn peer_client(&self, id: NodeId, node: &Node) -> Option<NodeId> {
        let (local, remote) = (node.local?, node.remote?);
        let clients = self.clients_by_tuple.get(&(remote, local))?;
        // Newest first: on a busy keep-alive connection the match is among the last ones.
        // Both ends are on this host (one kernel clock): the call starts before its serving
        // ends. (A socket write is stamped when its syscall returns: over loopback the
        // server may have read a request before the client's long write of many streams
        // returned. A TLS write is stamped at the library call's entry, before its bytes
        // reach the socket.)
        let served_until = node.end_ns.unwrap_or(node.start_ns).max(node.start_ns);
        let started_before = |client: &NodeId| {
            self.nodes
                .get(client)
                .is_some_and(|c| c.start_ns <= served_until)
        };
        // The tuple's newest client connection holds the match when it exists: a tuple is
        // reused only after its connection closed, so older connections' calls all come
        // before it, and an exchange id is unique on a connection. One lookup instead of a
        // scan past every call that connection made since (hundreds on a busy one).
        if let Some(newest) = clients.back() {
            let candidate = (newest.0, id.1);
            let matches = self
                .nodes
                .get(&candidate)
                .is_some_and(|c| c.kind == ExchangeKind::Client && c.start_ns <= served_until);
            if matches {
                return Some(candidate);
            }
        }
        if let Some(client) = clients
            .iter()
            .rev()
            .find(|client| client.1 == id.1 && started_before(client))
        {
            return Some(*client);
        }
        if matches!(id.1, ExchangeId::Stream(_)) {
            // Streams are named alike at both ends: no match is no parent, never a guess
            // among the other streams of the connection.
            return None;
        }
        // Sequence numbers differ when one side was seen mid-connection: fall back to the
        // latest client request on that tuple that started before this one.
        clients
            .iter()
            .filter_map(|client| Some((*client, self.nodes.get(client)?.start_ns)))
            .filter(|(_, start)| *start <= node.start_ns)
            .max_by_key(|(_, start)| *start)
            .map(|(client, _)| client)
    }

    /// Once a second: forgets the exported spans nothing can link to any more (from the
    /// front of `exported`, without walking the table), and, once a minute, spans never
    /// finished within `MAX_OPEN_NS`.
    fn evict(&mut self, now_ns: u64) {
        if now_ns.saturating_sub(self.last_eviction_ns) < 1_000_000_000 {
            return;
        }
        self.last_eviction_ns = now_ns;
        while let Some(&(end, id)) = self.exported.front() {
            if now_ns.saturating_sub(end) < LINKABLE_NS {
                break;
            }
            self.exported.pop_front();
            if self.awaits_delivery(id) {
                self.exported_undelivered.push_back((end, id));
            } else {
                self.forget(id);
            }
        }
        while let Some(&(end, id)) = self.exported_undelivered.front() {
            if now_ns.saturating_sub(end) < self.undelivered_retention_ns {
                break;
            }
            self.exported_undelivered.pop_front();
            self.forget(id);
        }
        if now_ns.saturating_sub(self.last_open_scan_ns) >= OPEN_SCAN_EVERY_NS {
            self.last_open_scan_ns = now_ns;
            let abandoned: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|(_, n)| {
                    n.end_ns.is_none() && now_ns.saturating_sub(n.start_ns) >= MAX_OPEN_NS
                })
                .map(|(id, _)| *id)
                .collect();
            self.stats.evicted_unfinished += abandoned.len() as u64;
            for id in abandoned {
                self.forget(id);
            }
        }
        self.forget_oldest_exported();
        // Processes with no request open any more, and recently closed requests that were
        // forgotten since (see `forget`).
        self.open_by_pid.retain(|_, open| !open.is_empty());
        let nodes = &self.nodes;
        self.closed_by_pid.retain(|_, closed| {
            closed.retain(|c| nodes.contains_key(&c.id));
            !closed.is_empty()
        });
    }

    /// A PRODUCER span whose message no consumer or broker has delivered yet.
    fn awaits_delivery(&self, id: NodeId) -> bool {
        self.nodes
            .get(&id)
            .is_some_and(|n| n.message_out.is_some() && !n.delivered)
    }
}

/// How often spans never finished are looked for (a walk of the whole table).
const OPEN_SCAN_EVERY_NS: u64 = 60_000_000_000;

impl Correlator {
    /// Beyond `max_kept` spans, forgets the oldest exported ones (never one still to be
    /// exported, open, or a published message not yet delivered) down to three quarters
    /// of it, so the table keeps room for the next second's spans; each is counted.
    fn forget_oldest_exported(&mut self) {
        if self.nodes.len() <= self.max_kept {
            self.shrink();
            return;
        }
        let target = self.max_kept * 3 / 4;
        let before = self.stats.forgotten_early;
        let mut kept_undelivered = VecDeque::new();
        while self.nodes.len() > target {
            let Some((end, id)) = self.exported.pop_front() else {
                break;
            };
            if self.awaits_delivery(id) {
                kept_undelivered.push_back((end, id));
            } else if self.forget(id).is_some() {
                self.stats.forgotten_early += 1;
            }
        }
        // Still the oldest exported: back at the front, in their order.
        while let Some(entry) = kept_undelivered.pop_back() {
            self.exported.push_front(entry);
        }
        if before == 0 && self.stats.forgotten_early > 0 {
            tracing::warn!(
                kept = self.max_kept,
                "correlator full: forgetting the oldest exported spans before their retention; calls or deliveries reported later cannot link to them (tracer_correlator_spans_forgotten_early_total)"
            );
        }
    }

    /// Gives memory back once a burst has passed.
    fn shrink(&mut self) {
        if self.nodes.capacity() > 65_536 && self.nodes.capacity() > 4 * self.nodes.len() {
            self.nodes.shrink_to(2 * self.nodes.len());
        }
        if self.exported.capacity() > 65_536 && self.exported.capacity() > 4 * self.exported.len() {
            self.exported.shrink_to(2 * self.exported.len());
        }
    }
}

#[cfg(test)]
mod size {
    /// Nodes outlive their exchanges by the retention time, tens of thousands at a time
    /// on a busy host: keep them small.
    #[test]
    fn a_node_stays_small() {
        let size = std::mem::size_of::<super::Node>();
        assert!(size <= 384, "Node is {size} bytes");
    }
}
