//! Frontend (client → server) messages of the PostgreSQL v3 protocol. `postgres-protocol`
//! only writes these, so they are read here, in its style: a type byte, a length, a body.
use std::collections::BTreeMap;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3: u32 = 196_608;
/// Messages larger than this are not buffered (COPY data is skipped by length).
const MAX_MESSAGE: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frontend {
    /// Startup parameters (user, database, application_name…). Never a password.
    Startup(BTreeMap<String, String>),
    /// SSL or GSS encryption request: the server answers with one byte.
    EncryptionRequest,
    Cancel,
    Query(String),
    Parse {
        name: String,
        query: String,
    },
    /// Parameter values in text form where they are text (None for NULL or binary).
    Bind {
        portal: String,
        statement: String,
        params: Vec<Option<String>>,
    },
    Execute {
        portal: String,
    },
    Sync,
    Terminate,
    /// Passwords and SASL messages: deliberately not parsed.
    Secret,
    Other(u8),
}

pub struct FrontendReader {
    buf: Vec<u8>,
    started: bool,
    resync: bool,
    /// Bytes of a large message (COPY data) still to skip.
    skipping: usize,
    skipped: u64,
}

impl FrontendReader {
    pub fn new(mid_stream: bool) -> Self {
        Self {
            buf: Vec::new(),
            started: mid_stream,
            resync: mid_stream,
            skipping: 0,
            skipped: 0,
        }
    }

    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    pub fn push(&mut self, bytes: &[u8]) {
        let skip = self.skipping.min(bytes.len());
        self.skipping -= skip;
        self.buf.extend_from_slice(&bytes[skip..]);
    }

    pub fn gap(&mut self, length: u64) {
        if self.buf.is_empty() && (self.skipping as u64) >= length {
            self.skipping -= length as usize;
            return;
        }
        self.skipped += self.buf.len() as u64;
        self.buf.clear();
        self.skipping = 0;
        self.resync = true;
    }

    pub fn next(&mut self) -> Option<Frontend> {
        if self.resync {
            let at = find_message_start(&self.buf)?;
            self.skipped += at as u64;
            self.buf.drain(..at);
            self.resync = false;
            self.started = true;
        }
        if !self.started {
            if self.buf.len() < 8 {
                return None;
            }
            let len = be32(&self.buf[0..4]) as usize;
            let code = be32(&self.buf[4..8]);
            if !(8..=MAX_MESSAGE).contains(&len) {
                self.resync = true;
                return None;
            }
            if self.buf.len() < len {
                return None;
            }
            let body: Vec<u8> = self.buf.drain(..len).skip(8).collect();
            return Some(match code {
                SSL_REQUEST | GSSENC_REQUEST => Frontend::EncryptionRequest,
                CANCEL_REQUEST => Frontend::Cancel,
                PROTOCOL_3 => {
                    self.started = true;
                    Frontend::Startup(startup_params(&body))
                }
                _ => Frontend::Other(0),
            });
        }
        if self.buf.len() < 5 {
            return None;
        }
        let tag = self.buf[0];
        let len = be32(&self.buf[1..5]) as usize;
        if len < 4 {
            self.resync = true;
            return None;
        }
        if len + 1 > MAX_MESSAGE {
            // COPY data or a huge bind: skip it by length.
            let available = self.buf.len().min(len + 1);
            self.buf.drain(..available);
            self.skipping = len + 1 - available;
            return Some(Frontend::Other(tag));
        }
        if self.buf.len() < len + 1 {
            return None;
        }
        let body: Vec<u8> = self.buf.drain(..len + 1).skip(5).collect();
        Some(parse(tag, &body))
    }
}

fn parse(tag: u8, body: &[u8]) -> Frontend {
    let mut cursor = Cursor { body, at: 0 };
    match tag {
        b'Q' => Frontend::Query(cursor.cstr().unwrap_or_default()),
        b'P' => {
            let name = cursor.cstr().unwrap_or_default();
            Frontend::Parse {
                name,
                query: cursor.cstr().unwrap_or_default(),
            }
        }
        b'B' => bind(&mut cursor).unwrap_or(Frontend::Other(tag)),
        b'E' => Frontend::Execute {
            portal: cursor.cstr().unwrap_or_default(),
        },
        b'S' => Frontend::Sync,
        b'X' => Frontend::Terminate,
        b'p' => Frontend::Secret,
        other => Frontend::Other(other),
    }
}

fn bind(cursor: &mut Cursor<'_>) -> Option<Frontend> {
    let portal = cursor.cstr()?;
    let statement = cursor.cstr()?;
    let formats: Vec<u16> = (0..cursor.u16()?)
        .map(|_| cursor.u16())
        .collect::<Option<_>>()?;
    let count = cursor.u16()? as usize;
    let mut params = Vec::with_capacity(count);
    for i in 0..count {
        let len = cursor.u32()? as i32;
        let format = match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => *formats.get(i)?,
        };
        if len < 0 {
            params.push(None);
            continue;
        }
        let bytes = cursor.take(len as usize)?;
        params.push((format == 0).then(|| String::from_utf8_lossy(bytes).into_owned()));
    }
    Some(Frontend::Bind {
        portal,
        statement,
        params,
    })
}

struct Cursor<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn cstr(&mut self) -> Option<String> {
        let end = self.body[self.at..].iter().position(|b| *b == 0)?;
        let s = String::from_utf8_lossy(&self.body[self.at..self.at + end]).into_owned();
        self.at += end + 1;
        Some(s)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.body.get(self.at..self.at + n)?;
        self.at += n;
        Some(bytes)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(be32)
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn startup_params(body: &[u8]) -> BTreeMap<String, String> {
    let mut cursor = Cursor { body, at: 0 };
    let mut params = BTreeMap::new();
    while let Some(key) = cursor.cstr().filter(|k| !k.is_empty()) {
        let value = cursor.cstr().unwrap_or_default();
        // Startup never carries a password, but be explicit about what we keep.
        if !key.to_ascii_lowercase().contains("pass") {
            params.insert(key, value);
        }
    }
    params
}

/// Whether `buf` starts with a startup message (a protocol-3 startup or an SSL request).
pub fn is_startup(buf: &[u8]) -> Option<bool> {
    if buf.len() < 8 {
        return None;
    }
    let len = be32(&buf[0..4]) as usize;
    let code = be32(&buf[4..8]);
    Some(
        (code == PROTOCOL_3 && (9..=10_000).contains(&len))
            || ((code == SSL_REQUEST || code == GSSENC_REQUEST) && len == 8),
    )
}

/// Mid-stream: where messages begin. At the start of the bytes, a chain of whole frontend
/// messages that ends exactly where the bytes do (a read usually begins at a message);
/// anywhere, a simple query or Parse message whose length ends at a NUL, or a Sync.
pub fn find_message_start(buf: &[u8]) -> Option<usize> {
    if is_message_chain(buf) {
        return Some(0);
    }
    (0..buf.len()).find(|&at| is_message_start(&buf[at..]))
}

/// Type bytes of the frontend messages a client sends after its startup.
const FRONTEND_TYPES: &[u8] = b"BCDEFHPQSXcdfp";

/// Whole frontend messages back to back to the end of `buf` (see `whole_messages`), at
/// least one of which names work (Query, Parse, Bind, Execute).
pub fn is_message_chain(buf: &[u8]) -> bool {
    let mut work = false;
    let whole = super::whole_messages(buf, FRONTEND_TYPES, |tag| {
        work |= matches!(tag, b'Q' | b'P' | b'B' | b'E')
    });
    whole.is_some() && work
}

pub fn is_message_start(buf: &[u8]) -> bool {
    if buf.len() < 5 {
        return false;
    }
    let len = be32(&buf[1..5]) as usize;
    match buf[0] {
        b'S' => len == 4,
        b'Q' | b'P' => (6..4096).contains(&len) && buf.len() > len && buf[len] == 0,
        _ => false,
    }
}
