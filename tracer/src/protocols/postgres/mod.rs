//! PostgreSQL v3 wire protocol: client spans for simple and extended queries, with the
//! statement (without literals), table, SQLSTATE and transaction state.
mod backend;
mod frontend;
mod session;
mod sql;

#[cfg(test)]
mod tests;

pub use session::PostgresSession;

use super::{Inference, Protocol, ProtocolSession, SessionOptions};
use crate::capture::{Direction, Role};

pub struct Postgres;

impl Protocol for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
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
        _role: Role,
        _first: Direction,
        mid_stream: bool,
        _options: &SessionOptions,
    ) -> Box<dyn ProtocolSession> {
        Box::new(PostgresSession::new(mid_stream))
    }
}
