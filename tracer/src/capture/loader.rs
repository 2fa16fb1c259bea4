//! Loading and attaching the eBPF programs, with checks that say what is missing.
use std::{io, path::Path};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{uprobe::UProbeScope, ProgramError, RawTracePoint, TracePoint, UProbe},
    Ebpf, EbpfLoader,
};
use thiserror::Error;
use tracer_common::{
    CaptureConfig, ConnControl, ConnId, ConnState, KernelOffsets, SockKey, CONTROL_NO_PAYLOAD,
    CONTROL_NO_PLAINTEXT, COUNTERS, ROLE_CLIENT, ROLE_SERVER, SELECT_ALL, SELECT_LISTED,
};

use super::{clock::monotonic_ns, procfs::ExistingConnection, Role};
use crate::tls::TlsOptions;

/// The compiled kernel programs (empty when built with `TRACER_EBPF_STUB=1`).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

const TRACEFS: &str = "/sys/kernel/tracing";
const BTF: &str = "/sys/kernel/btf/vmlinux";
const BPF_NOEXIST: u64 = 1;

/// Which processes the kernel side follows.
#[derive(Clone, Debug, Default)]
pub enum Selection {
    /// Every process except the agent.
    #[default]
    All,
    /// Only these tgids.
    Pids(Vec<u32>),
}

#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// Ring buffer size; a power of two, at least one page.
    pub ring_buffer_bytes: u32,
    pub selection: Selection,
    pub tls: TlsOptions,
    /// Leave the optional tracepoints unattached, as on kernels that lack them (tests of
    /// the fallbacks).
    pub without_optional_tracepoints: bool,
    pub data_hook: DataHook,
}

/// Where the data path's program runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DataHook {
    /// One program per data syscall's exit tracepoint (`syscalls:sys_exit_read`, …):
    /// runs only for those eight syscalls.
    #[default]
    SyscallTracepoints,
    /// One program at `raw_syscalls:sys_exit` for every syscall of the host, dispatching
    /// on the syscall number: no per-syscall trace record, but a run for every syscall.
    RawSyscalls,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: 32 * 1024 * 1024,
            selection: Selection::All,
            tls: TlsOptions::default(),
            without_optional_tracepoints: false,
            data_hook: DataHook::default(),
        }
    }
}

#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("tracer must run as root (it loads eBPF programs); run it with sudo")]
    NotRoot,
    #[error("tracer lacks the capability {0}, needed to {1}; add it to the container (the DaemonSet in deploy/k8s/agent.yaml lists what the agent needs)")]
    MissingCapability(&'static str, &'static str),
    #[error("tracefs is not available at {TRACEFS} and mounting it failed ({0}); mount it with `mount -t tracefs nodev {TRACEFS}`")]
    NoTracefs(io::Error),
    #[error("the kernel has no BTF ({BTF} is missing); tracer needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf,
    #[error("this tracer binary was built without its eBPF programs (TRACER_EBPF_STUB=1); rebuild with `cargo xtask build`")]
    StubObject,
    #[error("ring buffer size {0} must be a power of two and at least 4096 bytes")]
    RingBufferSize(u32),
    #[error("loading the eBPF object failed: {0}")]
    Load(Box<aya::EbpfError>),
    #[error("the kernel refused program `{program}`: {reason}")]
    Refused { program: String, reason: String },
    #[error("attaching `{program}` to tracepoint {category}:{name} failed: {source}")]
    Attach {
        program: String,
        category: String,
        name: String,
        source: Box<ProgramError>,
    },
    #[error("eBPF map `{0}` is missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF map `{map}`: {source}")]
    Map {
        map: &'static str,
        source: Box<aya::maps::MapError>,
    },
}

/// One program and the tracepoints it runs on.
struct Attachment {
    program: &'static str,
    tracepoints: &'static [(&'static str, &'static str)],
    /// Optional tracepoints (newer kernels) only warn when missing.
    required: bool,
    /// A data syscall's exit: replaced by `RAW_DATA_EXIT` with `DataHook::RawSyscalls`.
    data_exit: bool,
}

const fn syscall(
    program: &'static str,
    tracepoints: &'static [(&'static str, &'static str)],
) -> Attachment {
    Attachment {
        program,
        tracepoints,
        required: true,
        data_exit: false,
    }
}

/// A data syscall's exit program.
const fn data_exit(
    program: &'static str,
    tracepoint: &'static [(&'static str, &'static str)],
) -> Attachment {
    Attachment {
        data_exit: true,
        ..syscall(program, tracepoint)
    }
}

const SOCK_LENGTH: &str = "sock_length";
/// The one program that replaces the data exits with `DataHook::RawSyscalls`.
const RAW_DATA_EXIT: &str = "exit_data_any";

const ATTACHMENTS: &[Attachment] = &[
    data_exit("exit_read", &[("syscalls", "sys_exit_read")]),
    data_exit("exit_readv", &[("syscalls", "sys_exit_readv")]),
    data_exit("exit_recvfrom", &[("syscalls", "sys_exit_recvfrom")]),
    data_exit("exit_recvmsg", &[("syscalls", "sys_exit_recvmsg")]),
    data_exit("exit_write", &[("syscalls", "sys_exit_write")]),
    data_exit("exit_writev", &[("syscalls", "sys_exit_writev")]),
    data_exit("exit_sendto", &[("syscalls", "sys_exit_sendto")]),
    data_exit("exit_sendmsg", &[("syscalls", "sys_exit_sendmsg")]),
    syscall("enter_connect", &[("syscalls", "sys_enter_connect")]),
    syscall("exit_connect", &[("syscalls", "sys_exit_connect")]),
    syscall(
        "enter_accept",
        &[
            ("syscalls", "sys_enter_accept"),
            ("syscalls", "sys_enter_accept4"),
        ],
    ),
    syscall(
        "exit_accept",
        &[
            ("syscalls", "sys_exit_accept"),
            ("syscalls", "sys_exit_accept4"),
        ],
    ),
    // Which sockets are not TCP, known at creation (see `NOT_TCP_SOCKETS`).
    syscall("enter_socket", &[("syscalls", "sys_enter_socket")]),
    syscall("exit_socket", &[("syscalls", "sys_exit_socket")]),
    syscall("enter_close", &[("syscalls", "sys_enter_close")]),
    syscall("sock_set_state", &[("sock", "inet_sock_set_state")]),
    syscall("process_exit", &[("sched", "sched_process_exit")]),
    syscall("process_exec", &[("sched", "sched_process_exec")]),
    syscall("process_fork", &[("task", "task_newtask")]),
    // Linux ≥ 6.3, and only where the kernel's BTF does not give the fd → sock walk's
    // offsets (they fire for every socket call on the host). Without either, accepted
    // sockets get their 4-tuple from /proc instead.
    Attachment {
        program: SOCK_LENGTH,
        tracepoints: &[("sock", "sock_send_length"), ("sock", "sock_recv_length")],
        required: false,
        data_exit: false,
    },
];

/// The loaded and attached kernel programs plus the maps userspace talks to.
pub struct KernelCapture {
    ebpf: Ebpf,
    /// Connection events; drained before `data` so opens precede their data.
    conn_events: RingBuf<MapData>,
    data_events: RingBuf<MapData>,
    /// Optional tracepoints that could not be attached, for `status` and logs.
    pub missing_optional: Vec<String>,
    /// What `CAPTURE_CONFIG[0]` holds: rewritten with the next epoch whenever
    /// `CONN_CONTROL` changes.
    config: CaptureConfig,
}

impl KernelCapture {
    /// Checks the host, loads the programs and attaches them. Tracing starts on return.
    pub fn start(options: &CaptureOptions) -> Result<Self, CaptureError> {
        preflight()?;
        let size = options.ring_buffer_bytes;
        if !size.is_power_of_two() || size < 4096 {
            return Err(CaptureError::RingBufferSize(size));
        }
        raise_memlock_limit();
        let cpus = aya::util::nr_cpus().map(|n| n as u32).unwrap_or(256);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", size)
            .map_max_entries("DATA_SCRATCH", cpus * tracer_common::SCRATCH_SLOTS_PER_CPU)
            .load(EBPF_OBJECT)
            .map_err(|e| CaptureError::Load(Box::new(e)))?;
        // (A test runs as on a kernel with neither: sockets then learnt from /proc.)
        let offsets = (!options.without_optional_tracepoints)
            .then(super::btf::Btf::from_sys_fs)
            .flatten()
            .as_ref()
            .and_then(super::btf::kernel_offsets)
            .unwrap_or_default();
        let config = configure(&mut ebpf, &options.selection, offsets)?;
        let mut missing_optional = Vec::new();
        for attachment in ATTACHMENTS {
            if attachment.program == SOCK_LENGTH && offsets.known() {
                continue; // the data exits find each socket's sock themselves
            }
            if options.without_optional_tracepoints && !attachment.required {
                let names = attachment
                    .tracepoints
                    .iter()
                    .map(|(c, t)| format!("{c}:{t}"));
                missing_optional.extend(names);
                continue;
            }
            if options.data_hook == DataHook::RawSyscalls && attachment.data_exit {
                continue;
            }
            attach(&mut ebpf, attachment, &mut missing_optional)?;
        }
        if options.data_hook == DataHook::RawSyscalls {
            attach_raw(&mut ebpf, RAW_DATA_EXIT, "sys_exit")?;
        }
        if options.tls.enabled {
            for program in UPROBE_PROGRAMS {
                uprobe(&mut ebpf, program)?
                    .load()
                    .map_err(|e| refused(program, e))?;
            }
        }
        let conn_events = take_ring(&mut ebpf, "CONN_EVENTS")?;
        let data_events = take_ring(&mut ebpf, "EVENTS")?;
        Ok(Self {
            ebpf,
            conn_events,
            data_events,
            missing_optional,
            config,
        })
    }

    /// Hands every record in the ring buffer to `handle`; returns how many there were.
    /// Hands every connection record, then every data record, to the two handlers; returns
    /// how many records there were. Draining connection events first guarantees that a
    /// data record committed before a close was read is handed over in the same call.
    /// Reads both rings: connection events, then data, then the connection events
    /// emitted while the data was read (`late`): a socket's open and 4-tuple are emitted
    /// before its first bytes, so every open or tuple a data record read here depends on
    /// is in one of the two connection reads.
    pub fn drain(
        &mut self,
        mut conn: impl FnMut(&[u8]),
        mut data: impl FnMut(&[u8]),
        mut late: impl FnMut(&[u8]),
    ) -> usize {
        let mut n = 0;
        while let Some(item) = self.conn_events.next() {
            conn(&item);
            n += 1;
        }
        while let Some(item) = self.data_events.next() {
            data(&item);
            n += 1;
        }
        while let Some(item) = self.conn_events.next() {
            late(&item);
            n += 1;
        }
        n
    }

    /// Follows connections that existed before the agent started. Sockets the kernel side
    /// already knows (accepted or connected since attach) are left alone.
    pub fn seed(&mut self, existing: &ExistingConnection) -> Result<Option<ConnId>, CaptureError> {
        let generation = monotonic_ns();
        let key = SockKey {
            tgid: existing.pid,
            fd: existing.fd,
        };
        let role = match existing.role {
            Role::Client => ROLE_CLIENT,
            Role::Server => ROLE_SERVER,
            Role::Unknown => 0,
        };
        let state = ConnState {
            generation,
            sk: 0,
            position: [0, 0],
            role,
            addr_sent: 1,
            tls: 0,
            plain_exits: 0,
            sk_family: 0,
            sk_protocol: 0,
            tls_position: [0, 0],
            control_epoch: 0,
            control_flags: 0,
        };
        let mut sockets = self.hash_map::<SockKey, ConnState>("SOCKETS")?;
        let inserted = sockets.insert(key, state, BPF_NOEXIST);
        if inserted.is_ok() {
            // Its forks inherit it (see tracer-ebpf's fork.rs).
            let mut owners = self.hash_map::<u32, u32>("SOCKET_OWNERS")?;
            let _ = owners.insert(key.tgid, 1, 0);
        }
        match inserted {
            Ok(()) => Ok(Some(ConnId {
                tgid: key.tgid,
                fd: key.fd,
                generation,
            })),
            Err(_) => Ok(None), // already followed
        }
    }

    /// Turns payload copying for one connection off (or back on); positions keep counting.
    /// `tls`: the plaintext from TLS uprobes too, not only the socket's own bytes.
    pub fn set_payload_capture(
        &mut self,
        conn: ConnId,
        enabled: bool,
        tls: bool,
    ) -> Result<(), CaptureError> {
        let key = SockKey {
            tgid: conn.tgid,
            fd: conn.fd,
        };
        let mut control = self.hash_map::<SockKey, ConnControl>("CONN_CONTROL")?;
        let result = if enabled {
            control.remove(&key)
        } else {
            let flags = if tls {
                CONTROL_NO_PAYLOAD | CONTROL_NO_PLAINTEXT
            } else {
                CONTROL_NO_PAYLOAD
            };
            let value = ConnControl {
                generation: conn.generation,
                flags,
                _pad: 0,
            };
            control.insert(key, value, 0)
        };
        result
            .or_else(ignore_missing)
            .map_err(|e| map_error("CONN_CONTROL", e))?;
        self.next_control_epoch()
    }

    /// Tells the data path that `CONN_CONTROL` changed: connections look their flags up
    /// again (after the change, which is already in the map).
    fn next_control_epoch(&mut self) -> Result<(), CaptureError> {
        self.config.control_epoch = self.config.control_epoch.wrapping_add(1);
        let map = self
            .ebpf
            .map_mut("CAPTURE_CONFIG")
            .ok_or(CaptureError::MissingMap("CAPTURE_CONFIG"))?;
        Array::<_, CaptureConfig>::try_from(map)
            .and_then(|mut config| config.set(0, self.config, 0))
            .map_err(|e| map_error("CAPTURE_CONFIG", e))
    }

    /// Drops kernel state for sockets of a process that exited without closing them.
    pub fn forget(&mut self, conn: ConnId) {
        let key = SockKey {
            tgid: conn.tgid,
            fd: conn.fd,
        };
        if let Ok(mut sockets) = self.hash_map::<SockKey, ConnState>("SOCKETS") {
            if sockets
                .get(&key, 0)
                .is_ok_and(|state| state.generation == conn.generation)
            {
                let _ = sockets.remove(&key);
            }
        }
        if let Ok(mut control) = self.hash_map::<SockKey, ConnControl>("CONN_CONTROL") {
            let _ = control.remove(&key);
        }
    }

    /// Attaches a uprobe program at a file offset, for every process mapping the file.
    /// Detached when the agent exits (the links belong to the loaded programs).
    pub fn attach_uprobe(
        &mut self,
        program: &str,
        target: &Path,
        offset: u64,
    ) -> Result<(), CaptureError> {
        uprobe(&mut self.ebpf, program)?
            .attach(offset, target, UProbeScope::AllProcesses)
            .map(|_| ())
            .map_err(|e| CaptureError::Refused {
                program: program.into(),
                reason: format!("attaching to {} at {offset:#x}: {e}", target.display()),
            })
    }

    /// Kernel-side counters summed over CPUs, in `tracer_common::COUNTER_NAMES` order.
    pub fn counters(&self) -> [u64; COUNTERS as usize] {
        let mut totals = [0u64; COUNTERS as usize];
        let Some(map) = self.ebpf.map("COUNTERS_MAP") else {
            return totals;
        };
        let Ok(counters) = PerCpuArray::<_, u64>::try_from(map) else {
            return totals;
        };
        for (index, total) in totals.iter_mut().enumerate() {
            if let Ok(values) = counters.get(&(index as u32), 0) {
                *total = values.iter().sum();
            }
        }
        totals
    }

    fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, CaptureError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(CaptureError::MissingMap(name))?;
        HashMap::try_from(map).map_err(|e| map_error(name, e))
    }
}

/// The uprobe programs, loaded at start and attached as TLS libraries are found.
const UPROBE_PROGRAMS: &[&str] = &[
    "tls_read_enter",
    "tls_read_ex_enter",
    "tls_write_enter",
    "tls_write_ex_enter",
    "tls_return",
    "tls_shutdown",
    "library_loaded",
];

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, CaptureError> {
    program(ebpf, name)
}

/// A program of the object as its kind, or why not.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, CaptureError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| CaptureError::Refused {
            program: name.into(),
            reason: "not in the eBPF object".into(),
        })?
        .try_into()
        .map_err(|e: ProgramError| CaptureError::Refused {
            program: name.into(),
            reason: e.to_string(),
        })
}

fn take_ring(ebpf: &mut Ebpf, name: &'static str) -> Result<RingBuf<MapData>, CaptureError> {
    let map = ebpf.take_map(name).ok_or(CaptureError::MissingMap(name))?;
    RingBuf::try_from(map).map_err(|e| map_error(name, e))
}

fn map_error(map: &'static str, source: aya::maps::MapError) -> CaptureError {
    CaptureError::Map {
        map,
        source: Box::new(source),
    }
}

fn ignore_missing(error: aya::maps::MapError) -> Result<(), aya::maps::MapError> {
    match error {
        aya::maps::MapError::KeyNotFound => Ok(()),
        other => Err(other),
    }
}

fn preflight() -> Result<(), CaptureError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(CaptureError::NotRoot);
    }
    if let Some((name, why)) = super::caps::effective().and_then(super::caps::missing) {
        return Err(CaptureError::MissingCapability(name, why));
    }
    if EBPF_OBJECT.is_empty() {
        return Err(CaptureError::StubObject);
    }
    if !Path::new(TRACEFS).join("events/syscalls").exists() {
        mount_tracefs().map_err(CaptureError::NoTracefs)?;
    }
    if !Path::new(BTF).exists() {
        return Err(CaptureError::NoBtf);
    }
    Ok(())
}

fn mount_tracefs() -> io::Result<()> {
    let ret = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid rlimit pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            io::Error::last_os_error()
        );
    }
}

fn configure(
    ebpf: &mut Ebpf,
    selection: &Selection,
    offsets: KernelOffsets,
) -> Result<CaptureConfig, CaptureError> {
    let mode = match selection {
        Selection::All => SELECT_ALL,
        Selection::Pids(pids) => {
            let map = ebpf
                .map_mut("TRACED_PROCESSES")
                .ok_or(CaptureError::MissingMap("TRACED_PROCESSES"))?;
            let mut traced = HashMap::<_, u32, u32>::try_from(map)
                .map_err(|e| map_error("TRACED_PROCESSES", e))?;
            for pid in pids {
                traced
                    .insert(pid, 1, 0)
                    .map_err(|e| map_error("TRACED_PROCESSES", e))?;
            }
            SELECT_LISTED
        }
    };
    let map = ebpf
        .map_mut("CAPTURE_CONFIG")
        .ok_or(CaptureError::MissingMap("CAPTURE_CONFIG"))?;
    let mut config =
        Array::<_, CaptureConfig>::try_from(map).map_err(|e| map_error("CAPTURE_CONFIG", e))?;
    let value = CaptureConfig {
        self_tgid: std::process::id(),
        mode,
        offsets,
        control_epoch: 0,
        _pad: 0,
    };
    config
        .set(0, value, 0)
        .map_err(|e| map_error("CAPTURE_CONFIG", e))?;
    Ok(value)
}

fn attach(
    ebpf: &mut Ebpf,
    attachment: &Attachment,
    missing: &mut Vec<String>,
) -> Result<(), CaptureError> {
    let name = attachment.program;
    let program: &mut TracePoint = program(ebpf, name)?;
    program.load().map_err(|e| refused(name, e))?;
    for (category, tracepoint) in attachment.tracepoints {
        if let Err(source) = program.attach(category, tracepoint) {
            if attachment.required {
                return Err(CaptureError::Attach {
                    program: name.into(),
                    category: (*category).into(),
                    name: (*tracepoint).into(),
                    source: Box::new(source),
                });
            }
            tracing::warn!("optional tracepoint {category}:{tracepoint} unavailable ({source}); using /proc to find 4-tuples of accepted sockets and to tell TCP sockets from others");
            missing.push(format!("{category}:{tracepoint}"));
        }
    }
    Ok(())
}

fn attach_raw(ebpf: &mut Ebpf, name: &'static str, tracepoint: &str) -> Result<(), CaptureError> {
    let program: &mut RawTracePoint = program(ebpf, name)?;
    program.load().map_err(|e| refused(name, e))?;
    program
        .attach(tracepoint)
        .map_err(|source| CaptureError::Attach {
            program: name.into(),
            category: "raw_syscalls".into(),
            name: tracepoint.into(),
            source: Box::new(source),
        })?;
    Ok(())
}

/// The verifier's own words, trimmed to the lines that say why.
fn refused(program: &str, error: ProgramError) -> CaptureError {
    let reason = match &error {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{io_error}; verifier says:\n{}", tail.join("\n"))
        }
        other => other.to_string(),
    };
    CaptureError::Refused {
        program: program.into(),
        reason,
    }
}
