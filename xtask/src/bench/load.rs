//! A paced HTTP/1.1 load generator for the loss curve: `connections` keep-alive
//! connections together offering `rate` requests per second (each request GET
//! `<prefix><n>`), for `seconds`. Falls behind rather than queueing when the server is
//! slower; reports what it really sent.
use std::{
    io::{Read, Write},
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    pub requests: u64,
    pub failed: u64,
    pub seconds: f64,
}

fn one(stream: &mut TcpStream, path: &str, buffer: &mut Vec<u8>) -> std::io::Result<()> {
    // One write per request, as an HTTP client does (`write!` on the socket itself would
    // make a syscall and a packet of each piece of the format).
    buffer.clear();
    write!(buffer, "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    stream.write_all(buffer)?;
    buffer.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(head) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buffer[..head]).to_ascii_lowercase();
            let length: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buffer.len() >= head + 4 + length {
                return Ok(());
            }
        }
    }
}

pub fn paced(port: u16, prefix: &str, rate: u32, seconds: f64, connections: u32) -> Sent {
    let start = Instant::now();
    let per_connection = Duration::from_secs_f64(connections as f64 / rate as f64);
    let workers: Vec<_> = (0..connections)
        .map(|c| {
            let prefix = prefix.to_owned();
            thread::spawn(move || {
                let mut sent = Sent::default();
                let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
                    return sent;
                };
                let _ = stream.set_nodelay(true);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buffer = Vec::with_capacity(4096);
                let mut next = start + per_connection.mul_f64(c as f64 / connections as f64);
                let end = start + Duration::from_secs_f64(seconds);
                let mut n = 0u64;
                while next < end {
                    let now = Instant::now();
                    if next > now {
                        thread::sleep(next - now);
                    }
                    let path = format!("{prefix}{c}-{n}");
                    if one(&mut stream, &path, &mut buffer).is_err() {
                        sent.failed += 1;
                        break;
                    }
                    sent.requests += 1;
                    n += 1;
                    next += per_connection;
                }
                sent
            })
        })
        .collect();
    let mut total = Sent::default();
    for worker in workers {
        let sent = worker.join().unwrap_or_default();
        total.requests += sent.requests;
        total.failed += sent.failed;
    }
    total.seconds = start.elapsed().as_secs_f64();
    total
}
