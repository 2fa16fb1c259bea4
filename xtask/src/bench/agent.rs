//! The agent as the benchmarks run it, and what it costs: CPU time from /proc and the
//! in-kernel run time of its BPF programs (`kernel.bpf_stats_enabled`, /proc/<pid>/fdinfo).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::infra::{free_port, Started};

pub struct Agent {
    pub process: Started,
    pub metrics_port: u16,
}

/// What the agent runs with in a round.
pub enum Setup<'a> {
    /// As shipped: order journeys in SQLite, OTLP/gRPC to a receiver (every span exported).
    Default { sink: &'a Sink },
    /// The same with the shipped sampling too: all errors, 10 % of successes.
    Sampled { sink: &'a Sink },
    /// Journeys in SQLite, spans to an OTLP/JSON file.
    File { spans: &'a Path },
    /// No journeys, spans to an OTLP/JSON file (the loss curve, HTTPS, AMQP rounds).
    Light { spans: &'a Path },
}

impl Agent {
    /// The light setup: no journeys, every span to `spans`.
    pub fn start(tracer: &Path, out: &Path, spans: &Path) -> anyhow::Result<Self> {
        Self::start_with(tracer, out, spans, &[])
    }

    /// The light setup with extra `tracer run` arguments (`--no-tls`).
    pub fn start_with(
        tracer: &Path,
        out: &Path,
        spans: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_as(tracer, out, &Setup::Light { spans }, extra)
    }

    /// Every span is exported (`--sample-success-ratio 1`) except in `Sampled`.
    pub fn start_as(
        tracer: &Path,
        out: &Path,
        setup: &Setup,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_under(&[], tracer, out, setup, extra, Duration::from_secs(60))
    }

    /// The same, run by `wrapper` (e.g. valgrind and its options), given `start_within` to
    /// say it started.
    pub fn start_under(
        wrapper: &[String],
        tracer: &Path,
        out: &Path,
        setup: &Setup,
        extra: &[&str],
        start_within: Duration,
    ) -> anyhow::Result<Self> {
        let metrics_port = free_port();
        let journeys = out.join(format!("journeys-{metrics_port}.sqlite"));
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(tracer);
                cmd
            }
            None => Command::new(tracer),
        };
        cmd.arg("run");
        if !matches!(setup, Setup::Sampled { .. }) {
            cmd.args(["--sample-success-ratio", "1"]);
        }
        match setup {
            Setup::Default { sink } | Setup::Sampled { sink } => cmd
                .arg("--export")
                .arg(format!("otlp-grpc=http://127.0.0.1:{}", sink.port))
                .arg("--journey-store")
                .arg(format!("sqlite:{}", journeys.display())),
            Setup::File { spans } => cmd
                .arg("--export")
                .arg(format!("file:{}", spans.display()))
                .arg("--journey-store")
                .arg(format!("sqlite:{}", journeys.display())),
            Setup::Light { spans } => cmd
                .arg("--export")
                .arg(format!("file:{}", spans.display()))
                .args(["--journey-store", "none"]),
        };
        cmd.args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--stats-every", "0"])
            .args(extra);
        let log = out.join(format!("agent-{metrics_port}.log"));
        let mut process = Started::spawn("tracer", &mut cmd, &log)?;
        let deadline = std::time::Instant::now() + start_within;
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
        cpu_seconds(self.pid())
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

/// User + system CPU seconds of process `pid` so far (every thread).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Waits until `count` (spans exported so far) has not grown for two seconds — the
/// settle time, the ring backlog and the last export batches are behind us — and
/// returns it. Fails after `timeout`.
pub fn exported(mut count: impl FnMut() -> u64, timeout: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + timeout;
    let (mut last, mut since) = (count(), Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = count();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= Duration::from_secs(2) {
            return Ok(now);
        }
        if Instant::now() > deadline {
            bail!("spans were still being exported after {timeout:?} ({now} so far)");
        }
    }
}

/// The bench's OTLP/gRPC receiver (`tracer/examples/otlp_sink.rs`: tonic with
/// `opentelemetry-proto`'s service, as a collector), counting the spans it is sent.
pub struct Sink {
    process: Started,
    log: PathBuf,
    pub port: u16,
}

impl Sink {
    pub fn start(out: &Path) -> anyhow::Result<Self> {
        let sink = super::example("otlp_sink")?;
        let port = free_port();
        let log = out.join("otlp-sink.log");
        let process = Started::spawn("OTLP sink", Command::new(sink).arg(port.to_string()), &log)?;
        crate::infra::wait_for_port(port, "the OTLP sink", Duration::from_secs(10))?;
        Ok(Self { process, log, port })
    }

    /// Spans received so far.
    pub fn spans(&self) -> u64 {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .rev()
            .find_map(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn stop(mut self) {
        self.process.stop(Duration::from_secs(5));
    }
}

/// Turns BPF run-time statistics on (or off) while alive; restores the previous setting
/// on drop.
pub struct BpfStats(String);

impl BpfStats {
    pub fn enable() -> Self {
        Self::set("1")
    }

    /// Off while alive: the statistics cost every program run two clock reads, which a
    /// host running the agent does not pay.
    pub fn disable() -> Self {
        Self::set("0")
    }

    fn set(value: &str) -> Self {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let before = fs::read_to_string(path).unwrap_or_else(|_| "0".into());
        let _ = fs::write(path, value);
        Self(before.trim().to_owned())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}
