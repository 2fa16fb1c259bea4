//! Order journeys: per order, its status history (from `app.order.status` or rules mapping
//! spans to statuses), first and last sighting, the services that touched it, its errors
//! and its last trace; kept in SQLite (agent) or PostgreSQL (`tracer journey`), checked
//! against per-status dwell limits, and summarised as Prometheus metrics.
mod clock;
pub mod diagnose;
mod journeys;
mod labels;
mod metrics;
mod order;
pub mod receiver;
mod span;
mod store;
mod stuck;
pub mod view;
mod worker;

pub use clock::{human, Clock};
pub use journeys::{Journeys, StuckOrder};
pub use metrics::JourneyMetrics;
pub use order::{Order, StatusChange};
pub use span::{JourneySpan, QueueView, NOT_DELIVERED};
pub use store::{Step, Store, StoreLocation};
pub use worker::{spawn, JourneyHandle};

/// A running journey thread.
pub struct Running {
    pub handle: JourneyHandle,
    pub thread: std::thread::JoinHandle<()>,
}

impl Running {
    /// Stops taking spans, writes what is queued, and waits for the thread.
    pub fn finish(self) {
        drop(self.handle);
        if self.thread.join().is_err() {
            tracing::error!("the journey thread panicked");
        }
    }
}

/// Opens the store, loads its orders and starts the journey thread (`None` for store
/// `none`). Stuck-order spans go to `export`.
pub fn start(
    config: &crate::config::JourneyConfig,
    location: &StoreLocation,
    metrics: JourneyMetrics,
    clock: Clock,
    export: Option<crate::export::ExportQueues>,
) -> anyhow::Result<Option<Running>> {
    let Some(store) = Store::open(location)? else {
        return Ok(None);
    };
    let journeys = Journeys::open(config.clone(), store, metrics, clock)?;
    let loaded = journeys.order_count();
    let (handle, thread) = spawn(journeys, config.check_every, export)?;
    let shown = match location {
        StoreLocation::Sqlite(path) => path.display().to_string(),
        StoreLocation::Postgres(_) => "PostgreSQL".into(),
        StoreLocation::None => unreachable!("no store was opened"),
    };
    eprintln!("tracer: keeping order journeys in {shown} ({loaded} orders loaded); see `tracer orders list`");
    Ok(Some(Running { handle, thread }))
}
