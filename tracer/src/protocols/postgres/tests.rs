//! Golden tests on real captured conversations: psycopg 3 (extended protocol) and
//! node-postgres (simple and extended), each doing a good insert, a unique violation, a
//! rolled-back transaction and a select (see `tests/peers/pg_client.*`).
use std::path::PathBuf;

use super::{frontend, PostgresSession};
use crate::{
    capture::Role,
    protocols::{golden, Exchange, ExchangeEvent, ExchangeStatus, ProtocolSession},
};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/protocols/postgres/fixtures")
}

fn replay(name: &str, chunk: Option<usize>) -> Vec<ExchangeEvent> {
    golden::replay(
        &mut PostgresSession::new(Role::Client, false),
        &fixture_dir(),
        name,
        chunk,
    )
}

#[test]
fn psycopg_extended_queries() {
    golden::compare(&fixture_dir(), "psycopg", &replay("psycopg", None));
}

#[test]
fn node_pg_simple_and_extended_queries() {
    golden::compare(&fixture_dir(), "node_pg", &replay("node_pg", None));
}

#[test]
fn messages_split_at_every_byte_give_the_same_result() {
    for name in ["psycopg", "node_pg"] {
        let whole: Vec<_> = replay(name, None).iter().map(golden::render).collect();
        let bytewise: Vec<_> = replay(name, Some(1)).iter().map(golden::render).collect();
        assert_eq!(whole, bytewise, "{name}");
    }
}

#[test]
fn no_literal_or_parameter_value_reaches_an_attribute() {
    for (name, secret) in [
        ("psycopg", "anna@example.com"),
        ("psycopg", "FX-PY"),
        ("node_pg", "FX-JS"),
    ] {
        let raw: Vec<u8> = golden::records(&fixture_dir(), name)
            .into_iter()
            .flat_map(|r| r.2)
            .collect();
        assert!(
            raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{name}: the fixture holds {secret}"
        );
        for event in replay(name, None) {
            if let ExchangeEvent::Finished(x) = event {
                let attributes = format!("{:?} {}", x.attributes, x.name);
                assert!(
                    !attributes.contains(secret),
                    "{name}: {secret} leaked into {attributes}"
                );
            }
        }
    }
}

#[test]
fn inference_recognises_startup_and_mid_stream_queries() {
    let mut startup = vec![0, 0, 0, 0, 0, 3, 0, 0];
    startup.extend_from_slice(b"user\0postgres\0\0");
    let len = (startup.len() as u32).to_be_bytes();
    startup[..4].copy_from_slice(&len);
    assert_eq!(frontend::is_startup(&startup), Some(true));
    assert_eq!(
        frontend::is_startup(&[0, 0, 0, 8, 4, 210, 22, 47]),
        Some(true),
        "SSLRequest"
    );
    assert_eq!(frontend::is_startup(b"GET / HTTP/1.1\r\n"), Some(false));
    assert!(frontend::is_message_start(b"Q\0\0\0\x0eSELECT 1;\0"));
    assert!(!frontend::is_message_start(b"Q\0\0\0\x0eSELECT 1;X"));
    assert!(frontend::is_message_start(b"S\0\0\0\x04"));
}

#[test]
fn gaps_resynchronise_at_the_next_ready_for_query() {
    let mut session = PostgresSession::new(Role::Client, false);
    let mut out = Vec::new();
    for (i, (direction, time, bytes)) in golden::records(&fixture_dir(), "node_pg")
        .into_iter()
        .enumerate()
    {
        if i == 8 {
            session.gap(direction, 100, time, &mut out);
            continue;
        }
        session.feed(direction, &bytes, time, 1, &mut out);
    }
    let finished = out
        .iter()
        .filter(|e| matches!(e, ExchangeEvent::Finished(x) if x.name == "SELECT orders"))
        .count();
    assert_eq!(finished, 1, "statements after the gap are still seen");
}

#[test]
fn a_huge_declared_length_is_passed_over_not_buffered() {
    use crate::protocols::postgres::backend::{Backend, BackendReader};
    let mut reader = BackendReader::new(false);
    // A DataRow claiming 2.5 GB (found by fuzzing: the agent must not reserve it), …
    reader.push(b"D\x96\x00\x00\x00\x00\x01");
    assert_eq!(reader.next(), None);
    // … its bytes keep coming and are passed over, …
    for _ in 0..4 {
        reader.push(&[0u8; 65536]);
        assert_eq!(reader.next(), None);
    }
    // … and a length that is no message at all resynchronises at the next ReadyForQuery.
    let mut reader = BackendReader::new(false);
    reader.push(b"\xff\x96\x00\x00\x00garbageZ\x00\x00\x00\x05I");
    let mut seen = Vec::new();
    while let Some(message) = reader.next() {
        seen.push(message);
    }
    assert_eq!(seen, vec![Backend::ReadyForQuery(b'I')]);
}

/// psycopg and a node-postgres pool, each connection opened and used before the capture
/// began (`tests/peers/pg_pooled.py`, `pg_pool.js`), then an insert, a select and an
/// invalid statement: picked up mid-stream at both ends, client and server.
#[test]
fn connections_that_predate_the_agent_give_spans_at_both_ends() {
    let records = golden::capture(&fixture_dir().join("pooled.capture.jsonl"));
    assert!(
        records.iter().any(|r| r.seeded),
        "the fixture's connections predate it"
    );
    for role in [Role::Client, Role::Server] {
        let events = golden::replay_connections(&records, role, || {
            Box::new(PostgresSession::new(role, true))
        });
        let name = format!("pooled.{role:?}").to_lowercase();
        golden::compare(&fixture_dir(), &name, &events);
        let finished: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                ExchangeEvent::Finished(x) => Some(x),
                _ => None,
            })
            .collect();
        let attr = |x: &Exchange, key: &str| {
            x.attributes
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| format!("{v:?}"))
        };
        for table_op in ["INSERT pooled_orders", "SELECT pooled_orders"] {
            let found: Vec<_> = finished.iter().filter(|x| x.name == table_op).collect();
            assert_eq!(found.len(), 2, "{role:?}: {table_op} from both clients");
            for x in found {
                assert_eq!(x.status, ExchangeStatus::Ok, "{role:?}: {x:?}");
                assert!(attr(x, "db.collection.name").is_some_and(|t| t.contains("pooled_orders")));
            }
        }
        let invalid: Vec<_> = finished.iter().filter(|x| x.name == "postgresql").collect();
        assert_eq!(invalid.len(), 2, "{role:?}: the invalid statements");
        for x in invalid {
            assert!(
                matches!(&x.status, ExchangeStatus::Error { error_type, .. } if error_type == "42601"),
                "{x:?}"
            );
            assert_eq!(
                attr(x, "db.operation.name"),
                None,
                "no operation from user text"
            );
        }
    }
}
