//! `tracer journey`: the journey logic as a service. Receives OTLP (gRPC and HTTP) from
//! any number of agents, keeps journeys in PostgreSQL (or SQLite), serves `/metrics`, and
//! exports stuck-order spans to the given targets.
use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::Args;

use super::{run::TestClock, StopSignal};
use crate::{
    config::Config,
    export::{self, ExportQueues, ExportStats, ExportTarget},
    journey::{self, receiver, JourneyMetrics, StoreLocation},
    metrics::{self, Health},
};

#[derive(Debug, Args)]
pub struct JourneyArgs {
    /// Configuration file; its [journey] section applies.
    #[arg(long, env = "TRACER_CONFIG")]
    config: Option<PathBuf>,
    /// Where journeys are kept: postgres://… (shared) or sqlite:PATH.
    #[arg(long, env = "TRACER_JOURNEY_STORE")]
    store: Option<String>,
    /// OTLP/gRPC listen address (host:port, or none).
    #[arg(long, default_value = "127.0.0.1:4317")]
    otlp_grpc: metrics::Listen,
    /// OTLP/HTTP listen address (host:port, or none).
    #[arg(long, default_value = "127.0.0.1:4318")]
    otlp_http: metrics::Listen,
    /// /metrics, /healthz and /readyz listen address (host:port, or none).
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_listen: metrics::Listen,
    /// Where stuck-order spans go (repeatable): otlp-grpc=URL, otlp-http=URL, file:PATH.
    #[arg(long = "export")]
    exports: Vec<ExportTarget>,
    /// Stop after this many seconds (default: until Ctrl-C / SIGTERM).
    #[arg(long)]
    duration: Option<f64>,
    #[command(flatten)]
    test_clock: TestClock,
}

pub fn run(args: JourneyArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(store) = &args.store {
        config.journey.store = store.clone();
    }
    let location =
        StoreLocation::parse(&config.journey.store).map_err(|e| anyhow::anyhow!("--store: {e}"))?;
    if location == StoreLocation::None {
        anyhow::bail!("tracer journey needs a store (--store postgres://… or sqlite:PATH)");
    }
    let stop = StopSignal::install(args.duration.map(Duration::from_secs_f64))?;
    // Receivers run on one runtime, exporters on another: stopping the receivers must
    // not stop the export of the last stuck-order spans.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let export_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut registry = prometheus_client::registry::Registry::default();
    let journey_metrics = JourneyMetrics::register(&mut registry);
    let health = Arc::new(Health::default());
    let stats = Arc::new(ExportStats::default());
    let mut senders = Vec::new();
    let mut exporters = Vec::new();
    for target in &args.exports {
        let (tx, rx) = export::queue(1_000);
        senders.push(tx);
        exporters.push(export::spawn(
            target.clone(),
            rx,
            1_000,
            stats.clone(),
            export_runtime.handle(),
        ));
    }
    let queues = (!senders.is_empty()).then(|| ExportQueues::new(senders, stats.clone()));
    let running = journey::start(
        &config.journey,
        &location,
        journey_metrics,
        args.test_clock.clock(),
        queues,
    )?
    .expect("a store was given");
    for (protocol, addr) in receiver::serve(
        args.otlp_grpc.0,
        args.otlp_http.0,
        running.handle.clone(),
        runtime.handle(),
    )? {
        eprintln!("tracer: journey receiving OTLP/{protocol} on {addr}");
    }
    if let metrics::Listen(Some(addr)) = args.metrics_listen {
        let bound = metrics::serve(addr, Arc::new(registry), health.clone(), runtime.handle())?;
        eprintln!("tracer: metrics on http://{bound}/metrics (health: /healthz, /readyz)");
    }
    health.ready();
    eprintln!(
        "tracer: journey service started (pid {})",
        std::process::id()
    );
    while !stop.stopped() {
        health.beat();
        std::thread::sleep(Duration::from_millis(200));
    }
    // The receivers hold handles too; stopping the runtime drops them.
    runtime.shutdown_timeout(Duration::from_secs(5));
    running.finish();
    export::finish(exporters, &export_runtime);
    Ok(())
}
