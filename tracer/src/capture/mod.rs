//! The kernel side seen from userspace: load and attach the eBPF programs, read their
//! ring buffer, convert kernel time, and know which process and 4-tuple each socket is.
mod btf;
pub mod caps;
mod clock;
mod connections;
mod events;
mod loader;
pub mod procfs;
pub mod recording;
mod tcp_tables;

pub use clock::{monotonic_ns as monotonic_now, KernelClock};
pub use connections::{Connection, Connections};
pub use events::{decode, ConnChange, DataRecord, DecodeError, Direction, KernelEvent, Role};
pub use loader::{CaptureError, CaptureOptions, DataHook, KernelCapture, Selection};
pub use tcp_tables::TcpTables;
