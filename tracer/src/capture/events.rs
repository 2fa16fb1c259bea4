//! Decoding ring-buffer records into typed events.
use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use serde::Serialize;
use thiserror::Error;
use tracer_common::{
    ConnEvent, ConnId, DataEvent, EventHeader, SockTuple, CLOSE_NOT_TCP, DIR_EGRESS,
    EVENT_CONN_ADDR, EVENT_CONN_CLOSE, EVENT_CONN_OPEN, EVENT_DATA, EVENT_LIBRARY_LOADED,
    EVENT_PROCESS_EXEC, EVENT_PROCESS_EXIT, OPEN_INHERITED, OPEN_INHERITED_MID_STREAM, ROLE_CLIENT,
    ROLE_SERVER, SYS_TLS_READ, SYS_TLS_WRITE,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Bytes the process wrote.
    Egress,
    /// Bytes the process read.
    Ingress,
}

impl Direction {
    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Client,
    Server,
    Unknown,
}

impl Role {
    fn from_raw(raw: u32) -> Self {
        match raw {
            ROLE_CLIENT => Role::Client,
            ROLE_SERVER => Role::Server,
            _ => Role::Unknown,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Server => "server",
            Role::Unknown => "unknown",
        })
    }
}

/// A run of stream bytes from one syscall. `payload.len() < length` means the rest is a gap.
#[derive(Clone, Debug)]
pub struct DataRecord {
    pub conn: ConnId,
    pub tid: u32,
    pub ktime_ns: u64,
    pub direction: Direction,
    pub syscall: u32,
    pub position: u64,
    pub length: u64,
    pub payload: Vec<u8>,
}

impl DataRecord {
    /// Plaintext from a TLS library's uprobes rather than bytes of the socket.
    pub fn is_tls(&self) -> bool {
        matches!(self.syscall, SYS_TLS_READ | SYS_TLS_WRITE)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnChange {
    Open {
        role: Role,
        local: Option<SocketAddr>,
        remote: Option<SocketAddr>,
        /// Inherited from the parent at fork after the parent had moved bytes on it: the
        /// child's stream may begin inside a message.
        mid_stream: bool,
        /// Inherited from the parent at fork, by this thread of the parent: the child
        /// runs its parent's program until it execs, whatever it later calls itself
        /// (process titles).
        forked_by: Option<u32>,
    },
    Addresses {
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// `final_positions`: bytes the kernel saw per direction (egress, ingress); None when
    /// userspace synthesised the close (process exit).
    Close {
        not_tcp: bool,
        final_positions: Option<[u64; 2]>,
    },
    /// The connection turned out to carry TLS: its stream starts over with the plaintext
    /// from the TLS library, and the encrypted bytes seen so far are dropped.
    TlsPlaintext,
}

#[derive(Clone, Debug)]
pub enum KernelEvent {
    Data(DataRecord),
    Conn {
        conn: ConnId,
        tid: u32,
        ktime_ns: u64,
        change: ConnChange,
        comm: String,
    },
    ProcessExit {
        tgid: u32,
    },
    /// A process started a new program.
    ProcessExec {
        tgid: u32,
    },
    /// A process returned from `dlopen`.
    LibraryLoaded {
        tgid: u32,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("data record claims {claimed} payload bytes but carries {present}")]
    Truncated { claimed: usize, present: usize },
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let header: EventHeader = read(bytes)?;
    match header.kind {
        EVENT_DATA => {
            let event: DataEvent = read(bytes)?;
            let start = size_of::<DataEvent>();
            let claimed = event.captured as usize;
            let payload = bytes
                .get(start..start + claimed)
                .ok_or(DecodeError::Truncated {
                    claimed,
                    present: bytes.len() - start,
                })?;
            Ok(KernelEvent::Data(DataRecord {
                conn: header.conn,
                tid: header.tid,
                ktime_ns: header.ktime_ns,
                direction: if event.direction == DIR_EGRESS {
                    Direction::Egress
                } else {
                    Direction::Ingress
                },
                syscall: event.syscall,
                position: event.position,
                length: event.length,
                payload: payload.to_vec(),
            }))
        }
        EVENT_CONN_OPEN | EVENT_CONN_ADDR | EVENT_CONN_CLOSE => {
            let event: ConnEvent = read(bytes)?;
            let change = match header.kind {
                EVENT_CONN_OPEN => ConnChange::Open {
                    role: Role::from_raw(event.role),
                    local: (event.tuple.local_port != 0).then(|| local_addr(&event.tuple)),
                    remote: (event.tuple.remote_port != 0).then(|| remote_addr(&event.tuple)),
                    mid_stream: event.reason == OPEN_INHERITED_MID_STREAM,
                    // The fork's events are made in the forking (parent) thread.
                    forked_by: (event.reason == OPEN_INHERITED
                        || event.reason == OPEN_INHERITED_MID_STREAM)
                        .then_some(header.tid),
                },
                EVENT_CONN_ADDR => ConnChange::Addresses {
                    local: local_addr(&event.tuple),
                    remote: remote_addr(&event.tuple),
                },
                _ => ConnChange::Close {
                    not_tcp: event.reason == CLOSE_NOT_TCP,
                    final_positions: Some(event.positions),
                },
            };
            let comm_len = event
                .comm
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(event.comm.len());
            let comm = String::from_utf8_lossy(&event.comm[..comm_len]).into_owned();
            Ok(KernelEvent::Conn {
                conn: header.conn,
                tid: header.tid,
                ktime_ns: header.ktime_ns,
                change,
                comm,
            })
        }
        EVENT_PROCESS_EXIT => Ok(KernelEvent::ProcessExit {
            tgid: header.conn.tgid,
        }),
        EVENT_PROCESS_EXEC => Ok(KernelEvent::ProcessExec {
            tgid: header.conn.tgid,
        }),
        EVENT_LIBRARY_LOADED => Ok(KernelEvent::LibraryLoaded {
            tgid: header.conn.tgid,
        }),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked; T is a plain #[repr(C)] record valid for any bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn local_addr(tuple: &SockTuple) -> SocketAddr {
    SocketAddr::new(ip(tuple.local_addr), tuple.local_port)
}

pub fn remote_addr(tuple: &SockTuple) -> SocketAddr {
    SocketAddr::new(ip(tuple.remote_addr), tuple.remote_port)
}

/// IPv4-mapped addresses are shown as IPv4, as users expect.
fn ip(raw: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(raw);
    v6.to_ipv4_mapped()
        .map(IpAddr::V4)
        .unwrap_or(IpAddr::V6(v6))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain #[repr(C)] record.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn header(kind: u32) -> EventHeader {
        EventHeader {
            kind,
            tid: 7,
            ktime_ns: 99,
            conn: ConnId {
                tgid: 1,
                fd: 3,
                generation: 5,
            },
        }
    }

    #[test]
    fn data_record_carries_payload_and_gap() {
        let event = DataEvent {
            header: header(EVENT_DATA),
            direction: 1,
            syscall: 0,
            position: 10,
            length: 8,
            captured: 3,
            _pad: 0,
        };
        let mut raw = bytes_of(&event);
        raw.extend_from_slice(b"abc");
        let KernelEvent::Data(record) = decode(&raw).unwrap() else {
            panic!("not data")
        };
        assert_eq!(record.payload, b"abc");
        assert_eq!(
            (record.position, record.length, record.direction),
            (10, 8, Direction::Ingress)
        );
    }

    #[test]
    fn truncated_data_record_is_an_error_not_a_panic() {
        let event = DataEvent {
            header: header(EVENT_DATA),
            direction: 0,
            syscall: 0,
            position: 0,
            length: 100,
            captured: 100,
            _pad: 0,
        };
        let raw = bytes_of(&event);
        assert!(matches!(
            decode(&raw),
            Err(DecodeError::Truncated {
                claimed: 100,
                present: 0
            })
        ));
        assert_eq!(decode(&raw[..5]).unwrap_err(), DecodeError::Short(5));
    }

    #[test]
    fn ipv4_mapped_addresses_print_as_ipv4() {
        let mut tuple = SockTuple {
            family: 2,
            local_port: 80,
            remote_port: 5555,
            ..Default::default()
        };
        tuple.local_addr[10..].copy_from_slice(&[0xff, 0xff, 127, 0, 0, 1]);
        assert_eq!(local_addr(&tuple).to_string(), "127.0.0.1:80");
        let event = ConnEvent {
            header: header(EVENT_CONN_ADDR),
            role: ROLE_SERVER,
            reason: 0,
            tuple,
            comm: *b"python3\0\0\0\0\0\0\0\0\0",
            positions: [0, 0],
        };
        let KernelEvent::Conn {
            change: ConnChange::Addresses { local, .. },
            comm,
            ..
        } = decode(&bytes_of(&event)).unwrap()
        else {
            panic!("not an address event")
        };
        assert_eq!(local.port(), 80);
        assert_eq!(comm, "python3");
    }
}
