//! Connection lifecycle: role from accept/connect, 4-tuple from socket tracepoints, close.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user,
    },
    programs::TracePointContext,
};
use tracer_common::{
    ConnEvent, ConnId, ConnState, EventHeader, KernelOffsets, SockKey, SockSeen, SockTuple,
    SyscallArgs, CLOSE_NOT_TCP, CLOSE_SYSCALL, COUNTER_CONN_TABLE_FULL, COUNTER_NOT_TCP_SKIPPED,
    COUNTER_RINGBUF_CONN_LOST, EVENT_CONN_ADDR, EVENT_CONN_CLOSE, EVENT_CONN_OPEN,
    EVENT_PROCESS_EXIT, ROLE_CLIENT, ROLE_SERVER, SYS_ACCEPT, SYS_CONNECT, SYS_SOCKET,
};

use crate::{
    args::{syscall_arg, syscall_ret, SyscallRegs},
    maps::{
        count, CAPTURE_CONFIG, CONN_EVENTS, NOT_TCP_SOCKETS, SOCKETS, SOCKET_OWNERS, SOCK_SEEN,
        SOCK_TUPLES, WANTS_SOCK, WANT_SLOTS,
    },
    select::is_traced,
    stash,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const SOCK_STREAM: u64 = 1;
/// The socket type's bits (the rest are SOCK_NONBLOCK, SOCK_CLOEXEC).
const SOCK_TYPE_MASK: u64 = 0xf;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const EINPROGRESS: i64 = -115;

/// Offsets in `sock:inet_sock_set_state` (see its `format` file in tracefs).
mod set_state {
    pub const SKADDR: usize = 8;
    pub const NEWSTATE: usize = 20;
    pub const SPORT: usize = 24;
    pub const DPORT: usize = 26;
    pub const FAMILY: usize = 28;
    pub const PROTOCOL: usize = 30;
    pub const SADDR: usize = 32;
    pub const DADDR: usize = 36;
    pub const SADDR_V6: usize = 40;
    pub const DADDR_V6: usize = 56;
}

/// Offsets in `sock:sock_send_length` / `sock:sock_recv_length`.
mod sock_length {
    pub const SK: usize = 8;
    pub const FAMILY: usize = 16;
    pub const PROTOCOL: usize = 18;
}

/// `sys_enter_connect`: remember the fd and address until the exit.
pub fn try_enter_connect(ctx: &TracePointContext) -> Result<u32, u32> {
    let id = bpf_get_current_pid_tgid();
    if !is_traced((id >> 32) as u32) {
        return Ok(0);
    }
    let args = SyscallArgs {
        addr: syscall_arg(ctx, 1),
        ..syscall_only(SYS_CONNECT, syscall_arg(ctx, 0) as u32, 0, 0)
    };
    stash::put(id, args);
    note_owner(id);
    Ok(0)
}

/// `sys_exit_connect` / `sys_exit_accept*`: a new connection with a known role.
pub fn try_exit_connect(ctx: &TracePointContext) -> Result<u32, u32> {
    let id = bpf_get_current_pid_tgid();
    let Some(args) = stash::take(id, |syscall| syscall == SYS_CONNECT) else {
        return Ok(0);
    };
    let ret = syscall_ret(ctx);
    if ret != 0 && ret != EINPROGRESS {
        return Ok(0);
    }
    let Some(mut tuple) = read_sockaddr(args.addr) else {
        return Ok(0); // not an IP socket: UNIX, netlink, …
    };
    if not_tcp((id >> 32) as u32, args.fd) {
        return Ok(0); // an IP socket, but not a stream one: UDP
    }
    if args.sk != 0 {
        if let Some(known) = SOCK_TUPLES.get_ptr(args.sk) {
            tuple = unsafe { *known };
        }
    }
    open_connection(id, args.fd, ROLE_CLIENT, args.sk, tuple);
    Ok(0)
}

/// `sys_exit_accept*`: the return value is the new socket, which is all we need, so an
/// accept that was already blocked when tracer attached is still seen. Its 4-tuple
/// arrives with its first data (`check_socket`).
pub fn try_exit_accept(ctx: &TracePointContext) -> Result<u32, u32> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // Decided at once: an Option kept across branches confuses the verifier.
    let on_unix_socket = match stash::take(id, |syscall| syscall == SYS_ACCEPT) {
        Some(args) => listed_not_tcp(tgid, args.fd),
        None => false,
    };
    let ret = syscall_ret(ctx);
    if ret < 0 || !is_traced(tgid) {
        return Ok(0);
    }
    if on_unix_socket {
        count(COUNTER_NOT_TCP_SKIPPED);
        return Ok(0);
    }
    open_connection(id, ret as u32, ROLE_SERVER, 0, SockTuple::default());
    // Its `struct sock` (and so its 4-tuple) is learnt in the thread's next socket call.
    want_sock(id);
    Ok(0)
}

/// `sys_enter_accept*`: remember the listening socket until the exit.
pub fn try_enter_accept(ctx: &TracePointContext) -> Result<u32, u32> {
    let id = bpf_get_current_pid_tgid();
    if !is_traced((id >> 32) as u32) {
        return Ok(0);
    }
    stash::put(
        id,
        syscall_only(SYS_ACCEPT, syscall_arg(ctx, 0) as u32, 0, 0),
    );
    note_owner(id);
    Ok(0)
}

/// A process about to have a followed socket (marked at the syscall's entry, whose stack
/// has room): its forks inherit its sockets (see `fork.rs`). A failed or non-TCP call
/// marks it too, which costs only a walk of the socket table at its forks.
#[inline(always)]
fn note_owner(id: u64) {
    let tgid = (id >> 32) as u32;
    let _ = SOCKET_OWNERS.insert(&tgid, &1, 0);
}

/// `sys_enter_socket`: remember the family and type until the exit.
pub fn try_enter_socket(ctx: &TracePointContext) -> Result<u32, u32> {
    let id = bpf_get_current_pid_tgid();
    if !is_traced((id >> 32) as u32) {
        return Ok(0);
    }
    let (family, kind) = (syscall_arg(ctx, 0), syscall_arg(ctx, 1));
    stash::put(id, syscall_only(SYS_SOCKET, 0, family as u32, kind as u32));
    Ok(0)
}

/// `sys_exit_socket`: note a socket that is not an IPv4/IPv6 stream socket, so that a
/// connect or accept on it is not followed even without the socket tracepoints.
pub fn try_exit_socket(ctx: &TracePointContext) -> Result<u32, u32> {
    let id = bpf_get_current_pid_tgid();
    let Some(args) = stash::take(id, |syscall| syscall == SYS_SOCKET) else {
        return Ok(0);
    };
    let ret = syscall_ret(ctx);
    if ret < 0 {
        return Ok(0);
    }
    let key = SockKey {
        tgid: (id >> 32) as u32,
        fd: ret as u32,
    };
    let family = args.sk_family as u16;
    let stream = u64::from(args.sk_protocol) & SOCK_TYPE_MASK == SOCK_STREAM;
    if (family == AF_INET || family == AF_INET6) && stream {
        let _ = NOT_TCP_SOCKETS.remove(&key); // an older socket's fd, reused
    } else {
        let _ = NOT_TCP_SOCKETS.insert(&key, &0, 0);
    }
    Ok(0)
}

/// A socket `socket()` told us is not TCP; counts the connection it would have been.
#[inline(always)]
fn not_tcp(tgid: u32, fd: u32) -> bool {
    let known = listed_not_tcp(tgid, fd);
    if known {
        count(COUNTER_NOT_TCP_SKIPPED);
    }
    known
}

#[inline(always)]
fn listed_not_tcp(tgid: u32, fd: u32) -> bool {
    unsafe { NOT_TCP_SOCKETS.get(&SockKey { tgid, fd }) }.is_some()
}

/// Stashed arguments of a syscall that needs an fd and at most two numbers.
#[inline(always)]
fn syscall_only(syscall: u32, fd: u32, family: u32, kind: u32) -> SyscallArgs {
    SyscallArgs {
        buf: 0,
        count: 0,
        sk: 0,
        addr: 0,
        fd,
        syscall,
        sk_family: family,
        sk_protocol: kind,
    }
}

#[inline(always)]
fn open_connection(id: u64, fd: u32, role: u32, sk: u64, tuple: SockTuple) {
    let tgid = (id >> 32) as u32;
    let now = unsafe { bpf_ktime_get_ns() };
    let state = ConnState {
        generation: now,
        sk,
        position: [0, 0],
        role,
        addr_sent: (tuple.local_port != 0) as u32,
        tls: 0,
        plain_exits: 0,
        sk_family: 0,
        sk_protocol: 0,
        tls_position: [0, 0],
        control_epoch: 0,
        control_flags: 0,
    };
    if SOCKETS.insert(SockKey { tgid, fd }, state, 0).is_err() {
        count(COUNTER_CONN_TABLE_FULL);
        return;
    }
    let conn = ConnId {
        tgid,
        fd,
        generation: now,
    };
    emit_conn(EVENT_CONN_OPEN, id, now, conn, role, 0, tuple);
}

/// `sys_enter_close`: the end of a followed connection.
pub fn try_enter_close(ctx: &TracePointContext) -> Result<u32, u32> {
    let id = bpf_get_current_pid_tgid();
    let key = SockKey {
        tgid: (id >> 32) as u32,
        fd: syscall_arg(ctx, 0) as u32,
    };
    let Some(state) = SOCKETS.get_ptr(key) else {
        return Ok(0);
    };
    let state = unsafe { &*state };
    // A TLS connection's stream, as userspace sees it, is its plaintext.
    let positions = if state.tls != 0 {
        state.tls_position
    } else {
        state.position
    };
    let (generation, role) = (state.generation, state.role);
    let _ = SOCKETS.remove(key);
    let conn = ConnId {
        tgid: key.tgid,
        fd: key.fd,
        generation,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    emit_close(id, now, conn, role, CLOSE_SYSCALL, positions);
    Ok(0)
}

/// `sock:inet_sock_set_state`: learn each TCP socket's 4-tuple once it is established.
pub fn try_sock_set_state(ctx: &TracePointContext) -> Result<u32, u32> {
    let read = |offset| unsafe { ctx.read_at::<u16>(offset) }.map_err(|_| 0u32);
    if read(set_state::PROTOCOL)? != IPPROTO_TCP {
        return Ok(0);
    }
    let skaddr = unsafe { ctx.read_at::<u64>(set_state::SKADDR) }.map_err(|_| 0u32)?;
    let newstate = unsafe { ctx.read_at::<i32>(set_state::NEWSTATE) }.map_err(|_| 0u32)?;
    match newstate {
        TCP_SYN_SENT => {
            // In the connecting thread's own context: tie its pending connect to the sock.
            let id = bpf_get_current_pid_tgid();
            if let Some(args) = stash::current(id) {
                unsafe { (*args).sk = skaddr };
            }
        }
        TCP_ESTABLISHED => {
            let family = read(set_state::FAMILY)?;
            let mut tuple = SockTuple {
                family,
                local_port: read(set_state::SPORT)?,
                remote_port: read(set_state::DPORT)?,
                ..SockTuple::default()
            };
            if family == AF_INET {
                let saddr =
                    unsafe { ctx.read_at::<[u8; 4]>(set_state::SADDR) }.map_err(|_| 0u32)?;
                let daddr =
                    unsafe { ctx.read_at::<[u8; 4]>(set_state::DADDR) }.map_err(|_| 0u32)?;
                tuple.local_addr = v4_mapped(saddr);
                tuple.remote_addr = v4_mapped(daddr);
            } else {
                tuple.local_addr =
                    unsafe { ctx.read_at::<[u8; 16]>(set_state::SADDR_V6) }.map_err(|_| 0u32)?;
                tuple.remote_addr =
                    unsafe { ctx.read_at::<[u8; 16]>(set_state::DADDR_V6) }.map_err(|_| 0u32)?;
            }
            let _ = SOCK_TUPLES.insert(skaddr, tuple, 0);
        }
        TCP_CLOSE => {
            let _ = SOCK_TUPLES.remove(skaddr);
        }
        _ => {}
    }
    Ok(0)
}

/// `sock:sock_send_length` / `sock:sock_recv_length`: which `struct sock` the current
/// socket call of a wanted process uses, recorded per CPU with the call's fd for the data
/// syscall's exit (`learn_sock`). For every other socket operation on the host this costs
/// one array read.
pub fn try_sock_length(ctx: &TracePointContext) -> Result<u32, u32> {
    let id = bpf_get_current_pid_tgid();
    let slot = ((id >> 32) as u32) % WANT_SLOTS;
    let Some(wanted) = WANTS_SOCK.get_ptr_mut(slot) else {
        return Ok(0);
    };
    // SAFETY: array slots; a racing writer at worst costs one lookup or one learning.
    if unsafe { *wanted } != id >> 32 {
        return Ok(0); // not a process with a socket to learn
    }
    if let Some(tries) = WANTS_SOCK.get_ptr_mut(WANT_SLOTS + slot) {
        unsafe {
            if *tries <= 1 {
                *wanted = 0;
            } else {
                *tries -= 1;
            }
        }
    }
    let Some(regs) = SyscallRegs::current() else {
        return Ok(0);
    };
    // Only inside a data syscall is argument 0 the socket's fd.
    if !matches!(
        regs.number,
        NR_READ
            | NR_WRITE
            | NR_READV
            | NR_WRITEV
            | NR_SENDTO
            | NR_RECVFROM
            | NR_SENDMSG
            | NR_RECVMSG
    ) {
        return Ok(0);
    }
    let Some(seen) = SOCK_SEEN.get_ptr_mut(0) else {
        return Ok(0);
    };
    let sk = unsafe { ctx.read_at::<u64>(sock_length::SK) }.map_err(|_| 0u32)?;
    let family = unsafe { ctx.read_at::<u16>(sock_length::FAMILY) }.map_err(|_| 0u32)?;
    let protocol = unsafe { ctx.read_at::<u16>(sock_length::PROTOCOL) }.map_err(|_| 0u32)?;
    // SAFETY: this CPU's slot.
    unsafe {
        *seen = SockSeen {
            pid_tgid: id,
            sk,
            ktime_ns: bpf_ktime_get_ns(),
            fd: regs.arg(0) as u32,
            family,
            protocol,
        };
    }
    Ok(0)
}

/// x86-64 syscall numbers of the data syscalls (`orig_ax`).
const NR_READ: u64 = 0;
const NR_WRITE: u64 = 1;
const NR_READV: u64 = 19;
const NR_WRITEV: u64 = 20;
const NR_SENDTO: u64 = 44;
const NR_RECVFROM: u64 = 45;
const NR_SENDMSG: u64 = 46;
const NR_RECVMSG: u64 = 47;

/// Asks the socket tracepoints to record this process's socket calls until the socket
/// lacking its `struct sock` has been seen (see `try_sock_length`).
#[inline(always)]
pub fn want_sock(id: u64) {
    let slot = ((id >> 32) as u32) % WANT_SLOTS;
    if let (Some(wanted), Some(tries)) = (
        WANTS_SOCK.get_ptr_mut(slot),
        WANTS_SOCK.get_ptr_mut(WANT_SLOTS + slot),
    ) {
        // SAFETY: array slots.
        unsafe {
            *wanted = id >> 32;
            *tries = WANT_SOCK_TRIES;
        }
    }
}

/// Socket calls of the wanted process recorded before giving up: an event loop may serve
/// many known sockets between two calls on the new one.
const WANT_SOCK_TRIES: u64 = 64;

/// The `struct sock` of this data syscall's socket, if the socket tracepoints recorded
/// this very call: same thread, same fd, after the socket was opened (a slot left by an
/// earlier call on a closed socket whose fd was reused is older than the new socket).
#[inline(always)]
fn learn_sock(id: u64, fd: u32, state: &mut ConnState) {
    if let Some(config) = CAPTURE_CONFIG.get(0) {
        if config.offsets.known() {
            if let Some((sk, family, protocol)) = sock_of_fd(fd, &config.offsets) {
                if state.sk == 0 {
                    state.sk = sk;
                }
                state.sk_family = family;
                state.sk_protocol = protocol;
            }
            return;
        }
    }
    let Some(seen) = SOCK_SEEN.get_ptr(0) else {
        return;
    };
    // SAFETY: this CPU's slot.
    let seen = unsafe { *seen };
    if seen.pid_tgid == id && seen.fd == fd && seen.ktime_ns >= state.generation {
        if state.sk == 0 {
            state.sk = seen.sk;
        }
        state.sk_family = seen.family;
        state.sk_protocol = seen.protocol;
    }
}

/// The `struct sock` of the current process's `fd`, with its family and protocol:
/// `current->files->fdt->fd[fd]->private_data->sk`, at offsets from the kernel's BTF. The
/// file must be a socket's: its `private_data` is a `struct socket` whose `file` points
/// back at it (any other file's private data does not). Read with `probe_read_kernel`,
/// which fails cleanly on a bad pointer.
#[inline(always)]
fn sock_of_fd(fd: u32, offsets: &KernelOffsets) -> Option<(u64, u16, u16)> {
    #[inline(always)]
    fn read<T>(address: u64, offset: u32) -> Option<T> {
        unsafe { bpf_probe_read_kernel((address + u64::from(offset)) as *const T) }.ok()
    }
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, offsets.task_files)?;
    let fdt: u64 = read(files, offsets.files_fdt)?;
    let max_fds: u32 = read(fdt, offsets.fdtable_max_fds)?;
    if fd >= max_fds {
        return None;
    }
    let fds: u64 = read(fdt, offsets.fdtable_fd)?;
    let file: u64 = read(fds + 8 * u64::from(fd), 0)?;
    let socket: u64 = read(file, offsets.file_private_data)?;
    if file == 0 || socket == 0 || read::<u64>(socket, offsets.socket_file)? != file {
        return None;
    }
    let sk: u64 = read(socket, offsets.socket_sk)?;
    if sk == 0 {
        return None;
    }
    Some((
        sk,
        read(sk, offsets.sock_family)?,
        read(sk, offsets.sock_protocol)?,
    ))
}

/// Called from a data syscall's exit: stop following non-TCP sockets, and tell userspace
/// the 4-tuple the first time it is known. Returns false when the socket was dropped.
#[inline(always)]
pub fn check_socket(id: u64, key: SockKey, state: *mut ConnState) -> bool {
    let state = unsafe { &mut *state };
    if state.addr_sent != 0 && state.sk_family != 0 {
        return true; // the common case: nothing left to learn
    }
    learn_sock(id, key.fd, state);
    let now = unsafe { bpf_ktime_get_ns() };
    let conn = ConnId {
        tgid: key.tgid,
        fd: key.fd,
        generation: state.generation,
    };
    let family = state.sk_family;
    if family != 0 {
        let tcp = (family == AF_INET || family == AF_INET6) && state.sk_protocol == IPPROTO_TCP;
        if !tcp {
            let (role, positions) = (state.role, state.position);
            let _ = SOCKETS.remove(key);
            emit_close(id, now, conn, role, CLOSE_NOT_TCP, positions);
            return false;
        }
    }
    if state.addr_sent == 0 && state.sk != 0 {
        if let Some(tuple) = SOCK_TUPLES.get_ptr(state.sk) {
            state.addr_sent = 1;
            let tuple = unsafe { *tuple };
            // Only TCP sockets have tuples (`try_sock_set_state`).
            state.sk_family = tuple.family;
            state.sk_protocol = IPPROTO_TCP;
            emit_conn(EVENT_CONN_ADDR, id, now, conn, state.role, 0, tuple);
        }
    }
    if state.sk == 0 || state.sk_family == 0 {
        // Learnt in one of the process's next socket calls on it; meanwhile bytes count.
        want_sock(id);
    }
    true
}

/// `sched:sched_process_exit`: a process is gone, and with it all its sockets.
pub fn try_process_exit(ctx: &TracePointContext) -> Result<u32, u32> {
    const GROUP_DEAD: usize = 32;
    let group_dead = unsafe { ctx.read_at::<u8>(GROUP_DEAD) }.map_err(|_| 0u32)?;
    let id = bpf_get_current_pid_tgid();
    if group_dead == 0 || !is_traced((id >> 32) as u32) {
        return Ok(0);
    }
    let conn = ConnId {
        tgid: (id >> 32) as u32,
        fd: 0,
        generation: 0,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    emit_conn(
        EVENT_PROCESS_EXIT,
        id,
        now,
        conn,
        0,
        0,
        SockTuple::default(),
    );
    Ok(0)
}

#[inline(always)]
pub fn emit_conn(
    kind: u32,
    id: u64,
    now: u64,
    conn: ConnId,
    role: u32,
    reason: u32,
    tuple: SockTuple,
) {
    emit(kind, id, now, conn, role, reason, tuple, [0, 0]);
}

#[inline(always)]
fn emit_close(id: u64, now: u64, conn: ConnId, role: u32, reason: u32, positions: [u64; 2]) {
    emit(
        EVENT_CONN_CLOSE,
        id,
        now,
        conn,
        role,
        reason,
        SockTuple::default(),
        positions,
    );
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit(
    kind: u32,
    id: u64,
    now: u64,
    conn: ConnId,
    role: u32,
    reason: u32,
    tuple: SockTuple,
    positions: [u64; 2],
) {
    // Built in the ring's memory, not on the stack: a fork's callback emits these from a
    // `bpf_loop` inside `bpf_for_each_map_elem`, where the verifier adds the stacks of
    // every frame up to 512 bytes (a stack copy took the callback to 488).
    let Some(mut entry) = CONN_EVENTS.reserve::<ConnEvent>(0) else {
        count(COUNTER_RINGBUF_CONN_LOST);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: the entry is reserved for us and as large as a ConnEvent (no padding); every
    // field is written before it is submitted.
    unsafe {
        (*event).header = EventHeader {
            kind,
            tid: id as u32,
            ktime_ns: now,
            conn,
        };
        (*event).role = role;
        (*event).reason = reason;
        (*event).tuple = tuple;
        (*event).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*event).positions = positions;
    }
    entry.submit(0);
}

/// The remote address a client passed to `connect`, or None if it is not IPv4/IPv6.
#[inline(always)]
fn read_sockaddr(addr: u64) -> Option<SockTuple> {
    if addr == 0 {
        return None;
    }
    // sockaddr_in6 is the larger of the two: family(2) port(2) flowinfo(4) addr(16) scope(4).
    let raw: [u8; 28] = unsafe { bpf_probe_read_user(addr as *const [u8; 28]) }.ok()?;
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let remote_port = u16::from_be_bytes([raw[2], raw[3]]);
    let remote_addr = match family {
        AF_INET => v4_mapped([raw[4], raw[5], raw[6], raw[7]]),
        AF_INET6 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&raw[8..24]);
            a
        }
        _ => return None,
    };
    Some(SockTuple {
        family,
        remote_port,
        remote_addr,
        ..SockTuple::default()
    })
}

#[inline(always)]
fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}
