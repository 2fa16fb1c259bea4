//! Pairs the requests of one HTTP/1.x connection with their responses (keep-alive and
//! pipelining: strictly in order) and turns each pair into an `Exchange`.
use std::{collections::VecDeque, sync::Arc};

use super::{
    parser::{Event, Framing, Head, Parser, Side},
    record::HttpRecord,
    route,
};
use crate::{
    capture::{Direction, Role},
    protocols::{
        identifiers::{self, Identifier},
        AttrValue, Exchange, ExchangeEvent, ExchangeId, ExchangeKind, ExchangeStart,
        ExchangeStatus, ProtocolSession, SessionContext, SessionOptions,
    },
};

/// A request head's evidence for causality: its target (path and query) and the values of
/// non-standard headers.
fn head_identifiers(head: &Head) -> Vec<Identifier> {
    let mut found = Vec::new();
    identifiers::collect(head.target.as_bytes(), &mut found);
    for (name, value) in head.headers.iter() {
        if identifiers::header_is_evidence(name) {
            identifiers::collect(value.as_bytes(), &mut found);
        }
    }
    found
}

struct PendingRequest {
    sequence: u64,
    head: Head,
    start_ktime_ns: u64,
    tid: u32,
    body: Option<(u64, Vec<u8>)>,
}

pub struct HttpSession {
    kind: ExchangeKind,
    request_direction: Direction,
    requests: Parser,
    responses: Parser,
    pending: VecDeque<PendingRequest>,
    /// The response head being read, until its body completes.
    response: Option<(Head, u64)>,
    next_sequence: u64,
    tunnel: bool,
    route_templates: Arc<[String]>,
    /// `url.scheme`: `https` for TLS plaintext.
    scheme: &'static str,
}

impl HttpSession {
    pub fn new(context: SessionContext, options: &SessionOptions) -> Self {
        let SessionContext {
            role,
            first_direction,
            mid_stream,
            tls,
        } = context;
        // Requests travel from client to server: ingress for a server, egress for a client.
        // With an unknown role, whoever spoke first sent a request.
        let request_direction = match role {
            Role::Server => Direction::Ingress,
            Role::Client => Direction::Egress,
            Role::Unknown => first_direction,
        };
        let kind = if request_direction == Direction::Ingress {
            ExchangeKind::Server
        } else {
            ExchangeKind::Client
        };
        Self {
            kind,
            request_direction,
            requests: Parser::new(Side::Requests, options.body_prefix_bytes, mid_stream),
            responses: Parser::new(Side::Responses, options.body_prefix_bytes, mid_stream),
            pending: VecDeque::new(),
            response: None,
            next_sequence: 0,
            tunnel: false,
            route_templates: options.route_templates.clone(),
            scheme: if tls { "https" } else { "http" },
        }
    }

    fn drain_requests(&mut self, out: &mut Vec<ExchangeEvent>) {
        while let Some(event) = self.requests.next() {
            match event {
                Event::Head {
                    head,
                    ktime_ns,
                    tid,
                } => {
                    let framing = request_framing(&head);
                    self.requests.set_framing(framing);
                    let sequence = self.next_sequence;
                    self.next_sequence += 1;
                    out.push(ExchangeEvent::Started(ExchangeStart {
                        id: ExchangeId::Sequence(sequence),
                        kind: self.kind,
                        start_ktime_ns: ktime_ns,
                        tid,
                        traceparent: head.header("traceparent").map(str::to_owned),
                        message_out: None,
                        message_in: None,
                        identifiers: head_identifiers(&head),
                    }));
                    self.pending.push_back(PendingRequest {
                        sequence,
                        head,
                        start_ktime_ns: ktime_ns,
                        tid,
                        body: None,
                    });
                }
                Event::Complete {
                    body_len,
                    body_prefix,
                    ..
                } => {
                    if let Some(request) = self.pending.iter_mut().rev().find(|r| r.body.is_none())
                    {
                        let mut identifiers = Vec::new();
                        identifiers::collect(&body_prefix, &mut identifiers);
                        if !identifiers.is_empty() {
                            out.push(ExchangeEvent::Identified {
                                id: ExchangeId::Sequence(request.sequence),
                                identifiers,
                            });
                        }
                        request.body = Some((body_len, body_prefix));
                    }
                }
                Event::Skipped { .. } => {}
            }
        }
    }

    fn drain_responses(&mut self, out: &mut Vec<ExchangeEvent>) {
        while let Some(event) = self.responses.next() {
            match event {
                Event::Head { head, ktime_ns, .. } => {
                    let request_method = self.pending.front().map(|r| r.head.method.as_ref());
                    let framing = response_framing(&head, request_method);
                    self.responses.set_framing(framing);
                    if framing == Framing::Tunnel {
                        self.tunnel = true;
                    }
                    self.response = Some((head, ktime_ns));
                }
                Event::Complete {
                    body_len,
                    body_prefix,
                    ktime_ns,
                    lossy,
                } => {
                    let Some((head, _)) = self.response.take() else {
                        continue;
                    };
                    if (100..200).contains(&head.status) && head.status != 101 {
                        continue; // interim response: the final one follows
                    }
                    // A response with no request in sight (mid-stream start) cannot be paired.
                    let Some(request) = self.pending.pop_front() else {
                        continue;
                    };
                    out.push(ExchangeEvent::Finished(self.exchange(
                        request,
                        Some((head, body_len, body_prefix, lossy)),
                        ktime_ns,
                    )));
                }
                Event::Skipped { .. } => {}
            }
        }
    }

    fn exchange(
        &self,
        request: PendingRequest,
        response: Option<(Head, u64, Vec<u8>, bool)>,
        end_ktime_ns: u64,
    ) -> Exchange {
        let PendingRequest {
            sequence,
            mut head,
            start_ktime_ns,
            tid,
            body,
        } = request;
        let traceparent = head.header("traceparent").map(str::to_owned);
        let method = std::mem::take(&mut head.method);
        let (request_body_len, request_prefix) = body.unwrap_or_default();
        let mut record = HttpRecord::with_target(std::mem::take(&mut head.target));
        record.request_body = Some(text(request_prefix));
        let (path, query) = (record.path(), record.query());
        let route = match route::match_template(path, &self.route_templates) {
            Some(configured) => configured.to_owned(),
            None => route::template(path),
        };
        let mut name = String::with_capacity(method.len() + 1 + route.len());
        name.push_str(&method);
        name.push(' ');
        name.push_str(&route);
        let version = match head.version {
            0 => "1.0",
            _ => "1.1",
        };
        let mut attributes: Vec<(&'static str, AttrValue)> = Vec::with_capacity(14);
        attributes.extend([
            ("http.request.method", AttrValue::Str(method)),
            ("url.path", path.into()),
            ("http.route", route.into()),
            ("network.protocol.name", AttrValue::fixed("http")),
            ("network.protocol.version", AttrValue::fixed(version)),
        ]);
        if !query.is_empty() {
            attributes.push(("url.query", query.into()));
        }
        if let Some(agent) = head.header("user-agent") {
            attributes.push(("user_agent.original", agent.into()));
        }
        if let Some(host) = head.header("host") {
            attributes.push(("http.request.header.host", host.into()));
        }
        attributes.push(("url.scheme", AttrValue::fixed(self.scheme)));
        attributes.push(("http.request.body.size", (request_body_len as i64).into()));
        record.headers = head.headers;
        let status = match response {
            Some((response, body_len, prefix, lossy)) => {
                attributes.push((
                    "http.response.status_code",
                    i64::from(response.status).into(),
                ));
                attributes.push(("http.response.body.size", (body_len as i64).into()));
                record.response_body = Some(text(prefix));
                if lossy {
                    attributes.push(("tracer.capture.incomplete", AttrValue::fixed("true")));
                }
                status_for(self.kind, response.status)
            }
            None => ExchangeStatus::Error {
                error_type: "no_response".into(),
                message: "connection closed before a response".into(),
            },
        };
        Exchange {
            protocol: "http",
            id: ExchangeId::Sequence(sequence),
            kind: self.kind,
            name,
            start_ktime_ns,
            end_ktime_ns,
            tid,
            attributes,
            status,
            traceparent,
            record: Arc::new(record),
            order_ids: Vec::new(),
            business: Vec::new(),
        }
    }
}

/// A body prefix as text: its own bytes when they are UTF-8 (nearly always), else a copy
/// with invalid sequences replaced.
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
}

/// Error status per the HTTP semantic conventions: 5xx on the server side, 4xx and 5xx on
/// the client side.
pub(crate) fn status_for(kind: ExchangeKind, status: u16) -> ExchangeStatus {
    let error = match kind {
        ExchangeKind::Client => status >= 400,
        _ => status >= 500,
    };
    if error {
        ExchangeStatus::Error {
            error_type: status.to_string(),
            message: format!("HTTP {status}"),
        }
    } else {
        ExchangeStatus::Ok
    }
}

fn request_framing(head: &Head) -> Framing {
    if head.method == "CONNECT" {
        return Framing::None;
    }
    // A request without a length has no body.
    content_framing(head, Framing::None)
}

fn response_framing(head: &Head, request_method: Option<&str>) -> Framing {
    let status = head.status;
    if status == 101 || (request_method == Some("CONNECT") && (200..300).contains(&status)) {
        return Framing::Tunnel;
    }
    if request_method == Some("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        return Framing::None;
    }
    // A response without a length runs until the connection closes.
    content_framing(head, Framing::UntilClose)
}

/// Chunked if Transfer-Encoding says so, else Content-Length, else `otherwise`.
fn content_framing(head: &Head, otherwise: Framing) -> Framing {
    if head.body.chunked {
        return Framing::Chunked;
    }
    match head.body.length {
        Some(n) => Framing::Length(n),
        None => otherwise,
    }
}

impl ProtocolSession for HttpSession {
    fn feed(
        &mut self,
        direction: Direction,
        bytes: &[u8],
        ktime_ns: u64,
        tid: u32,
        out: &mut Vec<ExchangeEvent>,
    ) {
        if self.tunnel {
            return;
        }
        if direction == self.request_direction {
            self.requests.push(bytes, ktime_ns, tid);
            self.drain_requests(out);
        } else {
            self.responses.push(bytes, ktime_ns, tid);
            self.drain_responses(out);
        }
    }

    fn gap(
        &mut self,
        direction: Direction,
        length: u64,
        ktime_ns: u64,
        out: &mut Vec<ExchangeEvent>,
    ) {
        if direction == self.request_direction {
            if let Some(Event::Complete {
                body_len,
                body_prefix,
                ..
            }) = self.requests.gap(length, ktime_ns)
            {
                if let Some(request) = self.pending.iter_mut().rev().find(|r| r.body.is_none()) {
                    request.body = Some((body_len, body_prefix));
                }
            }
            self.drain_requests(out);
        } else {
            if let Some(event) = self.responses.gap(length, ktime_ns) {
                self.finish_response_after_gap(event, out);
            }
            self.drain_responses(out);
        }
    }

    fn close(&mut self, ktime_ns: u64, out: &mut Vec<ExchangeEvent>) {
        if let Some(event) = self.responses.eof() {
            self.finish_response_after_gap(event, out);
        }
        // Requests that never got an answer (time-outs, crashed servers) still happened.
        while let Some(request) = self.pending.pop_front() {
            out.push(ExchangeEvent::Finished(
                self.exchange(request, None, ktime_ns),
            ));
        }
    }

    fn bytes_skipped(&self) -> u64 {
        self.requests.skipped() + self.responses.skipped()
    }
}

impl HttpSession {
    fn finish_response_after_gap(&mut self, event: Event, out: &mut Vec<ExchangeEvent>) {
        if let Event::Complete {
            body_len,
            body_prefix,
            ktime_ns,
            lossy,
        } = event
        {
            if let (Some((head, _)), Some(request)) =
                (self.response.take(), self.pending.pop_front())
            {
                out.push(ExchangeEvent::Finished(self.exchange(
                    request,
                    Some((head, body_len, body_prefix, lossy)),
                    ktime_ns,
                )));
            }
        }
    }
}
