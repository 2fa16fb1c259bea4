//! The small HTTP/1.1 listeners tracer serves (`/metrics`, OTLP/HTTP of `tracer journey`):
//! bound at start-up so a taken port fails with a clear message, then served on a runtime.
use std::{convert::Infallible, future::Future, net::SocketAddr};

use anyhow::Context;
use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    server::conn::http1,
    service::service_fn,
    Request, Response,
};
use hyper_util::rt::TokioIo;

/// Binds `addr` now; `what` names the listener in the error. Call inside the runtime.
pub fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen for {what} on {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(listener)?)
}

/// Serves every connection of `listener` with `handle`, one task per connection.
pub fn serve_http1<H, F>(
    listener: tokio::net::TcpListener,
    handle: H,
    runtime: &tokio::runtime::Handle,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    });
}
