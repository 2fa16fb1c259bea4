//! The agent's own health in `/metrics`: events read and lost, parse errors, spans exported
//! and dropped. The main loop copies its counters here (absolute values) once a second.
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    agent::{priority::Priority, PipelineStats},
    export::ExportStats,
    session::SessionStats,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Service {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Protocol {
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolEvent {
    pub protocol: String,
    pub event: String,
}

#[derive(Clone, Default)]
pub struct AgentMetrics {
    protocol_events: Family<ProtocolEvent, Counter>,
    events_read: Counter,
    events_lost: Family<Reason, Counter>,
    stream_bytes_lost: Counter,
    parse_skipped_bytes: Family<Protocol, Counter>,
    parser_panics: Counter,
    exchanges: Family<Protocol, Counter>,
    spans_exported: Counter,
    spans_dropped: Family<Reason, Counter>,
    spans_sampled_out: Counter,
    parents_ambiguous: Family<Service, Counter>,
    spans_forgotten_early: Counter,
    export_errors: Counter,
    connections: Gauge,
    connections_unparsed: Family<Reason, Counter>,
    payload_records: Counter,
    tls_calls: Counter,
    tls_libraries: Family<Flavour, Gauge>,
    tls_processes: Gauge,
    tls_attach_errors: Counter,
    addresses_from_proc: Counter,
    proc_table_reads: Counter,
    backlog_seconds: Gauge<f64, AtomicU64>,
    idle_priority: Gauge,
    catch_ups: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Flavour {
    pub flavour: String,
}

fn set(counter: &Counter, value: u64) {
    counter.inner().store(value, Ordering::Relaxed);
}

impl AgentMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry;
        r.register(
            "tracer_events_read",
            "Records read from the kernel ring buffers",
            m.events_read.clone(),
        );
        r.register(
            "tracer_events_lost",
            "Kernel events lost, by reason (ring buffer full, tables full, unreadable memory, undecodable)",
            m.events_lost.clone(),
        );
        r.register(
            "tracer_stream_bytes_lost",
            "Payload bytes missing from reassembled streams",
            m.stream_bytes_lost.clone(),
        );
        r.register(
            "tracer_protocol_events",
            "Protocol-specific events of closed connections, by protocol and event (e.g. http2 header_blocks_undecodable: HPACK state unknown, headers not reported)",
            m.protocol_events.clone(),
        );
        r.register(
            "tracer_parse_skipped_bytes",
            "Bytes a protocol parser could not parse and skipped, by protocol",
            m.parse_skipped_bytes.clone(),
        );
        r.register(
            "tracer_parser_panics",
            "Connections no longer parsed because their parser panicked (a bug to report)",
            m.parser_panics.clone(),
        );
        r.register(
            "tracer_exchanges",
            "Requests and messages parsed, by protocol",
            m.exchanges.clone(),
        );
        r.register(
            "tracer_spans_exported",
            "Spans delivered to export targets",
            m.spans_exported.clone(),
        );
        r.register(
            "tracer_spans_dropped",
            "Spans dropped, by reason",
            m.spans_dropped.clone(),
        );
        r.register(
            "tracer_spans_sampled_out",
            "Spans not exported by sampling decision",
            m.spans_sampled_out.clone(),
        );
        r.register(
            "tracer_parent_ambiguous",
            "Calls left without a parent: several requests of their process were open and no evidence (traceparent, identifiers, message, thread) said which one they served, by service",
            m.parents_ambiguous.clone(),
        );
        r.register(
            "tracer_correlator_spans_forgotten_early",
            "Exported spans the correlator forgot before their retention because it held its maximum (a busy host): calls or deliveries reported later cannot link to them",
            m.spans_forgotten_early.clone(),
        );
        r.register(
            "tracer_export_errors",
            "Failed export attempts",
            m.export_errors.clone(),
        );
        r.register(
            "tracer_connections",
            "Connections followed now",
            m.connections.clone(),
        );
        r.register(
            "tracer_connections_unparsed",
            "Connections whose bytes are not parsed, by reason (unrecognised: no protocol tracer parses, its payload no longer copied; encrypted; untraced: its executable is never traced; telemetry_export: OTLP exports to a collector; not_tcp)",
            m.connections_unparsed.clone(),
        );
        r.register(
            "tracer_payload_records",
            "Records of socket bytes or TLS plaintext the kernel side copied into the ring buffer",
            m.payload_records.clone(),
        );
        r.register(
            "tracer_tls_calls",
            "TLS library reads and writes whose plaintext was captured",
            m.tls_calls.clone(),
        );
        r.register(
            "tracer_tls_libraries",
            "Files whose TLS functions are hooked with uprobes, by kind",
            m.tls_libraries.clone(),
        );
        r.register(
            "tracer_tls_processes",
            "Running processes known to use a hooked TLS library",
            m.tls_processes.clone(),
        );
        r.register(
            "tracer_tls_attach_errors",
            "TLS functions that could not be hooked (see the agent log)",
            m.tls_attach_errors.clone(),
        );
        r.register(
            "tracer_connection_addresses_from_proc",
            "Sockets whose 4-tuple the kernel side did not learn, found in /proc/<pid>/net/tcp instead",
            m.addresses_from_proc.clone(),
        );
        r.register(
            "tracer_proc_tcp_table_reads",
            "Reads of /proc/<pid>/net/tcp{,6} for those (each walks every TCP socket of a network namespace)",
            m.proc_table_reads.clone(),
        );
        r.register(
            "tracer_backlog_seconds",
            "How long before the agent's last read of the kernel ring its oldest record was written (how far behind the traced syscalls the agent is)",
            m.backlog_seconds.clone(),
        );
        r.register(
            "tracer_cpu_priority_idle",
            "1 while the agent's reading thread runs at idle CPU priority (SCHED_IDLE: only on CPU time the traced applications leave unused), 0 at normal priority",
            m.idle_priority.clone(),
        );
        r.register(
            "tracer_cpu_priority_catch_ups",
            "Times the agent's reading thread fell behind (a record over 100 ms old, or no read of the rings for 50 ms) and caught up at normal CPU priority",
            m.catch_ups.clone(),
        );
        m
    }

    pub fn update_priority(&self, priority: &Priority) {
        self.idle_priority.set(i64::from(priority.is_idle()));
        set(&self.catch_ups, priority.catch_ups());
    }

    pub fn update(&self, capture: &SessionStats, pipeline: &PipelineStats, export: &ExportStats) {
        set(&self.events_read, capture.records_read);
        self.backlog_seconds.set(capture.backlog_ns as f64 / 1e9);
        let lost = |reason: &str| {
            self.events_lost.get_or_create(&Reason {
                reason: reason.to_owned(),
            })
        };
        for (name, value) in &capture.kernel {
            let reason = match *name {
                "ringbuf_data_lost" => "data_ring_full",
                "ringbuf_conn_lost" => "connection_ring_full",
                "syscall_stash_full" => "syscall_table_full",
                "conn_table_full" => "connection_table_full",
                "user_read_failed" => "user_memory_unreadable",
                "tls_no_socket" => "tls_socket_unknown",
                "scratch_busy" => "scratch_slot_busy",
                "tls_calls" => {
                    set(&self.tls_calls, *value);
                    continue;
                }
                "data_records" => {
                    set(&self.payload_records, *value);
                    continue;
                }
                _ => continue,
            };
            set(&lost(reason), *value);
        }
        set(&lost("undecodable"), capture.decode_errors);
        set(&self.stream_bytes_lost, capture.reassembly.gap_bytes_lost);
        for ((protocol, event), count) in &pipeline.protocol_events {
            let labels = ProtocolEvent {
                protocol: (*protocol).to_owned(),
                event: (*event).to_owned(),
            };
            set(&self.protocol_events.get_or_create(&labels), *count);
        }
        for (protocol, bytes) in &pipeline.parse_skipped_bytes {
            set(
                &self.parse_skipped_bytes.get_or_create(&Protocol {
                    protocol: (*protocol).to_owned(),
                }),
                *bytes,
            );
        }
        for (protocol, count) in &pipeline.exchanges {
            set(
                &self.exchanges.get_or_create(&Protocol {
                    protocol: (*protocol).to_owned(),
                }),
                *count,
            );
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        set(&self.spans_exported, load(&export.spans_exported));
        let dropped = |reason: &str| {
            self.spans_dropped.get_or_create(&Reason {
                reason: reason.to_owned(),
            })
        };
        set(
            &dropped("queue_full"),
            load(&export.spans_dropped_queue_full),
        );
        set(
            &dropped("export_failed"),
            load(&export.spans_dropped_export_failed),
        );
        set(&self.spans_sampled_out, pipeline.spans_sampled_out);
        for (service, count) in &pipeline.parents_ambiguous {
            let service = Service {
                service: service.clone(),
            };
            set(&self.parents_ambiguous.get_or_create(&service), *count);
        }
        set(&self.parser_panics, pipeline.parser_panics);
        set(
            &self.spans_forgotten_early,
            pipeline.correlator.forgotten_early,
        );
        set(&self.export_errors, load(&export.export_errors));
        self.connections.set(capture.connections as i64);
        for (reason, count) in [
            ("unrecognised", pipeline.connections_unrecognised),
            ("encrypted", pipeline.connections_encrypted),
            ("untraced", pipeline.connections_untraced),
            ("telemetry_export", pipeline.connections_telemetry_export),
            ("not_tcp", pipeline.connections_not_tcp),
        ] {
            let reason = Reason {
                reason: reason.to_owned(),
            };
            set(&self.connections_unparsed.get_or_create(&reason), count);
        }
        let mut by_flavour = std::collections::BTreeMap::<&str, i64>::new();
        for library in &capture.tls_libraries {
            *by_flavour.entry(library.flavour.name()).or_default() += 1;
        }
        for (flavour, count) in by_flavour {
            let flavour = Flavour {
                flavour: flavour.to_owned(),
            };
            self.tls_libraries.get_or_create(&flavour).set(count);
        }
        self.tls_processes.set(capture.tls_processes as i64);
        set(&self.tls_attach_errors, capture.tls_attach_errors);
        set(&self.addresses_from_proc, capture.addresses_from_proc);
        set(&self.proc_table_reads, capture.proc_table_reads);
    }
}
