//! Correlation rules on hand-made exchanges (the end-to-end tests use real processes).
use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use tracer_common::ConnId;

use super::*;
use crate::{
    capture::{procfs::ProcessInfo, Connection, Role},
    protocols::{Exchange, ExchangeKind, ExchangeStart, ExchangeStatus},
};

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
        sequence: 0,
        kind,
        start_ktime_ns: at,
        tid,
        traceparent: traceparent.map(str::to_owned),
        message_out: None,
        message_in: None,
    }
}

fn exchange(kind: ExchangeKind, start: u64, end: u64, tid: u32) -> Exchange {
    Exchange {
        protocol: "http",
        sequence: 0,
        kind,
        name: "GET /".into(),
        start_ktime_ns: start,
        end_ktime_ns: end,
        tid,
        attributes: vec![],
        status: ExchangeStatus::Ok,
        traceparent: None,
        fields: BTreeMap::new(),
        order_ids: Vec::new(),
        business: Vec::new(),
    }
}

/// client(pid 1) → A(pid 2: server, then client) → B(pid 3), reported in an awkward order.
#[test]
fn two_hop_chain_is_one_trace_whatever_the_arrival_order() {
    let user = conn(1, 3, Role::Client, "127.0.0.1:5000", "127.0.0.1:8001");
    let a_in = conn(2, 4, Role::Server, "127.0.0.1:8001", "127.0.0.1:5000");
    let a_out = conn(2, 5, Role::Client, "127.0.0.1:6000", "127.0.0.1:8002");
    let b_in = conn(3, 4, Role::Server, "127.0.0.1:8002", "127.0.0.1:6000");
    let mut c = Correlator::new(100);
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

#[test]
fn incoming_traceparent_is_continued() {
    let a_in = conn(2, 4, Role::Server, "127.0.0.1:8001", "10.0.0.9:5000");
    let mut c = Correlator::new(0);
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
    let mut c = Correlator::new(0);
    c.started(&a_in, &start(ExchangeKind::Server, 10, 1, None));
    c.finished(&a_in, exchange(ExchangeKind::Server, 10, 20, 1), 20);
    let mut other_thread = start(ExchangeKind::Client, 12, 2, None);
    other_thread.sequence = 0;
    c.started(&a_out, &other_thread);
    let mut after = start(ExchangeKind::Client, 30, 1, None);
    after.sequence = 1;
    c.started(&a_out, &after);
    let mut late = exchange(ExchangeKind::Client, 30, 31, 1);
    late.sequence = 1;
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
    let mut c = Correlator::new(50);
    c.started(&a_in, &start(ExchangeKind::Server, 1, 1, None));
    c.finished(&a_in, exchange(ExchangeKind::Server, 1, 2, 1), 100);
    let mut out = Vec::new();
    c.poll(120, &mut out);
    assert!(out.is_empty());
    c.poll(150, &mut out);
    assert_eq!(out.len(), 1);
}
