//! Golden-file tests shared by the protocol folders: fixtures are real conversations
//! recorded with `tracer capture` (`fixtures/<name>.bin`: per record a direction byte `E`/`I`,
//! a big-endian u64 relative time and u32 length, then the bytes); a session's events,
//! rendered as JSON lines, must equal `fixtures/<name>.expected.jsonl`. On a mismatch the
//! actual output is written beside it as `<name>.actual.jsonl`; `TRACER_BLESS=1` rewrites
//! the expected file after a reviewed change.
use std::{collections::BTreeMap, path::Path};

use serde_json::{json, Value};

use crate::{
    capture::Direction,
    protocols::{AttrValue, ExchangeEvent, ExchangeId, ExchangeStatus, ProtocolSession},
};

pub fn records(dir: &Path, name: &str) -> Vec<(Direction, u64, Vec<u8>)> {
    let raw = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
    let mut at = 0;
    let mut out = Vec::new();
    while at < raw.len() {
        let direction = if raw[at] == b'E' {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let time = u64::from_be_bytes(raw[at + 1..at + 9].try_into().unwrap());
        let len = u32::from_be_bytes(raw[at + 9..at + 13].try_into().unwrap()) as usize;
        out.push((direction, time + 1, raw[at + 13..at + 13 + len].to_vec()));
        at += 13 + len;
    }
    out
}

/// Feeds a fixture into `session` (whole records, or `chunk`-byte pieces) and closes it.
pub fn replay(
    session: &mut dyn ProtocolSession,
    dir: &Path,
    name: &str,
    chunk: Option<usize>,
) -> Vec<ExchangeEvent> {
    let mut out = Vec::new();
    let mut last = 0;
    for (direction, time, bytes) in records(dir, name) {
        match chunk {
            Some(n) => bytes
                .chunks(n)
                .for_each(|c| session.feed(direction, c, time, 1, &mut out)),
            None => session.feed(direction, &bytes, time, 1, &mut out),
        }
        last = time;
    }
    session.close(last + 1, &mut out);
    out
}

pub fn render(event: &ExchangeEvent) -> Value {
    match event {
        ExchangeEvent::Started(s) => {
            let mut started = json!({
                "event": "started", "kind": s.kind.name(),
                "publishes": s.message_out.is_some(), "receives": s.message_in.is_some(),
            });
            with_id(&mut started, s.id);
            started
        }
        ExchangeEvent::Finished(x) => {
            let attributes: BTreeMap<&str, Value> = x
                .attributes
                .iter()
                .map(|(k, v)| {
                    (
                        *k,
                        match v {
                            AttrValue::Str(s) => json!(s),
                            AttrValue::Int(i) => json!(i),
                        },
                    )
                })
                .collect();
            let status = match &x.status {
                ExchangeStatus::Ok => json!("ok"),
                ExchangeStatus::Error {
                    error_type,
                    message,
                } => json!({ "error_type": error_type, "message": message }),
            };
            let mut finished = json!({
                "event": "finished", "kind": x.kind.name(), "name": x.name,
                "status": status, "attributes": attributes, "body": x.record.text("amqp_body"),
            });
            with_id(&mut finished, x.id);
            finished
        }
        ExchangeEvent::Identified { id, identifiers } => {
            let mut identified = json!({ "event": "identified", "identifiers": identifiers.len() });
            with_id(&mut identified, *id);
            identified
        }
        ExchangeEvent::Broker(b) => {
            json!({ "event": "broker", "entered": b.entered, "fingerprint": format!("{:016x}", b.fingerprint) })
        }
    }
}

/// `"sequence": n` or `"stream": id`.
fn with_id(value: &mut Value, id: ExchangeId) {
    let (key, n) = match id {
        ExchangeId::Sequence(n) => ("sequence", n),
        ExchangeId::Stream(s) => ("stream", u64::from(s)),
    };
    value[key] = json!(n);
}

pub fn compare(dir: &Path, name: &str, events: &[ExchangeEvent]) {
    let actual: String = events.iter().map(|e| format!("{}\n", render(e))).collect();
    let expected_path = dir.join(format!("{name}.expected.jsonl"));
    if std::env::var("TRACER_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&expected_path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    if actual != expected {
        let actual_path = dir.join(format!("{name}.actual.jsonl"));
        std::fs::write(&actual_path, &actual).unwrap();
        panic!(
            "{name}: output differs from {}; see {}",
            expected_path.display(),
            actual_path.display()
        );
    }
}

pub use crate::capture::recording::Recorded as Captured;

pub fn capture(path: &Path) -> Vec<Captured> {
    crate::capture::recording::read(path).unwrap()
}

/// Feeds one connection of a capture (`role`'s end of it) into `session`, in `chunk`-byte
/// pieces if given, and closes it.
pub fn replay_capture(
    session: &mut dyn ProtocolSession,
    records: &[Captured],
    role: crate::capture::Role,
    chunk: Option<usize>,
) -> Vec<ExchangeEvent> {
    let mut out = Vec::new();
    let mut last = 0;
    for r in records.iter().filter(|r| r.role == role) {
        match r.kind.as_str() {
            "data" => match chunk {
                Some(n) => r
                    .bytes
                    .chunks(n)
                    .for_each(|c| session.feed(r.direction, c, r.time, r.tid, &mut out)),
                None => session.feed(r.direction, &r.bytes, r.time, r.tid, &mut out),
            },
            "gap" => session.gap(r.direction, r.gap, r.time, &mut out),
            _ => {}
        }
        last = r.time;
    }
    session.close(last + 1, &mut out);
    out
}

/// Feeds every connection of a capture at `role`'s end into a fresh session of its own
/// (connections in the order they first appear), and returns their events in that order.
pub fn replay_connections(
    records: &[Captured],
    role: crate::capture::Role,
    mut session: impl FnMut() -> Box<dyn ProtocolSession>,
) -> Vec<ExchangeEvent> {
    let mut conns = Vec::new();
    for r in records.iter().filter(|r| r.role == role) {
        if !conns.contains(&r.conn) {
            conns.push(r.conn);
        }
    }
    let mut out = Vec::new();
    for conn in conns {
        let own: Vec<Captured> = records.iter().filter(|r| r.conn == conn).cloned().collect();
        out.extend(replay_capture(session().as_mut(), &own, role, None));
    }
    out
}
