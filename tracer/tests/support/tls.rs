//! Helpers for the tests of encrypted connections: a throw-away PKI, fresh executables,
//! the agent's TLS hooks.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::{
    agent::AgentRun,
    metrics::{scrape, try_value},
    otlp::{ReceivedSpan, Receiver},
};

/// A CA and a certificate for 127.0.0.1 signed by it, in a temporary directory.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tracer-tls-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("san.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        let steps: [&[&str]; 3] = [
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=tracer test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "san.cnf",
                "-out",
                "server.pem",
            ],
        ];
        for step in steps {
            let output = Command::new("openssl")
                .args(step)
                .current_dir(&dir)
                .output()
                .expect("the openssl CLI is needed (cargo xtask setup installs it)");
            assert!(
                output.status.success(),
                "openssl {step:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Self { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Copies an executable to a new file: an inode no process has mapped, so only the
/// agent's own discovery (exec events, dlopen, /proc) can find it.
pub fn fresh_copy(from: &Path, to: &Path) -> String {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
    to.display().to_string()
}

pub fn which(program: &str) -> PathBuf {
    let output = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        !path.is_empty(),
        "{program} is needed (cargo xtask setup installs it)"
    );
    std::fs::canonicalize(path).unwrap()
}

pub fn run_json(cmd: &mut Command) -> serde_json::Value {
    let output = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{cmd:?} printed {stdout:?}: {e}"))
}

/// Files hooked as OpenSSL, from the agent's /metrics (refreshed once a second), once
/// `ok` holds for it.
pub fn wait_for_openssl_files(agent: &AgentRun, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let files = try_value(
            &scrape(&agent.metrics),
            "tracer_tls_libraries",
            &[("flavour", "openssl")],
        );
        if let Some(files) = files.filter(|n| ok(*n)) {
            return files;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tracer_tls_libraries{{flavour=\"openssl\"}} stayed at {files:?} (None: not served)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for spans, then stops the agent; if they never come, shows the agent's log too.
pub fn wait_then_stop(
    agent: AgentRun,
    receiver: &Receiver,
    what: &str,
    done: impl Fn(&[ReceivedSpan]) -> bool,
) -> (Vec<ReceivedSpan>, String) {
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        receiver.wait_for(what, Duration::from_secs(30), &done)
    }));
    let stderr = agent.stop();
    match waited {
        Ok(spans) => (spans, stderr),
        Err(panic) => {
            eprintln!("agent log:\n{stderr}");
            std::panic::resume_unwind(panic)
        }
    }
}
