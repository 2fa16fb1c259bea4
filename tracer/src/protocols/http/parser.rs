//! One direction of an HTTP/1.x connection: heads parsed with `httparse`, bodies framed by
//! Content-Length, chunked encoding or connection close, with resynchronisation at the
//! next request or status line after garbage or a gap.
use std::{borrow::Cow, mem::MaybeUninit};

use httparse::Status;

use super::headers::Headers;

/// Heads larger than this are treated as garbage.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Requests,
    Responses,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// Request method, or empty for responses (the standard ones without an allocation).
    pub method: Cow<'static, str>,
    /// Request target, or empty for responses.
    pub target: String,
    /// Response status, or 0 for requests.
    pub status: u16,
    pub version: u8,
    /// Request header fields, names lower-cased, in order. Empty for responses: of their
    /// fields only the framing is read (`body`), and keeping them was two allocations per
    /// response.
    pub headers: Headers,
    /// What the fields say about the body's framing.
    pub body: BodyFields,
}

/// A request method as text: a standard method borrows its name, another is copied.
fn method_text(method: &str) -> Cow<'static, str> {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
    ];
    match STANDARD.iter().find(|m| **m == method) {
        Some(m) => Cow::Borrowed(m),
        None => Cow::Owned(method.to_owned()),
    }
}

/// What a head's fields say about how its body is framed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BodyFields {
    /// The first `transfer-encoding` field names `chunked` (any case).
    pub chunked: bool,
    /// The first `content-length` field, when it is a number.
    pub length: Option<u64>,
}

impl BodyFields {
    fn of(fields: &[httparse::Header<'_>]) -> Self {
        let first = |name: &str| {
            fields
                .iter()
                .find(|f| f.name.eq_ignore_ascii_case(name))
                .map(|f| f.value)
        };
        Self {
            chunked: first("transfer-encoding").is_some_and(|value| {
                value
                    .windows(b"chunked".len())
                    .any(|w| w.eq_ignore_ascii_case(b"chunked"))
            }),
            length: first("content-length")
                .and_then(|value| std::str::from_utf8(value).ok())
                .and_then(|value| value.trim().parse().ok()),
        }
    }
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// How the body after a head is framed (decided by the session for responses, which
/// depend on the request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
    /// The connection stops being HTTP (101 Switching Protocols, CONNECT).
    Tunnel,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Head {
        head: Head,
        ktime_ns: u64,
        tid: u32,
    },
    /// The message whose head came last is complete.
    Complete {
        body_len: u64,
        body_prefix: Vec<u8>,
        ktime_ns: u64,
        lossy: bool,
    },
    /// Bytes dropped while looking for the next message.
    Skipped {
        bytes: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    /// A head was parsed; waiting for `set_framing`.
    AwaitFraming,
    Body(u64),
    Chunked(Chunk),
    UntilClose,
    Tunnel,
}

pub struct Parser {
    side: Side,
    state: State,
    buf: Vec<u8>,
    prefix_limit: usize,
    body_len: u64,
    body_prefix: Vec<u8>,
    lossy: bool,
    /// Time and thread of the push that brought the first byte of the current head.
    head_ktime_ns: u64,
    head_tid: u32,
    last_ktime_ns: u64,
    /// After garbage or a gap: drop bytes until a plausible start line.
    resync: bool,
    skipped: u64,
}

impl Parser {
    pub fn new(side: Side, prefix_limit: usize, mid_stream: bool) -> Self {
        Self {
            side,
            state: State::Head,
            buf: Vec::new(),
            prefix_limit,
            body_len: 0,
            body_prefix: Vec::new(),
            lossy: false,
            head_ktime_ns: 0,
            head_tid: 0,
            last_ktime_ns: 0,
            resync: mid_stream,
            skipped: 0,
        }
    }

    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    pub fn push(&mut self, data: &[u8], ktime_ns: u64, tid: u32) {
        if self.state == State::Tunnel {
            return;
        }
        if self.state == State::Head && self.buf.is_empty() {
            self.head_ktime_ns = ktime_ns;
            self.head_tid = tid;
        }
        self.last_ktime_ns = ktime_ns;
        self.buf.extend_from_slice(data);
    }

    /// `length` bytes are missing at the current position.
    pub fn gap(&mut self, length: u64, ktime_ns: u64) -> Option<Event> {
        self.last_ktime_ns = ktime_ns;
        match self.state {
            // The body length is known, so its bytes can be counted even if not seen.
            State::Body(remaining) if self.buf.is_empty() => {
                let skip = remaining.min(length);
                self.body_len += skip;
                self.lossy = true;
                self.state = State::Body(remaining - skip);
                if length > skip {
                    // The gap runs past this message: the next head is lost too.
                    let done = self.complete();
                    self.resync = true;
                    return Some(done);
                }
                None
            }
            State::UntilClose | State::Tunnel => {
                self.body_len += length;
                self.lossy = true;
                None
            }
            _ => {
                // Inside a head or chunk framing: we can no longer trust our position.
                let was_in_message = !matches!(self.state, State::Head) || !self.buf.is_empty();
                self.skipped += self.buf.len() as u64;
                self.buf.clear();
                self.resync = true;
                let done = (was_in_message && self.state != State::Head).then(|| {
                    self.lossy = true;
                    self.complete()
                });
                self.state = State::Head;
                done
            }
        }
    }

    /// The stream ended. A body framed by connection close is complete now.
    pub fn eof(&mut self) -> Option<Event> {
        match self.state {
            State::UntilClose => Some(self.complete()),
            _ => None,
        }
    }

    /// Decides how the body after the last `Head` is framed.
    pub fn set_framing(&mut self, framing: Framing) {
        self.state = match framing {
            Framing::None | Framing::Length(0) => State::Body(0),
            Framing::Length(n) => State::Body(n),
            Framing::Chunked => State::Chunked(Chunk::Size),
            Framing::UntilClose => State::UntilClose,
            Framing::Tunnel => State::Tunnel,
        };
    }

    /// The next event from the buffered bytes, if any.
    pub fn next(&mut self) -> Option<Event> {
        loop {
            match self.state {
                State::AwaitFraming | State::Tunnel => return None,
                State::Head => {
                    if self.resync {
                        let skipped = self.resynchronise()?;
                        if skipped > 0 {
                            return Some(Event::Skipped { bytes: skipped });
                        }
                        continue;
                    }
                    return self.parse_head();
                }
                State::Body(0) => return Some(self.complete()),
                State::Body(remaining) => {
                    if self.buf.is_empty() {
                        return None;
                    }
                    let take = (remaining as usize).min(self.buf.len());
                    self.consume_body(take);
                    self.state = State::Body(remaining - take as u64);
                }
                State::UntilClose => {
                    let take = self.buf.len();
                    self.consume_body(take);
                    return None;
                }
                State::Chunked(chunk) => {
                    if let Some(event) = self.step_chunked(chunk) {
                        return event;
                    }
                }
            }
        }
    }

    fn parse_head(&mut self) -> Option<Event> {
        if self.buf.is_empty() {
            return None;
        }
        // Uninitialised: httparse writes the fields it finds (an initialised array was a
        // 4 KiB fill per head).
        let mut storage = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let config = httparse::ParserConfig::default();
        let parsed: Result<Option<(usize, Head)>, httparse::Error> = match self.side {
            Side::Requests => {
                let mut req = httparse::Request::new(&mut []);
                config
                    .parse_request_with_uninit_headers(&mut req, &self.buf, &mut storage)
                    .map(|status| match status {
                        Status::Complete(n) => Some((
                            n,
                            Head {
                                method: method_text(req.method.unwrap_or_default()),
                                target: req.path.unwrap_or_default().to_owned(),
                                status: 0,
                                version: req.version.unwrap_or(1),
                                headers: Headers::from_parsed(req.headers),
                                body: BodyFields::of(req.headers),
                            },
                        )),
                        Status::Partial => None,
                    })
            }
            Side::Responses => {
                let mut res = httparse::Response::new(&mut []);
                config
                    .parse_response_with_uninit_headers(&mut res, &self.buf, &mut storage)
                    .map(|status| match status {
                        Status::Complete(n) => Some((
                            n,
                            Head {
                                method: Cow::Borrowed(""),
                                target: String::new(),
                                status: res.code.unwrap_or(0),
                                version: res.version.unwrap_or(1),
                                headers: Headers::default(),
                                body: BodyFields::of(res.headers),
                            },
                        )),
                        Status::Partial => None,
                    })
            }
        };
        match parsed {
            Ok(Some((consumed, head))) => {
                self.buf.drain(..consumed);
                self.state = State::AwaitFraming;
                self.body_len = 0;
                self.body_prefix.clear();
                self.lossy = false;
                Some(Event::Head {
                    head,
                    ktime_ns: self.head_ktime_ns,
                    tid: self.head_tid,
                })
            }
            Ok(None) if self.buf.len() <= MAX_HEAD => None,
            _ => {
                // Garbage (or an absurd head): skip at least one byte and look again.
                self.resync = true;
                let skipped = self.drop_front(1);
                Some(Event::Skipped {
                    bytes: skipped + self.resynchronise().unwrap_or(0),
                })
            }
        }
    }

    /// Drops bytes up to the next plausible start line. None if more bytes are needed.
    fn resynchronise(&mut self) -> Option<u64> {
        match find_start_line(&self.buf, self.side) {
            Some(at) => {
                self.resync = false;
                let skipped = self.drop_front(at);
                self.head_ktime_ns = self.last_ktime_ns;
                Some(skipped)
            }
            None => {
                // Keep a tail that may hold the beginning of a start line.
                let keep = self.buf.len().min(MAX_HEAD);
                let drop = self.buf.len() - keep;
                let tail_start = self.buf[drop..]
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(drop, |p| drop + p + 1);
                let skipped = self.drop_front(tail_start);
                if skipped > 0 {
                    Some(skipped)
                } else {
                    None
                }
            }
        }
    }

    fn drop_front(&mut self, n: usize) -> u64 {
        let n = n.min(self.buf.len());
        self.buf.drain(..n);
        self.skipped += n as u64;
        n as u64
    }

    fn consume_body(&mut self, n: usize) {
        let room = self.prefix_limit.saturating_sub(self.body_prefix.len());
        self.body_prefix.extend_from_slice(&self.buf[..n.min(room)]);
        self.body_len += n as u64;
        self.buf.drain(..n);
    }

    fn complete(&mut self) -> Event {
        self.state = State::Head;
        self.head_ktime_ns = self.last_ktime_ns;
        Event::Complete {
            body_len: self.body_len,
            body_prefix: std::mem::take(&mut self.body_prefix),
            ktime_ns: self.last_ktime_ns,
            lossy: self.lossy,
        }
    }

    /// One step of chunked decoding. `Some(event)` ends `next()` with that event.
    fn step_chunked(&mut self, chunk: Chunk) -> Option<Option<Event>> {
        match chunk {
            Chunk::Size => match httparse::parse_chunk_size(&self.buf) {
                Ok(Status::Complete((consumed, 0))) => {
                    self.buf.drain(..consumed);
                    self.state = State::Chunked(Chunk::Trailers);
                    None
                }
                Ok(Status::Complete((consumed, size))) => {
                    self.buf.drain(..consumed);
                    self.state = State::Chunked(Chunk::Data(size));
                    None
                }
                Ok(Status::Partial) if self.buf.len() < 1024 => Some(None),
                _ => Some(self.framing_lost()),
            },
            Chunk::Data(0) => {
                self.state = State::Chunked(Chunk::DataEnd);
                None
            }
            Chunk::Data(remaining) => {
                if self.buf.is_empty() {
                    return Some(None);
                }
                let take = (remaining as usize).min(self.buf.len());
                self.consume_body(take);
                self.state = State::Chunked(Chunk::Data(remaining - take as u64));
                None
            }
            Chunk::DataEnd => {
                if self.buf.len() < 2 {
                    return Some(None);
                }
                if &self.buf[..2] != b"\r\n" {
                    return Some(self.framing_lost());
                }
                self.buf.drain(..2);
                self.state = State::Chunked(Chunk::Size);
                None
            }
            Chunk::Trailers => {
                // Trailer lines end with an empty line; the common case is just "\r\n".
                match find(&self.buf, b"\r\n") {
                    Some(0) => {
                        self.buf.drain(..2);
                        Some(Some(self.complete()))
                    }
                    Some(end) => {
                        self.buf.drain(..end + 2);
                        None
                    }
                    None if self.buf.len() > MAX_HEAD => Some(self.framing_lost()),
                    None => Some(None),
                }
            }
        }
    }

    /// Chunk framing is broken: finish the message as lossy and look for the next one.
    fn framing_lost(&mut self) -> Option<Event> {
        self.lossy = true;
        self.resync = true;
        Some(self.complete())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"PATCH ",
    b"OPTIONS ",
    b"CONNECT ",
    b"TRACE ",
];

/// Whether `line` (bytes from a line start) begins like a request or status line.
pub fn looks_like_start(line: &[u8], side: Side) -> bool {
    match side {
        Side::Requests => METHODS.iter().any(|m| line.starts_with(m)),
        Side::Responses => {
            line.starts_with(b"HTTP/1.")
                && line.len() >= 12
                && line[9..12].iter().all(u8::is_ascii_digit)
        }
    }
}

/// Offset of the first line start in `buf` that looks like a start line and whose line is
/// complete enough to judge (request lines must end in ` HTTP/1.x`).
pub fn find_start_line(buf: &[u8], side: Side) -> Option<usize> {
    let mut at = 0;
    while at < buf.len() {
        let line_end = buf[at..].iter().position(|b| *b == b'\n').map(|p| at + p);
        let line = &buf[at..line_end.unwrap_or(buf.len())];
        let plausible = match side {
            Side::Requests => {
                let line = line.trim_ascii_end();
                looks_like_start(line, side)
                    && line_end.is_some()
                    && (line.ends_with(b"HTTP/1.1") || line.ends_with(b"HTTP/1.0"))
            }
            Side::Responses => looks_like_start(line, side),
        };
        if plausible {
            return Some(at);
        }
        match line_end {
            Some(end) => at = end + 1,
            None => return None,
        }
    }
    None
}

#[cfg(test)]
mod head_fields {
    use std::borrow::Cow;

    use super::{method_text, BodyFields};

    #[test]
    fn standard_methods_are_borrowed_and_others_copied_as_sent() {
        assert!(matches!(method_text("GET"), Cow::Borrowed("GET")));
        assert!(matches!(method_text("OPTIONS"), Cow::Borrowed("OPTIONS")));
        assert!(matches!(method_text("PROPFIND"), Cow::Owned(m) if m == "PROPFIND"));
        assert!(matches!(method_text("get"), Cow::Owned(m) if m == "get"));
    }

    fn of(fields: &[(&str, &[u8])]) -> BodyFields {
        let fields: Vec<httparse::Header<'_>> = fields
            .iter()
            .map(|&(name, value)| httparse::Header { name, value })
            .collect();
        BodyFields::of(&fields)
    }

    #[test]
    fn framing_is_read_from_the_first_field_of_each_name_in_any_case() {
        assert_eq!(of(&[]), BodyFields::default());
        let chunked = of(&[("Transfer-Encoding", b"gzip, Chunked")]);
        assert!(chunked.chunked);
        assert_eq!(chunked.length, None);
        let length = of(&[("Host", b"a"), ("CONTENT-LENGTH", b" 42 ")]);
        assert_eq!((length.chunked, length.length), (false, Some(42)));
        // The first content-length decides, even when it is not a number.
        assert_eq!(
            of(&[("content-length", b"x"), ("content-length", b"7")]).length,
            None
        );
        assert_eq!(of(&[("content-length", b"\xff1")]).length, None);
        assert!(!of(&[("transfer-encoding", b"gzip")]).chunked);
        assert!(!of(&[("x-transfer-encoding", b"chunked")]).chunked);
    }
}
