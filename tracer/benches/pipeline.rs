//! The userspace pipeline on recorded conversations, without the kernel: capture records →
//! reassembly → protocol sessions → extraction → correlation (eviction running) →
//! sampling → privacy → journey (SQLite) → OTLP protobuf, per CPU-second of the process
//! (the journey thread included). The corpus (`benches/corpus/shop.capture.jsonl`,
//! recorded by `cargo xtask bench --record-corpus` from real programs, both ends: HTTP
//! with JSON bodies, AMQP through RabbitMQ, PostgreSQL clients) is replayed `LOOPS` times
//! as new connections minutes apart, so the correlator evicts as a long-running agent
//! does. Its baseline: `httparse` over the same HTTP heads plus `serde_json` over the same
//! bodies. The shop corpus again with the export stage on a second thread (spans per
//! second of wall clock at 1 and 2 pipeline threads), and the recorded HTTP/2 and gRPC
//! fixtures as a second corpus. Five alternating rounds; prints one JSON line with
//! min/median/max of each figure (read by `cargo xtask bench`).
use std::{path::Path, sync::Arc, time::Instant};

use serde_json::{json, Value};
use tracer::{
    agent::{Pipeline, Stages},
    capture::{
        recording::{self, Recorded, Replay},
        DataRecord, KernelClock, Role,
    },
    config::Config,
    correlate::Correlator,
    export::{self, request, ExportQueues, ExportStats, QueueReceiver, Services},
    journey::{self, Clock, JourneyMetrics, StoreLocation},
    privacy::IdKey,
    protocols::SessionOptions,
    reassembly::{Limits, Reassembler},
    session::SessionEvent,
};

/// The agent's allocator (see `src/main.rs`): the bench measures the path as shipped.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 5;
/// Times the shop corpus is replayed per round (~0.45 MB of payload each).
const LOOPS: u64 = 40;
/// Kernel time between two replays: together longer than the correlator's retention.
const LOOP_GAP_NS: u64 = 20_000_000_000;

/// The recording, replayed `loops` times as new connections (generations and client
/// ports shifted) later in time.
fn replayed(records: &[Recorded], loops: u64) -> Vec<Recorded> {
    let start = records.first().map_or(0, |r| r.time);
    let length = records.last().map_or(0, |r| r.time) - start;
    let mut out = Vec::with_capacity(records.len() * loops as usize);
    for n in 0..loops {
        for record in records {
            let mut record = record.clone();
            record.conn.generation += n << 40;
            record.time += n * (length + LOOP_GAP_NS);
            let client_port = match record.role {
                Role::Server => record.remote.as_mut(),
                _ => record.local.as_mut(),
            };
            if let Some(address) = client_port {
                address.set_port(address.port().wrapping_add(n as u16 * 7));
            }
            out.push(record);
        }
    }
    out
}

fn payload_bytes(records: &[Recorded]) -> usize {
    records.iter().map(|r| r.bytes.len()).sum()
}

/// CPU seconds used by this process so far (every thread).
fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// The baseline: per HTTP stream, `httparse` over each head and `serde_json` over each
/// JSON body. Returns (messages, HTTP bytes).
fn httparse_and_serde(records: &[Recorded]) -> (usize, usize) {
    let mut streams: std::collections::BTreeMap<_, Vec<u8>> = Default::default();
    for r in records.iter().filter(|r| r.kind == "data") {
        streams
            .entry((r.conn, r.direction as u8))
            .or_default()
            .extend_from_slice(&r.bytes);
    }
    let (mut messages, mut bytes) = (0, 0);
    for stream in streams.values() {
        let http = stream.starts_with(b"HTTP/1.")
            || [&b"GET "[..], b"POST ", b"PUT "]
                .iter()
                .any(|m| stream.starts_with(m));
        if !http {
            continue;
        }
        bytes += stream.len();
        let mut at = 0;
        while at < stream.len() {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let (head, length) = if stream.starts_with(b"HTTP/") {
                let mut response = httparse::Response::new(&mut headers);
                match response.parse(&stream[at..]) {
                    Ok(httparse::Status::Complete(head)) => (head, content_length(&headers)),
                    _ => break,
                }
            } else {
                let mut request = httparse::Request::new(&mut headers);
                match request.parse(&stream[at..]) {
                    Ok(httparse::Status::Complete(head)) => (head, content_length(&headers)),
                    _ => break,
                }
            };
            let body =
                &stream[(at + head).min(stream.len())..(at + head + length).min(stream.len())];
            if body.first() == Some(&b'{') {
                std::hint::black_box(serde_json::from_slice::<Value>(body).ok());
            }
            at += head + length;
            messages += 1;
        }
    }
    (messages, bytes)
}

fn content_length(headers: &[httparse::Header]) -> usize {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
        .unwrap_or(0)
}

/// The agent's userspace path over `records`, with the export stage on a thread of its
/// own or not (`--pipeline-threads 2` / 1); returns (spans, OTLP bytes).
// Never inlined: `cargo xtask bench` counts the instructions run inside it (callgrind).
#[inline(never)]
fn full_pipeline(records: &[Recorded], store: &Path, export_thread: bool) -> (usize, usize) {
    // The default setup with a key: pseudonymised, masked, allow-listed, journeys in
    // SQLite; every span kept (the default keeps 10 % of successes: this is the worst case).
    let mut config = Config::default();
    config.sampling.success_ratio = 1.0;
    config.privacy.pseudonymise_ids = Some(true);
    let key = IdKey::from_bytes(b"bench-key");
    let (tx, mut rx) = export::queue(1 << 20);
    let mut stages = Stages::from_config(&config, key.clone()).unwrap();
    let _ = std::fs::remove_file(store);
    let journeys = journey::start(
        &config.journey,
        &StoreLocation::Sqlite(store.to_owned()),
        JourneyMetrics::register(&mut Default::default()),
        Clock::system(),
        None,
    )
    .unwrap()
    .expect("a SQLite journey store");
    stages.journey = Some(journeys.handle.clone());
    let mut pipeline = Pipeline::new(
        // The agent's defaults: 300 ms settle time, messages stuck after amqp.stuck_after.
        Correlator::new(
            300_000_000,
            (config.amqp.stuck_after_seconds * 1e9) as u64,
            key,
        ),
        Services::new(Vec::new()),
        ExportQueues::new(vec![tx], Arc::new(ExportStats::default())),
        SessionOptions::default(),
        stages,
    );
    if export_thread {
        pipeline = pipeline.with_export_thread();
    }
    let clock = KernelClock::new();
    let mut replay = Replay::default();
    let mut reassembler = Reassembler::new(Limits::default());
    let (mut events, mut requests) = (Vec::new(), Vec::new());
    let (mut spans, mut encoded) = (0, 0);
    let mut export = |rx: &mut QueueReceiver| {
        let batch = rx.drain();
        spans += batch.len();
        if !batch.is_empty() {
            encoded += request::protobuf(&batch).len();
        }
    };
    for (n, record) in records.iter().enumerate() {
        let now = record.time;
        if record.kind == "data" {
            let conn = replay.connection(record).clone();
            let data = DataRecord {
                conn: record.conn,
                tid: record.tid,
                ktime_ns: now,
                direction: record.direction,
                syscall: 0,
                position: record.offset,
                length: record.bytes.len() as u64,
                payload: record.bytes.clone(),
            };
            reassembler.push(data, &mut events);
            for event in events.drain(..) {
                let event = SessionEvent::Stream {
                    conn: conn.clone(),
                    event,
                };
                pipeline.handle(event, now, &mut requests);
            }
        } else if let Some(event) = replay.event(record) {
            if record.kind == "conn_close" {
                reassembler.close(record.conn, None, &mut events);
            }
            pipeline.handle(event, now, &mut requests);
        }
        if n % 64 == 63 {
            pipeline.tick(now, &clock);
            export(&mut rx);
        }
    }
    pipeline.finish(&clock);
    export(&mut rx);
    drop(pipeline);
    journeys.finish();
    (spans, encoded)
}

/// min, median and max.
fn spread(mut values: Vec<f64>) -> Value {
    values.sort_by(f64::total_cmp);
    json!([
        values[0],
        values[values.len() / 2],
        values[values.len() - 1]
    ])
}

/// One corpus's figures, a value per round.
#[derive(Default)]
struct Figures {
    mb_per_cpu_s: Vec<f64>,
    spans_per_cpu_s: Vec<f64>,
    mb_per_s: Vec<f64>,
    spans_per_s: Vec<f64>,
}

struct Corpus {
    name: &'static str,
    records: Vec<Recorded>,
    export_thread: bool,
}

/// The bench's corpus: recorded from real programs by `cargo xtask bench --record-corpus`.
const SHOP_CORPUS: &str = "benches/corpus/shop.capture.jsonl";

/// `PIPELINE_INSTRUCTIONS=<loops>`: one pass over `records` replayed `loops` times, no
/// timing; prints `{"spans": …}`. `cargo xtask bench` runs it under callgrind at two loop
/// counts and divides the difference in instructions by the difference in spans: the
/// instructions per span of the whole path, start-up costs (regex compilation, the SQLite
/// schema) cancelled out, and repeatable on a busy host where CPU time is not.
fn instructions_pass(records: &[Recorded], loops: u64, store: &Path) {
    let (spans, _) = full_pipeline(&replayed(records, loops), store, false);
    let _ = std::fs::remove_file(store);
    println!("{}", json!({ "spans": spans }));
}

fn main() {
    // As the agent runs (see `src/main.rs`).
    tracer::agent::memory::without_transparent_huge_pages();
    let store = std::env::temp_dir().join(format!("tracer-bench-{}.sqlite", std::process::id()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |path: &str| recording::read(&root.join(path)).unwrap();
    if let Ok(loops) = std::env::var("PIPELINE_INSTRUCTIONS") {
        // `PIPELINE_CORPUS=<file>`: another recording than the shop corpus.
        let corpus = std::env::var("PIPELINE_CORPUS").unwrap_or_else(|_| SHOP_CORPUS.into());
        let loops = loops.parse().expect("PIPELINE_INSTRUCTIONS=<loops>");
        return instructions_pass(&read(&corpus), loops, &store);
    }
    let shop_records = replayed(&read(SHOP_CORPUS), LOOPS);
    let shop = Corpus {
        name: "shop",
        records: shop_records.clone(),
        export_thread: false,
    };
    // The same with the export stage on a second thread.
    let shop_2 = Corpus {
        name: "shop_2_threads",
        records: shop_records,
        export_thread: true,
    };
    let mut h2 = read("src/protocols/http2/fixtures/node.capture.jsonl");
    h2.extend(read("src/protocols/http2/fixtures/grpc.capture.jsonl"));
    h2.sort_by_key(|r| r.time);
    let http2 = Corpus {
        name: "http2",
        records: replayed(&h2, LOOPS * 2),
        export_thread: false,
    };
    let corpora = [&shop, &shop_2, &http2];
    let mut result = json!({ "rounds": ROUNDS });
    let (messages, http_bytes) = httparse_and_serde(&shop.records);
    result["baseline_messages"] = json!(messages);
    let mut baseline = Vec::new();
    let mut figures: Vec<Figures> = corpora.iter().map(|_| Figures::default()).collect();
    let warm_up = &shop.records[..shop.records.len() / LOOPS as usize];
    full_pipeline(warm_up, &store, false);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        std::hint::black_box(httparse_and_serde(&shop.records));
        baseline.push(http_bytes as f64 / 1e6 / start.elapsed().as_secs_f64());
        for (corpus, figure) in corpora.into_iter().zip(figures.iter_mut()) {
            let (cpu, start) = (cpu_seconds(), Instant::now());
            let (spans, encoded) = full_pipeline(&corpus.records, &store, corpus.export_thread);
            let (cpu, wall) = (cpu_seconds() - cpu, start.elapsed().as_secs_f64());
            assert!(spans > 0, "{}: the pipeline gave no spans", corpus.name);
            let mb = payload_bytes(&corpus.records) as f64 / 1e6;
            figure.mb_per_cpu_s.push(mb / cpu);
            figure.spans_per_cpu_s.push(spans as f64 / cpu);
            figure.mb_per_s.push(mb / wall);
            figure.spans_per_s.push(spans as f64 / wall);
            result[corpus.name] = json!({
                "bytes": payload_bytes(&corpus.records),
                "spans": spans,
                "otlp_bytes": encoded,
            });
        }
    }
    let _ = std::fs::remove_file(&store);
    result["baseline_http_bytes"] = json!(http_bytes);
    result["baseline_mb_per_s"] = spread(baseline);
    for (corpus, figure) in corpora.into_iter().zip(figures) {
        let name = corpus.name;
        result[name]["mb_per_cpu_s"] = spread(figure.mb_per_cpu_s);
        result[name]["spans_per_cpu_s"] = spread(figure.spans_per_cpu_s);
        result[name]["mb_per_s"] = spread(figure.mb_per_s);
        result[name]["spans_per_s"] = spread(figure.spans_per_s);
    }
    println!("{result}");
}
