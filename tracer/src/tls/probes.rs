//! Which files are hooked, for which processes, and when to look again.
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{
    library::{self, Flavour},
    maps::{self, FileKey, Mapping},
};
use crate::capture::KernelCapture;

/// After an exec, the dynamic loader maps the program's libraries within milliseconds;
/// look again at these delays (a `dlopen` later is caught by its own uretprobe).
const RESCAN_AFTER_EXEC: [Duration; 3] = [
    Duration::from_millis(20),
    Duration::from_millis(250),
    Duration::from_secs(2),
];

/// Process scans per capture-loop iteration (each reads one `/proc/<pid>/maps`).
const SCANS_PER_TICK: usize = 16;

/// Host directories whose TLS libraries are hooked at start-up, so programs started later
/// are covered from their first call.
const HOST_LIBRARY_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
];

/// What `[tls]` in the configuration (and `--no-tls`) decide.
pub type TlsOptions = crate::config::TlsConfig;

/// A hooked file, for logs, `/metrics` and `tracer capture`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TlsStatus {
    pub path: PathBuf,
    pub flavour: Flavour,
    pub functions: Vec<String>,
    /// Live processes known to map it.
    pub processes: usize,
}

struct Hooked {
    path: PathBuf,
    flavour: Flavour,
    functions: Vec<String>,
    pids: BTreeSet<u32>,
}

pub struct TlsProbes {
    options: TlsOptions,
    own_pid: u32,
    hooked: HashMap<FileKey, Hooked>,
    /// Files looked at that hold nothing to hook (or failed): not looked at again.
    passed_over: HashSet<FileKey>,
    rescans: Vec<(Instant, u32)>,
    pub attach_errors: u64,
}

impl TlsProbes {
    /// Hooks the host's TLS libraries now, and queues every running process (`wanted`)
    /// for `tick`, so start-up (and the adoption of existing connections after it) does
    /// not wait for every process's files to be read.
    pub fn start(
        kernel: &mut KernelCapture,
        options: TlsOptions,
        wanted: impl Fn(u32) -> bool,
    ) -> Self {
        let mut probes = Self {
            options,
            own_pid: std::process::id(),
            hooked: HashMap::new(),
            passed_over: HashSet::new(),
            rescans: Vec::new(),
            attach_errors: 0,
        };
        if !probes.options.enabled {
            tracing::info!("tls: uprobes disabled; encrypted connections are not traced");
            return probes;
        }
        probes.hook_host_libraries(kernel);
        let without_sys_admin = crate::capture::caps::effective()
            .is_some_and(|caps| !crate::capture::caps::has_sys_admin(caps));
        if probes.attach_errors > 0 && probes.hooked.is_empty() && without_sys_admin {
            tracing::warn!(
                "tls: the kernel refused every uprobe: without CAP_SYS_ADMIN this kernel does not allow them (CAP_PERFMON is not enough here), so HTTPS stays encrypted; add SYS_ADMIN to the container, or run with --no-tls to say so"
            );
        }
        let pids: Vec<u32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|pid| wanted(*pid))
            .collect();
        let now = Instant::now();
        probes
            .rescans
            .extend(pids.into_iter().map(|pid| (now, pid)));
        let files: Vec<String> = probes
            .status()
            .iter()
            .map(|s| format!("{} ({})", s.path.display(), s.flavour.name()))
            .collect();
        tracing::info!(
            "tls: hooked {} host files: {}; running processes are looked at next",
            files.len(),
            files.join(", ")
        );
        probes
    }

    /// A process started a new program: look now and a few times while it loads.
    pub fn process_exec(&mut self, kernel: &mut KernelCapture, pid: u32) {
        if !self.options.enabled {
            return;
        }
        self.forget(pid); // a new program maps other files
        self.scan(kernel, pid);
        let now = Instant::now();
        self.rescans
            .extend(RESCAN_AFTER_EXEC.iter().map(|delay| (now + *delay, pid)));
    }

    /// A process returned from `dlopen`.
    pub fn library_loaded(&mut self, kernel: &mut KernelCapture, pid: u32) {
        if self.options.enabled {
            self.scan(kernel, pid);
        }
    }

    pub fn process_exit(&mut self, pid: u32) {
        self.forget(pid);
        self.rescans.retain(|(_, p)| *p != pid);
    }

    fn forget(&mut self, pid: u32) {
        for hooked in self.hooked.values_mut() {
            hooked.pids.remove(&pid);
        }
    }

    /// Runs up to `SCANS_PER_TICK` of the scans that are due, so the capture loop is never
    /// held up for long.
    pub fn tick(&mut self, kernel: &mut KernelCapture) {
        if self.rescans.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut due = Vec::new();
        self.rescans.retain(|&(at, pid)| {
            let run = at <= now && due.len() < SCANS_PER_TICK;
            if run {
                due.push(pid);
            }
            !run
        });
        for pid in due {
            self.scan(kernel, pid);
        }
    }

    pub fn status(&self) -> Vec<TlsStatus> {
        let mut status: Vec<TlsStatus> = self
            .hooked
            .values()
            .map(|h| TlsStatus {
                path: h.path.clone(),
                flavour: h.flavour,
                functions: h.functions.clone(),
                processes: h.pids.len(),
            })
            .collect();
        status.sort_by(|a, b| a.path.cmp(&b.path));
        status
    }

    /// Processes known to map a hooked TLS library (not the loader).
    pub fn covered_processes(&self) -> usize {
        let covered: BTreeSet<u32> = self
            .hooked
            .values()
            .filter(|h| h.flavour != Flavour::Loader)
            .flat_map(|h| h.pids.iter().copied())
            .collect();
        covered.len()
    }

    /// Through init's root where it can be read, so an agent in a container (hostPID)
    /// hooks the host's files; else through its own.
    fn hook_host_libraries(&mut self, kernel: &mut KernelCapture) {
        let init_root = Path::new("/proc/1/root");
        let root = if std::fs::read_dir(init_root).is_ok() {
            init_root
        } else {
            Path::new("/")
        };
        for dir in HOST_LIBRARY_DIRS {
            let host_dir = root.join(dir.trim_start_matches('/'));
            let Ok(entries) = std::fs::read_dir(&host_dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let extra = &self.options.extra_libraries;
                if library::flavour_by_name(&entry.path(), extra).is_none() {
                    continue; // most of the directory
                }
                // Symlinks (libssl.so → libssl.so.3) name the same file: use its real name.
                let target = std::fs::read_link(entry.path())
                    .map(|link| host_dir.join(link))
                    .unwrap_or_else(|_| entry.path());
                let Some(name) = target.file_name() else {
                    continue;
                };
                let path = Path::new(dir).join(name);
                let Some(flavour) = library::flavour_by_name(&path, extra) else {
                    continue;
                };
                let Ok(meta) = std::fs::metadata(&target) else {
                    continue;
                };
                use std::os::unix::fs::MetadataExt;
                let dev = meta.dev();
                let file = (libc::major(dev), libc::minor(dev), meta.ino());
                self.consider(kernel, file, &path, &target, Some(flavour), None);
            }
        }
    }

    /// Reads a process's mappings and hooks what is new.
    fn scan(&mut self, kernel: &mut KernelCapture, pid: u32) {
        if pid == self.own_pid {
            return;
        }
        let mappings = maps::executable_mappings(pid);
        for Mapping { file, path } in &mappings {
            if self.passed_over.contains(file) {
                continue;
            }
            if let Some(hooked) = self.hooked.get_mut(file) {
                if hooked.pids.insert(pid) && hooked.flavour != Flavour::Loader {
                    tracing::debug!(pid, comm = %comm(pid), "tls: process uses hooked {}", hooked.path.display());
                }
                continue;
            }
            // Through the process's root, so files inside containers are found.
            let target = PathBuf::from(format!("/proc/{pid}/root"))
                .join(path.strip_prefix("/").unwrap_or(path));
            let flavour = library::flavour_by_name(path, &self.options.extra_libraries);
            self.consider(kernel, *file, path, &target, flavour, Some(pid));
        }
    }

    /// Resolves and attaches a file's functions once.
    fn consider(
        &mut self,
        kernel: &mut KernelCapture,
        file: FileKey,
        path: &Path,
        target: &Path,
        flavour: Option<Flavour>,
        pid: Option<u32>,
    ) {
        if self.hooked.contains_key(&file) || self.passed_over.contains(&file) {
            if let (Some(pid), Some(hooked)) = (pid, self.hooked.get_mut(&file)) {
                hooked.pids.insert(pid);
            }
            return;
        }
        // Held open while resolving and attaching, and named through our own descriptor:
        // the process whose /proc/<pid>/root led here may exit at any moment.
        let opened = match std::fs::File::open(target) {
            Ok(opened) => opened,
            Err(_) if pid.is_some() => return, // gone; another process may map it later
            Err(e) => {
                tracing::debug!("tls: cannot open {}: {e}", path.display());
                return;
            }
        };
        let target = &PathBuf::from(format!("/proc/self/fd/{}", opened.as_raw_fd()));
        let named = flavour.is_some();
        let (flavour, functions) = match library::resolve(target, flavour) {
            Ok((flavour, functions)) if !functions.is_empty() => (flavour, functions),
            Ok(_) => {
                self.passed_over.insert(file);
                return;
            }
            Err(reason) => {
                // A file named like a TLS library in a process that cannot be read is
                // worth a warning; host linker scripts (libc.so) and the rest are not.
                if named && pid.is_some() {
                    tracing::warn!("tls: cannot read {}: {reason}", path.display());
                } else {
                    tracing::debug!("tls: cannot read {}: {reason}", path.display());
                }
                self.passed_over.insert(file);
                return;
            }
        };
        let mut attached = Vec::new();
        for function in &functions {
            let result = function
                .program
                .programs()
                .iter()
                .try_for_each(|program| kernel.attach_uprobe(program, target, function.offset));
            match result {
                Ok(()) => attached.push(function.describe()),
                Err(error) => {
                    self.attach_errors += 1;
                    tracing::warn!(
                        "tls: cannot hook {} in {}: {error}",
                        function.symbol,
                        path.display()
                    );
                }
            }
        }
        if attached.is_empty() {
            self.passed_over.insert(file);
            return;
        }
        match pid {
            Some(pid) if flavour != Flavour::Loader => tracing::info!(
                pid,
                comm = %comm(pid),
                "tls: hooked {} ({}: {})",
                path.display(),
                flavour.name(),
                attached.join(", ")
            ),
            _ => tracing::debug!(
                "tls: hooked {} ({}: {})",
                path.display(),
                flavour.name(),
                attached.join(", ")
            ),
        }
        self.hooked.insert(
            file,
            Hooked {
                path: path.to_owned(),
                flavour,
                functions: attached,
                pids: pid.into_iter().collect(),
            },
        );
    }
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_default()
}
