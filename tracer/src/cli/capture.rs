//! `tracer capture`: what the kernel side sees, per connection, like `tcpdump -A` per process.
use std::{
    io::{self, Write},
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use tracer_common::ConnId;

use super::StopSignal;
use crate::{
    capture::{CaptureOptions, ConnChange, Connection, DataHook, Selection},
    reassembly::{Limits, StreamEvent},
    session::{CaptureSession, SessionEvent},
};

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Format {
    /// Readable: one header line per record, then the printable bytes.
    #[default]
    Text,
    /// One JSON object per connection event or data record.
    Jsonl,
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Only these processes (repeatable). Default: every process but tracer itself.
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Only connections with this local or remote port (repeatable).
    #[arg(long = "port")]
    ports: Vec<u16>,
    /// Only processes whose command name (`/proc/<pid>/comm`) is this (repeatable).
    #[arg(long = "comm")]
    comms: Vec<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
    /// Kernel ring-buffer size in bytes (power of two).
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    ring_buffer_bytes: u32,
    /// How often the ring buffer is read, in milliseconds.
    #[arg(long, default_value_t = 10)]
    poll_ms: u64,
    /// Do not hook TLS libraries: encrypted connections show only their encrypted bytes.
    #[arg(long)]
    no_tls: bool,
    /// Where the data path's kernel program runs: `syscall-tracepoints` (one per data
    /// syscall; the default) or `raw-syscalls` (one at raw_syscalls:sys_exit for every
    /// syscall of the host; see README "Cost").
    #[arg(long, value_enum, default_value_t = DataHook::SyscallTracepoints)]
    data_hook: DataHook,
}

pub fn run(args: CaptureArgs) -> anyhow::Result<()> {
    let options = CaptureOptions {
        ring_buffer_bytes: args.ring_buffer_bytes,
        selection: if args.pids.is_empty() {
            Selection::All
        } else {
            Selection::Pids(args.pids.clone())
        },
        tls: crate::config::TlsConfig::default().options(args.no_tls),
        data_hook: args.data_hook,
        ..CaptureOptions::default()
    };
    let stop = StopSignal::install(args.duration.map(Duration::from_secs_f64))?;
    let mut events = Vec::new();
    let mut session = CaptureSession::start(&options, Limits::default(), &mut events)?;
    for missing in session.missing_optional_tracepoints() {
        eprintln!("tracer: note: tracepoint {missing} is unavailable on this kernel");
    }
    eprintln!("tracer: capture started (pid {})", std::process::id());
    let filter = Filter {
        ports: args.ports,
        comms: args.comms,
    };
    let mut printer = Printer {
        format: args.format,
        out: io::BufWriter::new(io::stdout().lock()),
    };
    loop {
        for event in events.drain(..) {
            if let Some(ignored) = printer.print(&mut session, &filter, event)? {
                session.ignore_payload(ignored, true);
            }
        }
        printer.out.flush()?;
        if stop.stopped() {
            break;
        }
        if session.poll(&mut events) == 0 && events.is_empty() {
            std::thread::sleep(Duration::from_millis(args.poll_ms));
        }
    }
    // What was in flight when we were told to stop.
    session.poll(&mut events);
    for event in events.drain(..) {
        printer.print(&mut session, &filter, event)?;
    }
    let stats = session.stats();
    match args.format {
        Format::Jsonl => writeln!(
            printer.out,
            "{}",
            json!({ "type": "stats", "stats": stats })
        )?,
        Format::Text => eprintln!("tracer: {}", serde_json::to_string(&stats)?),
    }
    printer.out.flush()?;
    Ok(())
}

struct Filter {
    ports: Vec<u16>,
    comms: Vec<String>,
}

impl Filter {
    fn accepts(&self, conn: &Connection) -> bool {
        let port_ok = self.ports.is_empty()
            || [conn.local, conn.remote]
                .iter()
                .flatten()
                .any(|a| self.ports.contains(&a.port()));
        let comm_ok = self.comms.is_empty() || self.comms.iter().any(|c| *c == conn.process.comm);
        port_ok && comm_ok
    }
}

struct Printer<W: Write> {
    format: Format,
    out: W,
}

impl<W: Write> Printer<W> {
    /// Prints one event if the filter accepts its connection. Returns a connection whose
    /// payload nobody asked for, so the kernel can stop copying it.
    fn print(
        &mut self,
        session: &mut CaptureSession,
        filter: &Filter,
        event: SessionEvent,
    ) -> io::Result<Option<ConnId>> {
        let (conn, mut record) = match event {
            SessionEvent::Conn {
                conn,
                change,
                ktime_ns,
                seeded,
            } => {
                let record = conn_record(&change, seeded, session.clock.wall_ns(ktime_ns));
                (conn, record)
            }
            SessionEvent::Stream { conn, event } => {
                let record = stream_record(&event, &session.clock);
                (conn, record)
            }
        };
        if !filter.accepts(&conn) {
            // Only decide once the addresses are known, or a port filter could misjudge.
            return Ok((conn.local.is_some() && record["type"] == "data").then_some(conn.id));
        }
        add_connection_fields(&mut record, &conn);
        match self.format {
            Format::Jsonl => writeln!(self.out, "{record}")?,
            Format::Text => write_text(&mut self.out, &record)?,
        }
        Ok(None)
    }
}

fn conn_record(change: &ConnChange, seeded: bool, time_unix_nano: u64) -> Value {
    let (kind, extra) = match change {
        ConnChange::Open { .. } => ("conn_open", json!({})),
        ConnChange::Addresses { .. } if seeded => ("conn_open", json!({ "seeded": true })),
        ConnChange::Addresses { .. } => ("conn_addr", json!({})),
        ConnChange::TlsPlaintext => ("conn_tls", json!({})),
        ConnChange::Close { not_tcp, .. } => (
            "conn_close",
            json!({ "reason": if *not_tcp { "not_tcp" } else { "closed" } }),
        ),
    };
    let mut record = json!({ "type": kind, "time_unix_nano": time_unix_nano });
    merge(&mut record, extra);
    record
}

fn stream_record(event: &StreamEvent, clock: &crate::capture::KernelClock) -> Value {
    match event {
        StreamEvent::Data {
            direction,
            offset,
            bytes,
            ktime_ns,
            tid,
            ..
        } => json!({
            "type": "data",
            "time_unix_nano": clock.wall_ns(*ktime_ns),
            "tid": tid,
            "direction": direction,
            "offset": offset,
            "length": bytes.len(),
            "data": BASE64.encode(bytes),
        }),
        StreamEvent::Gap {
            direction,
            offset,
            length,
            reason,
            ktime_ns,
            ..
        } => json!({
            "type": "gap",
            "time_unix_nano": clock.wall_ns(*ktime_ns),
            "direction": direction,
            "offset": offset,
            "gap_length": length,
            "reason": reason,
        }),
    }
}

fn add_connection_fields(record: &mut Value, conn: &Connection) {
    merge(
        record,
        json!({
            "pid": conn.id.tgid,
            "comm": conn.process.comm,
            "fd": conn.id.fd,
            "generation": conn.id.generation,
            "role": conn.role,
            "local": conn.local.map(|a| a.to_string()),
            "remote": conn.remote.map(|a| a.to_string()),
        }),
    );
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        into.extend(from);
    }
}

fn write_text(out: &mut impl Write, record: &Value) -> io::Result<()> {
    let time = record["time_unix_nano"].as_u64().unwrap_or(0);
    let time = humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + Duration::from_nanos(time));
    let addr = |key: &str| record[key].as_str().unwrap_or("?").to_owned();
    let who = format!(
        "{time} {}[{}] fd {} {} {} -> {}",
        record["comm"].as_str().unwrap_or(""),
        record["pid"],
        record["fd"],
        record["role"].as_str().unwrap_or(""),
        addr("local"),
        addr("remote"),
    );
    match record["type"].as_str().unwrap_or("") {
        "data" => {
            let bytes = BASE64
                .decode(record["data"].as_str().unwrap_or(""))
                .unwrap_or_default();
            writeln!(
                out,
                "{who} {} offset {} len {}",
                record["direction"].as_str().unwrap_or(""),
                record["offset"],
                bytes.len()
            )?;
            let printable: String = bytes
                .iter()
                .map(|&b| {
                    if b == b'\n' || b == b'\t' || (0x20..0x7f).contains(&b) {
                        b as char
                    } else {
                        '.'
                    }
                })
                .collect();
            writeln!(out, "{printable}")
        }
        "gap" => writeln!(
            out,
            "{who} {} offset {} GAP {} bytes ({})",
            record["direction"].as_str().unwrap_or(""),
            record["offset"],
            record["gap_length"],
            record["reason"].as_str().unwrap_or("")
        ),
        kind => writeln!(out, "{who} {kind}"),
    }
}
