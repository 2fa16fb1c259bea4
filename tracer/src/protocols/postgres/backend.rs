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
    /// Bytes of a message too large to buffer (a huge row) still to pass over.
    passing: usize,
}

const READY_FOR_QUERY: &[u8] = b"Z\0\0\0\x05";

/// Messages larger than this are passed over by their length, never buffered: a declared
/// length must not decide how much memory the agent takes.
const MAX_MESSAGE: usize = 1 << 20;

/// Type bytes of the backend messages of protocol 3.0.
const BACKEND_TYPES: &[u8] = b"RKSZTDCIEN123nstGHWdcAvV";

impl BackendReader {
    pub fn new(mid_stream: bool) -> Self {
        Self {
            buf: BytesMut::new(),
            resync: mid_stream,
            skipped: 0,
            passing: 0,
        }
    }

    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    pub fn push(&mut self, bytes: &[u8]) {
        let pass = self.passing.min(bytes.len());
        self.passing -= pass;
        self.buf.extend_from_slice(&bytes[pass..]);
    }

    pub fn gap(&mut self) {
        self.skipped += self.buf.len() as u64;
        self.buf.clear();
        self.passing = 0;
        self.resync = true;
    }

    /// Passes over a message too large to buffer; false if the header is not a message.
    fn pass_large(&mut self) -> bool {
        let Some(header) = self.buf.get(..5) else {
            return true;
        };
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if length < MAX_MESSAGE {
            return true;
        }
        if !BACKEND_TYPES.contains(&header[0]) {
            return false;
        }
        let whole = length + 1;
        let have = self.buf.len().min(whole);
        let _ = self.buf.split_to(have);
        self.passing = whole - have;
        true
    }

    /// The one-byte answer to an SSL/GSS encryption request, if it is next.
    pub fn encryption_answer(&mut self) -> Option<u8> {
        let byte = *self.buf.first()?;
        let _ = self.buf.split_to(1);
        Some(byte)
    }

    pub fn next(&mut self) -> Option<Backend> {
        loop {
            if self.resync && is_message_chain(&self.buf) {
                // A read that begins at a message: nothing to skip.
                self.resync = false;
            }
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
            while self.buf.len() >= 5 && self.passing == 0 {
                let before = self.buf.len();
                if !self.pass_large() {
                    break;
                }
                if self.buf.len() == before {
                    break;
                }
            }
            if self.passing > 0 {
                return None;
            }
            // Only a plausible header reaches the parser, which reserves the declared length.
            let plausible = self.buf.len() < 5 || self.header_is_plausible();
            match plausible.then(|| Message::parse(&mut self.buf)) {
                Some(Ok(Some(message))) => return Some(convert(message)),
                Some(Ok(None)) => return None,
                // Not a message here: drop a byte and look for the next ReadyForQuery.
                None | Some(Err(_)) => {
                    self.resync = true;
                    let _ = self.buf.split_to(1.min(self.buf.len()));
                    self.skipped += 1;
                }
            }
        }
    }

    /// A header that could start a backend message (known type, sane length).
    fn header_is_plausible(&self) -> bool {
        let length =
            u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        BACKEND_TYPES.contains(&self.buf[0]) && (4..MAX_MESSAGE).contains(&length)
    }
}

/// Whole backend messages back to back to the end of `buf` (see `whole_messages`), the
/// last a ReadyForQuery (status idle, in a transaction or failed) or a CommandComplete:
/// how an answer ends.
pub fn is_message_chain(buf: &[u8]) -> bool {
    match super::whole_messages(buf, BACKEND_TYPES, |_| {}) {
        Some((at, b'Z', 5)) => matches!(buf[at + 5], b'I' | b'T' | b'E'),
        Some((at, b'C', len)) => {
            let tag = &buf[at + 5..at + 1 + len];
            tag.last() == Some(&0) && tag.first().is_some_and(u8::is_ascii_uppercase)
        }
        _ => false,
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
