//! HTTP/2 framing (RFC 9113 §4): one direction of a connection cut into frames. Frames up
//! to `MAX_BUFFERED` are handed over whole; longer DATA frames are streamed in pieces (only
//! their size and a body prefix matter); longer frames of other types are skipped.

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADER_LEN: usize = 9;
/// Frames longer than this are not buffered whole (the default maximum is 16 KiB).
const MAX_BUFFERED: usize = 64 * 1024;
/// SETTINGS_MAX_FRAME_SIZE until a peer raises it.
const DEFAULT_MAX_FRAME: u32 = 16_384;

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const PRIORITY: u8 = 2;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PUSH_PROMISE: u8 = 5;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let b: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Self {
            length: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        })
    }

    /// Whether this could be a frame of a well-behaved peer: a known type with only its
    /// own flags, on stream 0 exactly when the type is about the connection, with the
    /// length its type requires. Used to recognise HTTP/2 without its preface.
    pub fn plausible(&self) -> bool {
        let (flags, on_connection, length_ok) = match self.kind {
            DATA => (END_STREAM | PADDED, false, true),
            HEADERS => (
                END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG,
                false,
                true,
            ),
            PRIORITY => (0, false, self.length == 5),
            RST_STREAM => (0, false, self.length == 4),
            SETTINGS => (0x1, true, self.length.is_multiple_of(6)),
            PUSH_PROMISE => (END_HEADERS | PADDED, false, self.length >= 4),
            PING => (0x1, true, self.length == 8),
            GOAWAY => (0, true, self.length >= 8),
            WINDOW_UPDATE => (0, self.stream == 0, self.length == 4),
            CONTINUATION => (END_HEADERS, false, true),
            _ => return false,
        };
        self.flags & !flags == 0 && (self.stream == 0) == on_connection && length_ok
    }
}

impl FrameHeader {
    /// The first frame a server sends on a new connection: SETTINGS (not an ACK), with a
    /// handful of settings at most.
    pub fn is_server_hello(&self) -> bool {
        self.kind == SETTINGS
            && self.flags == 0
            && self.stream == 0
            && self.length.is_multiple_of(6)
            && self.length <= 60
    }
}

/// Whether `bytes` begin with at least `min` plausible frames back to back (the last may be
/// cut off by the end of `bytes`), as the start of a read mid-connection would.
pub fn plausible_frames(bytes: &[u8], min: usize) -> bool {
    let mut at = 0;
    let mut seen = 0;
    while let Some(header) = FrameHeader::parse(&bytes[at..]) {
        // Peers rarely raise the 16 KiB default maximum frame size.
        if !header.plausible() || header.length > DEFAULT_MAX_FRAME {
            return false;
        }
        seen += 1;
        at += HEADER_LEN + header.length as usize;
        if at >= bytes.len() {
            break;
        }
    }
    seen >= min
}

/// What the reader found next.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// A whole frame; its payload is `FrameReader::payload()` until the next call.
    Frame(FrameHeader),
    /// Part of a long DATA frame: `length` payload bytes, the first `payload()` of them kept.
    DataPiece {
        stream: u32,
        length: usize,
        end_stream: bool,
        last: bool,
    },
    /// A long frame of another type was skipped; a header block in it is lost.
    Skipped(FrameHeader),
    /// Bytes were lost where no frame boundary is known: what follows is unreadable until
    /// a read starts with a frame again.
    Lost,
}

/// One direction's frames.
pub struct FrameReader {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed over.
    at: usize,
    /// The client preface still to be skipped.
    preface_left: usize,
    /// A long frame being streamed or skipped: its header and the payload bytes still due.
    long: Option<(FrameHeader, usize)>,
    /// Whether frame boundaries are known.
    synced: bool,
    /// The range of `buf` that `payload()` returns.
    payload: (usize, usize),
    skipped: u64,
}

impl FrameReader {
    /// `preface`: this direction starts with the client connection preface.
    pub fn new(preface: bool) -> Self {
        Self {
            buf: Vec::new(),
            at: 0,
            preface_left: if preface { PREFACE.len() } else { 0 },
            long: None,
            synced: true,
            payload: (0, 0),
            skipped: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.at > 0 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        if !self.synced {
            // A read that starts with frames is where reading resumes.
            if !plausible_frames(bytes, 1) {
                self.skipped += bytes.len() as u64;
                return;
            }
            self.synced = true;
            self.buf.clear();
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Before a gap of `length` bytes: a frame whose header was read and whose end lies
    /// within the gap or at its end is streamed from here (drain `next`, then call `gap`),
    /// so the framing survives a syscall's bytes cut short in the middle of a DATA frame.
    pub fn prepare_gap(&mut self, length: u64) {
        if self.long.is_some() || !self.synced || self.preface_left > 0 {
            return;
        }
        let Some(header) = FrameHeader::parse(&self.buf[self.at..]) else {
            return;
        };
        let have = (self.buf.len() - self.at - HEADER_LEN) as u64;
        if have + length <= u64::from(header.length) {
            self.at += HEADER_LEN;
            self.long = Some((header, header.length as usize));
            if header.kind != DATA {
                self.skipped += u64::from(header.length);
            }
        }
    }

    /// `length` bytes of this direction were not captured (call after draining `next`).
    pub fn gap(&mut self, length: u64) -> Option<Item> {
        let pending = self.buf.len() - self.at;
        if let Some((header, due)) = self.long {
            if pending == 0 && length <= due as u64 {
                // Inside a long frame: its end is known, so the framing survives.
                let due = due - length as usize;
                self.long = (due > 0).then_some((header, due));
                self.payload = (self.at, self.at);
                return if header.kind == DATA {
                    Some(Item::DataPiece {
                        stream: header.stream,
                        length: length as usize,
                        end_stream: header.flags & END_STREAM != 0,
                        last: due == 0,
                    })
                } else {
                    (due == 0).then_some(Item::Skipped(header))
                };
            }
        }
        self.skipped += pending as u64 + length;
        self.buf.clear();
        self.at = 0;
        self.long = None;
        self.preface_left = 0;
        self.synced = false;
        Some(Item::Lost)
    }

    pub fn payload(&self) -> &[u8] {
        &self.buf[self.payload.0..self.payload.1]
    }

    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    pub fn next(&mut self) -> Option<Item> {
        if !self.synced {
            return None;
        }
        if self.preface_left > 0 {
            let pending = &self.buf[self.at..];
            let take = pending.len().min(self.preface_left);
            let offset = PREFACE.len() - self.preface_left;
            if pending[..take] != PREFACE[offset..offset + take] {
                // Not the preface after all (mid-stream): read frames from here.
                self.preface_left = 0;
            } else {
                self.at += take;
                self.preface_left -= take;
                if self.preface_left > 0 {
                    return None;
                }
            }
        }
        if let Some((header, due)) = self.long {
            let take = (self.buf.len() - self.at).min(due);
            if take == 0 {
                return None;
            }
            self.payload = (self.at, self.at + take);
            self.at += take;
            let due = due - take;
            self.long = (due > 0).then_some((header, due));
            return if header.kind == DATA {
                Some(Item::DataPiece {
                    stream: header.stream,
                    length: take,
                    end_stream: header.flags & END_STREAM != 0,
                    last: due == 0,
                })
            } else {
                (due == 0).then_some(Item::Skipped(header))
            };
        }
        let header = FrameHeader::parse(&self.buf[self.at..])?;
        if header.length as usize > MAX_BUFFERED {
            self.at += HEADER_LEN;
            self.long = Some((header, header.length as usize));
            if header.kind != DATA {
                self.skipped += u64::from(header.length);
            }
            return self.next();
        }
        let end = self.at + HEADER_LEN + header.length as usize;
        if self.buf.len() < end {
            return None;
        }
        self.payload = (self.at + HEADER_LEN, end);
        self.at = end;
        Some(Item::Frame(header))
    }
}

/// A frame's bytes (tests build conversations with it).
#[cfg(test)]
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_whole_across_pieces_after_the_preface() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        bytes.extend(frame(DATA, END_STREAM, 1, b"hello"));
        let mut reader = FrameReader::new(true);
        let mut seen = Vec::new();
        for piece in bytes.chunks(5) {
            reader.push(piece);
            while let Some(item) = reader.next() {
                seen.push((item, reader.payload().to_vec()));
            }
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(matches!(
            seen[0].0,
            Item::Frame(FrameHeader { kind: SETTINGS, .. })
        ));
        assert_eq!(seen[1].1, b"hello");
    }

    #[test]
    fn long_data_frames_are_streamed_and_gaps_inside_them_keep_the_framing() {
        let body = vec![b'x'; MAX_BUFFERED + 10];
        let mut bytes = frame(DATA, END_STREAM, 3, &body);
        bytes.extend(frame(PING, 0, 0, &[0; 8]));
        let mut reader = FrameReader::new(false);
        reader.push(&bytes[..1000]);
        let mut total = 0;
        while let Some(item) = reader.next() {
            if let Item::DataPiece { length, .. } = item {
                total += length;
            }
        }
        assert!(matches!(
            reader.gap(5000),
            Some(Item::DataPiece { length: 5000, .. })
        ));
        reader.push(&bytes[6000..]);
        let mut rest = Vec::new();
        while let Some(item) = reader.next() {
            rest.push(item);
        }
        let streamed: usize = rest
            .iter()
            .map(|i| match i {
                Item::DataPiece { length, .. } => *length,
                _ => 0,
            })
            .sum();
        assert_eq!(total + 5000 + streamed, body.len());
        assert!(matches!(
            rest.last(),
            Some(Item::Frame(FrameHeader { kind: PING, .. }))
        ));
    }

    #[test]
    fn a_gap_between_frames_loses_the_framing_until_a_read_starts_with_a_frame() {
        let mut reader = FrameReader::new(false);
        reader.push(&frame(PING, 0, 0, &[0; 8])[..4]);
        assert_eq!(reader.next(), None);
        assert_eq!(reader.gap(100), Some(Item::Lost));
        reader.push(b"garbage that is no frame at all");
        assert_eq!(reader.next(), None);
        reader.push(&frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]));
        assert!(matches!(
            reader.next(),
            Some(Item::Frame(FrameHeader {
                kind: WINDOW_UPDATE,
                ..
            }))
        ));
    }

    #[test]
    fn other_protocols_are_not_frames() {
        for bytes in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"AMQP\x00\x00\x09\x01",
            b"\x01\x00\x01\x00\x00\x00\x0c\x00\x0a\x00\x0b",
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
            b"Q\x00\x00\x00\x0dSELECT 1\x00",
        ] {
            assert!(!plausible_frames(bytes, 1), "{bytes:?}");
        }
        let mut two = frame(SETTINGS, 0, 0, &[]);
        two.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]));
        assert!(plausible_frames(&two, 2));
    }
}

#[cfg(test)]
mod gap_tests {
    use super::*;

    #[test]
    fn a_syscall_cut_short_inside_a_data_frame_keeps_the_framing() {
        let mut bytes = vec![0, 0x40, 0, DATA, 0, 0, 0, 0, 3];
        bytes.extend(vec![b'x'; 0x4000]);
        bytes.extend([0, 0, 8, PING, 0, 0, 0, 0, 0]);
        bytes.extend([0; 8]);
        let mut reader = FrameReader::new(false);
        reader.push(&bytes[..9 + 0x4000 - 72]);
        assert_eq!(reader.next(), None, "the frame is not complete");
        reader.prepare_gap(72);
        let mut lengths = Vec::new();
        while let Some(item) = reader.next() {
            if let Item::DataPiece { length, .. } = item {
                lengths.push(length);
            }
        }
        match reader.gap(72) {
            Some(Item::DataPiece { length, last, .. }) => {
                assert!(last);
                lengths.push(length);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(lengths.iter().sum::<usize>(), 0x4000);
        reader.push(&bytes[9 + 0x4000..]);
        assert!(matches!(
            reader.next(),
            Some(Item::Frame(FrameHeader { kind: PING, .. }))
        ));
    }
}
