//! The data path: at a data syscall's exit, copy exactly the returned byte count from the
//! buffer it was given into at most `MAX_RECORDS_PER_SYSCALL` records, then one gap record.
use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{bpf_loop, bpf_probe_read_user as probe_read_user_raw},
    },
    programs::{RawTracePointContext, TracePointContext},
};
use tracer_common::{
    ConnId, CopyCursor, DataEvent, DataScratch, EventHeader, SockKey, SyscallArgs,
    CONTROL_NO_PAYLOAD, COUNTER_DATA_RECORDS, COUNTER_GAP_RECORDS, COUNTER_RINGBUF_DATA_LOST,
    COUNTER_SCRATCH_BUSY, COUNTER_USER_READ_FAILED, DIR_EGRESS, DIR_INGRESS, EVENT_DATA,
    MAX_IOVECS, MAX_RECORD, MAX_RECORDS_PER_SYSCALL, SCRATCH_MASK, SCRATCH_SLOTS_PER_CPU,
    SCRATCH_SYSCALL, SYS_READ, SYS_READV, SYS_RECVFROM, SYS_RECVMSG, SYS_SENDMSG, SYS_SENDTO,
    SYS_WRITE, SYS_WRITEV,
};

use crate::{
    args::{syscall_ret, SyscallRegs},
    conn::check_socket,
    maps::{count, payload_off, DATA_SCRATCH, EVENTS, SOCKETS},
    select::is_traced,
    tls,
};

const MSG_PEEK: u64 = 2;
/// Data records do not wake the reader: it polls on a timer (a wake-up costs ~1.4 µs).
const BPF_RB_NO_WAKEUP: u64 = 1;
const HEADER: usize = core::mem::size_of::<DataEvent>();

/// Exit of read/write-like syscalls: the only program on the data path. Its arguments
/// come from the registers the thread entered with (arguments 1 and 2 are buffer and
/// length, or iovec array and count; for sendmsg/recvmsg argument 1 is the msghdr), so
/// no program runs at the entry and a call that moved no bytes costs one comparison.
pub fn try_exit_data(ctx: &TracePointContext, syscall: u32, direction: u32) -> Result<u32, u32> {
    let ret = syscall_ret(ctx);
    if ret <= 0 {
        return Ok(0); // EOF, EAGAIN, errors: no bytes moved
    }
    let id = bpf_get_current_pid_tgid();
    if !is_traced((id >> 32) as u32) {
        return Ok(0);
    }
    let Some(regs) = SyscallRegs::current() else {
        return Ok(0);
    };
    exit_data(id, ret, &regs, syscall, direction)
}

/// The same at `raw_syscalls:sys_exit`, which runs for every syscall of the host: one
/// program instead of eight, and no per-syscall trace record built before it runs. Only
/// attached with `--data-hook raw-syscalls` (see the loader): measured, not the default.
pub fn try_exit_any(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let ret: i64 = ctx.arg(1);
    if ret <= 0 {
        return Ok(0);
    }
    let regs: u64 = ctx.arg(0);
    let Some((syscall, direction)) = SyscallRegs::number_at(regs).and_then(data_syscall) else {
        return Ok(0);
    };
    let id = bpf_get_current_pid_tgid();
    if !is_traced((id >> 32) as u32) {
        return Ok(0);
    }
    let Some(regs) = SyscallRegs::native_at(regs) else {
        return Ok(0); // a 32-bit syscall: other numbers (the syscall tracepoints skip them too)
    };
    exit_data(id, ret, &regs, syscall, direction)
}

/// x86-64 numbers of the data syscalls followed.
#[inline(always)]
fn data_syscall(number: u64) -> Option<(u32, u32)> {
    Some(match number {
        0 => (SYS_READ, DIR_INGRESS),
        1 => (SYS_WRITE, DIR_EGRESS),
        19 => (SYS_READV, DIR_INGRESS),
        20 => (SYS_WRITEV, DIR_EGRESS),
        44 => (SYS_SENDTO, DIR_EGRESS),
        45 => (SYS_RECVFROM, DIR_INGRESS),
        46 => (SYS_SENDMSG, DIR_EGRESS),
        47 => (SYS_RECVMSG, DIR_INGRESS),
        _ => return None,
    })
}

#[inline(always)]
fn exit_data(
    id: u64,
    ret: i64,
    regs: &SyscallRegs,
    syscall: u32,
    direction: u32,
) -> Result<u32, u32> {
    let tgid = (id >> 32) as u32;
    let key = SockKey {
        tgid,
        fd: regs.arg(0) as u32,
    };
    let Some(state) = SOCKETS.get_ptr_mut(key) else {
        return Ok(0); // files, pipes, sockets we do not follow
    };
    let flags = match syscall {
        SYS_RECVFROM => regs.arg(3),
        SYS_RECVMSG => regs.arg(2),
        _ => 0,
    };
    if flags & MSG_PEEK != 0 {
        return Ok(0); // peeked bytes are read again later
    }
    let args = SyscallArgs {
        buf: regs.arg(1),
        count: regs.arg(2),
        sk: 0,
        addr: 0,
        fd: key.fd,
        syscall,
        sk_family: 0,
        sk_protocol: 0,
    };
    if !check_socket(id, key, state) {
        return Ok(0);
    }
    let state = unsafe { &mut *state };
    let dir = (direction & 1) as usize;
    let position = state.position[dir];
    state.position[dir] = position + ret as u64;
    if tls::socket_carries_tls(id, key, state, &args) {
        return Ok(0); // encrypted: its plaintext comes from the TLS uprobes
    }
    let conn = ConnId {
        tgid: key.tgid,
        fd: key.fd,
        generation: state.generation,
    };
    if payload_off(key, state, CONTROL_NO_PAYLOAD) {
        return Ok(0);
    }
    emit_records(
        &args,
        conn,
        id,
        direction,
        position,
        ret as u64,
        unsafe { bpf_ktime_get_ns() },
        SCRATCH_SYSCALL,
    );
    Ok(0)
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

/// Volatile accessors: the cursor must live in map memory, not in registers (see CopyCursor).
macro_rules! get {
    ($c:expr, $f:ident) => {
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$c).$f)) }
    };
}
macro_rules! set {
    ($c:expr, $f:ident, $v:expr) => {
        unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!((*$c).$f), $v) }
    };
}

/// Points the cursor at the syscall's bytes: one buffer, or an iovec array (for
/// sendmsg/recvmsg, the one in the msghdr). False if user memory was unreadable.
#[inline(always)]
fn init_cursor(cursor: *mut CopyCursor, args: &SyscallArgs, total: u64) -> bool {
    let (iov, iov_count, base, left) = match args.syscall {
        SYS_READV | SYS_WRITEV => (args.buf, args.count, 0, 0),
        SYS_RECVMSG | SYS_SENDMSG => {
            // struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
            let Ok(iov) = (unsafe { bpf_probe_read_user((args.buf + 16) as *const u64) }) else {
                return false;
            };
            let Ok(n) = (unsafe { bpf_probe_read_user((args.buf + 24) as *const u64) }) else {
                return false;
            };
            (iov, n, 0, 0)
        }
        _ => (0, 0, args.buf, total),
    };
    set!(cursor, iov, iov);
    set!(cursor, iov_count, iov_count);
    set!(cursor, next_iov, 0);
    set!(cursor, base, base);
    set!(cursor, left, left);
    set!(cursor, remaining, total);
    set!(cursor, filled, 0);
    set!(cursor, records, 0);
    true
}

/// Copy steps per syscall: each step copies from one iovec into the current record, so a
/// syscall may touch every walked iovec and still fill `MAX_RECORDS_PER_SYSCALL` records.
const MAX_STEPS: usize = MAX_IOVECS + MAX_RECORDS_PER_SYSCALL;

#[inline(always)]
pub fn emit_records(
    args: &SyscallArgs,
    conn: ConnId,
    id: u64,
    direction: u32,
    position: u64,
    total: u64,
    ktime_ns: u64,
    slot: u32,
) {
    let record = Record {
        ktime_ns,
        conn,
        tid: id as u32,
        direction,
        syscall: args.syscall,
        position,
        buf: args.buf,
    };
    if is_single_buffer(args.syscall) && total <= IN_PLACE_MAX as u64 {
        // Nearly every call: one buffer, one record, copied straight into the ring.
        let n = total as usize;
        // Sizes half apart from 128 on: with the 64-byte header, at most a third of a
        // record's ring space is unused, a sixth on average (one size for all would take
        // 4 KiB for a 100-byte request).
        match n {
            0..=64 => record.output::<64>(n),
            65..=128 => record.output::<128>(n),
            129..=192 => record.output::<192>(n),
            193..=256 => record.output::<256>(n),
            257..=384 => record.output::<384>(n),
            385..=512 => record.output::<512>(n),
            513..=768 => record.output::<768>(n),
            769..=1024 => record.output::<1024>(n),
            1025..=1536 => record.output::<1536>(n),
            1537..=2048 => record.output::<2048>(n),
            2049..=3072 => record.output::<3072>(n),
            _ => record.output::<IN_PLACE_MAX>(n),
        }
        return;
    }
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let index = cpu * SCRATCH_SLOTS_PER_CPU + (slot & 1);
    let Some(scratch) = DATA_SCRATCH.get_ptr_mut(index) else {
        return;
    };
    let owner = unsafe { core::ptr::addr_of_mut!((*scratch).owner) };
    // SAFETY: this CPU's slot; read and written volatile, see `DataScratch::owner`.
    if unsafe { core::ptr::read_volatile(owner) } != 0 {
        count(COUNTER_SCRATCH_BUSY); // a preempted program is building here: skip ours
        return;
    }
    unsafe { core::ptr::write_volatile(owner, id) };
    build_records(index, scratch, args, &record, id, total);
    if unsafe { core::ptr::read_volatile(owner) } == id {
        unsafe { core::ptr::write_volatile(owner, 0) };
    }
}

/// One buffer, not an iovec array (readv/writev) or a msghdr (recvmsg/sendmsg).
#[inline(always)]
fn is_single_buffer(syscall: u32) -> bool {
    !matches!(syscall, SYS_READV | SYS_WRITEV | SYS_RECVMSG | SYS_SENDMSG)
}

/// The largest call copied straight into a ring record; larger ones go through the scratch
/// slot and are sent at their exact size (a size class wastes most ring space there).
const IN_PLACE_MAX: usize = 4096;

/// A record reserved in the ring with room for `N` payload bytes: the verifier needs the
/// size of a reservation up front, so a call's bytes go into the smallest of a few sizes
/// that holds them (the reader takes `captured` bytes). No scratch map, no second copy.
#[repr(C)]
struct InPlace<const N: usize> {
    event: DataEvent,
    payload: [u8; N],
}

/// What a record in place says about its bytes.
struct Record {
    /// When the bytes moved (`bpf_ktime_get_ns()`).
    ktime_ns: u64,
    conn: ConnId,
    tid: u32,
    direction: u32,
    syscall: u32,
    position: u64,
    /// The user buffer the bytes are read from.
    buf: u64,
}

impl Record {
    /// Copies `n` (<= N) bytes from the user buffer into a reserved record and submits it.
    #[inline(always)]
    fn output<const N: usize>(&self, n: usize) {
        let Some(mut entry) = EVENTS.reserve::<InPlace<N>>(0) else {
            count(COUNTER_RINGBUF_DATA_LOST);
            return;
        };
        let record = entry.as_mut_ptr();
        // The mask bounds the copy for the verifier; n <= N <= MAX_RECORD, so it never
        // changes the value.
        let n = n & SCRATCH_MASK;
        let n = if n > N { N } else { n };
        // SAFETY: the entry is reserved for us and as large as an InPlace<N>; every header
        // field is written before it is submitted, the payload up to `n`.
        let ret = unsafe {
            let dst = core::ptr::addr_of_mut!((*record).payload).cast::<u8>();
            probe_read_user_raw(dst as *mut _, n as u32, self.buf as *const _)
        };
        if ret < 0 {
            entry.discard(0);
            count(COUNTER_USER_READ_FAILED);
            return;
        }
        unsafe { (*record).event = self.event(n) };
        entry.submit(BPF_RB_NO_WAKEUP);
        count(COUNTER_DATA_RECORDS);
    }

    /// The record's header, for `captured` bytes that follow it.
    #[inline(always)]
    fn event(&self, captured: usize) -> DataEvent {
        DataEvent {
            header: EventHeader {
                kind: EVENT_DATA,
                tid: self.tid,
                ktime_ns: self.ktime_ns,
                conn: self.conn,
            },
            direction: self.direction,
            syscall: self.syscall,
            position: self.position,
            length: captured as u64,
            captured: captured as u32,
            _pad: 0,
        }
    }
}

/// True while this program still owns the slot.
#[inline(always)]
fn still_owner(scratch: *mut DataScratch, id: u64) -> bool {
    let owner = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*scratch).owner)) };
    if owner != id {
        count(COUNTER_SCRATCH_BUSY);
        return false;
    }
    true
}

/// What one `bpf_loop` step needs: the scratch slot (looked up again in the callback) and
/// the owner id.
#[repr(C)]
struct StepContext {
    index: u32,
    id: u64,
}

/// One `bpf_loop` iteration: 0 to go on, 1 to stop.
extern "C" fn copy_step_callback(_i: u64, context: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes the caller's StepContext back.
    let (index, id) = unsafe {
        (
            (*context.cast::<StepContext>()).index,
            (*context.cast::<StepContext>()).id,
        )
    };
    let Some(scratch) = DATA_SCRATCH.get_ptr_mut(index) else {
        return 1;
    };
    if copy_step(scratch, id) {
        0
    } else {
        1
    }
}

#[inline(always)]
fn build_records(
    index: u32,
    scratch: *mut DataScratch,
    args: &SyscallArgs,
    record: &Record,
    id: u64,
    total: u64,
) {
    // Length and captured bytes are set as each record is sent (`output_record`).
    unsafe { (*scratch).event = record.event(0) };
    if is_single_buffer(args.syscall) && total <= MAX_RECORD as u64 {
        // A larger single buffer: copied at its exact size, through the scratch slot.
        let n = total as usize & SCRATCH_MASK;
        let ret = unsafe {
            let dst = core::ptr::addr_of_mut!((*scratch).payload).cast::<u8>();
            probe_read_user_raw(dst as *mut _, n as u32, args.buf as *const _)
        };
        if ret < 0 {
            count(COUNTER_USER_READ_FAILED);
        } else if still_owner(scratch, id) {
            output_record(scratch, n);
        }
        return;
    }
    if matches!(args.syscall, SYS_READV | SYS_WRITEV) && total <= MAX_RECORD as u64 {
        // Most vectored calls: a head and a body, both in one record, without the loop.
        match copy_two_iovecs(scratch, args, total) {
            TwoIovecs::Loop => {}
            TwoIovecs::Failed => return,
            TwoIovecs::Copied(n) => {
                if still_owner(scratch, id) {
                    output_record(scratch, n);
                }
                return;
            }
        }
    }
    let cursor = unsafe { core::ptr::addr_of_mut!((*scratch).cursor) };
    if !init_cursor(cursor, args, total) {
        count(COUNTER_USER_READ_FAILED);
        return;
    }
    // bpf_loop (Linux 5.17+): the verifier checks one step once, not every iteration, so
    // walking many iovecs costs nothing at load time.
    let mut step = StepContext { index, id };
    unsafe {
        bpf_loop(
            MAX_STEPS as u32,
            copy_step_callback as *mut c_void,
            core::ptr::addr_of_mut!(step).cast(),
            0,
        )
    };
    if !still_owner(scratch, id) {
        return;
    }
    let filled = get!(cursor, filled);
    if filled > 0 {
        output_record(scratch, filled as usize);
    }
    let remaining = get!(cursor, remaining);
    if remaining > 0 {
        // Beyond the per-syscall budget: say how many bytes we skipped, so the stream
        // positions stay exact and userspace can resynchronise.
        let event = unsafe { &mut (*scratch).event };
        event.length = remaining;
        event.captured = 0;
        if EVENTS
            .output::<DataEvent>(&*event, BPF_RB_NO_WAKEUP)
            .is_err()
        {
            count(COUNTER_RINGBUF_DATA_LOST);
        } else {
            count(COUNTER_GAP_RECORDS);
        }
    }
}

/// What became of a vectored call offered to `copy_two_iovecs`.
enum TwoIovecs {
    /// More segments than two: the loop walks them.
    Loop,
    /// User memory was unreadable (counted).
    Failed,
    /// This many bytes are in the record.
    Copied(usize),
}

/// A readv/writev of at most two segments whose `total` bytes fit one record: copied into
/// the record with two reads, without the loop.
#[inline(always)]
fn copy_two_iovecs(scratch: *mut DataScratch, args: &SyscallArgs, total: u64) -> TwoIovecs {
    if args.count == 0 || args.count > 2 {
        return TwoIovecs::Loop;
    }
    let Ok(iovecs) = (unsafe { bpf_probe_read_user(args.buf as *const [Iovec; 2]) }) else {
        count(COUNTER_USER_READ_FAILED);
        return TwoIovecs::Failed;
    };
    let first = if iovecs[0].len < total {
        iovecs[0].len
    } else {
        total
    };
    let second = total - first;
    if second > 0 && (args.count < 2 || iovecs[1].len < second) {
        return TwoIovecs::Loop; // not what the kernel moved: let the loop walk it
    }
    let payload = unsafe { core::ptr::addr_of_mut!((*scratch).payload).cast::<u8>() };
    // The masks bound the copies for the verifier without changing the values: total fits
    // one record, so when a second copy is made the first ended inside the record.
    let n = first as usize & SCRATCH_MASK;
    if n > 0
        && unsafe { probe_read_user_raw(payload as *mut _, n as u32, iovecs[0].base as *const _) }
            < 0
    {
        count(COUNTER_USER_READ_FAILED);
        return TwoIovecs::Failed;
    }
    let offset = first as usize & (MAX_RECORD - 1);
    let n = second as usize & SCRATCH_MASK;
    if n > 0
        && unsafe {
            probe_read_user_raw(
                payload.add(offset) as *mut _,
                n as u32,
                iovecs[1].base as *const _,
            )
        } < 0
    {
        count(COUNTER_USER_READ_FAILED);
        return TwoIovecs::Failed;
    }
    TwoIovecs::Copied(total as usize)
}

/// One copy from the current segment into the record being built; sends the record when
/// it is full or the syscall's bytes are all copied. False when there is nothing more to do.
#[inline(never)]
fn copy_step(scratch: *mut DataScratch, id: u64) -> bool {
    if !still_owner(scratch, id) {
        return false;
    }
    let cursor = unsafe { core::ptr::addr_of_mut!((*scratch).cursor) };
    let remaining = get!(cursor, remaining);
    if remaining == 0 || get!(cursor, records) >= MAX_RECORDS_PER_SYSCALL as u64 {
        return false;
    }
    let mut left = get!(cursor, left);
    if left == 0 {
        let next = get!(cursor, next_iov);
        if next >= get!(cursor, iov_count) || next >= MAX_IOVECS as u64 {
            return false;
        }
        set!(cursor, next_iov, next + 1);
        let entry = get!(cursor, iov) + (next & (MAX_IOVECS as u64 - 1)) * 16;
        let Ok(iovec) = (unsafe { bpf_probe_read_user(entry as *const Iovec) }) else {
            count(COUNTER_USER_READ_FAILED);
            return false;
        };
        set!(cursor, base, iovec.base);
        left = iovec.len;
        set!(cursor, left, left);
    }
    let filled = get!(cursor, filled) as usize & (MAX_RECORD - 1);
    let mut n = MAX_RECORD - filled;
    if (left as usize) < n {
        n = left as usize;
    }
    if (remaining as usize) < n {
        n = remaining as usize;
    }
    let n = n & SCRATCH_MASK;
    let base = get!(cursor, base);
    // The masks bound the copy for the verifier; they never change the values, because
    // filled < MAX_RECORD and n <= MAX_RECORD.
    let ret = unsafe {
        let dst = core::ptr::addr_of_mut!((*scratch).payload)
            .cast::<u8>()
            .add(filled);
        probe_read_user_raw(dst as *mut _, n as u32, base as *const _)
    };
    if ret < 0 {
        count(COUNTER_USER_READ_FAILED);
        return false;
    }
    set!(cursor, base, base + n as u64);
    set!(cursor, left, left - n as u64);
    set!(cursor, remaining, remaining - n as u64);
    let filled = filled + n;
    if filled >= MAX_RECORD || remaining == n as u64 {
        output_record(scratch, filled);
        let records = get!(cursor, records);
        set!(cursor, records, records + 1);
        set!(cursor, filled, 0);
    } else {
        set!(cursor, filled, filled as u64);
    }
    true
}

/// Sends the record being built (`filled` payload bytes) and advances the header's position.
#[inline(never)]
fn output_record(scratch: *mut DataScratch, filled: usize) {
    let filled = filled & SCRATCH_MASK;
    let event = unsafe { &mut (*scratch).event };
    event.length = filled as u64;
    event.captured = filled as u32;
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_ringbuf_output(
            &EVENTS as *const _ as *mut _,
            scratch as *mut _,
            (HEADER + filled) as u64,
            BPF_RB_NO_WAKEUP,
        )
    };
    if ret < 0 {
        count(COUNTER_RINGBUF_DATA_LOST);
    } else {
        count(COUNTER_DATA_RECORDS);
    }
    event.position += filled as u64;
}
