//! Per-thread syscall arguments between a syscall's enter and its exit.
//!
//! Each thread keeps one slot that is overwritten in place: a lookup and a store cost far
//! less than a hash insert plus a delete on every syscall. The map is LRU, so slots of
//! threads that exited age out.
use tracer_common::{SyscallArgs, COUNTER_SYSCALL_STASH_FULL, SYS_NONE};

use crate::maps::{count, ACTIVE_SYSCALLS};

#[inline(always)]
pub fn put(id: u64, args: SyscallArgs) {
    if let Some(slot) = ACTIVE_SYSCALLS.get_ptr_mut(id) {
        // SAFETY: this thread's own slot; only this thread writes it.
        unsafe { *slot = args };
    } else if ACTIVE_SYSCALLS.insert(id, args, 0).is_err() {
        count(COUNTER_SYSCALL_STASH_FULL);
    }
}

/// The syscall in progress on this thread, for tracepoints that fire in the middle of it.
#[inline(always)]
pub fn current(id: u64) -> Option<*mut SyscallArgs> {
    let slot = ACTIVE_SYSCALLS.get_ptr_mut(id)?;
    // SAFETY: pointer from a successful lookup.
    (unsafe { (*slot).syscall } != SYS_NONE).then_some(slot)
}

/// Ends the syscall in progress: returns its arguments if it was `syscall`.
#[inline(always)]
pub fn take(id: u64, syscall_matches: impl Fn(u32) -> bool) -> Option<SyscallArgs> {
    let slot = current(id)?;
    // SAFETY: this thread's own slot.
    let args = unsafe { *slot };
    unsafe { (*slot).syscall = SYS_NONE };
    syscall_matches(args.syscall).then_some(args)
}
