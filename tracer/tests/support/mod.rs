//! Helpers for end-to-end tests: run the real `tracer capture` and real peer processes.
#![allow(dead_code)]

pub mod agent;
pub mod broker;
pub mod keys;
pub mod metrics;
pub mod otlp;
pub mod postgres;
pub mod tls;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Runs the `tracer` CLI to completion; panics with its output unless it succeeded.
/// Returns what it printed on stdout.
pub fn tracer_ok<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
    let output = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "tracer {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/socket_peer.py");

/// A running `tracer capture --format jsonl`.
pub struct CaptureRun {
    child: Child,
    stdout: thread::JoinHandle<String>,
    stderr: thread::JoinHandle<String>,
}

impl CaptureRun {
    /// Starts the agent and waits until its programs are attached.
    pub fn start(extra: &[&str]) -> Self {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "end-to-end capture tests load eBPF programs and must run as root"
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracer"))
            .args(["capture", "--format", "jsonl"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning tracer capture");
        let mut stdout = child.stdout.take().unwrap();
        let stdout = thread::spawn(move || {
            let mut all = String::new();
            stdout
                .read_to_string(&mut all)
                .expect("reading tracer stdout");
            all
        });
        let stderr = wait_until_ready(&mut child, "capture started", "tracer capture");
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// Lets the agent drain the ring buffer, stops it with SIGINT, and parses its output.
    pub fn stop(mut self) -> Captured {
        thread::sleep(Duration::from_millis(500));
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tracer capture did not stop within 30 s of SIGINT");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let stdout = self.stdout.join().unwrap();
        let stderr = self.stderr.join().unwrap();
        assert!(
            status.success(),
            "tracer capture failed ({status}):\n{stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "tracer capture panicked:\n{stderr}"
        );
        let records: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect();
        Captured { records, stderr }
    }
}

pub struct Captured {
    pub records: Vec<Value>,
    pub stderr: String,
}

/// Collects the child's stderr on a thread and waits (up to 60 s) for a line containing
/// `ready`. Panics with everything it printed if it never gets there.
pub fn wait_until_ready(
    child: &mut Child,
    ready: &'static str,
    what: &str,
) -> thread::JoinHandle<String> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr must be piped");
    let stderr = thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(ready) {
                let _ = ready_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not start:\n{}", stderr.join().unwrap());
    }
    stderr
}

/// One direction of one connection, as captured: bytes by offset, and gaps.
#[derive(Default, Debug)]
pub struct CapturedStream {
    pub chunks: BTreeMap<u64, Vec<u8>>,
    pub gaps: Vec<(u64, u64, String)>,
}

impl CapturedStream {
    pub fn captured_len(&self) -> u64 {
        self.chunks.values().map(|c| c.len() as u64).sum()
    }

    pub fn gap_len(&self) -> u64 {
        self.gaps.iter().map(|g| g.1).sum()
    }

    /// The whole stream; panics if any part of it is missing.
    pub fn contiguous(&self) -> Vec<u8> {
        assert!(self.gaps.is_empty(), "stream has gaps: {:?}", self.gaps);
        let mut all = Vec::new();
        for (offset, chunk) in &self.chunks {
            assert_eq!(
                *offset,
                all.len() as u64,
                "chunk at {offset} does not follow the previous one"
            );
            all.extend_from_slice(chunk);
        }
        all
    }
}

impl Captured {
    pub fn for_pid(&self, pid: u64) -> impl Iterator<Item = &Value> {
        self.records
            .iter()
            .filter(move |r| r["pid"].as_u64() == Some(pid))
    }

    /// The stream of `pid`'s connection whose local address is `local`.
    pub fn stream(&self, pid: u64, local: &str, direction: &str) -> CapturedStream {
        let mut stream = CapturedStream::default();
        for r in self
            .for_pid(pid)
            .filter(|r| r["local"] == local && r["direction"] == direction)
        {
            let offset = r["offset"].as_u64().unwrap();
            match r["type"].as_str() {
                Some("data") => {
                    let bytes = BASE64.decode(r["data"].as_str().unwrap()).unwrap();
                    assert!(
                        stream.chunks.insert(offset, bytes).is_none(),
                        "two records at offset {offset}"
                    );
                }
                Some("gap") => stream.gaps.push((
                    offset,
                    r["gap_length"].as_u64().unwrap(),
                    r["reason"].as_str().unwrap().to_owned(),
                )),
                _ => {}
            }
        }
        stream
    }

    pub fn stats(&self) -> &Value {
        &self
            .records
            .iter()
            .rev()
            .find(|r| r["type"] == "stats")
            .expect("no stats record")["stats"]
    }

    pub fn kernel_counter(&self, name: &str) -> u64 {
        self.stats()["kernel"]
            .as_array()
            .unwrap()
            .iter()
            .find(|pair| pair[0] == name)
            .unwrap_or_else(|| panic!("no kernel counter {name}"))[1]
            .as_u64()
            .unwrap()
    }
}

/// The bytes `socket_peer.py` sends: `(i * 31 + seed) % 251`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i * 31 + seed) % 251) as u8)
        .collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A peer process and its final JSON report.
pub struct Peer {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
    pub stdin: Option<ChildStdin>,
}

impl Peer {
    pub fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new("python3")
            .arg(PEER)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is needed for the peer processes (cargo xtask setup installs it)");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let stdin = child.stdin.take();
        Self {
            child,
            stdout,
            stdin,
        }
    }

    pub fn pid(&self) -> u64 {
        self.child.id() as u64
    }

    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("reading peer output");
        assert!(!line.is_empty(), "peer exited early");
        line.trim_end().to_owned()
    }

    /// Waits for the peer to finish and returns its JSON report.
    pub fn report(mut self) -> Value {
        let line = self.read_line();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "peer failed: {status}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad peer report {line:?}: {e}"))
    }

    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }
}

/// Starts a server peer and returns it with its port.
pub fn server(args: &[&str]) -> (Peer, String) {
    let mut server = Peer::spawn(&[&["server"], args].concat());
    let line = server.read_line();
    let port = line
        .strip_prefix("PORT ")
        .unwrap_or_else(|| panic!("unexpected server line {line:?}"))
        .to_owned();
    (server, port)
}

/// One client/server exchange; returns both reports (client, server).
pub fn exchange(family: &str, extra: &[&str]) -> (Value, Value) {
    let (server, port) = server(&[&["--family", family], extra].concat());
    let client = Peer::spawn(&[&["client", "--port", &port, "--family", family], extra].concat());
    let client = client.report();
    (client, server.report())
}
