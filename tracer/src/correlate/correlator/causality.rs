//! Which incoming request an outgoing call serves. A CLIENT or PRODUCER span is the child
//! of one SERVER or CONSUMER span of its own process that was open when it started — but
//! only on evidence. In event-loop and thread-pool services (Node.js, asyncio, .NET
//! async) many requests are open at once and the thread says nothing, so a wrong guess is
//! easy; a wrong parent puts one order's call in another order's trace, which is worse
//! than none. In order of precedence:
//!
//! 1. `traceparent`: the call carries W3C trace context (the process propagates it):
//!    the open request that arrived with the same trace id, else that remote context;
//! 2. identifiers (`identifier`, or `message` for a publish while handling a delivery):
//!    values of the call (path segments, query and JSON values, non-standard headers,
//!    message and correlation ids, bound SQL values) that occur in exactly one of the open
//!    requests; every such value must point at the same one;
//! 3. `thread`: the only request open in the process, read on the call's own thread
//!    (thread-per-request servers, or one request at a time).
//!
//! Otherwise the call stays a root (still in its order's trace when it names one); if
//! requests were open it is counted as ambiguous.
use tracer_common::ConnId;

use super::{Correlator, NodeId, Parent};
use crate::{
    capture::Connection,
    protocols::{identifiers::Identifier, ExchangeId, ExchangeKind},
};

/// `tracer.parent.source`: how a span's parent was found.
pub mod source {
    /// A SERVER span's client, seen on the same host (the connection's 4-tuple).
    pub const PEER: &str = "peer";
    /// W3C trace context carried by the request or message.
    pub const TRACEPARENT: &str = "traceparent";
    /// The only request open in the process, on the same thread.
    pub const THREAD: &str = "thread";
    /// A value of the call found in exactly one open request.
    pub const IDENTIFIER: &str = "identifier";
    /// A message: the publish a delivery came from, or the delivery a publish answers.
    pub const MESSAGE: &str = "message";
}

/// More open requests than this when a call starts: too many to weigh, the call is left
/// a root unless it carries trace context.
const MAX_CANDIDATES: usize = 256;
/// Closed requests remembered per process, in case a call that overlapped one is read
/// after its end.
const RECENTLY_CLOSED: usize = 64;

/// A request of the process that closed recently, with its times.
pub(super) struct Closed {
    pub id: NodeId,
    start_ns: u64,
    end_ns: u64,
}

enum Vote {
    None,
    One(NodeId),
    /// Values point at different requests.
    Conflict,
}

impl Correlator {
    /// The SERVER and CONSUMER spans of `pid` open at `start_ns`: the candidates for the
    /// parent of a call starting then.
    pub(super) fn open_requests(&self, pid: u32, start_ns: u64) -> Vec<NodeId> {
        let open = self.open_by_pid.get(&pid).into_iter().flatten();
        let open = open
            .filter(|(_, start)| *start <= start_ns)
            .map(|(id, _)| *id);
        let closed = self.closed_by_pid.get(&pid).into_iter().flatten();
        let closed = closed
            .filter(|c| c.start_ns <= start_ns && c.end_ns >= start_ns)
            .map(|c| c.id);
        open.chain(closed).take(MAX_CANDIDATES + 1).collect()
    }

    /// A SERVER or CONSUMER span reported after calls of its process that started later
    /// (its connection's first events can come late): it is a candidate for those too.
    pub(super) fn late_request(&mut self, id: NodeId, pid: u32, start_ns: u64) {
        let Some(undecided) = self.undecided_by_pid.get(&pid) else {
            return;
        };
        let first = ConnId {
            tgid: 0,
            fd: 0,
            generation: 0,
        };
        let earliest = (first, ExchangeId::Sequence(0));
        for (_, call) in undecided.range((start_ns, earliest)..) {
            if let Some(node) = self.nodes.get_mut(call) {
                if node.open_at_start.len() <= MAX_CANDIDATES {
                    node.open_at_start.push(id);
                }
            }
        }
    }

    /// A call's parent is decided: requests reported from now on are not weighed for it.
    pub(super) fn decided(&mut self, pid: u32, start_ns: u64, id: NodeId) {
        if let Some(undecided) = self.undecided_by_pid.get_mut(&pid) {
            undecided.remove(&(start_ns, id));
            if undecided.is_empty() {
                self.undecided_by_pid.remove(&pid);
            }
        }
    }

    /// A SERVER or CONSUMER span finished: calls starting from now on are not its.
    pub(super) fn close_request(&mut self, pid: u32, id: NodeId, (start_ns, end_ns): (u64, u64)) {
        if let Some(open) = self.open_by_pid.get_mut(&pid) {
            // An emptied list stays until the next eviction: a process serving one
            // request at a time would otherwise free and allocate it per request.
            open.retain(|(other, _)| *other != id);
        }
        let closed = self.closed_by_pid.entry(pid).or_default();
        closed.push_back(Closed {
            id,
            start_ns,
            end_ns,
        });
        if closed.len() > RECENTLY_CLOSED {
            closed.pop_front();
        }
    }

    /// More identifiers of a started exchange (its request body, read after the head).
    pub fn identified(&mut self, connection: &Connection, id: ExchangeId, found: &[Identifier]) {
        let Some(node) = self.nodes.get_mut(&(connection.id, id)) else {
            return;
        };
        for identifier in found {
            if node.identifiers.len() >= crate::protocols::identifiers::MAX_PER_EXCHANGE {
                break;
            }
            if !node.identifiers.contains(identifier) {
                node.identifiers.push(*identifier);
            }
        }
    }

    /// The parent of a CLIENT or PRODUCER span, by the rules at the top of this file.
    pub(super) fn causal_parent(&mut self, id: NodeId) -> (Parent, Option<&'static str>) {
        let Some(node) = self.nodes.get(&id) else {
            return (Parent::Root, None);
        };
        let candidates: Vec<NodeId> = node
            .open_at_start
            .iter()
            .filter(|c| self.nodes.contains_key(c))
            .copied()
            .collect();
        if let Some(tp) = node.traceparent {
            self.stats.parents_by_traceparent += 1;
            let same_trace: Vec<NodeId> = candidates
                .iter()
                .filter(|c| {
                    self.nodes[c]
                        .traceparent
                        .is_some_and(|t| t.trace_id == tp.trace_id)
                })
                .copied()
                .collect();
            return match same_trace[..] {
                [one] => (Parent::Local(one), Some(source::TRACEPARENT)),
                _ => (Parent::Remote(tp), Some(source::TRACEPARENT)),
            };
        }
        if candidates.is_empty() {
            return (Parent::Root, None);
        }
        if candidates.len() <= MAX_CANDIDATES {
            match self.vote(&node.identifiers, &candidates) {
                Vote::One(parent) => {
                    let by_message = node.kind == ExchangeKind::Producer
                        && self.nodes[&parent].kind == ExchangeKind::Consumer;
                    return if by_message {
                        self.stats.parents_by_message += 1;
                        (Parent::Local(parent), Some(source::MESSAGE))
                    } else {
                        self.stats.parents_by_identifier += 1;
                        (Parent::Local(parent), Some(source::IDENTIFIER))
                    };
                }
                Vote::Conflict => return self.ambiguous(id),
                Vote::None => {}
            }
        }
        if let [only] = candidates[..] {
            if self.nodes[&only].tid == node.tid {
                self.stats.parents_by_thread += 1;
                return (Parent::Local(only), Some(source::THREAD));
            }
        }
        self.ambiguous(id)
    }

    fn ambiguous(&mut self, id: NodeId) -> (Parent, Option<&'static str>) {
        self.stats.parents_ambiguous += 1;
        if let Some(node) = self.nodes.get_mut(&id) {
            node.parent_ambiguous = true;
        }
        (Parent::Root, None)
    }

    /// The one candidate that every identifier held by exactly one candidate points at.
    fn vote(&self, identifiers: &[Identifier], candidates: &[NodeId]) -> Vote {
        if identifiers.is_empty() {
            return Vote::None;
        }
        // Each candidate's identifiers looked up once, not once per identifier weighed.
        let held: Vec<(&NodeId, &[Identifier])> = candidates
            .iter()
            .map(|c| (c, self.nodes[c].identifiers.as_slice()))
            .collect();
        let mut chosen = None;
        for identifier in identifiers {
            let mut holders = held
                .iter()
                .filter(|(_, ids)| ids.contains(identifier))
                .map(|(c, _)| *c);
            let (Some(holder), None) = (holders.next(), holders.next()) else {
                continue; // in none, or in several: says nothing
            };
            match chosen {
                None => chosen = Some(*holder),
                Some(previous) if previous == *holder => {}
                Some(_) => return Vote::Conflict,
            }
        }
        chosen.map_or(Vote::None, Vote::One)
    }
}
