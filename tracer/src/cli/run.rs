//! `tracer run`: the agent. Captures, parses, correlates and exports spans until stopped.
use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::Args;

use super::StopSignal;
use crate::{
    agent::{
        priority::{CpuPriority, Priority},
        Pipeline, Request, Stages,
    },
    capture::{monotonic_now, CaptureOptions, DataHook, Selection},
    config::Config,
    correlate::Correlator,
    export::{self, ExportQueues, ExportStats, ExportTarget, Services},
    journey::{self, Clock, JourneyMetrics, StoreLocation},
    metrics::{self, AgentMetrics, Health},
    privacy::IdKey,
    protocols::SessionOptions,
    reassembly::Limits,
    session::CaptureSession,
};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (TOML); see deploy/tracer.example.toml.
    #[arg(long, env = "TRACER_CONFIG")]
    config: Option<PathBuf>,
    /// Where spans go (repeatable): otlp, otlp-grpc[=URL], otlp-http[=URL], file:PATH.
    /// `otlp` follows OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_PROTOCOL, default
    /// gRPC to http://localhost:4317.
    #[arg(long = "export", default_value = "otlp")]
    exports: Vec<ExportTarget>,
    /// Only these processes (repeatable). Default: every process but tracer itself.
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Kernel ring-buffer size in bytes (power of two).
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    ring_buffer_bytes: u32,
    /// How often the ring buffer is read, in milliseconds.
    #[arg(long, default_value_t = 10)]
    poll_ms: u64,
    /// How long a finished span waits for its parent to be seen, in milliseconds.
    #[arg(long, default_value_t = 300)]
    settle_ms: u64,
    /// Report a published message not delivered within this many seconds as stuck or
    /// lost (default: amqp.stuck_after_seconds from the config, else 300).
    #[arg(long)]
    message_stuck_after: Option<f64>,
    /// Replace order and user ids by their keyed pseudonyms in everything exported
    /// (default: on when a key is configured; `--pseudonymise-ids=false` turns it off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pseudonymise_ids: Option<bool>,
    /// File holding the HMAC key for order trace ids and pseudonyms (else TRACER_HMAC_KEY).
    #[arg(long)]
    hmac_key_file: Option<String>,
    /// Share of successful traces without an order that are exported (0..1).
    #[arg(long)]
    sample_success_ratio: Option<f64>,
    /// Share of order traces that are exported (0..1).
    #[arg(long)]
    sample_order_ratio: Option<f64>,
    /// Spans at least this slow (ms) are always exported.
    #[arg(long)]
    slow_ms: Option<u64>,
    /// Print, as JSON lines on stdout, every span that would be exported (with what was
    /// masked, dropped or pseudonymised) instead of exporting it.
    #[arg(long)]
    privacy_dry_run: bool,
    /// Spans queued per export target, and held for retry while a receiver is down.
    #[arg(long, default_value_t = 10_000)]
    queue_spans: usize,
    /// Log agent statistics this often, in seconds (0: only at exit).
    #[arg(long, default_value_t = 60)]
    stats_every: u64,
    /// Stop after this many seconds (default: until Ctrl-C / SIGTERM).
    #[arg(long)]
    duration: Option<f64>,
    /// Where order journeys are kept: sqlite:PATH, postgres://…, or none (default:
    /// journey.store from the config, else sqlite:/var/lib/tracer/journeys.sqlite).
    #[arg(long)]
    journey_store: Option<String>,
    /// Serve /metrics, /healthz and /readyz here (host:port, or none).
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_listen: metrics::Listen,
    /// Do not hook TLS libraries (default: tls.enabled from the config, else on).
    #[arg(long)]
    pub no_tls: bool,
    /// Where the data path's kernel program runs: `syscall-tracepoints` (one per data
    /// syscall; the default) or `raw-syscalls` (one at raw_syscalls:sys_exit for every
    /// syscall of the host; see README "Cost").
    #[arg(long, value_enum, default_value_t = DataHook::SyscallTracepoints)]
    data_hook: DataHook,
    /// Threads of the span pipeline: 1 (parsing, correlation and export on one), or 2
    /// (sampling, privacy, journeys and encoding on a second: more spans per second on a
    /// busy node, at more CPU per span; see README "Cost").
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pipeline_threads: u8,
    /// `idle`: the thread that reads and parses what the kernel captured runs on CPU time
    /// the traced applications leave unused (SCHED_IDLE), at normal priority only while it
    /// is behind (a record older than 100 ms in its last read, or no read finished for
    /// 50 ms). `normal`: always at normal priority. See README "Cost".
    #[arg(long, value_enum, default_value_t = CpuPriority::Idle)]
    cpu_priority: CpuPriority,
    #[command(flatten)]
    test_clock: TestClock,
}

/// The journey clock is the system's. Only a binary built with the cargo feature
/// `test-clock` (which `cargo xtask test` enables, and no release build does) can move it,
/// so that tests see a day pass in seconds.
#[derive(Debug, Default, Args)]
pub struct TestClock {
    /// Testing only: a file holding a duration ("26h") added to the journey clock, re-read
    /// at every check.
    #[cfg(feature = "test-clock")]
    #[arg(long, global = true)]
    test_clock_offset_file: Option<PathBuf>,
    /// Testing only: run as on a kernel without the optional socket tracepoints and
    /// without BTF for the fd → sock walk.
    #[cfg(feature = "test-clock")]
    #[arg(long)]
    test_without_optional_tracepoints: bool,
}

impl TestClock {
    fn without_optional_tracepoints(&self) -> bool {
        #[cfg(feature = "test-clock")]
        return self.test_without_optional_tracepoints;
        #[cfg(not(feature = "test-clock"))]
        false
    }

    pub fn clock(&self) -> Clock {
        #[cfg(feature = "test-clock")]
        if let Some(path) = &self.test_clock_offset_file {
            return Clock::with_offset_file(path.clone());
        }
        Clock::system()
    }
}

/// How often settled spans are resolved and handed to the export stage (kernel time).
const TICK_EVERY_NS: u64 = 20_000_000;

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    // Flags override the file.
    if args.pseudonymise_ids.is_some() {
        config.privacy.pseudonymise_ids = args.pseudonymise_ids;
    }
    if let Some(path) = &args.hmac_key_file {
        config.privacy.hmac_key_file = Some(path.clone());
    }
    if let Some(ratio) = args.sample_success_ratio {
        config.sampling.success_ratio = ratio;
    }
    if let Some(ratio) = args.sample_order_ratio {
        config.sampling.order_ratio = ratio;
    }
    if let Some(ms) = args.slow_ms {
        config.sampling.slow_threshold_ms = ms;
    }
    if let Some(store) = &args.journey_store {
        config.journey.store = store.clone();
    }
    let journey_store = StoreLocation::parse(&config.journey.store)
        .map_err(|e| anyhow::anyhow!("--journey-store: {e}"))?;
    let mut registry = prometheus_client::registry::Registry::default();
    let agent_metrics = AgentMetrics::register(&mut registry);
    let journey_metrics = JourneyMetrics::register(&mut registry);
    let health = Arc::new(Health::default());
    let key = IdKey::load(&config.privacy)?;
    let mut stages = Stages::from_config(&config, key.clone())?;
    stages.privacy_dry_run = args.privacy_dry_run;
    let stop = StopSignal::install(args.duration.map(Duration::from_secs_f64))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let stats = Arc::new(ExportStats::default());
    let mut senders = Vec::new();
    let mut exporters = Vec::new();
    let targets = if args.privacy_dry_run {
        Vec::new()
    } else {
        args.exports.clone()
    };
    for target in &targets {
        let (tx, rx) = export::queue(args.queue_spans);
        senders.push(tx);
        exporters.push(export::spawn(
            target.clone(),
            rx,
            args.queue_spans,
            stats.clone(),
            runtime.handle(),
        ));
    }
    let queues = ExportQueues::new(senders, stats.clone());
    let journey = journey::start(
        &config.journey,
        &journey_store,
        journey_metrics,
        args.test_clock.clock(),
        Some(queues.clone()),
    )?;
    stages.journey = journey.as_ref().map(|j| j.handle.clone());
    if let metrics::Listen(Some(addr)) = args.metrics_listen {
        let bound = metrics::serve(addr, Arc::new(registry), health.clone(), runtime.handle())?;
        eprintln!("tracer: metrics on http://{bound}/metrics (health: /healthz, /readyz)");
    }
    let options = CaptureOptions {
        ring_buffer_bytes: args.ring_buffer_bytes,
        selection: if args.pids.is_empty() {
            Selection::All
        } else {
            Selection::Pids(args.pids.clone())
        },
        tls: config.tls.options(args.no_tls),
        without_optional_tracepoints: args.test_clock.without_optional_tracepoints(),
        data_hook: args.data_hook,
    };
    let mut events = Vec::new();
    let mut session = CaptureSession::start(&options, Limits::default(), &mut events)?;
    let session_options = SessionOptions {
        body_prefix_bytes: config.http.body_prefix_bytes,
        route_templates: config.http.routes.clone().into(),
    };
    let mut pipeline = Pipeline::new(
        Correlator::new(
            args.settle_ms * 1_000_000,
            (args
                .message_stuck_after
                .unwrap_or(config.amqp.stuck_after_seconds)
                * 1e9) as u64,
            key,
        ),
        Services::new(config.services.clone()).with_log_dirs(config.kubernetes.log_dirs()),
        queues,
        session_options,
        stages,
    );
    if args.pipeline_threads == 2 {
        pipeline = pipeline.with_export_thread();
    }
    eprintln!(
        "tracer: agent started (pid {}); view spans in Jaeger (UI http://localhost:16686, OTLP on 4317/4318), search by service name",
        std::process::id()
    );
    let priority = Priority::start(args.cpu_priority);
    health.ready();
    let mut requests = Vec::new();
    let mut last_stats = std::time::Instant::now();
    let mut last_metrics = std::time::Instant::now();
    let mut next_tick_ns = 0;
    loop {
        health.beat();
        if last_metrics.elapsed() >= Duration::from_secs(1) {
            last_metrics = std::time::Instant::now();
            agent_metrics.update(&session.stats(), &pipeline.stats(), &stats);
            agent_metrics.update_priority(&priority);
        }
        let now = monotonic_now();
        for event in events.drain(..) {
            pipeline.handle(event, now, &mut requests);
        }
        for request in requests.drain(..) {
            match request {
                Request::IgnorePayload { conn, plaintext } => {
                    session.ignore_payload(conn, plaintext)
                }
            }
        }
        if now >= next_tick_ns {
            // Settled spans leave in batches: each hand-over wakes the export and journey
            // threads (a futex wake and, on a busy host, an IPI to the other core), which
            // a tick per ring read under load did hundreds of times a second.
            next_tick_ns = now + TICK_EVERY_NS;
            pipeline.tick(now, &session.clock);
        }
        if stop.stopped() {
            break;
        }
        if args.stats_every > 0 && last_stats.elapsed() >= Duration::from_secs(args.stats_every) {
            last_stats = std::time::Instant::now();
            log_stats(&session, &pipeline, &stats);
        }
        let read = session.poll(&mut events);
        priority.polled(session.backlog_ns());
        if read == 0 && events.is_empty() {
            std::thread::sleep(Duration::from_millis(args.poll_ms));
        }
    }
    session.poll(&mut events);
    let now = monotonic_now();
    for event in events.drain(..) {
        pipeline.handle(event, now, &mut requests);
    }
    pipeline.finish(&session.clock);
    log_stats(&session, &pipeline, &stats);
    let (capture_stats, pipeline_stats) = (session.stats(), pipeline.stats());
    drop(pipeline); // closes the export queues (the journey thread holds the last ones)
    if let Some(journey) = journey {
        journey.finish();
    }
    export::finish(exporters, &runtime);
    eprintln!(
        "tracer: stats {}",
        serde_json::json!({
            "export": stats.snapshot(),
            "pipeline": pipeline_stats,
            "capture": capture_stats,
        })
    );
    Ok(())
}

fn log_stats(session: &CaptureSession, pipeline: &Pipeline, export: &ExportStats) {
    let all = serde_json::json!({
        "capture": session.stats(),
        "pipeline": pipeline.stats(),
        "export": export.snapshot(),
    });
    tracing::info!(target: "tracer::stats", "{all}");
}
