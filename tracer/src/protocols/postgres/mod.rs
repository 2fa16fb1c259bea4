//! PostgreSQL v3 wire protocol: client spans for simple and extended queries, with the
//! statement (without literals), table, SQLSTATE and transaction state.
mod backend;
mod frontend;
mod record;
mod session;
mod sql;

#[cfg(test)]
mod tests;

pub use session::PostgresSession;

use super::{record::Source, Inference, Protocol, ProtocolSession, SessionContext, SessionOptions};
use crate::capture::Direction;

pub struct Postgres;

impl Protocol for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn sources(&self) -> &'static [Source] {
        record::SOURCES
    }

    /// A startup (or SSL request) sent by the client; mid-stream, a query, Parse or Sync.
    fn infer(&self, bytes: &[u8], direction: Direction, mid_stream: bool) -> Inference {
        if direction != Direction::Egress {
            return Inference::No; // we follow the client side only
        }
        match frontend::is_startup(bytes) {
            Some(true) => Inference::Yes,
            _ if mid_stream && frontend::is_message_start(bytes) => Inference::Yes,
            Some(false) => Inference::No,
            None => Inference::NeedMore,
        }
    }

    fn session(
        &self,
        context: SessionContext,
        _options: &SessionOptions,
    ) -> Box<dyn ProtocolSession> {
        Box::new(PostgresSession::new(context.mid_stream))
    }
}
