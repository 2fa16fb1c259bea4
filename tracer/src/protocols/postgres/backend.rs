//! Backend (server → client) messages, parsed with `postgres-protocol`.
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;

/// What the session needs from a backend message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    CommandComplete(String),
    EmptyQuery,
    /// SQLSTATE and message.
    Error {
        code: String,
        message: String,
    },
    ReadyForQuery(u8),
    /// Anything else (rows, parse/bind complete, parameters, notices…).
    Other,
}

pub struct BackendReader {
    buf: BytesMut,
    resync: bool,
    skipped: u64,
}

const READY_FOR_QUERY: &[u8] = b"Z\0\0\0\x05";

impl BackendReader {
    pub fn new(mid_stream: bool) -> Self {
        Self {
            buf: BytesMut::new(),
            resync: mid_stream,
            skipped: 0,
        }
    }

    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn gap(&mut self) {
        self.skipped += self.buf.len() as u64;
        self.buf.clear();
        self.resync = true;
    }

    /// The one-byte answer to an SSL/GSS encryption request, if it is next.
    pub fn encryption_answer(&mut self) -> Option<u8> {
        let byte = *self.buf.first()?;
        let _ = self.buf.split_to(1);
        Some(byte)
    }

    pub fn next(&mut self) -> Option<Backend> {
        if self.resync {
            // Resume after the next ReadyForQuery, the one landmark every exchange ends with.
            let at = self
                .buf
                .windows(READY_FOR_QUERY.len())
                .position(|w| w == READY_FOR_QUERY)?;
            self.skipped += at as u64;
            let _ = self.buf.split_to(at);
            self.resync = false;
        }
        match Message::parse(&mut self.buf) {
            Ok(Some(message)) => Some(convert(message)),
            Ok(None) => None,
            Err(_) => {
                self.resync = true;
                let _ = self.buf.split_to(1.min(self.buf.len()));
                self.skipped += 1;
                None
            }
        }
    }
}

fn convert(message: Message) -> Backend {
    match message {
        Message::CommandComplete(body) => {
            Backend::CommandComplete(body.tag().unwrap_or_default().to_owned())
        }
        Message::EmptyQueryResponse => Backend::EmptyQuery,
        Message::ErrorResponse(body) => {
            let (mut code, mut message) = (String::new(), String::new());
            let mut fields = body.fields();
            while let Ok(Some(field)) = fields.next() {
                match field.type_() {
                    b'C' => code = String::from_utf8_lossy(field.value_bytes()).into_owned(),
                    b'M' => message = String::from_utf8_lossy(field.value_bytes()).into_owned(),
                    _ => {}
                }
            }
            Backend::Error { code, message }
        }
        Message::ReadyForQuery(body) => Backend::ReadyForQuery(body.status()),
        _ => Backend::Other,
    }
}
