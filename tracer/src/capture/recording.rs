//! Recordings made with `tracer capture --format jsonl`: real programs' conversations,
//! both ends, as the agent saw them; read back and turned into the events the pipeline
//! takes, for the pipeline golden tests and the pipeline bench.
use std::{collections::HashMap, net::SocketAddr, path::Path, sync::Arc};

use anyhow::Context as _;
use base64::Engine as _;
use serde_json::Value;
use tracer_common::ConnId;

use super::{procfs::ProcessInfo, ConnChange, Connection, Direction, Role};
use crate::{
    reassembly::{GapReason, StreamEvent},
    session::SessionEvent,
};

/// One record of a recording.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub conn: ConnId,
    pub role: Role,
    pub comm: String,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// `conn_open`, `conn_addr`, `conn_tls`, `data`, `gap`, `conn_close`.
    pub kind: String,
    pub direction: Direction,
    /// `time_unix_nano` of the recording: stands in for kernel time on replay.
    pub time: u64,
    pub tid: u32,
    /// Position in its direction's byte stream.
    pub offset: u64,
    pub bytes: Vec<u8>,
    pub gap: u64,
    /// A `conn_open` of a connection found in `/proc` at start: it predates the capture.
    pub seeded: bool,
}

/// Every record of a recording but its statistics lines.
pub fn read(path: &Path) -> anyhow::Result<Vec<Recorded>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut records = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = || format!("{}:{}", path.display(), n + 1);
        let r: Value = serde_json::from_str(line).with_context(at)?;
        if r["type"] == "stats" {
            continue;
        }
        records.push(parse(&r).with_context(at)?);
    }
    Ok(records)
}

fn parse(r: &Value) -> anyhow::Result<Recorded> {
    let number = |key: &str| r[key].as_u64();
    let address = |key: &str| r[key].as_str().and_then(|a| a.parse().ok());
    Ok(Recorded {
        conn: ConnId {
            tgid: number("pid").context("pid")? as u32,
            fd: number("fd").context("fd")? as u32,
            generation: number("generation").context("generation")?,
        },
        role: match r["role"].as_str() {
            Some("server") => Role::Server,
            Some("client") => Role::Client,
            _ => Role::Unknown,
        },
        comm: r["comm"].as_str().unwrap_or_default().to_owned(),
        local: address("local"),
        remote: address("remote"),
        kind: r["type"].as_str().context("type")?.to_owned(),
        direction: if r["direction"] == "egress" {
            Direction::Egress
        } else {
            Direction::Ingress
        },
        time: number("time_unix_nano").context("time_unix_nano")?,
        tid: number("tid").unwrap_or_default() as u32,
        offset: number("offset").unwrap_or_default(),
        bytes: base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap_or_default())
            .context("data")?,
        gap: number("gap_length").unwrap_or_default(),
        seeded: r["seeded"] == true,
    })
}

/// Turns records into pipeline events, keeping each connection as the agent would (its
/// process named by the recorded command, its addresses as they became known).
#[derive(Default)]
pub struct Replay {
    conns: HashMap<ConnId, Connection>,
}

impl Replay {
    /// The connection of `record`, as it stands after it.
    pub fn connection(&mut self, record: &Recorded) -> &Connection {
        let conn = self.conns.entry(record.conn).or_insert_with(|| {
            let process = Arc::new(ProcessInfo {
                pid: record.conn.tgid,
                comm: record.comm.clone(),
                exe: String::new(),
                cmdline: Vec::new(),
                cgroup: String::new(),
            });
            Connection::for_tests(
                record.conn,
                record.role,
                record.local,
                record.remote,
                process,
            )
        });
        conn.local = conn.local.or(record.local);
        conn.remote = conn.remote.or(record.remote);
        if record.kind == "conn_tls" {
            conn.tls = true;
        }
        conn.seeded |= record.seeded;
        conn
    }

    /// The pipeline event of `record`, if it makes one.
    pub fn event(&mut self, record: &Recorded) -> Option<SessionEvent> {
        let conn = self.connection(record).clone();
        let (id, time) = (record.conn, record.time);
        Some(match record.kind.as_str() {
            "data" => SessionEvent::Stream {
                conn,
                event: StreamEvent::Data {
                    conn: id,
                    direction: record.direction,
                    offset: record.offset,
                    bytes: record.bytes.clone(),
                    ktime_ns: time,
                    tid: record.tid,
                },
            },
            "gap" => SessionEvent::Stream {
                conn,
                event: StreamEvent::Gap {
                    conn: id,
                    direction: record.direction,
                    offset: record.offset,
                    length: record.gap,
                    reason: GapReason::NotCaptured,
                    ktime_ns: time,
                },
            },
            "conn_tls" => SessionEvent::Conn {
                conn,
                change: ConnChange::TlsPlaintext,
                ktime_ns: time,
                seeded: false,
            },
            "conn_close" => {
                self.conns.remove(&id);
                SessionEvent::Conn {
                    conn,
                    change: ConnChange::Close {
                        not_tcp: false,
                        final_positions: None,
                    },
                    ktime_ns: time,
                    seeded: false,
                }
            }
            _ => return None,
        })
    }
}
