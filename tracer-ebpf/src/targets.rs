//! Where TLS libraries may appear: new programs (`exec`) and late `dlopen`s. Userspace
//! answers both by reading the process's `/proc/<pid>/maps`.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    programs::{RetProbeContext, TracePointContext},
};
use tracer_common::{ConnId, SockTuple, EVENT_LIBRARY_LOADED, EVENT_PROCESS_EXEC};

use crate::{conn::emit_conn, select::is_traced};

/// `sched:sched_process_exec`.
pub fn try_process_exec(_ctx: &TracePointContext) -> Result<u32, u32> {
    announce(EVENT_PROCESS_EXEC);
    Ok(0)
}

/// Return of `dlopen`: a handle means a library may have been mapped.
pub fn try_library_loaded(ctx: &RetProbeContext) -> Result<u32, u32> {
    let handle: u64 = ctx.ret();
    if handle != 0 {
        announce(EVENT_LIBRARY_LOADED);
    }
    Ok(0)
}

#[inline(always)]
fn announce(kind: u32) {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !is_traced(tgid) {
        return;
    }
    let conn = ConnId {
        tgid,
        fd: 0,
        generation: 0,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    emit_conn(kind, id, now, conn, 0, 0, SockTuple::default());
}
