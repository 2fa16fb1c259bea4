//! tracer's kernel programs. Protocol-agnostic: they follow TCP sockets of traced
//! processes and copy the bytes that read/write-like syscalls moved, nothing more.
#![no_std]
#![no_main]

mod args;
mod capture;
mod conn;
mod fork;
mod maps;
mod select;
mod stash;
mod targets;
mod tls;

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext, TracePointContext},
};
use tracer_common::{
    DIR_EGRESS, DIR_INGRESS, SYS_READ, SYS_READV, SYS_RECVFROM, SYS_RECVMSG, SYS_SENDMSG,
    SYS_SENDTO, SYS_WRITE, SYS_WRITEV,
};

/// Entry points are thin shims; the logic lives in `try_*` functions.
macro_rules! shim {
    ($name:ident, $body:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            match ($body)(&ctx) {
                Ok(r) | Err(r) => r,
            }
        }
    };
}

macro_rules! data_syscall {
    ($exit:ident, $sys:expr, $dir:expr) => {
        shim!($exit, |ctx| capture::try_exit_data(ctx, $sys, $dir));
    };
}

data_syscall!(exit_read, SYS_READ, DIR_INGRESS);
data_syscall!(exit_readv, SYS_READV, DIR_INGRESS);
data_syscall!(exit_recvfrom, SYS_RECVFROM, DIR_INGRESS);
data_syscall!(exit_recvmsg, SYS_RECVMSG, DIR_INGRESS);
data_syscall!(exit_write, SYS_WRITE, DIR_EGRESS);
data_syscall!(exit_writev, SYS_WRITEV, DIR_EGRESS);
data_syscall!(exit_sendto, SYS_SENDTO, DIR_EGRESS);
data_syscall!(exit_sendmsg, SYS_SENDMSG, DIR_EGRESS);

/// All eight at once, for `--data-hook raw-syscalls`.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn exit_data_any(ctx: RawTracePointContext) -> i32 {
    match capture::try_exit_any(&ctx) {
        Ok(r) | Err(r) => r as i32,
    }
}

shim!(enter_connect, conn::try_enter_connect);
shim!(exit_connect, conn::try_exit_connect);
shim!(enter_accept, conn::try_enter_accept);
shim!(exit_accept, conn::try_exit_accept);
shim!(enter_socket, conn::try_enter_socket);
shim!(exit_socket, conn::try_exit_socket);
shim!(enter_close, conn::try_enter_close);
shim!(sock_set_state, conn::try_sock_set_state);
shim!(sock_length, conn::try_sock_length);
shim!(process_exit, conn::try_process_exit);
shim!(process_exec, targets::try_process_exec);
shim!(process_fork, fork::try_process_fork);

/// Uprobe entry points, one per calling convention of the hooked TLS functions.
macro_rules! probe {
    ($attr:ident, $ctx:ty, $name:ident, $body:expr) => {
        #[$attr]
        pub fn $name(ctx: $ctx) -> u32 {
            match ($body)(&ctx) {
                Ok(r) | Err(r) => r,
            }
        }
    };
}

probe!(uprobe, ProbeContext, tls_read_enter, |ctx| tls::try_enter(
    ctx,
    DIR_INGRESS,
    false
));
probe!(uprobe, ProbeContext, tls_read_ex_enter, |ctx| {
    tls::try_enter(ctx, DIR_INGRESS, true)
});
probe!(uprobe, ProbeContext, tls_write_enter, |ctx| tls::try_enter(
    ctx, DIR_EGRESS, false
));
probe!(uprobe, ProbeContext, tls_write_ex_enter, |ctx| {
    tls::try_enter(ctx, DIR_EGRESS, true)
});
probe!(uretprobe, RetProbeContext, tls_return, tls::try_return);
probe!(uprobe, ProbeContext, tls_shutdown, tls::try_shutdown);
probe!(
    uretprobe,
    RetProbeContext,
    library_loaded,
    targets::try_library_loaded
);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
