//! The fallback address lookup in `/proc/<pid>/net/tcp{,6}`, for sockets whose 4-tuple the
//! kernel side did not learn. Reading that file walks every TCP socket of the network
//! namespace: a read per connection made a burst of 10,000 such connections cost the
//! agent minutes (10,000 reads of a 20,000-line table) while it exported nothing. A table
//! read serves every lookup in its namespace for `FRESH`; a socket not in it is looked up
//! again in a later read (a socket accepted since), a few times at most.
use std::{
    collections::{HashMap, HashSet},
    fs,
    time::{Duration, Instant},
};

use super::procfs::{self, ExistingConnection, TcpEntry};

/// How long a table read answers lookups before a miss reads it again.
const FRESH: Duration = Duration::from_millis(20);

/// Lookups of one socket before its addresses are given up.
pub const ATTEMPTS: u8 = 3;

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(ExistingConnection),
    /// The descriptor is not a socket (any more): looking again cannot help.
    NotASocket,
    /// A socket not in the table read (yet): a later lookup may find it.
    NotInTable,
}

struct Table {
    read_at: Instant,
    by_inode: HashMap<u64, TcpEntry>,
    listening: HashSet<u16>,
}

impl Table {
    fn read(pid: u32) -> Self {
        let (by_inode, listening) = procfs::index(procfs::tcp_table_of(pid));
        Self {
            read_at: Instant::now(),
            by_inode,
            listening,
        }
    }
}

/// Tables by network namespace (inode of `/proc/<pid>/ns/net`).
#[derive(Default)]
pub struct TcpTables {
    by_netns: HashMap<u64, Table>,
    /// Reads of a table so far.
    pub reads: u64,
    /// Sockets whose addresses a table gave.
    pub found: u64,
}

impl TcpTables {
    /// Addresses and role of `pid`'s socket `fd`.
    pub fn resolve(&mut self, pid: u32, fd: u32) -> Lookup {
        let Some(inode) = socket_inode(pid, fd) else {
            return Lookup::NotASocket;
        };
        let netns = procfs::netns_of(pid);
        let stale = self
            .by_netns
            .get(&netns)
            .is_none_or(|t| !t.by_inode.contains_key(&inode) && t.read_at.elapsed() >= FRESH);
        if stale {
            self.reads += 1;
            self.by_netns.insert(netns, Table::read(pid));
        }
        let table = &self.by_netns[&netns];
        match table.by_inode.get(&inode) {
            Some(entry) => {
                self.found += 1;
                Lookup::Found(ExistingConnection {
                    pid,
                    fd,
                    role: procfs::role_of(entry, &table.listening),
                    local: entry.local,
                    remote: entry.remote,
                })
            }
            None => Lookup::NotInTable,
        }
    }

    /// Forgets the tables no longer fresh: a namespace's sockets come and go, and a
    /// table of a busy host holds thousands.
    pub fn forget_old(&mut self) {
        if !self.by_netns.is_empty() {
            self.by_netns.retain(|_, t| t.read_at.elapsed() < FRESH);
        }
    }
}

/// The inode of `pid`'s socket `fd`; None for a closed descriptor or another kind of file.
fn socket_inode(pid: u32, fd: u32) -> Option<u64> {
    let target = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, os::fd::AsRawFd};

    use super::*;

    /// Looks `fd` of this process up until found, within a few table reads.
    fn found_eventually(tables: &mut TcpTables, fd: u32) -> ExistingConnection {
        for _ in 0..8 {
            match tables.resolve(std::process::id(), fd) {
                Lookup::Found(found) => return found,
                Lookup::NotInTable => std::thread::sleep(FRESH / 2),
                Lookup::NotASocket => panic!("fd {fd} is a socket"),
            }
        }
        panic!("fd {fd} not found in eight lookups");
    }

    #[test]
    fn a_burst_of_sockets_shares_one_read_and_a_new_socket_is_found_later() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let pid = std::process::id();
        let clients: Vec<_> = (0..50)
            .map(|_| std::net::TcpStream::connect(address).unwrap())
            .collect();
        let mut tables = TcpTables::default();
        for client in &clients {
            let Lookup::Found(found) = tables.resolve(pid, client.as_raw_fd() as u32) else {
                panic!("{client:?} not found");
            };
            assert_eq!(found.remote, address);
            assert_eq!(found.local, client.local_addr().unwrap());
        }
        assert_eq!(tables.reads, 1, "fifty lookups, one read of the table");
        // Sockets opened after that read: not in it, found once it is no longer fresh.
        let late = std::net::TcpStream::connect(address).unwrap();
        let found = found_eventually(&mut tables, late.as_raw_fd() as u32);
        assert_eq!(found.local, late.local_addr().unwrap());
        let (accepted, _) = listener.accept().unwrap();
        let server = found_eventually(&mut tables, accepted.as_raw_fd() as u32);
        assert_eq!(server.role, super::super::Role::Server);
        assert_eq!(server.local, address);
        let file = fs::File::open("/proc/self/status").unwrap();
        assert_eq!(
            tables.resolve(pid, file.as_raw_fd() as u32),
            Lookup::NotASocket
        );
    }
}
