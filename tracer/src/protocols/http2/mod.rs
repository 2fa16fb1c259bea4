//! HTTP/2 (RFC 9113) and gRPC: h2c with prior knowledge, and HTTP/2 over TLS through the
//! TLS hooks (the plaintext starts with the same preface). Frames, HPACK with its dynamic
//! table (`loona-hpack`), each stream one exchange with its own identity, gRPC service,
//! method and status.
mod exchange;
mod frames;
mod grpc;
mod record;
mod session;

#[cfg(test)]
mod tests;

pub use session::Http2Session;

use super::{
    record::Source, Inference, Protocol, ProtocolSession, SessionContext, SessionOptions,
};
use crate::capture::Direction;

pub struct Http2;

impl Protocol for Http2 {
    fn name(&self) -> &'static str {
        "http2"
    }

    /// The client's connection preface; mid-connection, frames back to back that only a
    /// well-behaved HTTP/2 peer would send.
    fn infer(&self, bytes: &[u8], _direction: Direction, mid_stream: bool) -> Inference {
        let n = bytes.len().min(frames::PREFACE.len());
        if bytes[..n] == frames::PREFACE[..n] {
            return if n == frames::PREFACE.len() {
                Inference::Yes
            } else {
                Inference::NeedMore
            };
        }
        if mid_stream && frames::plausible_frames(bytes, 2) {
            return Inference::Yes;
        }
        Inference::No
    }

    fn session(&self, context: SessionContext, options: &SessionOptions) -> Box<dyn ProtocolSession> {
        Box::new(Http2Session::new(context, options))
    }

    fn sources(&self) -> &'static [Source] {
        record::SOURCES
    }
}
