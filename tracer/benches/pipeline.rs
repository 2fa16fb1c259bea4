//! The userspace pipeline on recorded-shape HTTP traffic, without the kernel: records →
//! reassembly → HTTP parsing → order-id extraction → correlation → privacy → `SpanData` →
//! OTLP protobuf, in MB/s and spans/s on one core; and `httparse` alone over the same bytes
//! as the baseline. The same exchanges over HTTP/2 (HPACK, DATA frames, one stream each)
//! as a second corpus. Prints one JSON line (read by `cargo xtask bench`).
use std::{sync::Arc, time::Instant};

use opentelemetry_proto::{
    tonic::collector::trace::v1::ExportTraceServiceRequest,
    transform::{
        common::tonic::ResourceAttributesWithSchema,
        trace::tonic::group_spans_by_resource_and_scope,
    },
};
use prost::Message;
use tracer::{
    agent::{Pipeline, Stages},
    capture::{procfs::ProcessInfo, Connection, DataRecord, Direction, KernelClock, Role},
    config::Config,
    correlate::Correlator,
    export::{ExportQueues, ExportStats, Services},
    privacy::IdKey,
    protocols::SessionOptions,
    reassembly::{Limits, Reassembler},
    session::SessionEvent,
};
use tracer_common::ConnId;

const EXCHANGES: usize = 20_000;
const RECORD: usize = 16 * 1024;

/// Request and response bytes of one order exchange, about 0.5 KiB each way.
fn exchange(i: usize) -> (Vec<u8>, Vec<u8>) {
    let body = format!(
        r#"{{"order_id": "ORD-{i:06}", "status": "SUBMITTED", "customer": {{"tier": "gold"}}, "items": [{{"sku": "RING-18K-{i}", "size": 54, "engraving": "for ever"}}], "model": "/objects/ORD-{i:06}.stl", "note": "{}"}}"#,
        "x".repeat(160)
    );
    let request = format!(
        "POST /orders HTTP/1.1\r\nHost: shop-api:8080\r\nUser-Agent: shop-frontend/2.3\r\nAccept: application/json\r\nContent-Type: application/json\r\nX-Request-Id: {i:016x}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let reply = format!(r#"{{"order_id": "ORD-{i:06}", "status": "SUBMITTED", "eta_days": 21}}"#);
    let response = format!(
        "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nServer: shop-api\r\nContent-Length: {}\r\n\r\n{reply}",
        reply.len()
    );
    (request.into_bytes(), response.into_bytes())
}

/// The same exchanges over one HTTP/2 connection: HPACK-compressed heads (with the dynamic
/// table, as real encoders use it), bodies in DATA frames, one stream each.
struct Http2Corpus {
    client: loona_hpack::Encoder<'static>,
    server: loona_hpack::Encoder<'static>,
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

fn body_of(message: &[u8]) -> &[u8] {
    let at = message.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    &message[at..]
}

impl Http2Corpus {
    fn exchange(&mut self, i: usize) -> (Vec<u8>, Vec<u8>) {
        let stream = 2 * i as u32 + 1;
        let (request, response) = exchange(i);
        let (request, response) = (body_of(&request), body_of(&response));
        let mut requests = Vec::new();
        if i == 0 {
            requests.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        }
        let request_id = format!("{i:016x}");
        let length = request.len().to_string();
        let head = self.client.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":authority", b"shop-api:8080"),
            (b":path", b"/orders"),
            (b"user-agent", b"shop-frontend/2.3"),
            (b"accept", b"application/json"),
            (b"content-type", b"application/json"),
            (b"x-request-id", request_id.as_bytes()),
            (b"content-length", length.as_bytes()),
        ]);
        frame(&mut requests, 1, 0x4, stream, &head);
        frame(&mut requests, 0, 0x1, stream, request);
        let mut responses = Vec::new();
        let length = response.len().to_string();
        let head = self.server.encode([
            (&b":status"[..], &b"201"[..]),
            (b"content-type", b"application/json"),
            (b"server", b"shop-api"),
            (b"content-length", length.as_bytes()),
        ]);
        frame(&mut responses, 1, 0x4, stream, &head);
        frame(&mut responses, 0, 0x1, stream, response);
        (requests, responses)
    }
}

/// Both directions as capture records (at most 16 KiB each, as the kernel side writes them),
/// over HTTP/1.1 or HTTP/2.
fn records(conn: ConnId, http2: bool) -> (Vec<DataRecord>, usize) {
    let mut h2 = Http2Corpus {
        client: loona_hpack::Encoder::new(),
        server: loona_hpack::Encoder::new(),
    };
    let (mut ingress, mut egress) = (Vec::new(), Vec::new());
    let mut positions = [0u64; 2];
    let mut records = Vec::new();
    let mut ktime = 1_000_000_000u64;
    for i in 0..EXCHANGES {
        let (request, response) = if http2 { h2.exchange(i) } else { exchange(i) };
        ingress.extend_from_slice(&request);
        egress.extend_from_slice(&response);
        // Like a busy keep-alive connection: a read or write every few exchanges.
        let flush = i % 8 == 7 || i + 1 == EXCHANGES;
        for (d, direction, stream) in [
            (0, Direction::Ingress, &mut ingress),
            (1, Direction::Egress, &mut egress),
        ] {
            while stream.len() >= RECORD || (flush && !stream.is_empty()) {
                let take = stream.len().min(RECORD);
                let payload: Vec<u8> = stream.drain(..take).collect();
                ktime += 10_000;
                let position = positions[d];
                positions[d] += take as u64;
                records.push(DataRecord {
                    conn,
                    tid: 7,
                    ktime_ns: ktime,
                    direction,
                    syscall: 0,
                    position,
                    length: payload.len() as u64,
                    payload,
                });
            }
        }
    }
    let bytes = records.iter().map(|r| r.payload.len()).sum();
    (records, bytes)
}

fn httparse_only(records: &[DataRecord]) -> usize {
    let mut parsed = 0;
    for direction in [Direction::Ingress, Direction::Egress] {
        let stream: Vec<u8> = records
            .iter()
            .filter(|r| r.direction == direction)
            .flat_map(|r| r.payload.iter().copied())
            .collect();
        let mut at = 0;
        while at < stream.len() {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let (head, length) = if direction == Direction::Ingress {
                let mut request = httparse::Request::new(&mut headers);
                let httparse::Status::Complete(head) = request.parse(&stream[at..]).unwrap() else {
                    break;
                };
                (head, content_length(request.headers))
            } else {
                let mut response = httparse::Response::new(&mut headers);
                let httparse::Status::Complete(head) = response.parse(&stream[at..]).unwrap()
                else {
                    break;
                };
                (head, content_length(response.headers))
            };
            at += head + length;
            parsed += 1;
        }
    }
    parsed
}

fn content_length(headers: &[httparse::Header]) -> usize {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
        .unwrap_or(0)
}

fn full_pipeline(records: &[DataRecord], conn: &Connection) -> (usize, usize) {
    // The default setup with a key: pseudonymised, masked, allow-listed; every span kept.
    let mut config = Config::default();
    config.sampling.success_ratio = 1.0;
    config.privacy.pseudonymise_ids = Some(true);
    let key = IdKey::from_bytes(b"bench-key");
    let (tx, mut rx) = tokio::sync::mpsc::channel(EXCHANGES * 2);
    let stats = Arc::new(ExportStats::default());
    let mut pipeline = Pipeline::new(
        Correlator::new(0, 300_000_000_000, key.clone()),
        Services::new(Vec::new()),
        ExportQueues::new(vec![tx], stats),
        SessionOptions::default(),
        Stages::from_config(&config, key).unwrap(),
    );
    let clock = KernelClock::new();
    let mut reassembler = Reassembler::new(Limits::default());
    let (mut events, mut requests) = (Vec::new(), Vec::new());
    let (mut spans, mut encoded) = (0, 0);
    for (n, record) in records.iter().enumerate() {
        let now = record.ktime_ns;
        reassembler.push(record.clone(), &mut events);
        for event in events.drain(..) {
            let event = SessionEvent::Stream {
                conn: conn.clone(),
                event,
            };
            pipeline.handle(event, now, &mut requests);
        }
        if n % 64 == 63 || n + 1 == records.len() {
            pipeline.tick(u64::MAX / 2, &clock);
            let mut batch = Vec::new();
            while let Ok((resource, span)) = rx.try_recv() {
                batch.push((resource, span));
            }
            if let Some((resource, _)) = batch.first() {
                let resource = ResourceAttributesWithSchema::from(resource.as_ref());
                spans += batch.len();
                let request = ExportTraceServiceRequest {
                    resource_spans: group_spans_by_resource_and_scope(
                        batch.into_iter().map(|(_, s)| s).collect(),
                        &resource,
                    ),
                };
                encoded += request.encode_to_vec().len();
            }
        }
    }
    (spans, encoded)
}

fn main() {
    let conn_id = ConnId {
        tgid: 4242,
        fd: 7,
        generation: 1,
    };
    let process = Arc::new(ProcessInfo {
        pid: 4242,
        comm: "shop-api".into(),
        exe: "/usr/bin/python3".into(),
        cmdline: vec!["python3".into(), "shop_api.py".into()],
        cgroup: String::new(),
    });
    let conn = Connection::for_tests(
        conn_id,
        Role::Server,
        Some("127.0.0.1:8080".parse().unwrap()),
        Some("127.0.0.1:50000".parse().unwrap()),
        process,
    );
    let (records_h2, bytes_h2) = records(conn_id, true);
    let (records, bytes) = records(conn_id, false);
    let mb = bytes as f64 / 1e6;
    // Warm up, then measure each three times and keep the best (least disturbed) run.
    httparse_only(&records);
    let baseline = (0..3)
        .map(|_| {
            let start = Instant::now();
            let parsed = httparse_only(&records);
            assert_eq!(parsed, 2 * EXCHANGES);
            start.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min);
    let mut spans = 0;
    let mut encoded = 0;
    let pipeline = (0..3)
        .map(|_| {
            let start = Instant::now();
            (spans, encoded) = full_pipeline(&records, &conn);
            start.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min);
    assert_eq!(spans, EXCHANGES, "one SERVER span per exchange");
    let mut spans_h2 = 0;
    let pipeline_h2 = (0..3)
        .map(|_| {
            let start = Instant::now();
            (spans_h2, _) = full_pipeline(&records_h2, &conn);
            start.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min);
    assert_eq!(spans_h2, EXCHANGES, "one SERVER span per HTTP/2 stream");
    println!(
        "{}",
        serde_json::json!({
            "bytes": bytes,
            "exchanges": EXCHANGES,
            "pipeline_mb_per_s": mb / pipeline,
            "pipeline_spans_per_s": spans as f64 / pipeline,
            "otlp_bytes": encoded,
            "httparse_mb_per_s": mb / baseline,
            "http2_bytes": bytes_h2,
            "http2_pipeline_mb_per_s": bytes_h2 as f64 / 1e6 / pipeline_h2,
            "http2_pipeline_spans_per_s": spans_h2 as f64 / pipeline_h2,
        })
    );
}
