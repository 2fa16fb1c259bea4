//! Per-connection protocol sessions, and the hand-over of their exchanges to the
//! correlator and of resolved spans to the export queues.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use foldhash::HashMap;
use tracer_common::ConnId;

use crate::{
    capture::{ConnChange, Connection, Direction, KernelClock},
    config::Config,
    correlate::{Correlator, CorrelatorStats, ResolvedSpan},
    export::{ExportQueues, Services},
    extract::{Extractor, ExtractorError},
    journey::JourneyHandle,
    privacy::{IdKey, Privacy, PrivacyOptions},
    protocols::{
        self, ExchangeEvent, ExchangeStatus, ProtocolSession, SessionContext, SessionOptions,
    },
    reassembly::StreamEvent,
    sample::Sampler,
    session::SessionEvent,
};

use super::export_stage::{ExportStage, ExportTally, Exporter};

/// Bytes looked at to decide a connection's protocol.
const MAX_SNIFF: usize = 256;
/// Reads of a connection picked up mid-stream looked at before it is given up: its first
/// read may begin inside a message, the next ones usually begin at one (and the other
/// side's may be the one a protocol recognises).
const MID_STREAM_READS: u8 = 8;

enum ConnProtocol {
    Sniffing {
        first: Direction,
        bytes: Vec<u8>,
        mid_stream: bool,
        /// Reads of a mid-stream connection that no protocol claimed so far.
        misses: u8,
    },
    Parsing {
        protocol: &'static str,
        session: Box<dyn ProtocolSession>,
    },
    /// No protocol we parse: the kernel was told to stop copying its payload.
    Ignored,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PipelineStats {
    pub connections_by_protocol: BTreeMap<&'static str, u64>,
    pub connections_unrecognised: u64,
    /// Connections whose bytes were TLS records (their plaintext, if hooked, is counted
    /// under its own protocol).
    pub connections_encrypted: u64,
    pub exchanges: BTreeMap<&'static str, u64>,
    /// Bytes skipped as unparseable, by protocol (closed connections only).
    pub parse_skipped_bytes: BTreeMap<&'static str, u64>,
    /// Protocol-specific events by (protocol, event), closed connections only.
    #[serde(serialize_with = "serialize_pairs")]
    pub protocol_events: BTreeMap<(&'static str, &'static str), u64>,
    pub spans_sampled_out: u64,
    /// Calls left without a parent because several requests of their process were open
    /// and no evidence said which one they served, by service.
    pub parents_ambiguous: BTreeMap<String, u64>,
    /// OTLP exports to a collector seen on the collector's (or a sender's) side: never
    /// spans, or every export would add a span to the next.
    pub telemetry_exports_skipped: u64,
    /// Connections found carrying OTLP exports: from the first one on, their payload is
    /// no longer copied (an export that lost its headers to a gap must not become a span).
    pub connections_telemetry_export: u64,
    /// Connections dropped because their parser panicked (a bug; the agent carries on).
    pub parser_panics: u64,
    /// Connections of processes never traced (`privacy.untraced_executables`).
    pub connections_untraced: u64,
    /// UNIX or UDP sockets the kernel side followed for want of its socket tracepoints,
    /// found out in `/proc` and never parsed.
    pub connections_not_tcp: u64,
    pub correlator: CorrelatorStats,
}

/// What happens to exchanges and spans between parsing and export.
pub struct Stages {
    pub extractor: Extractor,
    pub sampler: Sampler,
    pub privacy: Privacy,
    /// Print each span that would be exported, with its redactions, instead of exporting.
    pub privacy_dry_run: bool,
    /// Executables (file name or comm) whose connections are never parsed.
    pub untraced_executables: Vec<String>,
    /// Order journeys: every exported span, and every order span even if sampled out.
    pub journey: Option<JourneyHandle>,
}

impl Stages {
    /// The stages a configuration asks for, with the deployment's key (pseudonyms on when
    /// the config says so, else when the key is secret); no journeys, no dry run.
    pub fn from_config(config: &Config, key: IdKey) -> Result<Self, ExtractorError> {
        Ok(Self {
            extractor: Extractor::new(&config.extract)?,
            sampler: Sampler::new(&config.sampling),
            privacy: Privacy::new(
                key.clone(),
                PrivacyOptions {
                    pseudonymise_ids: config.privacy.pseudonymise(key.is_secret()),
                    mask_personal_data: config.privacy.mask_personal_data,
                    allowed_query_keys: config.privacy.allowed_query_keys.clone(),
                },
            ),
            privacy_dry_run: false,
            untraced_executables: config.privacy.untraced_executables.clone(),
            journey: None,
        })
    }
}

pub struct Pipeline {
    conns: HashMap<ConnId, ConnProtocol>,
    correlator: Correlator,
    /// Spans the correlator resolved at a tick, emptied by `export`.
    resolved: Vec<ResolvedSpan>,
    exporter: Exporter,
    /// The export stage's counts (it may run on its own thread).
    export_tally: Arc<Mutex<ExportTally>>,
    extractor: Extractor,
    untraced_executables: Vec<String>,
    options: SessionOptions,
    stats: PipelineStats,
    exchanges: Vec<ExchangeEvent>,
    /// Sessions that asked to be woken at a kernel time though no bytes come.
    timers: HashMap<ConnId, (u64, Connection)>,
    /// Connections that just carried an OTLP export: no longer followed (see
    /// `PipelineStats::connections_telemetry_export`).
    telemetry_conns: Vec<ConnId>,
}

/// What the pipeline asks of the capture side.
pub enum Request {
    /// Stop copying a connection's socket bytes, and with `plaintext` its TLS plaintext
    /// too (a connection may be dropped as encrypted noise before its plaintext begins).
    IgnorePayload { conn: ConnId, plaintext: bool },
}

impl Pipeline {
    pub fn new(
        correlator: Correlator,
        services: Services,
        queues: ExportQueues,
        options: SessionOptions,
        stages: Stages,
    ) -> Self {
        let export_tally = Arc::new(Mutex::new(ExportTally::default()));
        let stage = ExportStage {
            sampler: stages.sampler,
            privacy: stages.privacy,
            privacy_dry_run: stages.privacy_dry_run,
            journey: stages.journey,
            services,
            queues,
            tally: export_tally.clone(),
            encoder: Default::default(),
        };
        Self {
            conns: HashMap::default(),
            correlator,
            resolved: Vec::new(),
            exporter: Exporter::Inline(Box::new(stage)),
            export_tally,
            extractor: stages.extractor,
            untraced_executables: stages.untraced_executables,
            options,
            stats: PipelineStats::default(),
            exchanges: Vec::new(),
            timers: HashMap::default(),
            telemetry_conns: Vec::new(),
        }
    }

    /// Runs the export stage (sampling, privacy, journeys, encoding) on a thread of its
    /// own: a second core takes part of the work, spans leave in the same order.
    pub fn with_export_thread(mut self) -> Self {
        self.exporter = std::mem::replace(&mut self.exporter, Exporter::none()).into_thread();
        self
    }

    pub fn stats(&self) -> PipelineStats {
        let tally = self
            .export_tally
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        PipelineStats {
            correlator: self.correlator.stats(),
            spans_sampled_out: tally.spans_sampled_out,
            parents_ambiguous: tally.parents_ambiguous,
            ..self.stats.clone()
        }
    }

    /// Handles one capture event; `now_ns` is kernel time. A parser bug (a panic) costs
    /// only its connection: it is counted, logged, and no longer parsed.
    pub fn handle(&mut self, event: SessionEvent, now_ns: u64, requests: &mut Vec<Request>) {
        let conn = match &event {
            SessionEvent::Conn { conn, .. } | SessionEvent::Stream { conn, .. } => conn.id,
        };
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.handle_event(event, now_ns, requests)
        }));
        if handled.is_err() {
            self.stats.parser_panics += 1;
            self.exchanges.clear();
            self.conns.insert(conn, ConnProtocol::Ignored);
            requests.push(Request::IgnorePayload {
                conn,
                plaintext: true,
            });
            tracing::error!(
                pid = conn.tgid,
                fd = conn.fd,
                "a protocol parser panicked on this connection; it is no longer parsed (please report the panic above)"
            );
        }
    }

    fn handle_event(&mut self, event: SessionEvent, now_ns: u64, requests: &mut Vec<Request>) {
        self.handle_event_inner(event, now_ns, requests);
        self.stop_following_telemetry(requests);
    }

    /// A connection that carried an OTLP export carries nothing else worth a span: its
    /// payload is no longer copied. A later export on it that lost its headers to a gap
    /// (HTTP/2 header state unknown) could not be told from a service call, and would
    /// add a span to every following export, for as long as the connection lives.
    fn stop_following_telemetry(&mut self, requests: &mut Vec<Request>) {
        for conn in self.telemetry_conns.drain(..) {
            let Some(state) = self.conns.get_mut(&conn) else {
                continue; // closed meanwhile
            };
            if matches!(state, ConnProtocol::Ignored) {
                continue;
            }
            *state = ConnProtocol::Ignored;
            self.timers.remove(&conn);
            self.correlator.forget_connection(conn);
            self.stats.connections_telemetry_export += 1;
            requests.push(Request::IgnorePayload {
                conn,
                plaintext: true,
            });
        }
    }

    fn handle_event_inner(
        &mut self,
        event: SessionEvent,
        now_ns: u64,
        requests: &mut Vec<Request>,
    ) {
        match event {
            SessionEvent::Conn {
                conn,
                change: ConnChange::Close { .. },
                ktime_ns,
                ..
            } => {
                if let Some(ConnProtocol::Parsing {
                    protocol,
                    mut session,
                }) = self.conns.remove(&conn.id)
                {
                    self.timers.remove(&conn.id);
                    session.close(ktime_ns, &mut self.exchanges);
                    *self.stats.parse_skipped_bytes.entry(protocol).or_default() +=
                        session.bytes_skipped();
                    for (event, n) in session.events() {
                        *self
                            .stats
                            .protocol_events
                            .entry((protocol, event))
                            .or_default() += n;
                    }
                    self.hand_over(&conn, protocol, now_ns);
                }
            }
            SessionEvent::Conn {
                conn,
                change: ConnChange::TlsPlaintext,
                ..
            } => {
                // The encrypted bytes are done with; the plaintext is sniffed afresh.
                self.conns.remove(&conn.id);
            }
            SessionEvent::Conn { .. } => {}
            SessionEvent::Stream {
                conn,
                event:
                    StreamEvent::Data {
                        direction,
                        bytes,
                        ktime_ns,
                        tid,
                        ..
                    },
            } => {
                self.data(&conn, direction, &bytes, ktime_ns, tid, now_ns, requests);
            }
            SessionEvent::Stream {
                conn,
                event:
                    StreamEvent::Gap {
                        direction,
                        length,
                        ktime_ns,
                        ..
                    },
            } => match self.conns.get_mut(&conn.id) {
                Some(ConnProtocol::Parsing { protocol, session }) => {
                    let protocol = *protocol;
                    session.gap(direction, length, ktime_ns, &mut self.exchanges);
                    let deadline = session.deadline();
                    self.hand_over(&conn, protocol, now_ns);
                    self.schedule(&conn, deadline);
                }
                Some(ConnProtocol::Sniffing {
                    bytes, mid_stream, ..
                }) => {
                    bytes.clear();
                    *mid_stream = true;
                }
                Some(ConnProtocol::Ignored) => {}
                None => {
                    let sniff = ConnProtocol::Sniffing {
                        first: direction,
                        bytes: Vec::new(),
                        mid_stream: true,
                        misses: 0,
                    };
                    self.conns.insert(conn.id, sniff);
                }
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn data(
        &mut self,
        conn: &Connection,
        direction: Direction,
        bytes: &[u8],
        ktime_ns: u64,
        tid: u32,
        now_ns: u64,
        requests: &mut Vec<Request>,
    ) {
        if !self.conns.contains_key(&conn.id) && self.never_parsed(conn) {
            self.conns.insert(conn.id, ConnProtocol::Ignored);
            requests.push(Request::IgnorePayload {
                conn: conn.id,
                plaintext: true,
            });
            return;
        }
        let state = self
            .conns
            .entry(conn.id)
            .or_insert_with(|| ConnProtocol::Sniffing {
                first: direction,
                bytes: Vec::new(),
                mid_stream: conn.seeded,
                misses: 0,
            });
        if let ConnProtocol::Sniffing {
            first,
            bytes: sniffed,
            mid_stream,
            misses,
        } = state
        {
            if *first != direction {
                // The other side spoke before we could tell: start over from here.
                *first = direction;
                sniffed.clear();
                *mid_stream = true;
            }
            sniffed.extend_from_slice(&bytes[..bytes.len().min(MAX_SNIFF)]);
            if !conn.tls && protocols::is_tls_record(sniffed) {
                // Encrypted: its plaintext arrives from the TLS uprobes (when its library
                // is hooked); the encrypted bytes are not worth copying.
                self.stats.connections_encrypted += 1;
                *state = ConnProtocol::Ignored;
                requests.push(Request::IgnorePayload {
                    conn: conn.id,
                    plaintext: false,
                });
                return;
            }
            match protocols::infer(sniffed, direction, *mid_stream) {
                Ok(protocol) => {
                    let context = SessionContext {
                        role: conn.role,
                        first_direction: direction,
                        mid_stream: *mid_stream,
                        tls: conn.tls,
                    };
                    let mut session = protocol.session(context, &self.options);
                    session.feed(direction, sniffed, ktime_ns, tid, &mut self.exchanges);
                    if bytes.len() > MAX_SNIFF {
                        session.feed(
                            direction,
                            &bytes[MAX_SNIFF..],
                            ktime_ns,
                            tid,
                            &mut self.exchanges,
                        );
                    }
                    *self
                        .stats
                        .connections_by_protocol
                        .entry(protocol.name())
                        .or_default() += 1;
                    let deadline = session.deadline();
                    *state = ConnProtocol::Parsing {
                        protocol: protocol.name(),
                        session,
                    };
                    self.hand_over(conn, protocol.name(), now_ns);
                    self.schedule(conn, deadline);
                }
                Err(true) if sniffed.len() < MAX_SNIFF => {}
                Err(_) if *mid_stream && *misses + 1 < MID_STREAM_READS => {
                    // Not inside this read: look at the next one from its start.
                    *misses += 1;
                    sniffed.clear();
                }
                Err(_) => {
                    tracing::debug!(
                        pid = conn.id.tgid,
                        fd = conn.id.fd,
                        tls = conn.tls,
                        first = %String::from_utf8_lossy(&sniffed[..sniffed.len().min(32)]).escape_debug(),
                        "connection speaks no protocol we parse; its payload is no longer copied"
                    );
                    self.stats.connections_unrecognised += 1;
                    *state = ConnProtocol::Ignored;
                    requests.push(Request::IgnorePayload {
                        conn: conn.id,
                        plaintext: conn.tls,
                    });
                }
            }
            return;
        }
        if let ConnProtocol::Parsing { protocol, session } = state {
            let protocol = *protocol;
            session.feed(direction, bytes, ktime_ns, tid, &mut self.exchanges);
            let deadline = session.deadline();
            self.hand_over(conn, protocol, now_ns);
            self.schedule(conn, deadline);
        }
    }

    /// Remembers (or forgets) when a session wants to be woken.
    fn schedule(&mut self, conn: &Connection, deadline: Option<u64>) {
        match deadline {
            Some(at) => match self.timers.get_mut(&conn.id) {
                Some(timer) => timer.0 = at,
                None => {
                    self.timers.insert(conn.id, (at, conn.clone()));
                }
            },
            // Nearly always: no timer anywhere, no lookup per event.
            None if self.timers.is_empty() => {}
            None => {
                self.timers.remove(&conn.id);
            }
        }
    }

    /// Wakes the sessions whose deadline has come.
    fn wake(&mut self, now_ns: u64) {
        if self.timers.is_empty() {
            return;
        }
        let due: Vec<ConnId> = self
            .timers
            .iter()
            .filter(|(_, (at, _))| *at <= now_ns)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some((_, conn)) = self.timers.remove(&id) else {
                continue;
            };
            let Some(ConnProtocol::Parsing { protocol, session }) = self.conns.get_mut(&id) else {
                continue;
            };
            let protocol = *protocol;
            session.expire(now_ns, &mut self.exchanges);
            let deadline = session.deadline();
            self.hand_over(&conn, protocol, now_ns);
            self.schedule(&conn, deadline);
        }
    }

    /// A connection whose bytes are never parsed (counted): not TCP after all, or of a
    /// process whose traffic must not be traced (the auth proxy, Jaeger: staff sessions).
    fn never_parsed(&mut self, conn: &Connection) -> bool {
        if conn.not_tcp {
            self.stats.connections_not_tcp += 1;
            return true;
        }
        let process = &conn.process;
        let file_name = process.exe.rsplit('/').next().unwrap_or_default();
        let untraced = self
            .untraced_executables
            .iter()
            .any(|name| name == file_name || *name == process.comm);
        if untraced {
            self.stats.connections_untraced += 1;
        }
        untraced
    }

    fn hand_over(&mut self, conn: &Connection, protocol: &'static str, now_ns: u64) {
        for event in self.exchanges.drain(..) {
            match event {
                ExchangeEvent::Started(start) => self.correlator.started(conn, &start),
                ExchangeEvent::Identified { id, identifiers } => {
                    self.correlator.identified(conn, id, &identifiers)
                }
                ExchangeEvent::Finished(exchange) if exchange.record.is_telemetry_export() => {
                    self.stats.telemetry_exports_skipped += 1;
                    self.correlator.discard(conn, exchange.id);
                    self.telemetry_conns.push(conn.id);
                }
                ExchangeEvent::Finished(mut exchange) => {
                    *self.stats.exchanges.entry(protocol).or_default() += 1;
                    let extracted = self.extractor.extract(&exchange);
                    exchange.order_ids = extracted.order_ids;
                    exchange.business = extracted.attributes;
                    if let (Some(message), ExchangeStatus::Ok) = (extracted.error, &exchange.status)
                    {
                        exchange.status = ExchangeStatus::Error {
                            error_type: "reported".into(),
                            message,
                        };
                    }
                    self.correlator.finished(conn, exchange, now_ns);
                }
                ExchangeEvent::Broker(event) => self.correlator.broker(event),
            }
        }
    }

    /// Sends spans whose parents are settled to the export stage.
    pub fn tick(&mut self, now_ns: u64, clock: &KernelClock) {
        self.wake(now_ns);
        // Kept between ticks: a burst's vector is not grown again at every tick.
        let mut resolved = std::mem::take(&mut self.resolved);
        self.correlator.poll(now_ns, &mut resolved);
        self.exporter.export(&mut resolved, clock);
        self.resolved = resolved;
    }

    /// At shutdown: export everything still settling, and wait until it is queued.
    /// Requests still in flight are not closed: the agent stopping says nothing about
    /// whether they will be answered.
    pub fn finish(&mut self, clock: &KernelClock) {
        let mut resolved = Vec::new();
        self.correlator.flush(&mut resolved);
        self.exporter.export(&mut resolved, clock);
        self.exporter.finish();
    }
}

/// `{"http2.header_blocks_undecodable": 3}`: tuple keys as `protocol.event`.
fn serialize_pairs<S: serde::Serializer>(
    map: &BTreeMap<(&'static str, &'static str), u64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(map.iter().map(|((p, e), n)| (format!("{p}.{e}"), n)))
}
