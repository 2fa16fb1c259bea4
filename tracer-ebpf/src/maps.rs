//! The maps shared between the programs and with userspace.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    CaptureConfig, ConnControl, ConnState, DataScratch, ForkScratch, SockKey, SockRef, SockSeen,
    SockTuple, SyscallArgs, TlsCall, TlsKey, COUNTERS,
};

/// Data records for userspace. Userspace resizes it at load time (`--ring-buffer-bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(32 * 1024 * 1024, 0);

/// Connection events (open, addresses, close, process exit and exec, dlopen), apart from
/// the bulk data so a flood of payload can never starve them. Sized for bursts of ~8,000
/// events between two reads (every exec on the host lands here too).
#[map]
pub static CONN_EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// `[0]`: agent-wide settings written by userspace before attaching.
#[map]
pub static CAPTURE_CONFIG: Array<CaptureConfig> = Array::with_max_entries(1, 0);

/// tgids to trace when `CaptureConfig::mode == SELECT_LISTED`.
#[map]
pub static TRACED_PROCESSES: HashMap<u32, u32> = HashMap::with_max_entries(16384, 0);

/// Processes that have (had) a followed socket: a fork of any other walks no socket table.
/// Never cleared (an LRU); a stale entry costs one walk of the table at a fork.
#[map]
pub static SOCKET_OWNERS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// A fork's gathered sockets (see `fork.rs`).
#[map]
pub static FORK_SCRATCH: PerCpuArray<ForkScratch> = PerCpuArray::with_max_entries(1, 0);

/// Followed TCP sockets: created by accept/connect exits, or seeded by userspace from
/// `/proc` for connections that predate the agent. Files and pipes are never here.
#[map]
pub static SOCKETS: HashMap<SockKey, ConnState> = HashMap::with_max_entries(65536, 0);

/// Per-connection instructions from userspace (e.g. stop copying payload).
#[map]
pub static CONN_CONTROL: HashMap<SockKey, ConnControl> = HashMap::with_max_entries(65536, 0);

/// Sockets created (with `socket()`) while tracer runs that are not IPv4/IPv6 stream
/// sockets: a `connect` or an `accept` on them is not followed. The value is unused.
#[map]
pub static NOT_TCP_SOCKETS: LruHashMap<SockKey, u32> = LruHashMap::with_max_entries(16384, 0);

/// `struct sock` address → 4-tuple, from `sock:inet_sock_set_state`.
#[map]
pub static SOCK_TUPLES: LruHashMap<u64, SockTuple> = LruHashMap::with_max_entries(65536, 0);

/// Syscall arguments between enter and exit, by `pid_tgid` (see `stash.rs`).
#[map]
pub static ACTIVE_SYSCALLS: LruHashMap<u64, SyscallArgs> = LruHashMap::with_max_entries(32768, 0);

/// TLS read/write calls between uprobe and uretprobe, by `pid_tgid`.
#[map]
pub static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// The socket under each TLS connection object, learnt from the syscall the library made
/// on the same thread during a read/write (or from `LAST_TLS_SOCKET` for memory BIOs).
#[map]
pub static TLS_SOCKETS: LruHashMap<TlsKey, SockRef> = LruHashMap::with_max_entries(65536, 0);

/// Per thread (`pid_tgid`): the followed socket that last carried TLS records. Libraries
/// that encrypt into memory (Node, .NET) read and write the socket outside their TLS
/// calls; their plaintext belongs to the socket whose records the thread just moved.
#[map]
pub static LAST_TLS_SOCKET: LruHashMap<u64, SockRef> = LruHashMap::with_max_entries(16384, 0);

/// One record-building area per CPU. A plain array indexed by CPU, because per-CPU
/// values are limited to 32 KiB; userspace sizes it to the number of possible CPUs.
#[map]
pub static DATA_SCRATCH: Array<DataScratch> = Array::with_max_entries(1, 0);

/// Processes (tgids) with a followed socket that still lacks its `struct sock` (to learn
/// the 4-tuple and check it is TCP), one slot per `tgid % WANT_SLOTS`, 0 when none; and
/// from `WANT_SLOTS` on, per slot, how many more of its socket calls may be recorded
/// before giving up (the socket may be gone). Lets the socket tracepoints, which fire for
/// every socket operation on the host, leave after one array read, and lets processes
/// that accept at the same time (a client, its server, their peer) all be served.
#[map]
pub static WANTS_SOCK: Array<u64> = Array::with_max_entries(2 * WANT_SLOTS, 0);

pub const WANT_SLOTS: u32 = 64;

/// Per CPU: the last socket call of a wanted process (see `WANTS_SOCK`).
#[map]
pub static SOCK_SEEN: PerCpuArray<SockSeen> = PerCpuArray::with_max_entries(1, 0);

/// Drop and activity counters (`tracer_common::COUNTER_*`).
#[map]
pub static COUNTERS_MAP: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = COUNTERS_MAP.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; tracepoint programs do not nest on one CPU for this map.
        unsafe { *counter += 1 };
    }
}

/// Whether userspace turned `flag` (`CONTROL_NO_PAYLOAD`, `CONTROL_NO_PLAINTEXT`) on for
/// this connection (a reused fd with another generation does not inherit it). The answer
/// is kept in the connection's state until userspace changes `CONN_CONTROL` again (its
/// epoch moves), so a data syscall rarely pays the hash lookup.
#[inline(always)]
pub fn payload_off(key: SockKey, state: &mut ConnState, flag: u32) -> bool {
    let epoch = CAPTURE_CONFIG
        .get(0)
        .map_or(0, |config| config.control_epoch.wrapping_add(1));
    if epoch == 0 || state.control_epoch != epoch {
        state.control_flags = CONN_CONTROL.get_ptr(key).map_or(0, |control| {
            // SAFETY: value pointer from a successful lookup.
            let control = unsafe { *control };
            if control.generation == state.generation {
                control.flags
            } else {
                0
            }
        });
        state.control_epoch = epoch;
    }
    state.control_flags & flag != 0
}
