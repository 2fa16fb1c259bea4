//! Finding TLS libraries in processes and hooking their read/write functions with
//! uprobes, so encrypted connections are traced from their plaintext.
//!
//! Uprobes attach to a file (an inode), not to a process: once a library is hooked, every
//! process that maps it, now or later, is covered. Processes are found at start-up
//! (`/proc`), when they start a program (exec events, with a few rescans while the dynamic
//! loader maps libraries) and when they `dlopen` (a uretprobe on libc's `dlopen`).
mod library;
mod maps;
mod placement;
mod probes;

pub use library::Flavour;
pub use probes::{TlsOptions, TlsProbes, TlsStatus};
