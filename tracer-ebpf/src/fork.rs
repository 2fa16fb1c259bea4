//! Forked servers: a socket followed in a process stays followed in a child it forks
//! (PostgreSQL's postmaster accepts and each backend serves; prefork HTTP servers). At
//! `task:task_newtask` of a new process (not a thread), before it first runs, the parent's
//! followed sockets are gathered from `SOCKETS` and entered again under the child's tgid,
//! each as a new connection announced to userspace, so the child's first read (e.g. a
//! startup message) is already captured.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::bpf_map_def,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_for_each_map_elem, bpf_loop},
    },
    programs::TracePointContext,
};
use tracer_common::{
    ConnId, ConnState, SockKey, SockTuple, COUNTER_CONN_TABLE_FULL, COUNTER_INHERITED_SKIPPED,
    EVENT_CONN_OPEN, MAX_INHERITED_SOCKETS, OPEN_INHERITED, OPEN_INHERITED_MID_STREAM,
    SELECT_LISTED,
};

use crate::{
    conn::emit_conn,
    maps::{
        count, CAPTURE_CONFIG, FORK_SCRATCH, SOCKETS, SOCKET_OWNERS, SOCK_TUPLES, TRACED_PROCESSES,
    },
    select::is_traced,
};

/// Offsets in `task:task_newtask` (see its `format` file).
const NEW_PID: usize = 8;
const CLONE_FLAGS: usize = 32;
/// A new thread of the same process, not a child process.
const CLONE_THREAD: u64 = 0x0001_0000;

#[repr(C)]
struct Gather {
    parent: u32,
}

#[repr(C)]
struct Hand {
    id: u64,
    child: u32,
    count: u32,
    now: u64,
}

/// `task:task_newtask`, in the parent's context; new threads are passed over.
pub fn try_process_fork(ctx: &TracePointContext) -> Result<u32, u32> {
    let id = bpf_get_current_pid_tgid();
    let parent = (id >> 32) as u32;
    if !is_traced(parent) {
        return Ok(0);
    }
    let flags = unsafe { ctx.read_at::<u64>(CLONE_FLAGS) }.map_err(|_| 0u32)?;
    if flags & CLONE_THREAD != 0 {
        return Ok(0);
    }
    let child = unsafe { ctx.read_at::<i32>(NEW_PID) }.map_err(|_| 0u32)? as u32;
    if child == 0 || child == id as u32 {
        return Ok(0);
    }
    if CAPTURE_CONFIG
        .get(0)
        .is_some_and(|config| config.mode == SELECT_LISTED)
    {
        let _ = TRACED_PROCESSES.insert(&child, &1, 0);
    }
    if unsafe { SOCKET_OWNERS.get(&parent) }.is_none() {
        return Ok(0); // it never had a followed socket: nothing to walk the table for
    }
    let Some(scratch) = FORK_SCRATCH.get_ptr_mut(0) else {
        return Ok(0);
    };
    // SAFETY: per-CPU slot; task_newtask runs its programs with preemption disabled (it
    // is not a faultable syscall tracepoint), so no other fork uses it meanwhile.
    unsafe { (*scratch).count = 0 };
    let mut gather = Gather { parent };
    let sockets = core::ptr::addr_of!(SOCKETS) as *mut bpf_map_def as *mut c_void;
    unsafe {
        bpf_for_each_map_elem(
            sockets,
            gather_socket as *mut c_void,
            core::ptr::addr_of_mut!(gather).cast(),
            0,
        )
    };
    let found = unsafe { (*scratch).count }.min(MAX_INHERITED_SOCKETS);
    if found == 0 {
        return Ok(0);
    }
    let mut hand = Hand {
        id,
        child,
        count: found,
        now: unsafe { bpf_ktime_get_ns() },
    };
    unsafe {
        bpf_loop(
            found,
            hand_socket as *mut c_void,
            core::ptr::addr_of_mut!(hand).cast(),
            0,
        )
    };
    Ok(0)
}

/// One `SOCKETS` entry: kept if it is the parent's. 0 to go on.
extern "C" fn gather_socket(
    _map: *mut c_void,
    key: *mut SockKey,
    value: *mut ConnState,
    context: *mut c_void,
) -> i64 {
    // SAFETY: the helper passes a valid key, value and the caller's Gather.
    let (key, parent) = unsafe { (*key, (*context.cast::<Gather>()).parent) };
    if key.tgid != parent {
        return 0;
    }
    let Some(scratch) = FORK_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    let n = unsafe { (*scratch).count };
    if n >= MAX_INHERITED_SOCKETS {
        count(COUNTER_INHERITED_SKIPPED);
        return 0;
    }
    let at = n as usize;
    if at < MAX_INHERITED_SOCKETS as usize {
        // Element by element through pointers: the arrays are too large for the stack.
        unsafe {
            let fds = core::ptr::addr_of_mut!((*scratch).fds).cast::<u32>();
            let states = core::ptr::addr_of_mut!((*scratch).states).cast::<ConnState>();
            fds.add(at).write(key.fd);
            states.add(at).write(*value);
            (*scratch).count = n + 1;
        }
    }
    0
}

/// One gathered socket, entered under the child's tgid and announced. 0 to go on.
extern "C" fn hand_socket(i: u64, context: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes the caller's Hand back.
    let hand = unsafe { &*context.cast::<Hand>() };
    let Some(scratch) = FORK_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    let at = i as usize;
    if at >= MAX_INHERITED_SOCKETS as usize || i as u32 >= hand.count {
        return 1;
    }
    // SAFETY: index checked above; the slot is this CPU's. The gathered state is made
    // the child's in place (the arrays are too large to copy to the stack).
    let (fd, state) = unsafe {
        let fds = core::ptr::addr_of!((*scratch).fds).cast::<u32>();
        let states = core::ptr::addr_of_mut!((*scratch).states).cast::<ConnState>();
        (fds.add(at).read(), &mut *states.add(at))
    };
    let moved = state.position != [0, 0] || state.tls_position != [0, 0];
    state.generation = hand.now + i;
    state.position = [0, 0];
    state.tls_position = [0, 0];
    state.addr_sent = 0;
    state.control_epoch = 0; // the parent's instructions are not the child's
    if SOCKETS
        .insert(
            SockKey {
                tgid: hand.child,
                fd,
            },
            &*state,
            0,
        )
        .is_err()
    {
        count(COUNTER_CONN_TABLE_FULL);
        return 0;
    }
    let _ = SOCKET_OWNERS.insert(&hand.child, &1, 0);
    let (sk, role, generation) = (state.sk, state.role, state.generation);
    let tuple = match unsafe { SOCK_TUPLES.get(&sk) } {
        Some(tuple) if sk != 0 => *tuple,
        _ => SockTuple::default(),
    };
    let conn = ConnId {
        tgid: hand.child,
        fd,
        generation,
    };
    let reason = if moved {
        OPEN_INHERITED_MID_STREAM
    } else {
        OPEN_INHERITED
    };
    emit_conn(
        EVENT_CONN_OPEN,
        hand.id,
        hand.now,
        conn,
        role,
        reason,
        tuple,
    );
    0
}
