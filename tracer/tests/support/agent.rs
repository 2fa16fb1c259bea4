//! Running the real `tracer run` agent and real service processes for end-to-end tests.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

pub const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");

pub struct AgentRun {
    child: Child,
    stderr: thread::JoinHandle<String>,
    /// Where its /metrics, /healthz and /readyz are served.
    pub metrics: String,
    /// The journey store this helper made up for it (removed at stop).
    own_store: Option<std::path::PathBuf>,
}

impl AgentRun {
    /// Starts `tracer run` and waits until its programs are attached. Tests see every
    /// span unless they pass their own `--sample-success-ratio` (the sampling tests do).
    /// Each run keeps its journeys in its own file unless `--journey-store` is given.
    pub fn start(args: &[&str]) -> Self {
        Self::start_wrapped(&[], args)
    }

    /// The same, run through `wrapper` (e.g. `setpriv … --`), which execs tracer.
    pub fn start_wrapped(wrapper: &[&str], args: &[&str]) -> Self {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let has = |args: &[String], flag: &str| args.iter().any(|a| a == flag);
        if !has(&args, "--sample-success-ratio") {
            args.extend(["--sample-success-ratio".into(), "1".into()]);
        }
        let mut own_store = None;
        if !has(&args, "--journey-store") {
            let store = std::env::temp_dir().join(format!(
                "tracer-test-journeys-{}-{}.sqlite",
                std::process::id(),
                super::otlp::free_port()
            ));
            args.extend([
                "--journey-store".into(),
                format!("sqlite:{}", store.display()),
            ]);
            own_store = Some(store);
        }
        let metrics = format!("127.0.0.1:{}", super::otlp::free_port());
        args.extend(["--metrics-listen".into(), metrics.clone()]);
        assert!(
            unsafe { libc::geteuid() } == 0,
            "end-to-end agent tests load eBPF programs and must run as root"
        );
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(env!("CARGO_BIN_EXE_tracer"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_tracer")),
        };
        let mut child = command
            .arg("run")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning tracer run");
        let stderr = super::wait_until_ready(&mut child, "agent started", "tracer run");
        Self {
            child,
            stderr,
            metrics: format!("http://{metrics}"),
            own_store,
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the agent with SIGKILL, as an OOM kill or a node problem would: no clean-up.
    pub fn kill(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = self.stderr.join();
    }

    /// Resident memory of the agent, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the agent is running");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// Stops the agent with SIGINT; returns its stderr. Panics if it failed or panicked.
    pub fn stop(mut self) -> String {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(40);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tracer run did not stop within 40 s of SIGINT");
            }
            thread::sleep(Duration::from_millis(50));
        };
        let stderr = self.stderr.join().unwrap();
        if let Some(store) = &self.own_store {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", store.display()));
            }
        }
        assert!(status.success(), "tracer run failed ({status}):\n{stderr}");
        assert!(
            !stderr.contains("panicked"),
            "tracer run panicked:\n{stderr}"
        );
        stderr
    }
}

/// A service process we started; killed (by its pid) when dropped.
pub struct Service {
    child: Child,
    pub port: u16,
    /// What it printed after its port line.
    printed: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Service {
    pub fn python(args: &[&str]) -> Self {
        Self::spawn(
            Command::new("python3")
                .arg(format!("{PEERS}/http_service.py"))
                .args(args),
        )
    }

    pub fn node() -> Self {
        Self::node_at("node", &[])
    }

    /// Service B run by a given node executable, with extra arguments (`--tls CERT KEY`).
    pub fn node_at(node: &str, args: &[&str]) -> Self {
        Self::spawn(
            Command::new(node)
                .arg(format!("{PEERS}/http_service.js"))
                .args(args),
        )
    }

    /// Starts a service that prints "PORT <n>" when it listens.
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok());
        let port = port.unwrap_or_else(|| panic!("{cmd:?} did not print its port: {line:?}"));
        // Keep draining its stdout so it never blocks on a full pipe.
        let printed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = printed.clone();
        thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            port,
            printed,
        }
    }

    /// The lines it printed after its port line, so far.
    pub fn printed(&self) -> Vec<String> {
        self.printed.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs curl (an unmodified C client) and returns the HTTP status it printed.
pub fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "30",
        ])
        .args(args)
        .output()
        .expect("curl is needed (cargo xtask setup installs it)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The agent's final `tracer: stats {...}` line as JSON.
pub fn final_stats(stderr: &str) -> serde_json::Value {
    let line = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("tracer: stats "))
        .expect("no final stats line");
    serde_json::from_str(line).unwrap()
}
