//! One connection to PostgreSQL: a span per simple query and per extended-query Execute,
//! ended by its CommandComplete or ErrorResponse (or by ReadyForQuery). CLIENT spans on
//! the client's end, SERVER spans on the server's (the same statements, as the database
//! saw them).
use std::collections::VecDeque;

use foldhash::HashMap;

use super::{
    backend::{Backend, BackendReader},
    frontend::{Frontend, FrontendReader},
    sql,
};
use crate::{
    capture::{Direction, Role},
    protocols::{
        identifiers::{self, Identifier},
        AttrValue, Exchange, ExchangeEvent, ExchangeId, ExchangeKind, ExchangeStart,
        ExchangeStatus, ProtocolSession,
    },
};

struct Pending {
    sequence: u64,
    query: String,
    params: Vec<Option<String>>,
    /// Simple queries can hold several statements and end only at ReadyForQuery.
    simple: bool,
    tags: Vec<String>,
    error: Option<(String, String)>,
    start_ktime_ns: u64,
    tid: u32,
    /// Begun before the server's side of the stream was in step (picked up mid-stream):
    /// an answer may have gone unseen, so a missing one proves nothing.
    outcome_unseen: bool,
}

pub struct PostgresSession {
    /// The server's end of the connection: the frontend's bytes come in.
    server_side: bool,
    frontend: FrontendReader,
    backend: BackendReader,
    database: Option<String>,
    statements: HashMap<String, String>,
    portals: HashMap<String, (String, Vec<Option<String>>)>,
    pending: VecDeque<Pending>,
    awaiting_encryption_answer: bool,
    /// The server agreed to TLS: the rest is ciphertext.
    encrypted: bool,
    next_sequence: u64,
    /// Last ktime/tid seen on the client side.
    ktime_ns: u64,
    tid: u32,
}

impl PostgresSession {
    pub fn new(role: Role, mid_stream: bool) -> Self {
        Self {
            server_side: role == Role::Server,
            frontend: FrontendReader::new(mid_stream),
            backend: BackendReader::new(mid_stream),
            database: None,
            statements: HashMap::default(),
            portals: HashMap::default(),
            pending: VecDeque::new(),
            awaiting_encryption_answer: false,
            encrypted: false,
            next_sequence: 0,
            ktime_ns: 0,
            tid: 0,
        }
    }

    fn begin(
        &mut self,
        query: String,
        params: Vec<Option<String>>,
        simple: bool,
        out: &mut Vec<ExchangeEvent>,
    ) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        out.push(ExchangeEvent::Started(ExchangeStart {
            id: ExchangeId::Sequence(sequence),
            kind: self.kind(),
            start_ktime_ns: self.ktime_ns,
            tid: self.tid,
            traceparent: None,
            message_out: None,
            message_in: None,
            identifiers: statement_identifiers(&query, &params),
        }));
        self.pending.push_back(Pending {
            sequence,
            query,
            params,
            simple,
            tags: Vec::new(),
            error: None,
            start_ktime_ns: self.ktime_ns,
            tid: self.tid,
            outcome_unseen: false,
        });
    }

    fn kind(&self) -> ExchangeKind {
        if self.server_side {
            ExchangeKind::Server
        } else {
            ExchangeKind::Client
        }
    }

    fn frontend_message(&mut self, message: Frontend, out: &mut Vec<ExchangeEvent>) {
        match message {
            Frontend::Startup(params) => {
                self.database = params.get("database").or(params.get("user")).cloned()
            }
            Frontend::EncryptionRequest => self.awaiting_encryption_answer = true,
            Frontend::Query(query) => self.begin(query, Vec::new(), true, out),
            Frontend::Parse { name, query } => {
                self.statements.insert(name, query);
            }
            Frontend::Bind {
                portal,
                statement,
                params,
            } => {
                let query = self.statements.get(&statement).cloned().unwrap_or_default();
                self.portals.insert(portal, (query, params));
            }
            Frontend::Execute { portal } => {
                let (query, params) = self.portals.get(&portal).cloned().unwrap_or_default();
                self.begin(query, params, false, out);
            }
            _ => {}
        }
    }

    fn backend_message(&mut self, message: Backend, ktime_ns: u64, out: &mut Vec<ExchangeEvent>) {
        match message {
            Backend::CommandComplete(tag) => self.complete(Some(tag), None, ktime_ns, out),
            Backend::EmptyQuery => self.complete(None, None, ktime_ns, out),
            Backend::Error { code, message } => {
                self.complete(None, Some((code, message)), ktime_ns, out)
            }
            Backend::ReadyForQuery(status) => {
                // Everything sent before this Sync is answered now; extended statements the
                // server skipped after an error did not run.
                while let Some(mut pending) = self.pending.pop_front() {
                    let unanswered = pending.tags.is_empty() && pending.error.is_none();
                    if !pending.simple && unanswered && !pending.outcome_unseen {
                        pending.error = Some((
                            "skipped".into(),
                            "not executed: an earlier statement failed".into(),
                        ));
                    }
                    out.push(ExchangeEvent::Finished(self.exchange(
                        pending,
                        ktime_ns,
                        Some(status),
                    )));
                }
            }
            Backend::Other => {}
        }
    }

    /// CommandComplete / EmptyQueryResponse / ErrorResponse for the oldest statement.
    fn complete(
        &mut self,
        tag: Option<String>,
        error: Option<(String, String)>,
        ktime_ns: u64,
        out: &mut Vec<ExchangeEvent>,
    ) {
        let Some(front) = self.pending.front_mut() else {
            return;
        };
        front.tags.extend(tag);
        if error.is_some() {
            front.error = error;
        }
        if !front.simple {
            let pending = self.pending.pop_front().expect("front exists");
            out.push(ExchangeEvent::Finished(
                self.exchange(pending, ktime_ns, None),
            ));
        }
    }

    fn exchange(&self, pending: Pending, end_ktime_ns: u64, transaction: Option<u8>) -> Exchange {
        let operation = sql::operation(&pending.query);
        // An unknown first word (a typo, garbage) names no operation and no table.
        let table = operation.and_then(|_| sql::collection(&pending.query));
        let mut attributes: Vec<(&'static str, AttrValue)> = vec![
            ("db.system.name", AttrValue::fixed("postgresql")),
            ("db.query.text", sql::sanitize(&pending.query).into()),
        ];
        if let Some(operation) = operation {
            attributes.push(("db.operation.name", operation.into()));
        }
        if let Some(database) = &self.database {
            attributes.push(("db.namespace", database.as_str().into()));
        }
        if let Some(table) = &table {
            attributes.push(("db.collection.name", table.as_str().into()));
        }
        if let Some(tag) = pending.tags.last() {
            attributes.push(("db.response.command_tag", tag.as_str().into()));
        }
        if let Some(state) = transaction {
            let state = match state {
                b'T' => "in_transaction",
                b'E' => "failed_transaction",
                _ => "idle",
            };
            attributes.push(("tracer.db.transaction_state", state.into()));
        }
        if pending.outcome_unseen && pending.tags.is_empty() && pending.error.is_none() {
            attributes.push(("tracer.capture.incomplete", AttrValue::fixed("true")));
        }
        let status = match pending.error {
            Some((code, message)) => {
                attributes.push(("db.response.status_code", code.as_str().into()));
                ExchangeStatus::Error {
                    error_type: code,
                    message,
                }
            }
            None => ExchangeStatus::Ok,
        };
        let columns = sql::column_values(&pending.query, &pending.params)
            .into_iter()
            .collect();
        let name = match (operation, &table) {
            (Some(operation), Some(table)) => format!("{operation} {table}"),
            (Some(operation), None) => operation.to_owned(),
            (None, _) => "postgresql".to_owned(),
        };
        Exchange {
            protocol: "postgres",
            id: ExchangeId::Sequence(pending.sequence),
            kind: self.kind(),
            name,
            start_ktime_ns: pending.start_ktime_ns,
            end_ktime_ns,
            tid: pending.tid,
            attributes,
            status,
            traceparent: None,
            record: std::sync::Arc::new(super::record::PostgresRecord { columns }),
            order_ids: Vec::new(),
            business: Vec::new(),
        }
    }
}

impl ProtocolSession for PostgresSession {
    fn feed(
        &mut self,
        direction: Direction,
        bytes: &[u8],
        ktime_ns: u64,
        tid: u32,
        out: &mut Vec<ExchangeEvent>,
    ) {
        if self.encrypted {
            return;
        }
        let from_frontend = (direction == Direction::Egress) != self.server_side;
        match from_frontend {
            true => {
                self.ktime_ns = ktime_ns;
                self.tid = tid;
                self.frontend.push(bytes);
                while let Some(message) = self.frontend.next() {
                    self.frontend_message(message, out);
                }
            }
            false => {
                self.backend.push(bytes);
                if self.awaiting_encryption_answer {
                    if let Some(answer) = self.backend.encryption_answer() {
                        self.awaiting_encryption_answer = false;
                        // 'S' (SSL) or 'G' (GSS): TLS follows, plaintext is out of reach here.
                        self.encrypted = answer == b'S' || answer == b'G';
                    }
                }
                loop {
                    let skipped = self.backend.skipped();
                    let message = self.backend.next();
                    if self.backend.skipped() != skipped {
                        // Answers were passed over: those of open statements may be among them.
                        self.pending
                            .iter_mut()
                            .for_each(|p| p.outcome_unseen = true);
                    }
                    let Some(message) = message else { break };
                    self.backend_message(message, ktime_ns, out);
                }
            }
        }
    }

    fn gap(
        &mut self,
        direction: Direction,
        length: u64,
        _ktime_ns: u64,
        _out: &mut Vec<ExchangeEvent>,
    ) {
        if (direction == Direction::Egress) != self.server_side {
            self.frontend.gap(length);
        } else {
            self.backend.gap();
            self.pending
                .iter_mut()
                .for_each(|p| p.outcome_unseen = true);
        }
    }

    fn close(&mut self, ktime_ns: u64, out: &mut Vec<ExchangeEvent>) {
        while let Some(mut pending) = self.pending.pop_front() {
            pending.error.get_or_insert_with(|| {
                (
                    "connection_closed".into(),
                    "connection closed before an answer".into(),
                )
            });
            out.push(ExchangeEvent::Finished(
                self.exchange(pending, ktime_ns, None),
            ));
        }
    }

    fn bytes_skipped(&self) -> u64 {
        self.frontend.skipped() + self.backend.skipped()
    }
}

/// A statement's evidence for causality: its bound values and quoted literals (never its
/// table or column names).
fn statement_identifiers(query: &str, params: &[Option<String>]) -> Vec<Identifier> {
    let mut found = Vec::new();
    for value in params.iter().flatten() {
        identifiers::collect(value.as_bytes(), &mut found);
    }
    for literal in query.split('\'').skip(1).step_by(2) {
        identifiers::collect(literal.as_bytes(), &mut found);
    }
    found
}
