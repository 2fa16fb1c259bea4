//! The agent as the benchmarks run it, and what it costs: CPU time from /proc and the
//! in-kernel run time of its BPF programs (`kernel.bpf_stats_enabled`, /proc/<pid>/fdinfo).
use std::{fs, path::Path, process::Command, time::Duration};

use anyhow::bail;

use crate::infra::{free_port, Started};

pub struct Agent {
    pub process: Started,
    pub metrics_port: u16,
}

impl Agent {
    pub fn start(tracer: &Path, out: &Path, spans: &Path) -> anyhow::Result<Self> {
        Self::start_with(tracer, out, spans, &[])
    }

    /// With extra `tracer run` arguments (`--no-tls`).
    pub fn start_with(
        tracer: &Path,
        out: &Path,
        spans: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let metrics_port = free_port();
        let mut cmd = Command::new(tracer);
        cmd.arg("run")
            .arg("--export")
            .arg(format!("file:{}", spans.display()))
            .args(["--sample-success-ratio", "1", "--journey-store", "none"])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--stats-every", "0"])
            .args(extra);
        let log = out.join(format!("agent-{metrics_port}.log"));
        let mut process = Started::spawn("tracer", &mut cmd, &log)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("agent started")
        {
            if std::time::Instant::now() > deadline || process.child.try_wait()?.is_some() {
                process.stop(Duration::from_secs(5));
                bail!("the agent did not start: {}", fs::read_to_string(&log)?);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            process,
            metrics_port,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// User + system CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
            .sum();
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }

    /// Total run time (ns) and runs of its BPF programs (needs kernel.bpf_stats_enabled).
    pub fn bpf_run_time(&self) -> (u64, u64) {
        let mut total = (0, 0);
        let Ok(fds) = fs::read_dir(format!("/proc/{}/fdinfo", self.pid())) else {
            return total;
        };
        for fd in fds.flatten() {
            let info = fs::read_to_string(fd.path()).unwrap_or_default();
            if !info.contains("prog_type:") {
                continue;
            }
            for line in info.lines() {
                let mut parts = line.split_whitespace();
                match (
                    parts.next(),
                    parts.next().and_then(|v| v.parse::<u64>().ok()),
                ) {
                    (Some("run_time_ns:"), Some(v)) => total.0 += v,
                    (Some("run_cnt:"), Some(v)) => total.1 += v,
                    _ => {}
                }
            }
        }
        total
    }

    /// A counter from its /metrics (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        let output = Command::new("curl")
            .args([
                "-s",
                &format!("http://127.0.0.1:{}/metrics", self.metrics_port),
            ])
            .output();
        let text = output
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn stop(mut self) {
        self.process.stop(Duration::from_secs(30));
    }
}

/// Turns on BPF run-time statistics while alive; restores the previous setting on drop.
pub struct BpfStats(String);

impl BpfStats {
    pub fn enable() -> Self {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let before = fs::read_to_string(path).unwrap_or_else(|_| "0".into());
        let _ = fs::write(path, "1");
        Self(before.trim().to_owned())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}
