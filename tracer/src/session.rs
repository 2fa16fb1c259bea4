//! Capture and reassembly joined: ordered byte streams with their connection and process.
use tracer_common::COUNTER_NAMES;

use crate::{
    capture::{
        self, procfs, CaptureError, CaptureOptions, ConnChange, Connection, Connections,
        KernelCapture, KernelClock, KernelEvent,
    },
    reassembly::{Limits, Reassembler, ReassemblyStats, StreamEvent},
    tls::{TlsProbes, TlsStatus},
};

/// What a session hands to its consumer, in order.
#[derive(Debug)]
pub enum SessionEvent {
    Conn {
        conn: Connection,
        change: ConnChange,
        ktime_ns: u64,
        seeded: bool,
    },
    /// Ordered bytes or a gap, with the connection as it stood when they were read.
    Stream {
        conn: Connection,
        event: StreamEvent,
    },
}

/// Everything the agent counts about capture, for `/metrics`, logs and `capture` stats.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionStats {
    pub kernel: Vec<(&'static str, u64)>,
    pub records_read: u64,
    pub decode_errors: u64,
    pub reassembly: ReassemblyStats,
    pub connections: usize,
    /// Files whose TLS functions are hooked.
    pub tls_libraries: Vec<TlsStatus>,
    pub tls_processes: usize,
    pub tls_attach_errors: u64,
    /// Sockets whose 4-tuple the kernel side did not tell, found in `/proc/<pid>/net/tcp`.
    pub addresses_from_proc: u64,
    /// Reads of those tables.
    pub proc_table_reads: u64,
    /// How long before the last read of the rings its oldest record (bytes, or a
    /// connection's open, address or close) was written: how far behind the traced
    /// syscalls the agent is.
    pub backlog_ns: u64,
}

pub struct CaptureSession {
    kernel: KernelCapture,
    pub conns: Connections,
    reassembler: Reassembler,
    pub clock: KernelClock,
    records_read: u64,
    decode_errors: u64,
    /// See [`SessionStats::backlog_ns`].
    backlog_ns: u64,
    scratch: Vec<StreamEvent>,
    tls: TlsProbes,
    /// When the reassembler next gives up holes and forgets idle streams (kernel time).
    next_expiry_ns: u64,
    /// Closes and exits read after the data of a poll, handled after the next one's.
    late_endings: Vec<Decoded>,
    /// The data records of one poll, kept between polls: under load a poll reads hundreds,
    /// and a vector grown from nothing each time cost reallocations (and page faults).
    data_events: Vec<Decoded>,
}

type Decoded = Result<KernelEvent, capture::DecodeError>;

/// A connection's close or a process's exit: handled after the data read before it.
fn ends(event: &Decoded) -> bool {
    matches!(
        event,
        Ok(KernelEvent::Conn {
            change: ConnChange::Close { .. },
            ..
        }) | Ok(KernelEvent::ProcessExit { .. })
    )
}

/// How often held holes are checked against the reorder window (100 ms by default).
const EXPIRE_EVERY_NS: u64 = 20_000_000;

impl CaptureSession {
    /// Loads the kernel programs and starts following connections, including the ones
    /// that already existed (they are reported as `seeded` Conn events by the first poll).
    pub fn start(
        options: &CaptureOptions,
        limits: Limits,
        out: &mut Vec<SessionEvent>,
    ) -> Result<Self, CaptureError> {
        let mut kernel = KernelCapture::start(options)?;
        let tls = TlsProbes::start(&mut kernel, options.tls.clone(), |pid| wanted(options, pid));
        let mut conns = Connections::new();
        conns.check_tcp_in_proc = kernel
            .missing_optional
            .iter()
            .any(|t| t.starts_with("sock:sock_"));
        let mut session = Self {
            kernel,
            conns,
            reassembler: Reassembler::new(limits),
            clock: KernelClock::new(),
            records_read: 0,
            backlog_ns: 0,
            decode_errors: 0,
            scratch: Vec::new(),
            tls,
            next_expiry_ns: 0,
            late_endings: Vec::new(),
            data_events: Vec::new(),
        };
        session.seed_existing(options, out)?;
        Ok(session)
    }

    fn seed_existing(
        &mut self,
        options: &CaptureOptions,
        out: &mut Vec<SessionEvent>,
    ) -> Result<(), CaptureError> {
        for existing in procfs::existing_connections(|pid| wanted(options, pid)) {
            if let Some(conn) = self.kernel.seed(&existing)? {
                let connection = self.conns.seed(conn, &existing);
                let change = ConnChange::Addresses {
                    local: existing.local,
                    remote: existing.remote,
                };
                out.push(SessionEvent::Conn {
                    conn: connection,
                    change,
                    ktime_ns: conn.generation,
                    seeded: true,
                });
            }
        }
        Ok(())
    }

    /// Reads everything the kernel has produced and expires old holes. Returns the number
    /// of ring-buffer records read.
    pub fn poll(&mut self, out: &mut Vec<SessionEvent>) -> usize {
        let (mut conn_events, mut late_events) = (Vec::new(), Vec::new());
        let mut data_events = std::mem::take(&mut self.data_events);
        let n = self.kernel.drain(
            |bytes| conn_events.push(capture::decode(bytes)),
            |bytes| data_events.push(capture::decode(bytes)),
            |bytes| late_events.push(capture::decode(bytes)),
        );
        self.records_read += n as u64;
        // Each ring is read in the order its records were written: its first is its oldest.
        let oldest = [conn_events.first(), data_events.first()]
            .into_iter()
            .flatten()
            .filter_map(|event| match event {
                Ok(KernelEvent::Data(record)) => Some(record.ktime_ns),
                Ok(KernelEvent::Conn { ktime_ns, .. }) => Some(*ktime_ns),
                _ => None,
            })
            .min();
        // Opens and tuples come before the data (theirs may be in it, also when they were
        // emitted while the data was read). Closes and exits come after the data read
        // before them: those read after the data wait for the next poll, whose data read
        // holds the rest of their connection's bytes.
        let (endings, beginnings): (Vec<_>, Vec<_>) = conn_events.into_iter().partition(ends);
        let (late_endings, late_beginnings): (Vec<_>, Vec<_>) =
            late_events.into_iter().partition(ends);
        let earlier_endings = std::mem::replace(&mut self.late_endings, late_endings);
        for event in beginnings
            .into_iter()
            .chain(late_beginnings)
            .chain(data_events.drain(..))
            .chain(earlier_endings)
            .chain(endings)
        {
            match event {
                Ok(event) => self.handle(event, out),
                Err(error) => {
                    self.decode_errors += 1;
                    tracing::warn!(%error, "undecodable ring-buffer record");
                }
            }
        }
        self.data_events = data_events;
        self.tls.tick(&mut self.kernel);
        let now = capture::monotonic_now();
        self.backlog_ns = oldest.map_or(0, |oldest| now.saturating_sub(oldest));
        if now >= self.next_expiry_ns {
            // Held holes, idle streams, the wall clock and `/proc` tables: a few times
            // per reorder window, not at every read of the ring (hundreds a second).
            self.next_expiry_ns = now + EXPIRE_EVERY_NS;
            self.clock.refresh();
            self.reassembler.expire(now, &mut self.scratch);
            self.flush_stream_events(out);
            self.conns.forget_old_tables();
        }
        n
    }

    fn handle(&mut self, event: KernelEvent, out: &mut Vec<SessionEvent>) {
        match event {
            KernelEvent::Data(record) => {
                let conn = self.conns.for_data(record.conn);
                if record.is_tls() && !conn.tls {
                    // What came before was the encrypted handshake: start over.
                    self.reassembler.restart(record.conn);
                    let change = ConnChange::TlsPlaintext;
                    let connection = self.conns.apply(record.conn, &change, "");
                    out.push(SessionEvent::Conn {
                        conn: connection,
                        change,
                        ktime_ns: record.ktime_ns,
                        seeded: false,
                    });
                }
                self.reassembler.push(record, &mut self.scratch);
                self.flush_stream_events(out);
            }
            KernelEvent::Conn {
                conn,
                ktime_ns,
                change,
                comm,
                ..
            } => {
                if let ConnChange::Close {
                    final_positions, ..
                } = change
                {
                    self.reassembler
                        .close(conn, final_positions, &mut self.scratch);
                    self.flush_stream_events(out);
                }
                let connection = self.conns.apply(conn, &change, &comm);
                out.push(SessionEvent::Conn {
                    conn: connection,
                    change,
                    ktime_ns,
                    seeded: false,
                });
            }
            KernelEvent::ProcessExec { tgid } => {
                self.conns.process_exec(tgid);
                self.tls.process_exec(&mut self.kernel, tgid);
            }
            KernelEvent::LibraryLoaded { tgid } => self.tls.library_loaded(&mut self.kernel, tgid),
            KernelEvent::ProcessExit { tgid } => {
                self.tls.process_exit(tgid);
                for connection in self.conns.process_exited(tgid) {
                    self.kernel.forget(connection.id);
                    self.reassembler
                        .close(connection.id, None, &mut self.scratch);
                    for event in self.scratch.drain(..) {
                        out.push(SessionEvent::Stream {
                            conn: connection.clone(),
                            event,
                        });
                    }
                    let change = ConnChange::Close {
                        not_tcp: false,
                        final_positions: None,
                    };
                    out.push(SessionEvent::Conn {
                        conn: connection,
                        change,
                        ktime_ns: capture::monotonic_now(),
                        seeded: false,
                    });
                }
            }
        }
    }

    /// Pairs reassembled events with their connection (still in the table at this point).
    fn flush_stream_events(&mut self, out: &mut Vec<SessionEvent>) {
        for event in self.scratch.drain(..) {
            let id = match &event {
                StreamEvent::Data { conn, .. } | StreamEvent::Gap { conn, .. } => *conn,
            };
            let conn = self.conns.for_data(id).clone();
            out.push(SessionEvent::Stream { conn, event });
        }
    }

    /// Stops payload copying for a connection nobody wants (filtered out, or a protocol
    /// we do not parse); stream positions keep counting in the kernel.
    /// `plaintext`: TLS plaintext too, not only the socket's own bytes.
    pub fn ignore_payload(&mut self, conn: tracer_common::ConnId, plaintext: bool) {
        if let Err(error) = self.kernel.set_payload_capture(conn, false, plaintext) {
            tracing::warn!(%error, "could not turn payload capture off");
        }
    }

    pub fn stats(&self) -> SessionStats {
        let counters = self.kernel.counters();
        SessionStats {
            kernel: COUNTER_NAMES.iter().copied().zip(counters).collect(),
            records_read: self.records_read,
            decode_errors: self.decode_errors,
            reassembly: self.reassembler.stats(),
            connections: self.conns.len(),
            tls_libraries: self.tls.status(),
            tls_processes: self.tls.covered_processes(),
            tls_attach_errors: self.tls.attach_errors,
            addresses_from_proc: self.conns.addresses_from_proc().0,
            proc_table_reads: self.conns.addresses_from_proc().1,
            backlog_ns: self.backlog_ns,
        }
    }

    /// See [`SessionStats::backlog_ns`].
    pub fn backlog_ns(&self) -> u64 {
        self.backlog_ns
    }

    pub fn missing_optional_tracepoints(&self) -> &[String] {
        &self.kernel.missing_optional
    }
}

/// Whether a process is followed: the selection, never the agent itself.
fn wanted(options: &CaptureOptions, pid: u32) -> bool {
    pid != std::process::id()
        && match &options.selection {
            capture::Selection::All => true,
            capture::Selection::Pids(pids) => pids.contains(&pid),
        }
}
