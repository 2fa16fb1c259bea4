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

use super::{record::Source, Inference, Protocol, ProtocolSession, SessionContext, SessionOptions};
use crate::{capture::Direction, privacy::Policy};

pub struct Http2;

impl Protocol for Http2 {
    fn name(&self) -> &'static str {
        "http2"
    }

    /// The client's connection preface, or the server's first SETTINGS; mid-connection,
    /// frames back to back that only a well-behaved HTTP/2 peer would send.
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
        // A server may speak first: its SETTINGS frame, before the client's preface.
        match frames::FrameHeader::parse(bytes) {
            Some(header) if !mid_stream && header.is_server_hello() => Inference::Yes,
            None if bytes.len() < 9 && bytes.starts_with(&[0, 0]) => Inference::NeedMore,
            _ => Inference::No,
        }
    }

    fn session(
        &self,
        context: SessionContext,
        options: &SessionOptions,
    ) -> Box<dyn ProtocolSession> {
        Box::new(Http2Session::new(context, options))
    }

    fn sources(&self) -> &'static [Source] {
        &record::SOURCES
    }

    fn attribute_policies(&self) -> &'static [(&'static str, Policy)] {
        &[
            ("rpc.system", Policy::Keep),
            ("rpc.grpc.status_code", Policy::Keep),
            // API names: templated like object names (free text and plain ids removed).
            ("rpc.service", Policy::Name),
            ("rpc.method", Policy::Name),
        ]
    }
}
