//! Reading syscall arguments: from the tracepoint record (`__syscall_nr` at 8, arguments or
//! `ret` from 16), or, at a syscall's exit, from the registers the thread entered with.
use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    programs::TracePointContext,
    EbpfContext,
};

const ARGS_OFFSET: usize = 16;

/// The trace record is the program's context: its fields are read with plain loads (the
/// verifier bounds them by the record's size), not a probe_read helper call, on every data
/// syscall of the host.
#[inline(always)]
fn record_u64(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: `offset` is 8-aligned and inside the syscall tracepoints' records (arguments
    // up to six, or `ret`, from offset 16).
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(offset).cast::<u64>()) }
}

#[inline(always)]
pub fn syscall_arg(ctx: &TracePointContext, index: usize) -> u64 {
    record_u64(ctx, ARGS_OFFSET + 8 * index)
}

#[inline(always)]
pub fn syscall_ret(ctx: &TracePointContext) -> i64 {
    record_u64(ctx, ARGS_OFFSET) as i64
}

/// The argument registers of x86-64's `struct pt_regs`, from `r10` (offset 56) to
/// `orig_ax` (offset 120): the syscall's number and its first four arguments.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallRegs {
    r10: u64,
    _r9: u64,
    _r8: u64,
    _ax: u64,
    _cx: u64,
    dx: u64,
    si: u64,
    di: u64,
    pub number: u64,
}

const REGS_OFFSET: usize = 56;
/// `cs` and `orig_ax` (the syscall number) in x86-64's `struct pt_regs`; `cs` of 64-bit user code.
const CS_OFFSET: usize = 136;
const ORIG_AX_OFFSET: usize = 120;
const DX_OFFSET: usize = 96;
const SI_OFFSET: usize = 104;
const DI_OFFSET: usize = 112;
const USER_CS: u64 = 0x33;

impl SyscallRegs {
    /// The current thread's syscall arguments as it entered the kernel. The kernel keeps
    /// them in the saved user registers until the syscall returns (only `ax` takes the
    /// return value), so a syscall's exit needs no program at its entry.
    #[inline(always)]
    pub fn current() -> Option<Self> {
        // SAFETY: helpers available to tracing programs (Linux 5.15+); the registers are
        // read with probe_read_kernel, which fails cleanly rather than faulting.
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) };
        if regs == 0 {
            return None;
        }
        // The helper returns a BTF-typed pointer: its members are read with plain loads,
        // which the verifier checks against `struct pt_regs` and the JIT guards, instead
        // of a probe_read_kernel call per syscall (a tenth of the data path's time).
        let at = |offset: usize| unsafe {
            core::ptr::read_volatile((regs as usize + offset) as *const u64)
        };
        Some(Self {
            r10: at(REGS_OFFSET),
            _r9: 0,
            _r8: 0,
            _ax: 0,
            _cx: 0,
            dx: at(DX_OFFSET),
            si: at(SI_OFFSET),
            di: at(DI_OFFSET),
            number: at(ORIG_AX_OFFSET),
        })
    }

    /// The syscall number saved in the registers at `regs` (a `struct pt_regs *`, as
    /// `raw_syscalls:sys_exit` passes it).
    #[inline(always)]
    pub fn number_at(regs: u64) -> Option<u64> {
        // SAFETY: probe_read_kernel fails cleanly on a bad address.
        unsafe { bpf_probe_read_kernel((regs as usize + ORIG_AX_OFFSET) as *const u64) }.ok()
    }

    /// The registers at `regs`, if the thread entered in 64-bit mode (user code segment
    /// `__USER_CS`): a 32-bit task's syscall numbers mean other calls.
    #[inline(always)]
    pub fn native_at(regs: u64) -> Option<Self> {
        let cs = unsafe { bpf_probe_read_kernel((regs as usize + CS_OFFSET) as *const u64) };
        if cs.ok()? != USER_CS {
            return None;
        }
        unsafe { bpf_probe_read_kernel((regs as usize + REGS_OFFSET) as *const SyscallRegs) }.ok()
    }

    /// Argument `index` (0–3) in the syscall calling convention (di, si, dx, r10).
    #[inline(always)]
    pub fn arg(&self, index: usize) -> u64 {
        match index {
            0 => self.di,
            1 => self.si,
            2 => self.dx,
            _ => self.r10,
        }
    }
}
