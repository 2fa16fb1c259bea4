//! Reading syscall tracepoint records: `__syscall_nr` at 8, arguments (or `ret`) from 16.
use aya_ebpf::programs::TracePointContext;

const ARGS_OFFSET: usize = 16;

#[inline(always)]
pub fn syscall_arg(ctx: &TracePointContext, index: usize) -> u64 {
    unsafe { ctx.read_at::<u64>(ARGS_OFFSET + 8 * index) }.unwrap_or(0)
}

#[inline(always)]
pub fn syscall_ret(ctx: &TracePointContext) -> i64 {
    unsafe { ctx.read_at::<i64>(ARGS_OFFSET) }.unwrap_or(-1)
}
