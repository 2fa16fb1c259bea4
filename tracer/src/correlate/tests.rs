//! Correlation rules on hand-made exchanges (the end-to-end tests use real processes).
use std::{net::SocketAddr, sync::Arc};

use tracer_common::ConnId;

use super::*;
use crate::{
    capture::{procfs::ProcessInfo, Connection, Role},
    protocols::{Exchange, ExchangeId, ExchangeKind, ExchangeStart},
};

/// A correlator with a key of the tests' own (production reads it from config).
fn correlator(settle_ns: u64) -> Correlator {
    Correlator::new(
        settle_ns,
        300_000_000_000,
        crate::privacy::IdKey::from_bytes(b"correlator unit tests"),
    )
}

fn conn(pid: u32, fd: u32, role: Role, local: &str, remote: &str) -> Connection {
    Connection::for_tests(
        ConnId {
            tgid: pid,
            fd,
            generation: 1,
        },
        role,
        local.parse::<SocketAddr>().ok(),
        remote.parse::<SocketAddr>().ok(),
        Arc::new(ProcessInfo {
            pid,
            ..Default::default()
        }),
    )
}

fn start(kind: ExchangeKind, at: u64, tid: u32, traceparent: Option<&str>) -> ExchangeStart {
    ExchangeStart {
        id: ExchangeId::Sequence(0),
        kind,
        start_ktime_ns: at,
        tid,
        traceparent: traceparent.map(str::to_owned),
        message_out: None,
        message_in: None,
        identifiers: Vec::new(),
    }
}

fn exchange(kind: ExchangeKind, start: u64, end: u64, tid: u32) -> Exchange {
    Exchange {
        start_ktime_ns: start,
        end_ktime_ns: end,
        tid,
        ..Exchange::for_tests(kind, "GET /")
    }
}

/// client(pid 1) → A(pid 2: server, then client) → B(pid 3), reported in an awkward order.
#[test]
fn two_hop_chain_is_one_trace_whatever_the_arrival_order() {
    let user = conn(1, 3, Role::Client, "127.0.0.1:5000", "127.0.0.1:8001");
    let a_in = conn(2, 4, Role::Server, "127.0.0.1:8001", "127.0.0.1:5000");
    let a_out = conn(2, 5, Role::Client, "127.0.0.1:6000", "127.0.0.1:8002");
    let b_in = conn(3, 4, Role::Server, "127.0.0.1:8002", "127.0.0.1:6000");
    let mut c = correlator(100);
    // B's server side is read from the ring before A's client write.
    c.started(&user, &start(ExchangeKind::Client, 10, 1, None));
    c.started(&a_in, &start(ExchangeKind::Server, 11, 20, None));
    c.started(&b_in, &start(ExchangeKind::Server, 13, 30, None));
    c.started(&a_out, &start(ExchangeKind::Client, 12, 20, None));
    c.finished(&b_in, exchange(ExchangeKind::Server, 13, 14, 30), 14);
    c.finished(&a_out, exchange(ExchangeKind::Client, 12, 15, 20), 15);
    c.finished(&a_in, exchange(ExchangeKind::Server, 11, 16, 20), 16);
    c.finished(&user, exchange(ExchangeKind::Client, 10, 17, 1), 17);
    let mut out = Vec::new();
    c.poll(1_000, &mut out);
    assert_eq!(out.len(), 4);
    let by_pid_kind = |pid: u32, kind| {
        out.iter()
            .find(|s| s.connection.id.tgid == pid && s.exchange.kind == kind)
            .expect("span")
    };
    let user_client = by_pid_kind(1, ExchangeKind::Client);
    let a_server = by_pid_kind(2, ExchangeKind::Server);
    let a_client = by_pid_kind(2, ExchangeKind::Client);
    let b_server = by_pid_kind(3, ExchangeKind::Server);
    assert!(
        out.iter().all(|s| s.trace_id == user_client.trace_id),
        "one trace"
    );
    assert_eq!(user_client.parent_span_id, None);
    assert_eq!(a_server.parent_span_id, Some(user_client.span_id));
    assert_eq!(a_client.parent_span_id, Some(a_server.span_id));
    assert_eq!(b_server.parent_span_id, Some(a_client.span_id));
}

/// A start is stamped when its syscall returns: over loopback the server may have read a
/// request (stamped 11) before the client's long write of it returned (stamped 12). The
/// server's call still is that client's, as long as the client started before the serving
/// ended; a client that started after it did is not.
#[test]
fn a_client_stamped_after_its_server_read_the_request_is_still_its_parent() {
    let client = conn(1, 3, Role::Client, "127.0.0.1:5000", "127.0.0.1:8001");
    let server = conn(2, 4, Role::Server, "127.0.0.1:8001", "127.0.0.1:5000");
    let mut c = correlator(100);
    c.started(&server, &start(ExchangeKind::Server, 11, 20, None));
    c.started(&client, &start(ExchangeKind::Client, 12, 1, None));
    c.finished(&server, exchange(ExchangeKind::Server, 11, 16, 20), 16);
    c.finished(&client, exchange(ExchangeKind::Client, 12, 17, 1), 17);
    let mut out = Vec::new();
    c.poll(1_000, &mut out);
    let client_span = the(&out, ExchangeKind::Client);
    assert_eq!(
        the(&out, ExchangeKind::Server).parent_span_id,
        Some(client_span.span_id)
    );

    let mut c = correlator(100);
    c.started(&server, &start(ExchangeKind::Server, 11, 20, None));
    c.started(&client, &start(ExchangeKind::Client, 18, 1, None));
    c.finished(&server, exchange(ExchangeKind::Server, 11, 16, 20), 16);
    c.finished(&client, exchange(ExchangeKind::Client, 18, 19, 1), 19);
    let mut out = Vec::new();
    c.poll(1_000, &mut out);
    assert_eq!(the(&out, ExchangeKind::Server).parent_span_id, None);
}

#[test]
fn incoming_traceparent_is_continued() {
    let a_in = conn(2, 4, Role::Server, "127.0.0.1:8001", "10.0.0.9:5000");
    let mut c = correlator(0);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    c.started(&a_in, &start(ExchangeKind::Server, 1, 1, Some(tp)));
    c.finished(&a_in, exchange(ExchangeKind::Server, 1, 2, 1), 2);
    let mut out = Vec::new();
    c.poll(10, &mut out);
    assert_eq!(
        out[0].trace_id.to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(
        out[0].parent_span_id.map(|s| s.to_string()).as_deref(),
        Some("00f067aa0ba902b7")
    );
    assert!(out[0].parent_is_remote);
}

#[test]
fn client_call_on_another_thread_or_after_the_server_span_is_not_its_child() {
    let a_in = conn(2, 4, Role::Server, "127.0.0.1:8001", "10.0.0.9:5000");
    let a_out = conn(2, 5, Role::Client, "127.0.0.1:6000", "10.0.0.7:80");
    let mut c = correlator(0);
    c.started(&a_in, &start(ExchangeKind::Server, 10, 1, None));
    c.finished(&a_in, exchange(ExchangeKind::Server, 10, 20, 1), 20);
    let mut other_thread = start(ExchangeKind::Client, 12, 2, None);
    other_thread.id = ExchangeId::Sequence(0);
    c.started(&a_out, &other_thread);
    let mut after = start(ExchangeKind::Client, 30, 1, None);
    after.id = ExchangeId::Sequence(1);
    c.started(&a_out, &after);
    let mut late = exchange(ExchangeKind::Client, 30, 31, 1);
    late.id = ExchangeId::Sequence(1);
    c.finished(&a_out, exchange(ExchangeKind::Client, 12, 13, 2), 13);
    c.finished(&a_out, late, 31);
    let mut out = Vec::new();
    c.poll(100, &mut out);
    let clients: Vec<_> = out
        .iter()
        .filter(|s| s.exchange.kind == ExchangeKind::Client)
        .collect();
    assert_eq!(clients.len(), 2);
    assert!(clients.iter().all(|s| s.parent_span_id.is_none()));
}

#[test]
fn spans_wait_for_their_settle_time() {
    let a_in = conn(2, 4, Role::Server, "127.0.0.1:8001", "10.0.0.9:5000");
    let mut c = correlator(50);
    c.started(&a_in, &start(ExchangeKind::Server, 1, 1, None));
    c.finished(&a_in, exchange(ExchangeKind::Server, 1, 2, 1), 100);
    let mut out = Vec::new();
    c.poll(120, &mut out);
    assert!(out.is_empty());
    c.poll(150, &mut out);
    assert_eq!(out.len(), 1);
}

/// A start whose request carries these values (as a path, body or message would).
fn with_values(mut start: ExchangeStart, sequence: u64, values: &str) -> ExchangeStart {
    start.id = ExchangeId::Sequence(sequence);
    crate::protocols::identifiers::collect(values.as_bytes(), &mut start.identifiers);
    start
}

fn sequenced(kind: ExchangeKind, start: u64, end: u64, tid: u32, sequence: u64) -> Exchange {
    Exchange {
        id: ExchangeId::Sequence(sequence),
        ..exchange(kind, start, end, tid)
    }
}

/// An event-loop service (pid 2, one thread) with requests R-0001 and R-0002 open, and a
/// call to C made while both are: what parent does the call get? With `b_late`, R-0002's
/// start is read after the call's (its connection's events come through another ring).
fn event_loop_call_reported(
    call_values: &str,
    b_late: bool,
) -> (ResolvedSpan, Vec<ResolvedSpan>, CorrelatorStats) {
    let a = conn(2, 4, Role::Server, "127.0.0.1:8001", "10.0.0.9:5000");
    let b = conn(2, 5, Role::Server, "127.0.0.1:8001", "10.0.0.9:5001");
    let call = conn(2, 6, Role::Client, "127.0.0.1:6000", "10.0.0.7:80");
    let b_start = with_values(start(ExchangeKind::Server, 11, 1, None), 0, "/work/R-0002");
    let mut c = correlator(0);
    c.started(
        &a,
        &with_values(start(ExchangeKind::Server, 10, 1, None), 0, "/work/R-0001"),
    );
    if !b_late {
        c.started(&b, &b_start);
    }
    c.started(
        &call,
        &with_values(start(ExchangeKind::Client, 12, 1, None), 0, call_values),
    );
    if b_late {
        c.started(&b, &b_start);
    }
    c.finished(&call, sequenced(ExchangeKind::Client, 12, 13, 1, 0), 13);
    c.finished(&a, sequenced(ExchangeKind::Server, 10, 14, 1, 0), 14);
    c.finished(&b, sequenced(ExchangeKind::Server, 11, 15, 1, 0), 15);
    let out = resolved(&mut c);
    let call = the(&out, ExchangeKind::Client).clone();
    (call, out, c.stats())
}

fn event_loop_call(call_values: &str) -> (ResolvedSpan, Vec<ResolvedSpan>, CorrelatorStats) {
    event_loop_call_reported(call_values, false)
}

/// Everything the correlator resolves once every settle time has passed.
fn resolved(c: &mut Correlator) -> Vec<ResolvedSpan> {
    let mut out = Vec::new();
    c.poll(100, &mut out);
    out
}

/// The one span of `kind` among `spans`.
fn the(spans: &[ResolvedSpan], kind: ExchangeKind) -> &ResolvedSpan {
    spans.iter().find(|s| s.exchange.kind == kind).unwrap()
}

fn server_span_of(spans: &[ResolvedSpan], fd: u32) -> &ResolvedSpan {
    spans
        .iter()
        .find(|s| s.exchange.kind == ExchangeKind::Server && s.connection.id.fd == fd)
        .unwrap()
}

#[test]
fn an_identifier_found_in_exactly_one_open_request_names_the_parent() {
    let (call, spans, stats) = event_loop_call("/price/R-0002");
    assert_eq!(call.parent_span_id, Some(server_span_of(&spans, 5).span_id));
    assert_eq!(call.parent_source, Some("identifier"));
    assert_eq!(stats.parents_ambiguous, 0);
}

#[test]
fn with_several_requests_open_the_thread_alone_decides_nothing() {
    let (call, _, stats) = event_loop_call("/price");
    assert_eq!(call.parent_span_id, None, "a root, not a guess");
    assert!(call.parent_ambiguous);
    assert_eq!(call.parent_source, None);
    assert_eq!(stats.parents_ambiguous, 1);
}

#[test]
fn identifiers_pointing_at_two_requests_are_ambiguous() {
    let (call, _, stats) = event_loop_call("/compare/R-0001/R-0002");
    assert_eq!(call.parent_span_id, None);
    assert_eq!(stats.parents_ambiguous, 1);
}

#[test]
fn the_only_open_request_on_the_callers_thread_is_the_parent() {
    let a = conn(2, 4, Role::Server, "127.0.0.1:8001", "10.0.0.9:5000");
    let call = conn(2, 6, Role::Client, "127.0.0.1:6000", "10.0.0.7:80");
    let mut c = correlator(0);
    c.started(&a, &start(ExchangeKind::Server, 10, 7, None));
    c.started(&call, &start(ExchangeKind::Client, 12, 7, None));
    c.finished(&call, exchange(ExchangeKind::Client, 12, 13, 7), 13);
    c.finished(&a, exchange(ExchangeKind::Server, 10, 14, 7), 14);
    let out = resolved(&mut c);
    let call = the(&out, ExchangeKind::Client);
    assert_eq!(call.parent_span_id, Some(server_span_of(&out, 4).span_id));
    assert_eq!(call.parent_source, Some("thread"));
}

#[test]
fn a_reply_published_while_handling_deliveries_is_the_child_of_the_one_it_answers() {
    let deliveries = conn(3, 4, Role::Client, "127.0.0.1:6001", "127.0.0.1:5672");
    let mut c = correlator(0);
    // Two deliveries open on the consumer's connection, then a reply whose correlation id
    // is the second one's message id.
    c.started(
        &deliveries,
        &with_values(start(ExchangeKind::Consumer, 10, 1, None), 0, "msg-0001"),
    );
    c.started(
        &deliveries,
        &with_values(start(ExchangeKind::Consumer, 11, 1, None), 1, "msg-0002"),
    );
    c.started(
        &deliveries,
        &with_values(
            start(ExchangeKind::Producer, 12, 1, None),
            2,
            "reply-0009 msg-0002",
        ),
    );
    c.finished(
        &deliveries,
        sequenced(ExchangeKind::Producer, 12, 13, 1, 2),
        13,
    );
    c.finished(
        &deliveries,
        sequenced(ExchangeKind::Consumer, 10, 14, 1, 0),
        14,
    );
    c.finished(
        &deliveries,
        sequenced(ExchangeKind::Consumer, 11, 15, 1, 1),
        15,
    );
    let out = resolved(&mut c);
    let reply = the(&out, ExchangeKind::Producer);
    let answered = out
        .iter()
        .find(|s| {
            s.exchange.kind == ExchangeKind::Consumer && s.exchange.id == ExchangeId::Sequence(1)
        })
        .unwrap();
    assert_eq!(reply.parent_span_id, Some(answered.span_id));
    assert_eq!(reply.parent_source, Some("message"));
}

#[test]
fn a_call_carrying_trace_context_joins_the_open_request_of_that_trace() {
    let a = conn(2, 4, Role::Server, "127.0.0.1:8001", "10.0.0.9:5000");
    let b = conn(2, 5, Role::Server, "127.0.0.1:8001", "10.0.0.9:5001");
    let call = conn(2, 6, Role::Client, "127.0.0.1:6000", "10.0.0.7:80");
    let mut c = correlator(0);
    let tp_a = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let tp_b = "00-11112222333344445555666677778888-00f067aa0ba902b7-01";
    let own = "00-11112222333344445555666677778888-aaaaaaaaaaaaaaaa-01";
    c.started(&a, &start(ExchangeKind::Server, 10, 1, Some(tp_a)));
    c.started(&b, &start(ExchangeKind::Server, 11, 1, Some(tp_b)));
    c.started(&call, &start(ExchangeKind::Client, 12, 1, Some(own)));
    c.finished(&call, exchange(ExchangeKind::Client, 12, 13, 1), 13);
    c.finished(&a, exchange(ExchangeKind::Server, 10, 14, 1), 14);
    c.finished(&b, exchange(ExchangeKind::Server, 11, 15, 1), 15);
    let out = resolved(&mut c);
    let call = the(&out, ExchangeKind::Client);
    assert_eq!(call.parent_span_id, Some(server_span_of(&out, 5).span_id));
    assert_eq!(call.parent_source, Some("traceparent"));
}

#[test]
fn a_request_reported_after_the_call_it_served_is_still_weighed() {
    let (call, spans, _) = event_loop_call_reported("/price/R-0002", true);
    assert_eq!(call.parent_span_id, Some(server_span_of(&spans, 5).span_id));
    assert_eq!(call.parent_source, Some("identifier"));
}

/// A burst beyond what the correlator keeps: the oldest exported spans go (counted), the
/// table stays bounded, and a span still to be exported is never among them.
#[test]
fn a_full_correlator_forgets_its_oldest_exported_spans_and_counts_them() {
    let ms = 1_000_000;
    let mut c = correlator(1).keep_at_most(100);
    for i in 0..300u32 {
        let remote = format!("127.0.0.1:{}", 20_000 + i);
        let server = conn(2, 1000 + i, Role::Server, "127.0.0.1:8001", &remote);
        let at = u64::from(i) * ms;
        c.started(&server, &start(ExchangeKind::Server, at, 1, None));
        c.finished(
            &server,
            exchange(ExchangeKind::Server, at, at + 1, 1),
            at + 1,
        );
    }
    let late = conn(3, 7, Role::Server, "127.0.0.1:8002", "127.0.0.1:30000");
    let at = 2_000 * ms;
    c.started(&late, &start(ExchangeKind::Server, at, 1, None));
    c.finished(&late, exchange(ExchangeKind::Server, at, at + 1, 1), at + 1);
    let mut out = Vec::new();
    c.poll(at, &mut out);
    assert_eq!(out.len(), 300, "every settled span exported");
    assert_eq!(
        c.stats().forgotten_early,
        226,
        "down to three quarters of 100, plus the one settling"
    );
    assert_eq!(c.spans_held(), 75);
    out.clear();
    c.poll(at + 10, &mut out);
    assert_eq!(
        out.len(),
        1,
        "the span still settling was kept and is exported"
    );
}

/// Exported spans are forgotten once nothing can link to them, with every index naming
/// them; a request never finished goes after `MAX_OPEN_NS`, counted.
#[test]
fn spans_are_forgotten_with_their_indexes_once_nothing_can_link_to_them() {
    let s = 1_000_000_000;
    let mut c = correlator(1);
    let call = conn(1, 3, Role::Client, "127.0.0.1:5000", "127.0.0.1:8001");
    let served = conn(2, 4, Role::Server, "127.0.0.1:8001", "127.0.0.1:5000");
    let stuck = conn(2, 5, Role::Server, "127.0.0.1:8001", "127.0.0.1:5001");
    c.started(&call, &start(ExchangeKind::Client, s, 1, None));
    c.started(&served, &start(ExchangeKind::Server, s + 1, 2, None));
    c.started(&stuck, &start(ExchangeKind::Server, s + 2, 3, None));
    c.finished(
        &served,
        exchange(ExchangeKind::Server, s + 1, s + 3, 2),
        s + 3,
    );
    c.finished(&call, exchange(ExchangeKind::Client, s, s + 4, 1), s + 4);
    let mut out = Vec::new();
    c.poll(2 * s, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(c.spans_held(), 3, "linkable for a while after export");
    assert_eq!(
        c.indexed(),
        [1, 1, 1, 0, 0],
        "the call, the open and the closed request"
    );
    c.poll(2 * s + correlator::LINKABLE_NS, &mut out);
    assert_eq!(c.spans_held(), 1, "only the request still open");
    assert_eq!(c.indexed(), [0, 1, 0, 0, 0]);
    c.poll(3 * s + correlator::MAX_OPEN_NS, &mut out);
    assert_eq!(c.spans_held(), 0);
    assert_eq!(c.indexed(), [0; 5]);
    assert_eq!(c.stats().evicted_unfinished, 1);
    assert_eq!(out.len(), 2, "an abandoned request is not a span");
}
