//! `/metrics` (OpenMetrics text, `prometheus-client`), `/healthz` and `/readyz` on one small
//! HTTP listener, bound to localhost unless told otherwise.
mod agent;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc,
    },
    time::{SystemTime, UNIX_EPOCH},
};

pub use agent::AgentMetrics;
use http_body_util::Full;
use hyper::{body::Bytes, Request, Response};
use prometheus_client::registry::Registry;

/// A main loop silent this long is reported unhealthy.
const STALL_SECONDS: i64 = 30;

/// Liveness and readiness, as the process's main loop reports them.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    heartbeat_s: AtomicI64,
}

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Health {
    pub fn ready(&self) {
        self.beat();
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Called by the main loop on every turn.
    pub fn beat(&self) {
        self.heartbeat_s.store(unix_seconds(), Ordering::Relaxed);
    }

    fn live(&self) -> bool {
        unix_seconds() - self.heartbeat_s.load(Ordering::Relaxed) <= STALL_SECONDS
    }
}

/// Where to listen: `host:port`, or `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "none" {
            return Ok(Self(None));
        }
        text.parse()
            .map(|addr| Self(Some(addr)))
            .map_err(|_| format!("{text:?} is not host:port (e.g. 127.0.0.1:9464) or none"))
    }
}

/// Binds now (so a taken port fails the start with a clear message) and serves on `runtime`.
pub fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Arc<Health>,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<SocketAddr> {
    let _guard = runtime.enter();
    let listener = crate::listen::bind(addr, "/metrics")?;
    let bound = listener.local_addr()?;
    let handle = move |request: Request<hyper::body::Incoming>| {
        let response = respond(request.uri().path(), &registry, &health);
        async move { Ok::<_, Infallible>(response) }
    };
    crate::listen::serve_http1(listener, handle, runtime);
    Ok(bound)
}

fn respond(path: &str, registry: &Registry, health: &Health) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => (
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(_) => (500, "text/plain", "encoding metrics failed\n".into()),
            }
        }
        "/healthz" if health.live() => (200, "text/plain", "ok\n".into()),
        "/healthz" => (503, "text/plain", "main loop stalled\n".into()),
        "/readyz" if health.ready.load(Ordering::Relaxed) => (200, "text/plain", "ready\n".into()),
        "/readyz" => (503, "text/plain", "starting\n".into()),
        _ => (
            404,
            "text/plain",
            "try /metrics, /healthz or /readyz\n".into(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}
