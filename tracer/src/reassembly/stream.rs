//! The reassembler. Records from different CPUs can arrive out of order and some can be
//! lost; every record carries its stream position, so order is restored by position and
//! anything missing for longer than the reorder window becomes an explicit gap.
use std::collections::BTreeMap;

use foldhash::{HashMap, HashSet};
use serde::Serialize;
use tracer_common::ConnId;

use crate::capture::{DataRecord, Direction};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long (kernel time) a hole may wait for its bytes before it is declared a gap.
    pub reorder_window_ns: u64,
    /// Out-of-order bytes held per stream before the hole is given up.
    pub max_pending_per_stream: usize,
    /// Out-of-order bytes held over all streams.
    pub max_pending_total: usize,
    /// A stream without records for this long is forgotten.
    pub idle_timeout_ns: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            reorder_window_ns: 100_000_000,
            max_pending_per_stream: 4 << 20,
            max_pending_total: 64 << 20,
            idle_timeout_ns: 600_000_000_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The kernel side copied only part of a syscall's bytes (size limits, no-payload mode).
    NotCaptured,
    /// Records were lost (ring buffer full) and did not arrive within the reorder window.
    Lost,
    /// Held back too many out-of-order bytes; the hole was given up early.
    MemoryCap,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    Data {
        conn: ConnId,
        direction: Direction,
        offset: u64,
        bytes: Vec<u8>,
        ktime_ns: u64,
        tid: u32,
    },
    Gap {
        conn: ConnId,
        direction: Direction,
        offset: u64,
        length: u64,
        reason: GapReason,
        ktime_ns: u64,
    },
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ReassemblyStats {
    pub records: u64,
    pub reordered: u64,
    pub duplicates: u64,
    pub gaps_lost: u64,
    pub gap_bytes_lost: u64,
    pub memory_cap_hits: u64,
    pub idle_expired: u64,
    pub pending_bytes: usize,
}

struct Piece {
    length: u64,
    payload: Vec<u8>,
    ktime_ns: u64,
    tid: u32,
}

#[derive(Default)]
struct Stream {
    next: u64,
    pending: BTreeMap<u64, Piece>,
    pending_bytes: usize,
    last_ktime_ns: u64,
}

type StreamKey = (ConnId, Direction);

pub struct Reassembler {
    limits: Limits,
    streams: HashMap<StreamKey, Stream>,
    /// Bytes held out of order in all streams (the sum of their `pending_bytes`), kept as
    /// they change: summing the streams on every record walked every followed connection.
    pending_total: usize,
    /// Streams that held bytes out of order when last seen: `expire` visits these, not
    /// every followed stream (10,000 idle keep-alive connections cost a walk of 20,000
    /// streams at every check). May name streams that have caught up or are gone since.
    holding: HashSet<StreamKey>,
    /// When idle streams were last looked for (kernel time).
    last_idle_sweep_ns: u64,
    stats: ReassemblyStats,
}

impl Reassembler {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            streams: HashMap::default(),
            pending_total: 0,
            holding: HashSet::default(),
            last_idle_sweep_ns: 0,
            stats: ReassemblyStats::default(),
        }
    }

    pub fn stats(&self) -> ReassemblyStats {
        ReassemblyStats {
            pending_bytes: self.pending_total,
            ..self.stats
        }
    }

    /// Adds one record; in-order bytes (and any held records they unblock) go to `out`.
    pub fn push(&mut self, record: DataRecord, out: &mut Vec<StreamEvent>) {
        self.stats.records += 1;
        let key = (record.conn, record.direction);
        let stream = self.streams.entry(key).or_default();
        let held_before = stream.pending_bytes;
        stream.last_ktime_ns = stream.last_ktime_ns.max(record.ktime_ns);
        let mut piece = Piece {
            length: record.length,
            payload: record.payload,
            ktime_ns: record.ktime_ns,
            tid: record.tid,
        };
        let mut position = record.position;
        if position + piece.length <= stream.next {
            self.stats.duplicates += 1;
            return;
        }
        if position < stream.next {
            // Overlaps what we already delivered: keep only the new tail.
            let skip = stream.next - position;
            piece
                .payload
                .drain(..(skip as usize).min(piece.payload.len()));
            piece.length -= skip;
            position = stream.next;
        }
        if position > stream.next {
            self.stats.reordered += 1;
            stream.pending_bytes += piece.payload.len();
            stream.pending.insert(position, piece);
            self.holding.insert(key);
            if stream.pending_bytes > self.limits.max_pending_per_stream {
                self.stats.memory_cap_hits += 1;
                give_up_hole(key, stream, GapReason::MemoryCap, &mut self.stats, out);
            }
        } else {
            deliver(key, stream, position, piece, out);
            drain_contiguous(key, stream, out);
        }
        self.pending_total = self.pending_total + stream.pending_bytes - held_before;
        if self.pending_total > self.limits.max_pending_total {
            self.stats.memory_cap_hits += 1;
            for (key, stream) in self.streams.iter_mut() {
                while !stream.pending.is_empty() {
                    give_up_hole(*key, stream, GapReason::MemoryCap, &mut self.stats, out);
                }
            }
            self.pending_total = 0;
        }
    }

    /// Declares holes older than the reorder window as gaps and forgets idle streams
    /// (looked for every eighth of the idle timeout).
    /// `now_ns` is kernel time.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<StreamEvent>) {
        let window = self.limits.reorder_window_ns;
        let streams = &mut self.streams;
        let (stats, pending_total) = (&mut self.stats, &mut self.pending_total);
        self.holding.retain(|key| {
            let Some(stream) = streams.get_mut(key) else {
                return false;
            };
            let held_before = stream.pending_bytes;
            while let Some((_, oldest)) = stream.pending.first_key_value() {
                if now_ns.saturating_sub(oldest.ktime_ns) < window {
                    break;
                }
                give_up_hole(*key, stream, GapReason::Lost, stats, out);
            }
            *pending_total -= held_before - stream.pending_bytes;
            !stream.pending.is_empty()
        });
        let idle = self.limits.idle_timeout_ns;
        // Forgetting idle streams is a walk of all of them: a few times per idle timeout.
        if now_ns.saturating_sub(self.last_idle_sweep_ns) < idle / 8 {
            return;
        }
        self.last_idle_sweep_ns = now_ns;
        let before = self.streams.len();
        self.streams
            .retain(|_, s| now_ns.saturating_sub(s.last_ktime_ns) < idle || !s.pending.is_empty());
        self.stats.idle_expired += (before - self.streams.len()) as u64;
    }

    /// The connection ended: flush what is held (as gaps where bytes never came) and forget
    /// it. With the kernel's final positions (egress, ingress), bytes lost at the very end
    /// of a stream are reported as a gap too.
    /// Drops a connection's streams without reporting anything: what came so far was
    /// encrypted, and its plaintext starts a new stream at position 0.
    pub fn restart(&mut self, conn: ConnId) {
        for direction in [Direction::Egress, Direction::Ingress] {
            if let Some(stream) = self.streams.remove(&(conn, direction)) {
                self.pending_total -= stream.pending_bytes;
            }
        }
    }

    pub fn close(
        &mut self,
        conn: ConnId,
        final_positions: Option<[u64; 2]>,
        out: &mut Vec<StreamEvent>,
    ) {
        for direction in [Direction::Egress, Direction::Ingress] {
            let key = (conn, direction);
            // A stream whose every record was lost has no entry yet: it starts at 0.
            let mut stream = self.streams.remove(&key).unwrap_or_default();
            self.pending_total -= stream.pending_bytes;
            while !stream.pending.is_empty() {
                give_up_hole(key, &mut stream, GapReason::Lost, &mut self.stats, out);
            }
            let end = final_positions.map_or(0, |p| p[direction.index()]);
            if end > stream.next {
                let length = end - stream.next;
                self.stats.gaps_lost += 1;
                self.stats.gap_bytes_lost += length;
                out.push(StreamEvent::Gap {
                    conn,
                    direction,
                    offset: stream.next,
                    length,
                    reason: GapReason::Lost,
                    ktime_ns: stream.last_ktime_ns,
                });
            }
        }
    }

    /// Streams currently held.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// The running total of held bytes against a walk over every stream (tests).
    #[cfg(test)]
    pub(crate) fn pending_total_is_consistent(&self) -> bool {
        self.pending_total
            == self
                .streams
                .values()
                .map(|s| s.pending_bytes)
                .sum::<usize>()
    }
}

/// Emits a lost-bytes gap up to the first held record, then everything contiguous after it.
fn give_up_hole(
    key: StreamKey,
    stream: &mut Stream,
    reason: GapReason,
    stats: &mut ReassemblyStats,
    out: &mut Vec<StreamEvent>,
) {
    let Some((&position, piece)) = stream.pending.first_key_value() else {
        return;
    };
    let length = position - stream.next;
    stats.gaps_lost += 1;
    stats.gap_bytes_lost += length;
    out.push(StreamEvent::Gap {
        conn: key.0,
        direction: key.1,
        offset: stream.next,
        length,
        reason,
        ktime_ns: piece.ktime_ns,
    });
    stream.next = position;
    drain_contiguous(key, stream, out);
}

fn drain_contiguous(key: StreamKey, stream: &mut Stream, out: &mut Vec<StreamEvent>) {
    while let Some(entry) = stream.pending.first_entry() {
        let position = *entry.key();
        if position > stream.next {
            break;
        }
        let mut piece = entry.remove();
        stream.pending_bytes -= piece.payload.len();
        if position + piece.length <= stream.next {
            continue; // fully covered already
        }
        let skip = stream.next - position;
        piece
            .payload
            .drain(..(skip as usize).min(piece.payload.len()));
        piece.length -= skip;
        deliver(key, stream, stream.next, piece, out);
    }
}

fn deliver(
    key: StreamKey,
    stream: &mut Stream,
    position: u64,
    piece: Piece,
    out: &mut Vec<StreamEvent>,
) {
    let captured = piece.payload.len() as u64;
    if captured > 0 {
        out.push(StreamEvent::Data {
            conn: key.0,
            direction: key.1,
            offset: position,
            bytes: piece.payload,
            ktime_ns: piece.ktime_ns,
            tid: piece.tid,
        });
    }
    if piece.length > captured {
        out.push(StreamEvent::Gap {
            conn: key.0,
            direction: key.1,
            offset: position + captured,
            length: piece.length - captured,
            reason: GapReason::NotCaptured,
            ktime_ns: piece.ktime_ns,
        });
    }
    stream.next = position + piece.length;
}
