//! Records and constants shared by `tracer-ebpf` (kernel) and `tracer` (userspace).
//!
//! Every struct is `#[repr(C)]` with explicit padding so both sides agree byte for byte;
//! flags are `u32`, never `bool`.
#![no_std]

/// Largest payload one data record carries.
pub const MAX_RECORD: usize = 16 * 1024;
/// Data records one syscall may produce; the rest of its bytes become one gap record.
pub const MAX_RECORDS_PER_SYSCALL: usize = 4;
/// iovec entries walked per vectored syscall (a power of two); bytes in later entries are
/// reported as a gap. gRPC's C core writes a header block as one iovec per name and value,
/// many streams per `sendmsg`: 16 lost the HPACK state of gRPC clients. The walk runs in
/// `bpf_loop`, so its length costs nothing at load time (an unrolled loop of 256 added 4 s
/// of verification).
pub const MAX_IOVECS: usize = 1024;
/// Scratch area for one record: the payload is copied at offsets masked by
/// `SCRATCH_MASK`, so the verifier can bound every copy without knowing the loop state.
pub const SCRATCH_MASK: usize = 2 * MAX_RECORD - 1;
pub const SCRATCH_BYTES: usize = MAX_RECORD + SCRATCH_MASK + 1;

/// `EventHeader::kind` values.
pub const EVENT_DATA: u32 = 1;
pub const EVENT_CONN_OPEN: u32 = 2;
pub const EVENT_CONN_CLOSE: u32 = 3;
pub const EVENT_CONN_ADDR: u32 = 4;
pub const EVENT_PROCESS_EXIT: u32 = 5;
/// A process started a new program (`sched:sched_process_exec`): look for TLS libraries.
pub const EVENT_PROCESS_EXEC: u32 = 6;
/// A process returned from `dlopen`: it may have mapped a TLS library late.
pub const EVENT_LIBRARY_LOADED: u32 = 7;

/// Which end of the connection the traced process is.
pub const ROLE_UNKNOWN: u32 = 0;
/// The process called `connect`.
pub const ROLE_CLIENT: u32 = 1;
/// The process got the socket from `accept`/`accept4`.
pub const ROLE_SERVER: u32 = 2;

/// Bytes the process wrote to the socket.
pub const DIR_EGRESS: u32 = 0;
/// Bytes the process read from the socket.
pub const DIR_INGRESS: u32 = 1;

/// Syscall that produced a data record (`DataEvent::syscall`).
pub const SYS_READ: u32 = 0;
pub const SYS_READV: u32 = 1;
pub const SYS_RECVFROM: u32 = 2;
pub const SYS_RECVMSG: u32 = 3;
pub const SYS_WRITE: u32 = 4;
pub const SYS_WRITEV: u32 = 5;
pub const SYS_SENDTO: u32 = 6;
pub const SYS_SENDMSG: u32 = 7;
/// Plaintext returned by a TLS library's read function (uretprobe), not socket bytes.
pub const SYS_TLS_READ: u32 = 8;
/// Plaintext handed to a TLS library's write function.
pub const SYS_TLS_WRITE: u32 = 9;
/// Not a data syscall: stashed between enter and exit to learn a client's connection.
pub const SYS_CONNECT: u32 = 100;
/// `socket(family, type, protocol)`: its family and type, to tell TCP from the rest.
pub const SYS_SOCKET: u32 = 101;
/// `accept`/`accept4`: the listening socket the new connection comes from.
pub const SYS_ACCEPT: u32 = 102;
/// A thread's stash slot with no syscall in progress (slots are reused, not deleted).
pub const SYS_NONE: u32 = u32::MAX;

/// `ConnEvent::reason` of an open: a socket the process inherited from its parent at fork
/// (`OPEN_INHERITED_MID_STREAM` when the parent had already moved bytes on it).
pub const OPEN_INHERITED: u32 = 1;
pub const OPEN_INHERITED_MID_STREAM: u32 = 2;
/// Sockets inherited at one fork beyond this many are not followed in the child.
pub const MAX_INHERITED_SOCKETS: u32 = 64;

/// `ConnClose::reason` values.
pub const CLOSE_SYSCALL: u32 = 0;
/// The socket turned out not to be TCP (UNIX, UDP, …) and is no longer followed.
pub const CLOSE_NOT_TCP: u32 = 1;

/// `ConnControl::flags`: stop copying payload; positions still advance.
pub const CONTROL_NO_PAYLOAD: u32 = 1;
/// `ConnControl::flags`: stop copying TLS plaintext; positions still advance.
pub const CONTROL_NO_PLAINTEXT: u32 = 2;

/// `CaptureConfig::mode`: trace every process except the agent.
pub const SELECT_ALL: u32 = 0;
/// Trace only processes whose tgid is in the `TRACED_PROCESSES` map.
pub const SELECT_LISTED: u32 = 1;

/// Indices into the per-CPU `COUNTERS` array.
pub const COUNTER_RINGBUF_DATA_LOST: u32 = 0;
pub const COUNTER_RINGBUF_CONN_LOST: u32 = 1;
pub const COUNTER_SYSCALL_STASH_FULL: u32 = 2;
pub const COUNTER_CONN_TABLE_FULL: u32 = 3;
pub const COUNTER_USER_READ_FAILED: u32 = 4;
pub const COUNTER_DATA_RECORDS: u32 = 5;
pub const COUNTER_GAP_RECORDS: u32 = 6;
/// TLS plaintext whose socket could not be identified (no syscall on the same thread,
/// no matching encrypted record): dropped.
pub const COUNTER_TLS_NO_SOCKET: u32 = 7;
/// TLS read/write calls whose plaintext was copied.
pub const COUNTER_TLS_CALLS: u32 = 8;
/// Records not built because their CPU's scratch slot was taken by a program that had
/// been preempted mid-record (or was taken over while building): dropped, not mixed.
pub const COUNTER_SCRATCH_BUSY: u32 = 9;
/// Connections not followed because their socket, created while tracer ran, is not an
/// IPv4/IPv6 stream socket (UNIX, UDP, …).
pub const COUNTER_NOT_TCP_SKIPPED: u32 = 10;
/// Followed sockets a forked child inherited beyond `MAX_INHERITED_SOCKETS`: not followed.
pub const COUNTER_INHERITED_SKIPPED: u32 = 11;
pub const COUNTERS: u32 = 12;

/// Names of the counters, in index order, for metrics and logs.
pub const COUNTER_NAMES: [&str; COUNTERS as usize] = [
    "ringbuf_data_lost",
    "ringbuf_conn_lost",
    "syscall_stash_full",
    "conn_table_full",
    "user_read_failed",
    "data_records",
    "gap_records",
    "tls_no_socket",
    "tls_calls",
    "scratch_busy",
    "not_tcp_skipped",
    "inherited_skipped",
];

/// Per-CPU scratch for a fork: the parent's followed sockets, gathered while iterating the
/// socket table, then given to the child.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ForkScratch {
    pub count: u32,
    pub fds: [u32; MAX_INHERITED_SOCKETS as usize],
    pub states: [ConnState; MAX_INHERITED_SOCKETS as usize],
}

/// Scratch slots per CPU: the syscall-exit tracepoints and the TLS return probe each have
/// their own (uprobes run with migration disabled but may be preempted, outside the
/// tracepoints' recursion guard).
pub const SCRATCH_SLOTS_PER_CPU: u32 = 2;
pub const SCRATCH_SYSCALL: u32 = 0;
pub const SCRATCH_TLS: u32 = 1;

/// A socket as the kernel side knows it: process and file descriptor.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockKey {
    pub tgid: u32,
    pub fd: u32,
}

/// One connection: a `(tgid, fd)` plus a generation, so a reused fd is a new connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub tgid: u32,
    pub fd: u32,
    /// Kernel time (ns) the connection was first seen; unique per `(tgid, fd)`.
    pub generation: u64,
}

/// Kernel-side state of a followed socket (`SOCKETS` map value).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnState {
    pub generation: u64,
    /// Kernel address of the `struct sock`, learnt from socket tracepoints; 0 if unknown.
    pub sk: u64,
    /// Next stream position per direction (`DIR_EGRESS`, `DIR_INGRESS`).
    pub position: [u64; 2],
    pub role: u32,
    /// 1 once the 4-tuple has been sent to userspace.
    pub addr_sent: u32,
    /// 1 once a TLS library was seen using this socket: from then on its payload is
    /// plaintext from the uprobes and the encrypted socket bytes are not copied.
    pub tls: u16,
    /// Data syscalls that showed no sign of TLS (no TLS call on the thread, no record
    /// header); at `PLAIN_AFTER_EXITS` the socket is taken for plain and not checked again.
    pub plain_exits: u16,
    /// Address family and protocol of `sk` (from the socket tracepoints); 0 until known.
    pub sk_family: u16,
    pub sk_protocol: u16,
    /// Next plaintext stream position per direction.
    pub tls_position: [u64; 2],
    /// `CaptureConfig::control_epoch` + 1 when `control_flags` was read from
    /// `CONN_CONTROL`; 0 until then. While it matches, the data path needs no lookup.
    pub control_epoch: u32,
    /// This connection's `CONN_CONTROL` flags as of `control_epoch`.
    pub control_flags: u32,
}

/// Data syscalls without any sign of TLS after which a socket is no longer checked for
/// it: TLS starts at a connection's first bytes, or after a few plaintext messages at most
/// (PostgreSQL's SSLRequest, SMTP's STARTTLS), and an adopted TLS connection shows it in
/// its first calls. The checks (a hash lookup and a 3-byte user read) were ~30 % of a
/// data exit.
pub const PLAIN_AFTER_EXITS: u16 = 32;

/// Userspace's instructions for one connection (`CONN_CONTROL` map value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnControl {
    /// Applies only while it equals the connection's generation.
    pub generation: u64,
    pub flags: u32,
    pub _pad: u32,
}

/// Agent-wide capture settings (`CAPTURE_CONFIG[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureConfig {
    /// The agent's own tgid: never traced.
    pub self_tgid: u32,
    pub mode: u32,
    /// Where the fd → `struct sock` walk reads, from the kernel's BTF; all zero when
    /// unknown (then the `sock:sock_*_length` tracepoints tell the sock instead).
    pub offsets: KernelOffsets,
    /// Counts userspace's changes to `CONN_CONTROL`: a connection's cached flags are
    /// looked up again once it moves on.
    pub control_epoch: u32,
    pub _pad: u32,
}

/// Byte offsets of the members a data syscall's exit reads to find the `struct sock` of
/// an accepted socket: `current->files->fdt->fd[fd]->private_data` (a `struct socket`
/// whose `file` points back at the file) `->sk`, and the sock's family and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_private_data: u32,
    pub socket_file: u32,
    pub socket_sk: u32,
    pub sock_family: u32,
    pub sock_protocol: u32,
    pub _pad: u32,
}

impl KernelOffsets {
    /// Whether userspace found them (`task_files` is never 0 in a real `task_struct`).
    pub const fn known(&self) -> bool {
        self.task_files != 0
    }
}

/// A TCP 4-tuple. Addresses are IPv6 or IPv4-mapped IPv6, ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockTuple {
    /// `AF_INET` (2) or `AF_INET6` (10); 0 if unknown.
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// The socket a thread's current socket call uses, as `sock:sock_{send,recv}_length` saw
/// it (`SOCK_SEEN`, one per CPU), for the data syscall's exit to learn a socket it lacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockSeen {
    pub pid_tgid: u64,
    pub sk: u64,
    pub ktime_ns: u64,
    pub fd: u32,
    pub family: u16,
    pub protocol: u16,
}

/// A TLS read or write between its uprobe and its uretprobe (`TLS_CALLS` value).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TlsCall {
    /// The library's connection object (`SSL *`).
    pub ssl: u64,
    pub buf: u64,
    /// For the `_ex` forms: where the library stores the byte count; else 0.
    pub count_out: u64,
    /// `DIR_EGRESS` for writes, `DIR_INGRESS` for reads.
    pub direction: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` at the call's entry: a write's bytes are stamped with it (see
    /// `tls::try_return`).
    pub enter_ns: u64,
}

/// A TLS connection object within a process (`TLS_SOCKETS` key).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TlsKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ssl: u64,
}

/// A socket as it was when learnt; stale once the fd's generation differs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockRef {
    pub fd: u32,
    pub _pad: u32,
    pub generation: u64,
}

/// Arguments of a data syscall between its enter and exit (`ACTIVE_SYSCALLS` value).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallArgs {
    /// Buffer, iovec array or msghdr pointer, depending on `syscall`.
    pub buf: u64,
    /// Buffer length or iovec count.
    pub count: u64,
    /// `struct sock` seen by the socket tracepoints during this syscall; 0 if none.
    pub sk: u64,
    /// For connect: the sockaddr pointer.
    pub addr: u64,
    pub fd: u32,
    pub syscall: u32,
    /// Address family and protocol of `sk`, from the same tracepoints; 0 if unknown.
    pub sk_family: u32,
    pub sk_protocol: u32,
}

/// Common prefix of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    pub tid: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event happened.
    pub ktime_ns: u64,
    pub conn: ConnId,
}

/// A run of stream bytes. `captured` payload bytes follow the struct in the ring buffer;
/// when `captured < length` the remaining `length - captured` bytes are a gap.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataEvent {
    pub header: EventHeader,
    pub direction: u32,
    pub syscall: u32,
    /// Stream offset of the first byte, per connection and direction.
    pub position: u64,
    /// Bytes of the stream this record covers.
    pub length: u64,
    pub captured: u32,
    pub _pad: u32,
}

/// A connection began (accept/connect), or its addresses became known.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    pub header: EventHeader,
    pub role: u32,
    /// `CLOSE_*` reason for `EVENT_CONN_CLOSE`, else 0.
    pub reason: u32,
    pub tuple: SockTuple,
    /// The thread's command name (`bpf_get_current_comm`), for processes that exit
    /// before userspace can read `/proc`.
    pub comm: [u8; 16],
    /// For `EVENT_CONN_CLOSE`: final stream positions per direction, so userspace can
    /// account for lost records at the very end of a stream.
    pub positions: [u64; 2],
}

/// Where the copy loop stands. Kept in map memory rather than registers on purpose: the
/// verifier then sees unknown-but-masked values and can prune loop iterations.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CopyCursor {
    /// iovec array and its length (0 for a single buffer).
    pub iov: u64,
    pub iov_count: u64,
    pub next_iov: u64,
    /// Current user-memory segment.
    pub base: u64,
    pub left: u64,
    /// Bytes of the syscall not yet copied or reported.
    pub remaining: u64,
    /// Payload bytes in the record being built.
    pub filled: u64,
    pub records: u64,
}

/// Per-CPU scratch space for building one data record. `event` must stay first: the
/// record sent to the ring buffer is `event` followed directly by `payload`.
#[repr(C)]
pub struct DataScratch {
    pub event: DataEvent,
    pub payload: [u8; SCRATCH_BYTES],
    pub cursor: CopyCursor,
    /// `pid_tgid` of the program building a record here, 0 when free: a guard against a
    /// preempted program's record being overwritten (and then sent) by another.
    pub owner: u64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for ConnId {}
    unsafe impl aya::Pod for ConnState {}
    unsafe impl aya::Pod for ConnControl {}
    unsafe impl aya::Pod for CaptureConfig {}
    unsafe impl aya::Pod for SockTuple {}
    unsafe impl aya::Pod for TlsKey {}
    unsafe impl aya::Pod for SockRef {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn records_have_no_padding_holes() {
        assert_eq!(size_of::<EventHeader>(), 32);
        assert_eq!(size_of::<DataEvent>(), 64);
        assert_eq!(size_of::<SockTuple>(), 40);
        assert_eq!(size_of::<ConnEvent>(), 32 + 8 + 40 + 16 + 16);
        assert_eq!(size_of::<ConnState>(), 72);
        assert_eq!(size_of::<TlsCall>(), 40);
        assert_eq!(size_of::<TlsKey>(), 16);
        assert_eq!(size_of::<SockRef>(), 16);
    }
}
