// Feeds one protocol session a stream cut by the input itself. The first byte picks the
// protocol (its index among the registry's names sorted), the second says role (bit 0) and
// mid-stream (bit 1); then each step starts with a control byte: bit 7 = direction, bit 6 =
// a gap instead of bytes, bits 0-5 = length (bytes or gap) of the step. Any input must leave
// the session alive: no panic, no unbounded memory.
use tracer::{
    capture::{Direction, Role},
    protocols::{SessionContext, SessionOptions, PROTOCOLS},
};

pub fn run(data: &[u8]) {
    let [selector, first, rest @ ..] = data else {
        return;
    };
    let (first, mut rest) = (*first, rest);
    let mut protocols: Vec<_> = PROTOCOLS.iter().collect();
    protocols.sort_by_key(|p| p.name());
    let protocol = protocols[*selector as usize % protocols.len()];
    let role = if first & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let context = SessionContext::new(role, Direction::Ingress, first & 2 != 0);
    let mut session = protocol.session(context, &SessionOptions::default());
    let mut out = Vec::new();
    let mut ktime = 1_000u64;
    while let Some((&control, tail)) = rest.split_first() {
        let direction = if control & 0x80 == 0 {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let length = (control & 0x3f) as usize + 1;
        ktime += 1_000;
        if control & 0x40 != 0 {
            session.gap(direction, length as u64 * 977, ktime, &mut out);
            rest = tail;
        } else {
            let take = length.min(tail.len());
            session.feed(direction, &tail[..take], ktime, 1, &mut out);
            rest = &tail[take..];
        }
        out.clear();
    }
    session.close(ktime + 1, &mut out);
    let _ = session.bytes_skipped();
}
