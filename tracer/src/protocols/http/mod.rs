//! HTTP/1.x: inference, a per-direction parser (httparse), and request/response pairing.
mod config;
pub mod headers;
mod parser;
pub mod record;
pub mod route;
mod session;

#[cfg(test)]
mod tests;

pub use config::HttpConfig;
use parser::{find_start_line, looks_like_start, Side};
pub(crate) use session::status_for;
pub use session::HttpSession;

use super::{record::Source, Inference, Protocol, ProtocolSession, SessionContext, SessionOptions};
use crate::capture::Direction;

pub struct Http;

impl Protocol for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn sources(&self) -> &'static [Source] {
        &record::SOURCES
    }

    fn infer(&self, bytes: &[u8], _direction: Direction, mid_stream: bool) -> Inference {
        if looks_like_start(bytes, Side::Requests) || looks_like_start(bytes, Side::Responses) {
            return Inference::Yes;
        }
        if mid_stream
            && (find_start_line(bytes, Side::Requests).is_some()
                || find_start_line(bytes, Side::Responses).is_some())
        {
            return Inference::Yes;
        }
        let could_be_start = b"HTTP/1.".starts_with(&bytes[..bytes.len().min(7)])
            || [
                &b"GET "[..],
                b"POST ",
                b"PUT ",
                b"DELETE ",
                b"HEAD ",
                b"PATCH ",
                b"OPTIONS ",
            ]
            .iter()
            .any(|m| m.starts_with(&bytes[..bytes.len().min(m.len())]));
        if bytes.len() < 8 && could_be_start {
            Inference::NeedMore
        } else {
            Inference::No
        }
    }

    fn session(
        &self,
        context: SessionContext,
        options: &SessionOptions,
    ) -> Box<dyn ProtocolSession> {
        Box::new(HttpSession::new(context, options))
    }
}
