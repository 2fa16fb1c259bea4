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

/// Messages of the v3 protocol after startup (a type byte, then a big-endian length that
/// counts itself) back to back from the start of `buf`, each of one of `types` and of a
/// sane length, ending exactly at its end: the last one's (offset, type, length) if so.
/// `each` sees every type on the way.
fn whole_messages(
    buf: &[u8],
    types: &[u8],
    mut each: impl FnMut(u8),
) -> Option<(usize, u8, usize)> {
    const MAX_MESSAGE: usize = 1 << 20;
    let (mut at, mut last) = (0, None);
    while at < buf.len() {
        let header = buf.get(at..at + 5)?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if !types.contains(&header[0]) || !(4..MAX_MESSAGE).contains(&len) {
            return None;
        }
        each(header[0]);
        last = Some((at, header[0], len));
        at += 1 + len;
    }
    last.filter(|_| at == buf.len())
}

impl Protocol for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn sources(&self) -> &'static [Source] {
        record::SOURCES
    }

    /// A startup (or SSL request): from the client, on either end of the connection.
    /// Mid-stream, what only PostgreSQL sends: a simple query or Parse ending where its
    /// length says, a Sync, or a read of whole frontend or backend messages back to back
    /// (an answer ending in ReadyForQuery or CommandComplete).
    fn infer(&self, bytes: &[u8], _direction: Direction, mid_stream: bool) -> Inference {
        let regular = || {
            frontend::is_message_start(bytes)
                || frontend::is_message_chain(bytes)
                || backend::is_message_chain(bytes)
        };
        match frontend::is_startup(bytes) {
            Some(true) => Inference::Yes,
            _ if mid_stream && regular() => Inference::Yes,
            Some(false) => Inference::No,
            None => Inference::NeedMore,
        }
    }

    fn session(
        &self,
        context: SessionContext,
        _options: &SessionOptions,
    ) -> Box<dyn ProtocolSession> {
        Box::new(PostgresSession::new(context.role, context.mid_stream))
    }
}
