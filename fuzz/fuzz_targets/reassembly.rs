#![no_main]
//! The reassembler on records in any order, overlapping, duplicated, lost or late: each
//! 4-byte step is (direction+flags, position/64, length/16, time step).
use libfuzzer_sys::fuzz_target;
use tracer::{
    capture::{DataRecord, Direction},
    reassembly::{Limits, Reassembler},
};
use tracer_common::ConnId;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        reorder_window_ns: 5_000,
        max_pending_per_stream: 64 * 1024,
        max_pending_total: 256 * 1024,
        idle_timeout_ns: 1_000_000,
    };
    let mut reassembler = Reassembler::new(limits);
    let mut out = Vec::new();
    let mut ktime = 0u64;
    for step in data.chunks_exact(4) {
        let conn = ConnId {
            tgid: 1,
            fd: (step[0] & 3) as u32,
            generation: 1,
        };
        let direction = if step[0] & 4 == 0 {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let position = step[1] as u64 * 64;
        let captured = step[2] as usize * 16;
        // Sometimes the record says more was sent than was copied (a gap inside it).
        let length = captured as u64 + if step[0] & 8 != 0 { 4096 } else { 0 };
        ktime += step[3] as u64 * 100;
        if step[0] & 0x10 != 0 {
            reassembler.expire(ktime, &mut out);
        } else if step[0] & 0x20 != 0 {
            let finals = (step[3] & 1 == 0).then_some([position, position + captured as u64]);
            reassembler.close(conn, finals, &mut out);
        } else {
            reassembler.push(
                DataRecord {
                    conn,
                    tid: 1,
                    ktime_ns: ktime,
                    direction,
                    syscall: 0,
                    position,
                    length,
                    payload: vec![0x41; captured],
                },
                &mut out,
            );
        }
        out.clear();
    }
});
