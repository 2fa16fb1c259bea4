//! What the agent's kernel programs add to the syscalls of a traced process, by kind of
//! syscall (read by `cargo xtask bench --only syscalls`, which runs it with no agent and
//! with each data hook in alternating rounds). Prints one JSON line: this thread's CPU
//! time (user + kernel, where the programs run) per syscall, in ns, for
//! - `http`: HTTP/1.1 requests and responses over a loopback TCP connection (a followed
//!   socket whose bytes are copied: 4 data syscalls per exchange);
//! - `pipe`: 64-byte writes and reads on a pipe (data syscalls on a file that is no socket);
//! - `other`: `getppid`, a syscall that moves no data.
//!
//! Usage: syscall_cost [ITERATIONS]
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::FromRawFd,
};

fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// CPU ns per syscall of `syscalls` calls made by `run`.
fn per_syscall(syscalls: u64, run: impl FnOnce()) -> f64 {
    let start = thread_cpu_ns();
    run();
    (thread_cpu_ns() - start) as f64 / syscalls as f64
}

fn http(iterations: u64) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.set_nodelay(true).unwrap();
    server.set_nodelay(true).unwrap();
    let request = b"GET /cost HTTP/1.1\r\nHost: bench\r\n\r\n";
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let mut buffer = [0u8; 256];
    let mut exchange = || {
        client.write_all(request).unwrap();
        server.read_exact(&mut buffer[..request.len()]).unwrap();
        server.write_all(response).unwrap();
        client.read_exact(&mut buffer[..response.len()]).unwrap();
    };
    for _ in 0..1000 {
        exchange(); // the agent has recognised the connection before the clock starts
    }
    per_syscall(4 * iterations, || {
        for _ in 0..iterations {
            exchange();
        }
    })
}

fn pipe(iterations: u64) -> f64 {
    let mut fds = [0; 2];
    // SAFETY: a valid out array of two fds.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fresh fds owned by nothing else.
    let (mut reader, mut writer) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    let mut buffer = [0u8; 64];
    per_syscall(2 * iterations, || {
        for _ in 0..iterations {
            writer.write_all(&buffer.clone()).unwrap();
            reader.read_exact(&mut buffer).unwrap();
        }
    })
}

fn other(iterations: u64) -> f64 {
    per_syscall(iterations, || {
        for _ in 0..iterations {
            // SAFETY: no arguments, no memory.
            std::hint::black_box(unsafe { libc::syscall(libc::SYS_getppid) });
        }
    })
}

fn main() {
    let iterations: u64 = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("ITERATIONS is a number"))
        .unwrap_or(50_000);
    let http = http(iterations);
    let pipe = pipe(iterations * 2);
    let other = other(iterations * 4);
    println!(r#"{{"http":{http:.1},"pipe":{pipe:.1},"other":{other:.1}}}"#);
}
