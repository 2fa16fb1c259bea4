//! Decides each span's trace and parent.
//!
//! Rules, in order:
//! 1. SERVER span whose client is a traced process on this host (the connection's 4-tuple
//!    matches a CLIENT connection we follow): child of that CLIENT span.
//! 2. SERVER span with a W3C `traceparent`: continues that trace (remote parent).
//! 3. CLIENT span made while a SERVER span of the same process is open on the same thread:
//!    child of that SERVER span; else, if the request carries a `traceparent` (the process
//!    propagates context itself), a child of that remote context.
//! 4. Otherwise a new trace.
//!
//! A span's identity is fixed when its request is first seen; parents are resolved a short
//! settle time after it finishes, because the two ends of a local connection can be read
//! from the ring buffer in either order.
use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracer_common::ConnId;

use super::TraceParent;
use crate::{
    capture::Connection,
    protocols::{Exchange, ExchangeKind, ExchangeStart},
};

/// A span ready for export.
#[derive(Clone, Debug)]
pub struct ResolvedSpan {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub parent_is_remote: bool,
    pub exchange: Exchange,
    pub connection: Connection,
}

#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct CorrelatorStats {
    pub spans_started: u64,
    pub spans_resolved: u64,
    pub parents_by_peer: u64,
    pub parents_by_traceparent: u64,
    pub parents_in_process: u64,
    pub evicted_unfinished: u64,
}

type NodeId = (ConnId, u64);

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
    finished: Option<(Exchange, Connection)>,
}

pub struct Correlator {
    nodes: HashMap<NodeId, Node>,
    /// CLIENT spans by connection (local, remote), for rule 1.
    clients_by_tuple: HashMap<(SocketAddr, SocketAddr), Vec<NodeId>>,
    /// SERVER spans per process in start order, for rule 3.
    servers_by_pid: HashMap<u32, VecDeque<NodeId>>,
    /// Finished spans waiting for their settle time: (ready at, node).
    settling: VecDeque<(u64, NodeId)>,
    /// Resolved spans kept (as parents for later children) until this long after they end.
    retention_ns: u64,
    settle_ns: u64,
    last_eviction_ns: u64,
    ids: RandomIdGenerator,
    stats: CorrelatorStats,
}

/// Spans never finished (a connection we stopped seeing) are dropped after this long.
const MAX_OPEN_NS: u64 = 15 * 60 * 1_000_000_000;

impl Correlator {
    pub fn new(settle_ns: u64) -> Self {
        Self {
            nodes: HashMap::new(),
            clients_by_tuple: HashMap::new(),
            servers_by_pid: HashMap::new(),
            settling: VecDeque::new(),
            retention_ns: 60_000_000_000,
            settle_ns,
            last_eviction_ns: 0,
            ids: RandomIdGenerator::default(),
            stats: CorrelatorStats::default(),
        }
    }

    pub fn stats(&self) -> CorrelatorStats {
        self.stats
    }

    pub fn started(&mut self, connection: &Connection, start: &ExchangeStart) {
        let id = (connection.id, start.sequence);
        self.stats.spans_started += 1;
        let node = Node {
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
        };
        match node.kind {
            ExchangeKind::Client => {
                if let (Some(local), Some(remote)) = (node.local, node.remote) {
                    self.clients_by_tuple
                        .entry((local, remote))
                        .or_default()
                        .push(id);
                }
            }
            ExchangeKind::Server => self
                .servers_by_pid
                .entry(node.pid)
                .or_default()
                .push_back(id),
        }
        self.nodes.insert(id, node);
    }

    /// `now_ns` is kernel time; the span is resolved `settle_ns` later by `poll`.
    pub fn finished(&mut self, connection: &Connection, exchange: Exchange, now_ns: u64) {
        let id = (connection.id, exchange.sequence);
        if !self.nodes.contains_key(&id) {
            // Its start was never reported (cannot happen with our sessions, but be safe).
            let start = ExchangeStart {
                sequence: exchange.sequence,
                kind: exchange.kind,
                start_ktime_ns: exchange.start_ktime_ns,
                tid: exchange.tid,
                traceparent: exchange.traceparent.clone(),
            };
            self.started(connection, &start);
        }
        let node = self.nodes.get_mut(&id).expect("inserted above");
        node.end_ns = Some(exchange.end_ktime_ns);
        // Addresses may have become known after the start.
        node.local = node.local.or(connection.local);
        node.remote = node.remote.or(connection.remote);
        node.finished = Some((exchange, connection.clone()));
        self.settling.push_back((now_ns + self.settle_ns, id));
    }

    /// Resolves spans whose settle time has passed. `now_ns` is kernel time.
    pub fn poll(&mut self, now_ns: u64, out: &mut Vec<ResolvedSpan>) {
        while let Some(&(ready_at, id)) = self.settling.front() {
            if ready_at > now_ns {
                break;
            }
            self.settling.pop_front();
            if let Some(span) = self.resolve(id) {
                self.stats.spans_resolved += 1;
                out.push(span);
            }
        }
        self.evict(now_ns);
    }

    /// Resolves everything still settling (at shutdown).
    pub fn flush(&mut self, out: &mut Vec<ResolvedSpan>) {
        self.poll(u64::MAX, out);
    }

    fn resolve(&mut self, id: NodeId) -> Option<ResolvedSpan> {
        let trace_id = self.trace_of(id);
        let parent = self.parent_of(id);
        let node = self.nodes.get_mut(&id)?;
        let (exchange, connection) = node.finished.take()?;
        let (parent_span_id, parent_is_remote) = match parent {
            Parent::Local(p) => (self.nodes.get(&p).map(|n| n.span_id), false),
            Parent::Remote(tp) => (Some(SpanId::from_bytes(tp.parent_id)), true),
            Parent::Root => (None, false),
        };
        let node = self.nodes.get(&id)?;
        Some(ResolvedSpan {
            trace_id,
            span_id: node.span_id,
            parent_span_id,
            parent_is_remote,
            exchange,
            connection,
        })
    }

    /// The trace of a node: its parent's, recursively, or a new one for a root.
    fn trace_of(&mut self, id: NodeId) -> TraceId {
        let mut chain = Vec::new();
        let mut current = id;
        let trace = loop {
            let Some(node) = self.nodes.get(&current) else {
                break self.ids.new_trace_id();
            };
            if let Some(trace) = node.trace_id {
                break trace;
            }
            chain.push(current);
            if chain.len() > 64 {
                break self.ids.new_trace_id(); // a cycle cannot happen, but never loop forever
            }
            match self.parent_of(current) {
                Parent::Local(parent) => current = parent,
                Parent::Remote(tp) => break TraceId::from_bytes(tp.trace_id),
                Parent::Root => {
                    let node = &self.nodes[&current];
                    // A CLIENT request carrying its own traceparent keeps that trace.
                    break match node.traceparent {
                        Some(tp) => TraceId::from_bytes(tp.trace_id),
                        None => self.ids.new_trace_id(),
                    };
                }
            }
        };
        for node in chain {
            if let Some(node) = self.nodes.get_mut(&node) {
                node.trace_id = Some(trace);
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
        let parent = match node.kind {
            ExchangeKind::Server => self
                .peer_client(id, node)
                .map(|p| {
                    self.stats.parents_by_peer += 1;
                    Parent::Local(p)
                })
                .or_else(|| {
                    node.traceparent.map(|tp| {
                        self.stats.parents_by_traceparent += 1;
                        Parent::Remote(tp)
                    })
                }),
            ExchangeKind::Client => self
                .open_server_on_thread(node)
                .map(|p| {
                    self.stats.parents_in_process += 1;
                    Parent::Local(p)
                })
                // A request that carries its own traceparent names its caller's context.
                .or_else(|| node.traceparent.map(Parent::Remote)),
        }
        .unwrap_or(Parent::Root);
        if let Some(node) = self.nodes.get_mut(&id) {
            node.parent = Some(parent);
        }
        parent
    }

    /// Rule 1: the CLIENT span at the other end of this SERVER span's connection.
    fn peer_client(&self, id: NodeId, node: &Node) -> Option<NodeId> {
        let (local, remote) = (node.local?, node.remote?);
        let clients = self.clients_by_tuple.get(&(remote, local))?;
        if let Some(client) = clients.iter().find(|client| client.1 == id.1) {
            return Some(*client);
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

    /// Rule 3: the latest SERVER span of the same process and thread open at this start.
    fn open_server_on_thread(&self, node: &Node) -> Option<NodeId> {
        let servers = self.servers_by_pid.get(&node.pid)?;
        servers.iter().rev().copied().find(|server| {
            self.nodes.get(server).is_some_and(|s| {
                s.tid == node.tid
                    && s.start_ns <= node.start_ns
                    && s.end_ns.is_none_or(|end| end >= node.start_ns)
            })
        })
    }

    fn evict(&mut self, now_ns: u64) {
        if now_ns.saturating_sub(self.last_eviction_ns) < 1_000_000_000 {
            return;
        }
        self.last_eviction_ns = now_ns;
        let retention = self.retention_ns;
        let before = self.nodes.len();
        let mut unfinished = 0;
        self.nodes.retain(|_, n| {
            let keep = match n.end_ns {
                Some(end) => n.finished.is_some() || now_ns.saturating_sub(end) < retention,
                None => now_ns.saturating_sub(n.start_ns) < MAX_OPEN_NS,
            };
            if !keep && n.end_ns.is_none() {
                unfinished += 1;
            }
            keep
        });
        self.stats.evicted_unfinished += unfinished;
        if self.nodes.len() != before {
            let nodes = &self.nodes;
            for clients in self.clients_by_tuple.values_mut() {
                clients.retain(|id| nodes.contains_key(id));
            }
            self.clients_by_tuple
                .retain(|_, clients| !clients.is_empty());
            for servers in self.servers_by_pid.values_mut() {
                servers.retain(|id| nodes.contains_key(id));
            }
            self.servers_by_pid.retain(|_, servers| !servers.is_empty());
        }
    }
}
