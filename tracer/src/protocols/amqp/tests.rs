//! Golden tests on real captured conversations (`fixtures/*.bin`, recorded with
//! `tracer capture` from pika, amqplib and RabbitMQ): each fixture is replayed into a
//! session and the events, rendered as JSON lines, must equal `fixtures/<name>.expected.jsonl`.
//! On a mismatch the actual output is written beside it as `<name>.actual.jsonl`;
//! `TRACER_BLESS=1` rewrites the expected files after a reviewed change.
use std::path::PathBuf;

use serde_json::{json, Value};

use super::{frames, AmqpSession};
use crate::protocols::golden;
use crate::{
    capture::{Direction, Role},
    protocols::{ExchangeEvent, ExchangeKind, ProtocolSession, SessionOptions},
};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/protocols/amqp/fixtures")
}

fn records(name: &str) -> Vec<(Direction, u64, Vec<u8>)> {
    golden::records(&fixture_dir(), name)
}

use super::super::golden::render;

fn replay(name: &str, role: Role, chunk: Option<usize>) -> Vec<ExchangeEvent> {
    golden::replay(
        &mut AmqpSession::new(role, &SessionOptions::default(), false),
        &fixture_dir(),
        name,
        chunk,
    )
}

fn golden(name: &str, role: Role) {
    golden::compare(&fixture_dir(), name, &replay(name, role, None));
}

#[test]
fn publisher_with_confirms_on_two_channels() {
    golden("publisher", Role::Client);
}

#[test]
fn consumer_acks_rejects_and_nacks() {
    golden("consumer", Role::Client);
}

#[test]
fn publish_to_a_missing_exchange_fails_with_the_brokers_reason() {
    golden("unroutable", Role::Client);
}

#[test]
fn broker_sees_messages_enter_and_leave() {
    golden("broker_publisher", Role::Server);
    golden("broker_consumer", Role::Server);
}

#[test]
fn the_same_message_has_the_same_fingerprint_on_every_socket() {
    let fingerprints = |name: &str, role| -> Vec<u64> {
        replay(name, role, None)
            .iter()
            .filter_map(|e| match e {
                ExchangeEvent::Broker(b) => Some(b.fingerprint),
                ExchangeEvent::Started(s) => s.message_out.or(s.message_in),
                _ => None,
            })
            .collect()
    };
    let published = fingerprints("publisher", Role::Client);
    assert_eq!(published.len(), 3);
    assert_eq!(fingerprints("broker_publisher", Role::Server), published);
    assert_eq!(fingerprints("consumer", Role::Client), published);
    assert_eq!(fingerprints("broker_consumer", Role::Server), published);
}

#[test]
fn frames_split_at_every_byte_give_the_same_result() {
    for (name, role) in [
        ("publisher", Role::Client),
        ("consumer", Role::Client),
        ("broker_publisher", Role::Server),
    ] {
        let whole: Vec<Value> = replay(name, role, None).iter().map(render).collect();
        let bytewise: Vec<Value> = replay(name, role, Some(1)).iter().map(render).collect();
        assert_eq!(whole, bytewise, "{name}");
    }
}

#[test]
fn credentials_in_start_ok_never_appear_in_output() {
    for name in ["publisher", "consumer", "unroutable"] {
        let raw: Vec<u8> = records(name).into_iter().flat_map(|r| r.2).collect();
        assert!(
            raw.windows(5).any(|w| w == b"guest"),
            "{name}: the fixture holds the SASL response"
        );
        let rendered: String = replay(name, Role::Client, None)
            .iter()
            .map(|e| render(e).to_string())
            .collect();
        assert!(
            !rendered.contains("guest"),
            "{name}: credentials leaked: {rendered}"
        );
    }
}

#[test]
fn inference_is_strict() {
    assert_eq!(frames::is_frame_start(b"AMQP\x00\x00\x09\x01"), Some(true));
    assert_eq!(frames::is_frame_start(b"AMQP"), None);
    assert_eq!(frames::is_frame_start(b"GET / HTTP/1.1\r\n"), Some(false));
    // A heartbeat frame: type 8, channel 0, size 0, frame end.
    assert_eq!(
        frames::is_frame_start(&[8, 0, 0, 0, 0, 0, 0, 0xCE]),
        Some(true)
    );
    assert_eq!(
        frames::is_frame_start(&[8, 0, 0, 0, 0, 0, 0, 0xCD]),
        Some(false)
    );
    // Basic.Ack (60, 80) on channel 1, mid-stream.
    let ack = [
        1, 0, 1, 0, 0, 0, 13, 0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0xCE,
    ];
    assert_eq!(frames::is_frame_start(&ack), Some(true));
    // Right shape, unknown class 99.
    let unknown = [
        1, 0, 1, 0, 0, 0, 13, 0, 99, 0, 80, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0xCE,
    ];
    assert_eq!(frames::is_frame_start(&unknown), Some(false));
}

#[test]
fn garbage_and_gaps_resynchronise_at_the_next_frame() {
    let records = records("publisher");
    let mut session = AmqpSession::new(Role::Client, &SessionOptions::default(), false);
    let mut out = Vec::new();
    for (i, (direction, time, bytes)) in records.iter().enumerate() {
        if i == 10 {
            session.feed(
                *direction,
                b"\x01\x02garbage that is not a frame\xce",
                *time,
                1,
                &mut out,
            );
            session.gap(*direction, 1000, *time, &mut out);
        }
        session.feed(*direction, bytes, *time, 1, &mut out);
    }
    let finished = out
        .iter()
        .filter(|e| matches!(e, ExchangeEvent::Finished(_)))
        .count();
    assert!(finished >= 1, "later publishes are still seen");
}

#[test]
fn body_frames_cut_by_the_capture_limit_still_count_exactly() {
    // Replay the publisher, but deliver only the first 10 bytes of each body frame and
    // report the rest (payload and frame end) as a gap, as a capture limit would.
    let mut session = AmqpSession::new(Role::Client, &SessionOptions::default(), false);
    let mut out = Vec::new();
    for (direction, time, bytes) in records("publisher") {
        if direction == Direction::Egress && bytes.first() == Some(&3) && bytes.len() > 10 {
            session.feed(direction, &bytes[..10], time, 1, &mut out);
            session.gap(direction, (bytes.len() - 10) as u64, time, &mut out);
        } else {
            session.feed(direction, &bytes, time, 1, &mut out);
        }
    }
    let sizes: Vec<Value> = out
        .iter()
        .filter_map(|e| match e {
            ExchangeEvent::Finished(x) => {
                Some(render(e)["attributes"]["messaging.message.body.size"].clone())
                    .filter(|_| x.kind == ExchangeKind::Producer)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        sizes,
        vec![json!(43), json!(43), json!(43)],
        "every publish completes with its declared size"
    );
}

/// pika against RabbitMQ (`tests/peers/amqp_errors.py`): mandatory publishes without
/// confirms, one routed and one returned 312 NO_ROUTE, a conflicting exchange declare (406), a passive declare
/// of a missing queue (404), a connection to a missing vhost (530).
#[test]
fn refusals_and_returns_without_confirms_are_errors_with_the_brokers_code_and_text() {
    let records = golden::capture(&fixture_dir().join("errors.capture.jsonl"));
    let events = golden::replay_connections(&records, Role::Client, || {
        Box::new(AmqpSession::new(
            Role::Client,
            &SessionOptions::default(),
            false,
        ))
    });
    golden::compare(&fixture_dir(), "errors", &events);
    let errors: Vec<(String, String, String)> = events
        .iter()
        .filter_map(|e| match e {
            ExchangeEvent::Finished(x) => match &x.status {
                crate::protocols::ExchangeStatus::Error {
                    error_type,
                    message,
                } => Some((x.name.clone(), error_type.clone(), message.clone())),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let expect = [
        ("publish g1-orders", "312", "NO_ROUTE"),
        (
            "exchange.declare",
            "406",
            "PRECONDITION_FAILED - inequivalent arg 'type'",
        ),
        ("queue.declare", "404", "NOT_FOUND - no queue 'g1-missing'"),
        (
            "connection.open",
            "530",
            "NOT_ALLOWED - vhost g1-vhost not found",
        ),
    ];
    assert_eq!(errors.len(), expect.len(), "{errors:#?}");
    let routed = events.iter().any(|e| {
        matches!(e, ExchangeEvent::Finished(x)
            if x.record.text("amqp_message_id") == Some("g1-routed")
                && x.status == crate::protocols::ExchangeStatus::Ok)
    });
    assert!(routed, "the routed mandatory publish ends without error");
    for ((name, code, text), (want_name, want_code, want_text)) in errors.iter().zip(expect) {
        assert_eq!((name.as_str(), code.as_str()), (want_name, want_code));
        assert!(text.contains(want_text), "{name}: {text}");
    }
}

/// A consumer whose Basic.Consume predates the agent: its deliveries are named by the
/// exchange and routing key they came by, and say the queue is unknown.
#[test]
fn deliveries_of_a_consume_before_the_agent_are_named_by_what_is_known() {
    let all = records("consumer");
    let deliver = |bytes: &[u8]| bytes.windows(4).any(|w| w == [0, 60, 0, 60]);
    let first = all
        .iter()
        .position(|(direction, _, bytes)| *direction == Direction::Ingress && deliver(bytes))
        .expect("the fixture has deliveries");
    let mut session = AmqpSession::new(Role::Client, &SessionOptions::default(), true);
    let mut out = Vec::new();
    for (direction, time, bytes) in &all[first..] {
        session.feed(*direction, bytes, *time, 1, &mut out);
    }
    let consumed: Vec<_> = out
        .iter()
        .filter_map(|e| match e {
            ExchangeEvent::Finished(x) if x.kind == ExchangeKind::Consumer => Some(x),
            _ => None,
        })
        .collect();
    assert!(!consumed.is_empty());
    for x in consumed {
        let attr = |key: &str| {
            x.attributes
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
        };
        let routing_key = match attr("messaging.rabbitmq.destination.routing_key") {
            Some(crate::protocols::AttrValue::Str(key)) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(x.name, format!("deliver orders {routing_key}"));
        assert_eq!(
            attr("tracer.messaging.queue_unknown"),
            Some("true".into()),
            "{x:?}"
        );
        assert_eq!(attr("messaging.destination.subscription.name"), None);
    }
}
