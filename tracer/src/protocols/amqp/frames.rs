//! One direction of an AMQP 0-9-1 connection as frames, parsed with `amq-protocol`.
//! Frames split across reads are reassembled; after garbage or a gap the reader looks for
//! the next position that is strictly a frame (known type, frame end 0xCE where the size
//! says, and for method frames a known class and method).
use amq_protocol::frame::{parsing::parse_frame, AMQPFrame};

/// Largest frame we buffer (RabbitMQ's default frame_max is 128 KiB).
const MAX_FRAME: usize = 1 << 20;
const FRAME_END: u8 = 0xCE;
const FRAME_BODY: u8 = 3;
const PROTOCOL_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";

pub struct FrameReader {
    /// Bytes read; those before `start` are consumed. Frames are taken by moving `start`,
    /// not by moving the rest of the buffer to its front after each one (a read holding
    /// many frames, a publisher's burst, cost that move per frame).
    buf: Vec<u8>,
    start: usize,
    resync: bool,
    /// Inside a body frame: (channel, payload bytes still to come). Body payload is handed
    /// on as it arrives, so a frame larger than what was captured still counts exactly.
    body: Option<(u16, u64)>,
    skipped: u64,
    /// Time of the push holding the start of the buffered bytes.
    first_ktime_ns: u64,
    last_ktime_ns: u64,
    tid: u32,
}

/// A frame and when its first bytes were seen.
pub struct TimedFrame {
    pub frame: AMQPFrame,
    pub ktime_ns: u64,
    pub tid: u32,
}

/// What the reader yields: whole frames, or body payload as it streams in.
pub enum Read {
    Frame(Box<TimedFrame>),
    Body {
        channel: u16,
        bytes: Vec<u8>,
        ktime_ns: u64,
    },
}

/// What a gap did to the stream.
pub enum GapOutcome {
    /// It fell inside a body frame: `bytes` of that channel's body were not seen.
    BodySkipped { channel: u16, bytes: u64 },
    /// Frame boundaries were lost; the reader looks for the next frame.
    Lost,
}

impl FrameReader {
    pub fn new(mid_stream: bool) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            resync: mid_stream,
            body: None,
            skipped: 0,
            first_ktime_ns: 0,
            last_ktime_ns: 0,
            tid: 0,
        }
    }

    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    pub fn push(&mut self, bytes: &[u8], ktime_ns: u64, tid: u32) {
        if self.pending().is_empty() {
            self.first_ktime_ns = ktime_ns;
        }
        self.last_ktime_ns = ktime_ns;
        self.tid = tid;
        // What is left of earlier reads (the start of a frame, at most) moves once.
        self.buf.drain(..self.start);
        self.start = 0;
        self.buf.extend_from_slice(bytes);
    }

    /// The bytes not consumed yet.
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// `length` bytes are missing at the current position.
    pub fn gap(&mut self, length: u64) -> GapOutcome {
        if let (Some((channel, remaining)), true) = (self.body, self.pending().is_empty()) {
            if length <= remaining {
                self.body = Some((channel, remaining - length));
                return GapOutcome::BodySkipped {
                    channel,
                    bytes: length,
                };
            }
            if length == remaining + 1 {
                // The rest of the payload and the frame end: the next frame starts here.
                self.body = None;
                return GapOutcome::BodySkipped {
                    channel,
                    bytes: remaining,
                };
            }
        }
        self.skipped += self.pending().len() as u64;
        self.buf.clear();
        self.start = 0;
        self.body = None;
        self.resync = true;
        GapOutcome::Lost
    }

    pub fn next(&mut self) -> Option<Read> {
        loop {
            if let Some((channel, remaining)) = self.body {
                if remaining > 0 {
                    if self.pending().is_empty() {
                        return None;
                    }
                    let take = (remaining as usize).min(self.pending().len());
                    let bytes = self.pending()[..take].to_vec();
                    self.consume(take);
                    self.body = Some((channel, remaining - take as u64));
                    return Some(Read::Body {
                        channel,
                        bytes,
                        ktime_ns: self.first_ktime_ns,
                    });
                }
                if self.pending().is_empty() {
                    return None;
                }
                self.body = None;
                if self.pending()[0] != FRAME_END {
                    self.resync = true;
                    continue;
                }
                self.consume(1);
                self.first_ktime_ns = self.last_ktime_ns;
                continue;
            }
            if self.resync {
                match scan(self.pending()) {
                    Scan::Frame(at) => {
                        self.drop_front(at);
                        self.resync = false;
                    }
                    Scan::Maybe(at) => {
                        self.drop_front(at);
                        return None;
                    }
                    Scan::Nothing => {
                        // Keep a tail that may be the start of a frame header.
                        self.drop_front(self.pending().len().saturating_sub(7));
                        return None;
                    }
                }
            }
            if self.pending().starts_with(PROTOCOL_HEADER) {
                let frame = parse_frame(&self.pending()[..PROTOCOL_HEADER.len()])
                    .ok()
                    .map(|(_, f)| f);
                self.consume(PROTOCOL_HEADER.len());
                if let Some(frame) = frame {
                    return Some(Read::Frame(Box::new(self.timed(frame))));
                }
                continue;
            }
            let size = frame_size(self.pending())?;
            let header = self.pending();
            if header[0] == FRAME_BODY && size <= MAX_FRAME {
                let channel = u16::from_be_bytes([header[1], header[2]]);
                self.consume(7);
                self.body = Some((channel, (size - 8) as u64));
                continue;
            }
            if size > MAX_FRAME {
                self.drop_front(1);
                self.resync = true;
                continue;
            }
            if self.pending().len() < size {
                return None;
            }
            match parse_frame(&self.pending()[..size]) {
                Ok((_, frame)) => {
                    self.consume(size);
                    let timed = self.timed(frame);
                    self.first_ktime_ns = self.last_ktime_ns;
                    return Some(Read::Frame(Box::new(timed)));
                }
                Err(_) => {
                    // Not a frame we understand: skip a byte and look for the next one.
                    self.drop_front(1);
                    self.resync = true;
                }
            }
        }
    }

    fn timed(&self, frame: AMQPFrame) -> TimedFrame {
        TimedFrame {
            frame,
            ktime_ns: self.first_ktime_ns,
            tid: self.tid,
        }
    }

    fn drop_front(&mut self, n: usize) {
        let n = n.min(self.pending().len());
        self.consume(n);
        self.skipped += n as u64;
    }
}

/// Total size of the frame at the start of `buf` (header 7 + payload + end 1), if its
/// header is complete.
fn frame_size(buf: &[u8]) -> Option<usize> {
    if buf.len() < 7 {
        return None;
    }
    let payload = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    Some(7 + payload + 1)
}

/// Whether `buf` starts with something that is strictly an AMQP frame (or the protocol
/// header). `None` when more bytes are needed to tell.
pub fn is_frame_start(buf: &[u8]) -> Option<bool> {
    if buf.is_empty() {
        return None;
    }
    if buf[0] == b'A' {
        let n = buf.len().min(PROTOCOL_HEADER.len());
        return if buf[..n] == PROTOCOL_HEADER[..n] {
            (n == PROTOCOL_HEADER.len()).then_some(true)
        } else {
            Some(false)
        };
    }
    if ![1u8, 2, 3, 8].contains(&buf[0]) {
        return Some(false);
    }
    let size = frame_size(buf)?;
    if size > MAX_FRAME {
        return Some(false);
    }
    if buf.len() < size {
        // Judge by what we have: a method frame's class/method must be known.
        return if buf[0] == 1 && buf.len() >= 11 && !known_method(&buf[7..11]) {
            Some(false)
        } else {
            None
        };
    }
    if buf[size - 1] != FRAME_END {
        return Some(false);
    }
    match buf[0] {
        1 => Some(size >= 12 && known_method(&buf[7..11])),
        8 => Some(size == 8),
        _ => Some(true),
    }
}

fn known_method(ids: &[u8]) -> bool {
    let class = u16::from_be_bytes([ids[0], ids[1]]);
    let method = u16::from_be_bytes([ids[2], ids[3]]);
    matches!(
        (class, method),
        (10, 10..=61)
            | (20, 10..=41)
            | (40, 10..=51)
            | (50, 10..=51)
            | (60, 10..=120)
            | (85, 10 | 11)
            | (90, 10..=31)
    )
}

enum Scan {
    /// A frame surely starts here.
    Frame(usize),
    /// A frame may start here; more bytes will tell.
    Maybe(usize),
    Nothing,
}

fn scan(buf: &[u8]) -> Scan {
    for at in 0..buf.len() {
        match is_frame_start(&buf[at..]) {
            Some(true) => return Scan::Frame(at),
            None => return Scan::Maybe(at),
            Some(false) => {}
        }
    }
    Scan::Nothing
}
