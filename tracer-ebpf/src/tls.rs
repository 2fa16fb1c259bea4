//! TLS plaintext: uprobes on the libraries' read/write functions stash the call, the
//! uretprobe copies the bytes the call actually moved, as records of the connection whose
//! socket the library uses (see `TLS_SOCKETS`), with the same limits as socket bytes.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{
    ConnId, ConnState, SockKey, SockRef, SyscallArgs, TlsCall, TlsKey, CONTROL_NO_PLAINTEXT,
    COUNTER_SYSCALL_STASH_FULL, COUNTER_TLS_CALLS, COUNTER_TLS_NO_SOCKET, DIR_EGRESS,
    PLAIN_AFTER_EXITS, SCRATCH_TLS, SYS_READV, SYS_RECVMSG, SYS_SENDMSG, SYS_TLS_READ,
    SYS_TLS_WRITE, SYS_WRITEV,
};

use crate::{
    capture::emit_records,
    maps::{count, payload_off, LAST_TLS_SOCKET, SOCKETS, TLS_CALLS, TLS_SOCKETS},
    select::is_traced,
};

/// Entry of `SSL_read(ssl, buf, num)`-like functions; `ex`: `SSL_read_ex(ssl, buf, num,
/// size_t *count)`-like, which return 1 and store the byte count.
pub fn try_enter(ctx: &ProbeContext, direction: u32, ex: bool) -> Result<u32, u32> {
    let id = bpf_get_current_pid_tgid();
    if !is_traced((id >> 32) as u32) {
        return Ok(0);
    }
    let call = TlsCall {
        ssl: ctx.arg(0).ok_or(0u32)?,
        buf: ctx.arg(1).ok_or(0u32)?,
        count_out: if ex { ctx.arg(3).ok_or(0u32)? } else { 0 },
        direction,
        _pad: 0,
        enter_ns: unsafe { bpf_ktime_get_ns() },
    };
    // Nested calls (a wrapper calling SSL_read) overwrite: the innermost one copies.
    if TLS_CALLS.insert(id, call, 0).is_err() {
        count(COUNTER_SYSCALL_STASH_FULL);
    }
    Ok(0)
}

/// Return of any read/write function: copy what it moved.
pub fn try_return(ctx: &RetProbeContext) -> Result<u32, u32> {
    let id = bpf_get_current_pid_tgid();
    let Some(call) = TLS_CALLS.get_ptr(id) else {
        return Ok(0);
    };
    let call = unsafe { *call };
    let _ = TLS_CALLS.remove(id);
    let ret: i64 = ctx.ret();
    let ret = ret as i32; // every hooked function returns a C int
    let bytes = if call.count_out != 0 {
        if ret != 1 {
            return Ok(0);
        }
        unsafe { bpf_probe_read_user(call.count_out as *const u64) }.map_err(|_| 0u32)?
    } else if ret > 0 {
        ret as u64
    } else {
        return Ok(0); // WANT_READ, errors, close_notify
    };
    let tgid = (id >> 32) as u32;
    let Some((key, state)) = tls_socket(id, tgid, call.ssl) else {
        count(COUNTER_TLS_NO_SOCKET);
        return Ok(0);
    };
    let state = unsafe { &mut *state };
    state.tls = 1;
    let dir = (call.direction & 1) as usize;
    let position = state.tls_position[dir];
    state.tls_position[dir] = position + bytes;
    let conn = ConnId {
        tgid,
        fd: key.fd,
        generation: state.generation,
    };
    if payload_off(key, state, CONTROL_NO_PLAINTEXT) {
        return Ok(0);
    }
    let args = SyscallArgs {
        buf: call.buf,
        count: bytes,
        sk: 0,
        addr: 0,
        fd: key.fd,
        syscall: if call.direction == DIR_EGRESS {
            SYS_TLS_WRITE
        } else {
            SYS_TLS_READ
        },
        sk_family: 0,
        sk_protocol: 0,
    };
    count(COUNTER_TLS_CALLS);
    // A write is stamped when the application handed its bytes to the library: its
    // return comes after the socket write, after the return to user mode where the thread
    // may be preempted, so the peer may have read, served and answered the bytes before
    // the return is seen (a call would start after the request it made was served). A
    // read is stamped at its return, when the bytes were the application's.
    let ktime_ns = if call.direction == DIR_EGRESS {
        call.enter_ns
    } else {
        unsafe { bpf_ktime_get_ns() }
    };
    emit_records(
        &args,
        conn,
        id,
        call.direction,
        position,
        bytes,
        ktime_ns,
        SCRATCH_TLS,
    );
    Ok(0)
}

/// `SSL_shutdown(ssl)`: the object may be freed and its address reused.
pub fn try_shutdown(ctx: &ProbeContext) -> Result<u32, u32> {
    let id = bpf_get_current_pid_tgid();
    let key = TlsKey {
        tgid: (id >> 32) as u32,
        _pad: 0,
        ssl: ctx.arg(0).ok_or(0u32)?,
    };
    let _ = TLS_SOCKETS.remove(key);
    Ok(0)
}

/// The followed socket under a TLS object: learnt, or else (memory BIOs) the socket that
/// last carried TLS records on this thread, which is then remembered for the object.
#[inline(always)]
fn tls_socket(id: u64, tgid: u32, ssl: u64) -> Option<(SockKey, *mut ConnState)> {
    let key = TlsKey { tgid, _pad: 0, ssl };
    if let Some(known) = TLS_SOCKETS.get_ptr(key) {
        if let Some(found) = live(tgid, unsafe { *known }) {
            return Some(found);
        }
    }
    let last = unsafe { *LAST_TLS_SOCKET.get_ptr(id)? };
    let found = live(tgid, last)?;
    let _ = TLS_SOCKETS.insert(key, last, 0);
    Some(found)
}

/// The socket a reference points at, if it is still the same connection.
#[inline(always)]
fn live(tgid: u32, socket: SockRef) -> Option<(SockKey, *mut ConnState)> {
    let key = SockKey {
        tgid,
        fd: socket.fd,
    };
    let state = SOCKETS.get_ptr_mut(key)?;
    (unsafe { (*state).generation } == socket.generation).then_some((key, state))
}

/// Called from a data syscall's exit on a followed TCP socket. True when the bytes are
/// encrypted and must not be copied: the thread is inside a TLS call (which teaches us
/// the object's socket), or the socket is already known to carry TLS. Sockets whose bytes
/// start with a TLS record header are remembered per thread for memory-BIO libraries. A
/// socket that showed none of this for `PLAIN_AFTER_EXITS` calls costs one comparison.
#[inline(always)]
pub fn socket_carries_tls(
    id: u64,
    key: SockKey,
    state: &mut ConnState,
    args: &SyscallArgs,
) -> bool {
    if state.plain_exits >= PLAIN_AFTER_EXITS {
        return false; // plain: checked enough (see PLAIN_AFTER_EXITS)
    }
    let socket = SockRef {
        fd: key.fd,
        _pad: 0,
        generation: state.generation,
    };
    if let Some(call) = TLS_CALLS.get_ptr(id) {
        let tls_key = TlsKey {
            tgid: key.tgid,
            _pad: 0,
            ssl: unsafe { (*call).ssl },
        };
        // An object already tied to another live socket is not using this one (a memory
        // BIO, or a call whose return was never seen): leave this socket alone.
        let elsewhere = TLS_SOCKETS
            .get_ptr(tls_key)
            .map(|known| unsafe { *known })
            .is_some_and(|known| known != socket && live(key.tgid, known).is_some());
        if !elsewhere {
            let _ = TLS_SOCKETS.insert(tls_key, socket, 0);
            state.tls = 1;
            return true;
        }
    }
    if state.tls != 0 {
        let _ = LAST_TLS_SOCKET.insert(id, socket, 0);
        return true;
    }
    if starts_with_tls_record(args) {
        let _ = LAST_TLS_SOCKET.insert(id, socket, 0);
    } else {
        state.plain_exits += 1;
    }
    false
}

/// Whether the syscall's first bytes are a TLS record header: content type 20–23
/// (change_cipher_spec, alert, handshake, application_data), version 3.x.
#[inline(always)]
fn starts_with_tls_record(args: &SyscallArgs) -> bool {
    let first = match args.syscall {
        SYS_READV | SYS_WRITEV => first_iov_base(args.buf),
        SYS_RECVMSG | SYS_SENDMSG => unsafe { bpf_probe_read_user((args.buf + 16) as *const u64) }
            .ok()
            .and_then(first_iov_base),
        _ => Some(args.buf),
    };
    let Some(first) = first else {
        return false;
    };
    let Ok(header) = (unsafe { bpf_probe_read_user(first as *const [u8; 3]) }) else {
        return false;
    };
    (20..=23).contains(&header[0]) && header[1] == 3 && header[2] <= 4
}

#[inline(always)]
fn first_iov_base(iov: u64) -> Option<u64> {
    unsafe { bpf_probe_read_user(iov as *const u64) }.ok()
}
