//! `/proc`: process metadata, and TCP connections that existed before the agent started.
use std::{
    collections::{HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use serde::Serialize;

use super::Role;

/// What we know about a traced process, read once per process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub cmdline: Vec<String>,
    /// `/proc/<pid>/cgroup` as read (one line per hierarchy).
    pub cgroup: String,
}

impl ProcessInfo {
    /// Reads `/proc/<pid>`; fields of a process that already exited stay empty.
    pub fn read(pid: u32) -> Self {
        let dir = format!("/proc/{pid}");
        let text = |name: &str| fs::read_to_string(format!("{dir}/{name}")).unwrap_or_default();
        let cmdline = fs::read(format!("{dir}/cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|part| !part.is_empty())
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect();
        Self {
            pid,
            comm: text("comm").trim_end().to_owned(),
            exe: executable(pid),
            cmdline,
            cgroup: text("cgroup"),
        }
    }
}

/// `/proc/<pid>/exe`: the program it runs (empty once it exited).
pub fn executable(pid: u32) -> String {
    fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// `/proc/<pid>/cgroup` as read, while it runs.
pub fn cgroup(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()
}

/// The parent of a process (`PPid` in `/proc/<pid>/status`), while it runs.
pub fn parent_pid(pid: u32) -> Option<u32> {
    status_field(pid, "PPid:")
}

/// The process a thread belongs to (`Tgid`; `/proc/<tid>` exists for every thread).
pub fn thread_group(tid: u32) -> Option<u32> {
    status_field(tid, "Tgid:")
}

fn status_field(pid: u32, field: &str) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().parse().ok())
}

/// TCP socket states as printed in `/proc/net/tcp` (`st` column).
const TCP_ESTABLISHED: u8 = 0x01;
pub(super) const TCP_LISTEN: u8 = 0x0A;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    pub inode: u64,
}

/// Parses the body of `/proc/net/tcp` or `/proc/net/tcp6`. Malformed lines are skipped.
pub fn parse_tcp_table(text: &str) -> Vec<TcpEntry> {
    text.lines().skip(1).filter_map(parse_tcp_line).collect()
}

fn parse_tcp_line(line: &str) -> Option<TcpEntry> {
    let mut fields = line.split_whitespace();
    let _slot = fields.next()?;
    let local = parse_hex_addr(fields.next()?)?;
    let remote = parse_hex_addr(fields.next()?)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    let inode = fields.nth(5)?.parse().ok()?;
    Some(TcpEntry {
        local,
        remote,
        state,
        inode,
    })
}

/// `0100007F:1F90` → 127.0.0.1:8080. The kernel prints each 32-bit word of the network-order
/// address as a host-order hex number.
fn parse_hex_addr(field: &str) -> Option<SocketAddr> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for chunk in addr.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => {
            let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
            v6.to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The TCP table of the network namespace `pid` lives in.
pub fn tcp_table_of(pid: u32) -> Vec<TcpEntry> {
    ["tcp", "tcp6"]
        .iter()
        .flat_map(|name| {
            parse_tcp_table(
                &fs::read_to_string(format!("/proc/{pid}/net/{name}")).unwrap_or_default(),
            )
        })
        .collect()
}

/// `(fd, socket inode)` for every socket the process has open.
pub fn socket_fds(pid: u32) -> Vec<(u32, u64)> {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(entry.path()).ok()?;
            let inode = target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((fd, inode))
        })
        .collect()
}

/// An established TCP connection found in `/proc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingConnection {
    pub pid: u32,
    pub fd: u32,
    pub role: Role,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Role of an established socket: server if its local port is listened on in the same
/// network namespace, else client.
pub(super) fn role_of(entry: &TcpEntry, listening_ports: &HashSet<u16>) -> Role {
    if listening_ports.contains(&entry.local.port()) {
        Role::Server
    } else {
        Role::Client
    }
}

/// A namespace's TCP table by socket inode (listening sockets left out), and the ports
/// listened on (which tell a connection's role).
pub(super) fn index(entries: Vec<TcpEntry>) -> (HashMap<u64, TcpEntry>, HashSet<u16>) {
    let listening = entries
        .iter()
        .filter(|e| e.state == TCP_LISTEN)
        .map(|e| e.local.port())
        .collect();
    let by_inode = entries
        .into_iter()
        .filter(|e| e.state != TCP_LISTEN)
        .map(|e| (e.inode, e))
        .collect();
    (by_inode, listening)
}

/// Established TCP connections of the processes `wanted` accepts.
pub fn existing_connections(wanted: impl Fn(u32) -> bool) -> Vec<ExistingConnection> {
    let mut tables: HashMap<u64, (HashMap<u64, TcpEntry>, HashSet<u16>)> = HashMap::new();
    let mut found = Vec::new();
    for pid in all_pids().into_iter().filter(|pid| wanted(*pid)) {
        let sockets = socket_fds(pid);
        if sockets.is_empty() {
            continue;
        }
        let netns = netns_of(pid);
        let (by_inode, listening) = tables
            .entry(netns)
            .or_insert_with(|| index(tcp_table_of(pid)));
        for (fd, inode) in sockets {
            if let Some(entry) = by_inode.get(&inode).filter(|e| e.state == TCP_ESTABLISHED) {
                found.push(ExistingConnection {
                    pid,
                    fd,
                    role: role_of(entry, listening),
                    local: entry.local,
                    remote: entry.remote,
                });
            }
        }
    }
    found
}

/// Whether a process's file descriptor is a TCP socket (in `/proc/<pid>/net/tcp{,6}`):
/// None when that cannot be told (the descriptor is already closed).
pub fn is_tcp_socket(pid: u32, fd: u32) -> Option<bool> {
    let target = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let Some(inode) = target
        .to_str()
        .and_then(|t| t.strip_prefix("socket:["))
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.parse::<u64>().ok())
    else {
        return Some(false); // a file, a pipe: not a socket at all
    };
    Some(tcp_table_of(pid).iter().any(|e| e.inode == inode))
}

/// TCP ports the process listens on.
pub fn listening_ports(pid: u32) -> HashSet<u16> {
    let inodes: HashSet<u64> = socket_fds(pid)
        .into_iter()
        .map(|(_, inode)| inode)
        .collect();
    tcp_table_of(pid)
        .into_iter()
        .filter(|e| e.state == TCP_LISTEN && inodes.contains(&e.inode))
        .map(|e| e.local.port())
        .collect()
}

pub fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn netns_of(pid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(Path::new(&format!("/proc/{pid}/ns/net")))
        .map(|m| m.ino())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0000000000000000 20 4 30 10 -1
   2: garbage
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0050 00000000000000000000000001000000:C350 01 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 20 4 0 10 -1
";

    #[test]
    fn parses_ipv4_table_and_skips_garbage() {
        let table = parse_tcp_table(TCP);
        assert_eq!(table.len(), 2);
        assert_eq!(table[1].local.to_string(), "127.0.0.1:8080");
        assert_eq!(table[1].remote.to_string(), "127.0.0.1:54321");
        assert_eq!((table[1].state, table[1].inode), (TCP_ESTABLISHED, 4243));
    }

    #[test]
    fn parses_ipv6_loopback() {
        let table = parse_tcp_table(TCP6);
        assert_eq!(table[0].local.to_string(), "[::1]:80");
        assert_eq!(table[0].remote.port(), 50000);
    }

    #[test]
    fn role_is_server_when_local_port_listens() {
        let table = parse_tcp_table(TCP);
        let listening = HashSet::from([8080]);
        assert_eq!(role_of(&table[1], &listening), Role::Server);
        assert_eq!(role_of(&table[1], &HashSet::new()), Role::Client);
    }
}
