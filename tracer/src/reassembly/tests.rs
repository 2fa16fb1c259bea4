use tracer_common::ConnId;

use super::*;
use crate::capture::{DataRecord, Direction};

const CONN: ConnId = ConnId {
    tgid: 10,
    fd: 4,
    generation: 1,
};

fn record(position: u64, payload: &[u8], length: u64, ktime_ns: u64) -> DataRecord {
    DataRecord {
        conn: CONN,
        tid: 10,
        ktime_ns,
        direction: Direction::Ingress,
        syscall: 0,
        position,
        length,
        payload: payload.to_vec(),
    }
}

/// Concatenates data and renders gaps as `<gap N>`, to compare whole streams at a glance.
fn render(events: &[StreamEvent]) -> String {
    events
        .iter()
        .map(|e| match e {
            StreamEvent::Data { bytes, .. } => String::from_utf8_lossy(bytes).into_owned(),
            StreamEvent::Gap { length, .. } => format!("<gap {length}>"),
        })
        .collect()
}

#[test]
fn in_order_records_pass_straight_through() {
    let mut r = Reassembler::new(Limits::default());
    let mut out = Vec::new();
    r.push(record(0, b"GET / ", 6, 1), &mut out);
    r.push(record(6, b"HTTP/1.1", 8, 2), &mut out);
    assert_eq!(render(&out), "GET / HTTP/1.1");
}

#[test]
fn records_from_other_cpus_are_put_back_in_order() {
    let mut r = Reassembler::new(Limits::default());
    let mut out = Vec::new();
    r.push(record(5, b"world", 5, 2), &mut out);
    assert!(out.is_empty(), "held until the hole is filled");
    r.push(record(0, b"hello", 5, 1), &mut out);
    assert_eq!(render(&out), "helloworld");
    assert_eq!(r.stats().reordered, 1);
}

#[test]
fn uncaptured_tail_becomes_a_gap_with_exact_length() {
    let mut r = Reassembler::new(Limits::default());
    let mut out = Vec::new();
    r.push(record(0, b"abc", 1000, 1), &mut out);
    r.push(record(1000, b"xyz", 3, 2), &mut out);
    assert_eq!(render(&out), "abc<gap 997>xyz");
    assert!(matches!(
        out[1],
        StreamEvent::Gap {
            reason: GapReason::NotCaptured,
            offset: 3,
            ..
        }
    ));
}

#[test]
fn lost_records_become_a_gap_after_the_reorder_window() {
    let limits = Limits {
        reorder_window_ns: 100,
        ..Limits::default()
    };
    let mut r = Reassembler::new(limits);
    let mut out = Vec::new();
    r.push(record(0, b"aa", 2, 0), &mut out);
    r.push(record(10, b"bb", 2, 50), &mut out);
    r.expire(100, &mut out);
    assert_eq!(render(&out), "aa", "still inside the window");
    r.expire(150, &mut out);
    assert_eq!(render(&out), "aa<gap 8>bb");
    assert!(matches!(
        out[1],
        StreamEvent::Gap {
            reason: GapReason::Lost,
            ..
        }
    ));
    assert_eq!(r.stats().gap_bytes_lost, 8);
}

#[test]
fn duplicates_and_overlaps_are_trimmed() {
    let mut r = Reassembler::new(Limits::default());
    let mut out = Vec::new();
    r.push(record(0, b"abcd", 4, 1), &mut out);
    r.push(record(0, b"abcd", 4, 1), &mut out);
    r.push(record(2, b"cdef", 4, 2), &mut out);
    assert_eq!(render(&out), "abcdef");
    assert_eq!(r.stats().duplicates, 1);
}

#[test]
fn memory_cap_gives_up_the_hole_instead_of_growing() {
    let limits = Limits {
        max_pending_per_stream: 8,
        ..Limits::default()
    };
    let mut r = Reassembler::new(limits);
    let mut out = Vec::new();
    r.push(record(100, b"12345", 5, 1), &mut out);
    r.push(record(105, b"67890", 5, 1), &mut out);
    assert_eq!(render(&out), "<gap 100>1234567890");
    assert_eq!(r.stats().pending_bytes, 0);
    assert_eq!(r.stats().memory_cap_hits, 1);
}

#[test]
fn close_flushes_held_records_and_forgets_the_connection() {
    let mut r = Reassembler::new(Limits::default());
    let mut out = Vec::new();
    r.push(record(4, b"tail", 4, 1), &mut out);
    r.close(CONN, None, &mut out);
    assert_eq!(render(&out), "<gap 4>tail");
    assert!(r.is_empty());
}

#[test]
fn close_reports_bytes_lost_at_the_end_of_a_stream() {
    let mut r = Reassembler::new(Limits::default());
    let mut out = Vec::new();
    r.push(record(0, b"head", 4, 1), &mut out);
    // The kernel saw 10 ingress bytes; the last record never arrived.
    r.close(CONN, Some([0, 10]), &mut out);
    assert_eq!(render(&out), "head<gap 6>");
    assert_eq!(r.stats().gap_bytes_lost, 6);
}

#[test]
fn idle_streams_expire() {
    let limits = Limits {
        idle_timeout_ns: 1_000,
        ..Limits::default()
    };
    let mut r = Reassembler::new(limits);
    let mut out = Vec::new();
    r.push(record(0, b"x", 1, 0), &mut out);
    r.expire(2_000, &mut out);
    assert!(r.is_empty());
    assert_eq!(r.stats().idle_expired, 1);
}

#[test]
fn the_cap_on_all_streams_counts_what_every_connection_holds() {
    let limits = Limits {
        max_pending_total: 12,
        ..Limits::default()
    };
    let mut r = Reassembler::new(limits);
    let mut out = Vec::new();
    let on = |fd: u32, position: u64, payload: &[u8]| DataRecord {
        conn: ConnId { fd, ..CONN },
        ..record(position, payload, payload.len() as u64, 1)
    };
    // Three connections hold 5 bytes each out of order: the third passes the cap of 12.
    r.push(on(4, 10, b"aaaaa"), &mut out);
    r.push(on(5, 10, b"bbbbb"), &mut out);
    assert!(r.pending_total_is_consistent());
    assert_eq!(
        (r.stats().pending_bytes, r.stats().memory_cap_hits),
        (10, 0)
    );
    r.push(on(6, 10, b"ccccc"), &mut out);
    assert_eq!((r.stats().pending_bytes, r.stats().memory_cap_hits), (0, 1));
    let given_up = render(&out);
    for held in ["<gap 10>aaaaa", "<gap 10>bbbbb", "<gap 10>ccccc"] {
        assert!(given_up.contains(held), "{given_up}");
    }
    // Held bytes leave the total wherever they go: delivered, closed, restarted, expired.
    r.push(on(4, 20, b"dd"), &mut out);
    r.push(on(5, 20, b"ee"), &mut out);
    r.push(on(6, 20, b"ff"), &mut out);
    r.push(on(7, 3, b"gg"), &mut out);
    assert_eq!(r.stats().pending_bytes, 8);
    r.push(on(4, 15, b"xxxxx"), &mut out);
    r.close(ConnId { fd: 5, ..CONN }, None, &mut out);
    r.restart(ConnId { fd: 6, ..CONN });
    assert!(r.pending_total_is_consistent());
    assert_eq!(r.stats().pending_bytes, 2);
    r.expire(u64::MAX, &mut out);
    assert!(r.pending_total_is_consistent());
    assert_eq!(r.stats().pending_bytes, 0);
}

#[test]
fn a_stream_that_holds_again_after_catching_up_still_has_its_hole_given_up() {
    let limits = Limits {
        reorder_window_ns: 100,
        ..Limits::default()
    };
    let mut r = Reassembler::new(limits);
    let mut out = Vec::new();
    r.push(record(2, b"b", 1, 0), &mut out);
    r.push(record(0, b"aa", 2, 1), &mut out);
    // Caught up: the next check forgets that it held anything.
    r.expire(10, &mut out);
    assert_eq!(render(&out), "aab");
    // A second hole on the same stream, found by a later check.
    r.push(record(5, b"e", 1, 20), &mut out);
    r.expire(50, &mut out);
    assert_eq!(render(&out), "aab", "still inside the window");
    r.expire(200, &mut out);
    assert_eq!(render(&out), "aab<gap 2>e");
    assert!(r.pending_total_is_consistent());
}

#[test]
fn idle_streams_are_looked_for_a_few_times_per_idle_timeout() {
    let limits = Limits {
        idle_timeout_ns: 800,
        ..Limits::default()
    };
    let mut r = Reassembler::new(limits);
    let mut out = Vec::new();
    r.push(record(0, b"x", 1, 0), &mut out);
    r.expire(750, &mut out); // a sweep (every 100): nothing idle yet
    r.expire(820, &mut out); // idle by now, but the next sweep is not due before 850
    assert_eq!(r.len(), 1);
    r.expire(850, &mut out);
    assert!(r.is_empty());
    assert_eq!(r.stats().idle_expired, 1);
}
