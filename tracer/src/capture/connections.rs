//! Userspace view of followed connections: process, role and 4-tuple per `ConnId`.
use std::{net::SocketAddr, sync::Arc};

use foldhash::HashMap;
use tracer_common::ConnId;

use super::{
    procfs::{self, ExistingConnection, ProcessInfo},
    tcp_tables::{self, Lookup, TcpTables},
    ConnChange, Role,
};

#[derive(Clone, Debug)]
pub struct Connection {
    pub id: ConnId,
    pub role: Role,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub process: Arc<ProcessInfo>,
    /// Found in `/proc` at start-up: its streams may begin mid-message.
    pub seeded: bool,
    /// Its stream is TLS plaintext from the library's uprobes.
    pub tls: bool,
    /// Lookups of missing addresses in `/proc` still allowed (see `TcpTables`).
    proc_lookups_left: u8,
    /// Not an IPv4/IPv6 TCP socket (a UNIX or UDP socket the kernel side could not rule
    /// out without its socket tracepoints): never parsed.
    pub not_tcp: bool,
    /// True once `/proc` said whether it is TCP (only asked without socket tracepoints).
    tcp_checked: bool,
}

impl Connection {
    /// A connection built by hand, for tests of later stages.
    pub fn for_tests(
        id: ConnId,
        role: Role,
        local: Option<SocketAddr>,
        remote: Option<SocketAddr>,
        process: Arc<ProcessInfo>,
    ) -> Self {
        Self {
            id,
            role,
            local,
            remote,
            process,
            seeded: false,
            tls: false,
            proc_lookups_left: 0,
            not_tcp: false,
            tcp_checked: true,
        }
    }
}

/// The connection and process tables, fed by kernel events.
#[derive(Default)]
pub struct Connections {
    conns: HashMap<ConnId, Connection>,
    processes: HashMap<u32, Arc<ProcessInfo>>,
    /// The kernel side cannot tell a socket's family (its socket tracepoints are
    /// missing): check each new connection in `/proc` before its bytes are parsed.
    pub check_tcp_in_proc: bool,
    /// The fallback lookup of addresses the kernel side did not learn.
    tcp_tables: TcpTables,
}

impl Connections {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a connection event; returns the connection as it stands afterwards
    /// (for `Close`, as it was just before removal).
    pub fn apply(&mut self, conn: ConnId, change: &ConnChange, comm: &str) -> Connection {
        if let ConnChange::Open {
            forked_by: Some(parent_thread),
            ..
        } = change
        {
            self.forked(conn.tgid, *parent_thread);
        }
        self.note_comm(conn.tgid, comm);
        match change {
            ConnChange::Open {
                role,
                local,
                remote,
                mid_stream,
                ..
            } => {
                self.check_tcp(conn); // as early as possible: before the socket closes
                let entry = self.entry(conn);
                entry.role = *role;
                entry.seeded |= *mid_stream;
                entry.local = entry.local.or(*local);
                entry.remote = entry.remote.or(*remote);
                entry.clone()
            }
            ConnChange::Addresses { local, remote } => {
                let entry = self.entry(conn);
                entry.local = Some(*local);
                entry.remote = Some(*remote);
                entry.clone()
            }
            ConnChange::TlsPlaintext => {
                let entry = self.entry(conn);
                entry.tls = true;
                entry.clone()
            }
            ConnChange::Close { .. } => {
                let entry = self.entry(conn).clone();
                self.conns.remove(&conn);
                entry
            }
        }
    }

    /// The connection a data record belongs to. Unknown connections (their open event was
    /// lost) are created; missing addresses are looked up in `/proc` (a few times at most:
    /// a socket accepted after the table was read is in a later read).
    pub fn for_data(&mut self, conn: ConnId) -> &Connection {
        self.check_tcp(conn);
        let entry = entry_in(&mut self.conns, &mut self.processes, conn);
        if entry.local.is_none() && entry.proc_lookups_left > 0 {
            entry.proc_lookups_left -= 1;
            match self.tcp_tables.resolve(conn.tgid, conn.fd) {
                Lookup::Found(found) => {
                    entry.local = Some(found.local);
                    entry.remote = Some(found.remote);
                    if entry.role == Role::Unknown {
                        entry.role = found.role;
                    }
                }
                Lookup::NotASocket => entry.proc_lookups_left = 0,
                Lookup::NotInTable => {}
            }
        }
        entry
    }

    /// Without the kernel's socket tracepoints: is this a TCP socket? Asked once.
    fn check_tcp(&mut self, conn: ConnId) {
        if !self.check_tcp_in_proc {
            return;
        }
        let entry = self.entry(conn);
        if !entry.tcp_checked && !entry.seeded && !entry.tls {
            entry.tcp_checked = true;
            entry.not_tcp = procfs::is_tcp_socket(conn.tgid, conn.fd) == Some(false);
        }
    }

    /// Sockets whose addresses came from `/proc`, and reads of its tables for them.
    pub fn addresses_from_proc(&self) -> (u64, u64) {
        (self.tcp_tables.found, self.tcp_tables.reads)
    }

    /// Lets go of `/proc` tables no lookup needs any more.
    pub fn forget_old_tables(&mut self) {
        self.tcp_tables.forget_old();
    }

    pub fn get(&self, conn: &ConnId) -> Option<&Connection> {
        self.conns.get(conn)
    }

    /// Registers a connection found in `/proc` at start-up.
    pub fn seed(&mut self, conn: ConnId, existing: &ExistingConnection) -> Connection {
        let entry = self.entry(conn);
        entry.role = existing.role;
        entry.local = Some(existing.local);
        entry.remote = Some(existing.remote);
        entry.proc_lookups_left = 0;
        entry.seeded = true;
        entry.clone()
    }

    /// Forgets a process and its connections; returns the connections it had.
    pub fn process_exited(&mut self, tgid: u32) -> Vec<Connection> {
        // Every followed connection's process has an entry (see `entry`): an exit of any
        // other process on the host costs no walk of the connections.
        if self.processes.remove(&tgid).is_none() {
            return Vec::new();
        }
        let gone: Vec<ConnId> = self
            .conns
            .keys()
            .filter(|c| c.tgid == tgid)
            .copied()
            .collect();
        gone.iter().filter_map(|c| self.conns.remove(c)).collect()
    }

    /// Keeps the kernel's command name for processes that were gone before `/proc` was read.
    fn note_comm(&mut self, pid: u32, comm: &str) {
        let process = self.process(pid);
        if process.comm.is_empty() && !comm.is_empty() {
            let known = Arc::new(ProcessInfo {
                comm: comm.to_owned(),
                ..(*process).clone()
            });
            self.processes.insert(pid, known.clone());
            for conn in self.conns.values_mut().filter(|c| c.id.tgid == pid) {
                conn.process = known.clone();
            }
        }
    }

    /// A process first seen through a socket it inherited at fork runs its parent's
    /// program (until it execs): it takes its parent's identity, read before the child can
    /// rename itself (PostgreSQL backends and other pre-forked workers rewrite their
    /// command line to a status title), and known even when the child is gone before
    /// `/proc` is read (a backend for one short connection). `parent_thread` is the thread
    /// that forked it; without a parent in `/proc`, the child's own identity is read.
    fn forked(&mut self, pid: u32, parent_thread: u32) {
        if self.processes.contains_key(&pid) {
            return;
        }
        let parent = procfs::thread_group(parent_thread)
            .or_else(|| procfs::parent_pid(pid))
            .filter(|&p| p > 1 && p != pid);
        let Some(parent) = parent else {
            return;
        };
        let parent = self.process(parent);
        if parent.exe.is_empty() {
            return;
        }
        let own_exe = procfs::executable(pid);
        // Another program by now: an exec (its event follows) — its own identity.
        if !own_exe.is_empty() && own_exe != parent.exe {
            return;
        }
        let cgroup = procfs::cgroup(pid).unwrap_or_else(|| parent.cgroup.clone());
        self.processes.insert(
            pid,
            Arc::new(ProcessInfo {
                pid,
                comm: parent.comm.clone(),
                exe: parent.exe.clone(),
                cmdline: parent.cmdline.clone(),
                cgroup,
            }),
        );
    }

    /// A process ran a new program: read its identity again (executable, command line,
    /// cgroup) for it and its connections (sockets survive an exec).
    pub fn process_exec(&mut self, pid: u32) {
        if !self.processes.contains_key(&pid) {
            return; // nothing known to correct: read when it opens a connection
        }
        let info = Arc::new(ProcessInfo::read(pid));
        self.processes.insert(pid, info.clone());
        for conn in self.conns.values_mut().filter(|c| c.id.tgid == pid) {
            conn.process = info.clone();
        }
    }

    pub fn process(&mut self, pid: u32) -> Arc<ProcessInfo> {
        self.processes
            .entry(pid)
            .or_insert_with(|| Arc::new(ProcessInfo::read(pid)))
            .clone()
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    fn entry(&mut self, conn: ConnId) -> &mut Connection {
        entry_in(&mut self.conns, &mut self.processes, conn)
    }
}

/// The connection `conn`, created (with its process's identity) when unknown; over the
/// tables rather than `self`, so that a caller can use the other fields beside it.
fn entry_in<'a>(
    conns: &'a mut HashMap<ConnId, Connection>,
    processes: &mut HashMap<u32, Arc<ProcessInfo>>,
    conn: ConnId,
) -> &'a mut Connection {
    conns.entry(conn).or_insert_with(|| Connection {
        id: conn,
        role: Role::Unknown,
        local: None,
        remote: None,
        process: processes
            .entry(conn.tgid)
            .or_insert_with(|| Arc::new(ProcessInfo::read(conn.tgid)))
            .clone(),
        seeded: false,
        tls: false,
        proc_lookups_left: tcp_tables::ATTEMPTS,
        not_tcp: false,
        tcp_checked: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Role;

    fn inherited_open(connections: &mut Connections, pid: u32) {
        let open = ConnChange::Open {
            role: Role::Server,
            local: None,
            remote: None,
            mid_stream: false,
            forked_by: Some(unsafe { libc::gettid() } as u32),
        };
        let conn = ConnId {
            tgid: pid,
            fd: 3,
            generation: 1,
        };
        connections.apply(conn, &open, "");
    }

    #[test]
    fn a_forked_child_has_its_parents_identity_until_it_runs_another_program() {
        // A fork without exec that renames itself as pre-forked workers do: it overwrites
        // its command line in place (the memory /proc/<pid>/cmdline shows), then waits to
        // be killed. Where that memory is: /proc/self/stat fields 48 and 49.
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let fields: Vec<usize> = stat[stat.rfind(')').unwrap() + 2..]
            .split(' ')
            .map(|f| f.trim().parse().unwrap_or(0))
            .collect();
        let (arg_start, arg_end) = (fields[45], fields[46]);
        let title = b"worker: idle";
        assert!(
            arg_end - arg_start > title.len(),
            "a command line to overwrite"
        );
        let forked = unsafe { libc::fork() };
        assert!(forked >= 0, "fork failed");
        if forked == 0 {
            unsafe {
                let area =
                    std::slice::from_raw_parts_mut(arg_start as *mut u8, arg_end - arg_start);
                area.fill(0);
                area[..title.len()].copy_from_slice(title);
                libc::pause();
                libc::_exit(0);
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ProcessInfo::read(forked as u32).cmdline != ["worker: idle"] {
            if std::time::Instant::now() > deadline {
                unsafe { libc::kill(forked, libc::SIGKILL) };
                panic!("the forked child did not rename itself");
            }
            std::thread::yield_now();
        }
        let mut execed = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // `sleep` has replaced the forked image by now once its command line reads so.
        while ProcessInfo::read(execed.id()).cmdline != ["sleep", "30"] {
            std::thread::yield_now();
        }
        // A worker gone before its fork was looked at (a backend for one short query).
        let gone = unsafe { libc::fork() };
        assert!(gone >= 0, "fork failed");
        if gone == 0 {
            unsafe { libc::_exit(0) };
        }
        unsafe { libc::waitpid(gone, std::ptr::null_mut(), 0) };
        let mut connections = Connections::new();
        inherited_open(&mut connections, forked as u32);
        inherited_open(&mut connections, execed.id());
        inherited_open(&mut connections, gone as u32);
        let gone_info = connections.process(gone as u32);
        let own = ProcessInfo::read(std::process::id());
        let forked_info = connections.process(forked as u32);
        let execed_info = connections.process(execed.id());
        unsafe {
            libc::kill(forked, libc::SIGKILL);
            libc::waitpid(forked, std::ptr::null_mut(), 0);
        }
        let _ = execed.kill();
        let _ = execed.wait();
        assert_eq!(forked_info.pid, forked as u32);
        assert_eq!(
            forked_info.cmdline, own.cmdline,
            "the parent's command line"
        );
        assert_eq!(execed_info.cmdline, ["sleep", "30"], "its own program");
        assert_eq!(
            (gone_info.pid, &gone_info.exe, &gone_info.cmdline),
            (gone as u32, &own.exe, &own.cmdline),
            "a child already gone is still known by its parent"
        );
    }
}

#[cfg(test)]
mod other_processes {
    use super::*;

    fn open(connections: &mut Connections, tgid: u32, fd: u32) -> ConnId {
        let conn = ConnId {
            tgid,
            fd,
            generation: 1,
        };
        let open = ConnChange::Open {
            role: Role::Client,
            local: None,
            remote: None,
            mid_stream: false,
            forked_by: None,
        };
        connections.apply(conn, &open, "x");
        conn
    }

    #[test]
    fn the_exit_or_exec_of_a_process_without_connections_touches_nothing() {
        let mut connections = Connections::new();
        let me = std::process::id();
        let kept = open(&mut connections, me, 5);
        let gone = open(&mut connections, me + 1_000_000, 6); // no such process
                                                              // Another process of the host execs and exits: nothing read, nothing removed.
        connections.process_exec(me + 2_000_000);
        assert!(!connections.processes.contains_key(&(me + 2_000_000)));
        assert!(connections.process_exited(me + 2_000_000).is_empty());
        assert_eq!(connections.conns.len(), 2);
        // A process with connections: its own go, the others stay.
        let closed = connections.process_exited(me + 1_000_000);
        assert_eq!(closed.iter().map(|c| c.id).collect::<Vec<_>>(), [gone]);
        assert!(connections.get(&kept).is_some() && connections.get(&gone).is_none());
    }
}
