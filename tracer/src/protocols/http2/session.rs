//! One HTTP/2 connection: frames per direction, a header-compression (HPACK) decoder per
//! direction, and each client-initiated stream as one exchange, from its request headers
//! to the end of its response (or its reset).
//!
//! Picked up mid-connection, the HPACK dynamic tables hold entries we never saw. A header
//! block that decodes completely is still right (new entries sit at the same indices at
//! both ends; an index we lack fails the block), so decoding goes on until one block fails;
//! from then on that direction's headers are unknown (an entry of the failed block may be
//! missing from our table, which would shift every later index). Such streams are reported
//! with what is known (timing, sizes, resets) and `tracer.http2.headers_unknown`, never with
//! guessed headers, and counted.
use std::collections::BTreeMap;

use loona_hpack::Decoder;

use super::{
    exchange::{self, Block, Body, Stream},
    frames::{self, FrameHeader, FrameReader, Item},
};
use crate::{
    capture::{Direction, Role},
    protocols::{
        identifiers, ExchangeEvent, ExchangeId, ExchangeKind, ExchangeStart, ProtocolSession,
        SessionContext, SessionOptions,
    },
};

/// A header block longer than this is not decoded (its direction's table is then lost).
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// Streams open at once beyond this are not followed (counted). Servers allow 100–250
/// (SETTINGS_MAX_CONCURRENT_STREAMS); each followed stream holds up to two body prefixes.
const MAX_STREAMS: usize = 512;

/// One direction of the connection.
struct Side {
    frames: FrameReader,
    hpack: Decoder<'static>,
    /// The dynamic table no longer matches the peer's: headers are unknown from here on.
    hpack_lost: bool,
    /// A header block continued in CONTINUATION frames: stream, END_STREAM, fragments.
    block: Option<(u32, bool, Vec<u8>)>,
}

impl Side {
    fn new(preface: bool) -> Self {
        Self {
            frames: FrameReader::new(preface),
            hpack: Decoder::new(),
            hpack_lost: false,
            block: None,
        }
    }

    /// Decodes a complete header block, or says the headers are unknown.
    fn decode(&mut self, block: &[u8], undecodable: &mut u64) -> Block {
        if self.hpack_lost {
            return Block::Unknown;
        }
        let mut headers = Vec::new();
        let decoded = self.hpack.decode_with_cb(block, |name, value| {
            headers.push((
                String::from_utf8_lossy(&name).into_owned(),
                String::from_utf8_lossy(&value).into_owned(),
            ))
        });
        match decoded {
            Ok(()) => Block::Known(headers),
            Err(_) => {
                *undecodable += 1;
                self.hpack_lost = true;
                Block::Unknown
            }
        }
    }
}

#[derive(Default)]
struct Counters {
    header_blocks_undecodable: u64,
    header_blocks_lost: u64,
    streams_headers_unknown: u64,
    streams_reset: u64,
    streams_not_followed: u64,
}

pub struct Http2Session {
    kind: ExchangeKind,
    request_direction: Direction,
    /// [requests (client to server), responses].
    sides: [Side; 2],
    streams: BTreeMap<u32, Stream>,
    options: exchange::Options,
    counters: Counters,
}

/// What a frame means for a stream, in the session's terms.
enum StreamEvent<'a> {
    Headers(Block, bool),
    Data(&'a [u8], usize, bool),
    Reset(u32),
}

impl Http2Session {
    pub fn new(context: SessionContext, options: &SessionOptions) -> Self {
        let request_direction = match context.role {
            Role::Server => Direction::Ingress,
            Role::Client => Direction::Egress,
            Role::Unknown => context.first_direction,
        };
        let kind = ExchangeKind::from_role(if request_direction == Direction::Ingress {
            Role::Server
        } else {
            Role::Client
        });
        Self {
            kind,
            request_direction,
            // The request side starts with the preface unless picked up mid-connection (the
            // reader tells which from the bytes).
            sides: [Side::new(true), Side::new(false)],
            streams: BTreeMap::new(),
            options: exchange::Options {
                body_prefix_bytes: options.body_prefix_bytes,
                route_templates: options.route_templates.clone(),
                scheme: if context.tls { "https" } else { "http" },
            },
            counters: Counters::default(),
        }
    }

    /// Streams open now (tests: a closed session holds none).
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    fn side_of(&self, direction: Direction) -> usize {
        usize::from(direction != self.request_direction)
    }

    fn drain(&mut self, side: usize, ktime_ns: u64, tid: u32, out: &mut Vec<ExchangeEvent>) {
        while let Some(item) = self.sides[side].frames.next() {
            self.item(side, item, ktime_ns, tid, out);
        }
    }

    fn item(
        &mut self,
        side: usize,
        item: Item,
        ktime_ns: u64,
        tid: u32,
        out: &mut Vec<ExchangeEvent>,
    ) {
        match item {
            Item::Frame(header) => {
                let payload = self.sides[side].frames.payload().to_vec();
                self.frame(side, header, &payload, ktime_ns, tid, out);
            }
            Item::DataPiece {
                stream,
                length,
                end_stream,
                last,
            } => {
                let kept = self.sides[side].frames.payload().to_vec();
                let event = StreamEvent::Data(&kept, length, end_stream && last);
                self.stream_event(side, stream, event, ktime_ns, tid, out);
            }
            Item::Skipped(header) => {
                if matches!(
                    header.kind,
                    frames::HEADERS | frames::CONTINUATION | frames::PUSH_PROMISE
                ) {
                    self.lose_headers(side);
                }
            }
            Item::Lost => self.lose_headers(side),
        }
    }

    fn lose_headers(&mut self, side: usize) {
        let side = &mut self.sides[side];
        if !side.hpack_lost {
            self.counters.header_blocks_lost += 1;
        }
        side.hpack_lost = true;
        side.block = None;
    }

    fn frame(
        &mut self,
        side: usize,
        header: FrameHeader,
        payload: &[u8],
        ktime_ns: u64,
        tid: u32,
        out: &mut Vec<ExchangeEvent>,
    ) {
        let end_stream = header.flags & frames::END_STREAM != 0;
        match header.kind {
            frames::HEADERS | frames::PUSH_PROMISE => {
                let Some(fragment) = header_fragment(&header, payload) else {
                    self.lose_headers(side);
                    return;
                };
                let block = (header.stream, end_stream, fragment.to_vec());
                if header.kind == frames::PUSH_PROMISE {
                    // Decoded only to keep the table in step; pushed streams are not followed.
                    self.sides[side].block = Some((0, false, block.2));
                } else {
                    self.sides[side].block = Some(block);
                }
                if header.flags & frames::END_HEADERS != 0 {
                    self.header_block_done(side, ktime_ns, tid, out);
                }
            }
            frames::CONTINUATION => {
                let Some((_, _, fragments)) = &mut self.sides[side].block else {
                    self.lose_headers(side);
                    return;
                };
                fragments.extend_from_slice(payload);
                if fragments.len() > MAX_HEADER_BLOCK {
                    self.lose_headers(side);
                } else if header.flags & frames::END_HEADERS != 0 {
                    self.header_block_done(side, ktime_ns, tid, out);
                }
            }
            frames::DATA => {
                let data = strip_padding(&header, payload).unwrap_or_default();
                let event = StreamEvent::Data(data, data.len(), end_stream);
                self.stream_event(side, header.stream, event, ktime_ns, tid, out);
            }
            frames::RST_STREAM if payload.len() == 4 => {
                let code = u32::from_be_bytes(payload.try_into().unwrap_or_default());
                let event = StreamEvent::Reset(code);
                self.stream_event(side, header.stream, event, ktime_ns, tid, out);
            }
            _ => {} // SETTINGS, PING, GOAWAY, WINDOW_UPDATE, PRIORITY: nothing about streams
        }
    }

    fn header_block_done(
        &mut self,
        side: usize,
        ktime_ns: u64,
        tid: u32,
        out: &mut Vec<ExchangeEvent>,
    ) {
        let Some((stream, end_stream, fragments)) = self.sides[side].block.take() else {
            return;
        };
        let block =
            self.sides[side].decode(&fragments, &mut self.counters.header_blocks_undecodable);
        if stream != 0 {
            let event = StreamEvent::Headers(block, end_stream);
            self.stream_event(side, stream, event, ktime_ns, tid, out);
        }
    }

    fn stream_event(
        &mut self,
        side: usize,
        id: u32,
        event: StreamEvent,
        ktime_ns: u64,
        tid: u32,
        out: &mut Vec<ExchangeEvent>,
    ) {
        if id == 0 || id.is_multiple_of(2) {
            return; // the connection itself, or a pushed stream
        }
        if !self.streams.contains_key(&id) {
            if self.streams.len() >= MAX_STREAMS {
                self.counters.streams_not_followed += 1;
                return;
            }
            let mut stream = Stream::new(ktime_ns, tid);
            let request = match (&event, side) {
                (StreamEvent::Headers(block, _), 0) => Some(block.clone()),
                _ => None, // begun before we looked: its request headers are unknown
            };
            stream.identifiers = match &request {
                Some(Block::Known(headers)) => request_identifiers(headers),
                _ => Vec::new(),
            };
            let traceparent = match &request {
                Some(Block::Known(headers)) => {
                    exchange::header(headers, "traceparent").map(str::to_owned)
                }
                _ => None,
            };
            out.push(ExchangeEvent::Started(ExchangeStart {
                id: ExchangeId::Stream(id),
                kind: self.kind,
                start_ktime_ns: ktime_ns,
                tid,
                traceparent,
                message_out: None,
                message_in: None,
                identifiers: stream.identifiers.clone(),
            }));
            self.streams.insert(id, stream);
            if let (Some(request), StreamEvent::Headers(_, end)) = (request, &event) {
                let stream = self.streams.get_mut(&id).expect("inserted");
                stream.request = Some(request);
                stream.request_ended = *end;
                return;
            }
        }
        let stream = self.streams.get_mut(&id).expect("present");
        let finished = match event {
            StreamEvent::Headers(block, end) if side == 0 => {
                // Request trailers (or a request whose first block we missed).
                stream.request.get_or_insert(block);
                stream.request_ended |= end;
                false
            }
            StreamEvent::Headers(block, end) => {
                let informational = matches!(&block, Block::Known(h) if exchange::status(h).is_some_and(|s| (100..200).contains(&s)));
                if stream.response.is_none() && !informational {
                    stream.response = Some(block);
                } else if stream.response.is_some() {
                    stream.trailers = Some(block);
                }
                end
            }
            StreamEvent::Data(kept, length, end) => {
                let limit = self.options.body_prefix_bytes;
                let body: &mut Body = if side == 0 {
                    stream.request_ended |= end;
                    &mut stream.request_body
                } else {
                    &mut stream.response_body
                };
                body.add(kept, length, limit);
                side == 1 && end
            }
            StreamEvent::Reset(code) => {
                stream.reset = Some((code, side == 0));
                self.counters.streams_reset += 1;
                true
            }
        };
        if finished {
            let stream = self.streams.remove(&id).expect("present");
            self.finish(id, stream, ktime_ns, out);
        }
    }

    fn finish(&mut self, id: u32, stream: Stream, end_ktime_ns: u64, out: &mut Vec<ExchangeEvent>) {
        if !matches!(stream.request, Some(Block::Known(_))) {
            self.counters.streams_headers_unknown += 1;
        }
        let exchange = exchange::build(id, self.kind, stream, end_ktime_ns, &self.options);
        out.push(ExchangeEvent::Finished(exchange));
    }
}

/// A request's evidence for causality: its path and the values of non-standard headers.
fn request_identifiers(headers: &[(String, String)]) -> Vec<identifiers::Identifier> {
    let mut found = Vec::new();
    for (name, value) in headers {
        if name == ":path" || identifiers::header_is_evidence(name) {
            identifiers::collect(value.as_bytes(), &mut found);
        }
    }
    found
}

/// The payload without its padding (PADDED flag).
fn strip_padding<'a>(header: &FrameHeader, payload: &'a [u8]) -> Option<&'a [u8]> {
    if header.flags & frames::PADDED == 0 {
        return Some(payload);
    }
    let (&pad, rest) = payload.split_first()?;
    rest.get(..rest.len().checked_sub(pad as usize)?)
}

/// The header block fragment of a HEADERS or PUSH_PROMISE frame.
fn header_fragment<'a>(header: &FrameHeader, payload: &'a [u8]) -> Option<&'a [u8]> {
    let unpadded = strip_padding(header, payload)?;
    let skip = match header.kind {
        frames::PUSH_PROMISE => 4, // the promised stream id
        _ if header.flags & frames::PRIORITY_FLAG != 0 => 5,
        _ => 0,
    };
    unpadded.get(skip..)
}

impl ProtocolSession for Http2Session {
    fn feed(
        &mut self,
        direction: Direction,
        bytes: &[u8],
        ktime_ns: u64,
        tid: u32,
        out: &mut Vec<ExchangeEvent>,
    ) {
        let side = self.side_of(direction);
        self.sides[side].frames.push(bytes);
        self.drain(side, ktime_ns, tid, out);
    }

    fn gap(
        &mut self,
        direction: Direction,
        length: u64,
        ktime_ns: u64,
        out: &mut Vec<ExchangeEvent>,
    ) {
        let side = self.side_of(direction);
        self.sides[side].frames.prepare_gap(length);
        self.drain(side, ktime_ns, 0, out);
        if let Some(item) = self.sides[side].frames.gap(length) {
            self.item(side, item, ktime_ns, 0, out);
        }
        for stream in self.streams.values_mut() {
            stream.lossy = true;
        }
    }

    fn close(&mut self, ktime_ns: u64, out: &mut Vec<ExchangeEvent>) {
        // Streams still open when the connection closed still happened.
        for (id, stream) in std::mem::take(&mut self.streams) {
            self.finish(id, stream, ktime_ns, out);
        }
    }

    fn bytes_skipped(&self) -> u64 {
        self.sides.iter().map(|s| s.frames.skipped()).sum()
    }

    fn events(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        vec![
            ("header_blocks_undecodable", c.header_blocks_undecodable),
            ("header_blocks_lost", c.header_blocks_lost),
            ("streams_headers_unknown", c.streams_headers_unknown),
            ("streams_reset", c.streams_reset),
            ("streams_not_followed", c.streams_not_followed),
        ]
    }
}
