//! Infrastructure for the demo and the benchmarks, private to one run: processes in their
//! own process groups, a RabbitMQ node and a PostgreSQL cluster from the Debian packages,
//! on free ports, with their data under the run's directory.
use std::{
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16, what: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not listen on port {port} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A process we started, in its own process group; stopped (group and all) when dropped.
pub struct Started {
    pub name: String,
    pub child: Child,
}

impl Started {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let out = fs::File::create(log)?;
        let child = cmd
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    /// SIGINT, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let group = -(self.child.id() as i32);
        unsafe { libc::kill(group, libc::SIGINT) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "demo: {} did not stop within {grace:?}; killing it",
            self.name
        );
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop(Duration::from_secs(5));
        }
    }
}

pub fn rabbitmq(dir: &Path) -> anyhow::Result<(Started, u16)> {
    let server = "/usr/lib/rabbitmq/bin/rabbitmq-server";
    if !Path::new(server).exists() {
        bail!("{server} is missing: install rabbitmq-server (cargo xtask setup does)");
    }
    let port = free_port();
    let home = dir.join("rabbitmq");
    fs::create_dir_all(&home)?;
    fs::write(home.join("enabled_plugins"), "[].")?;
    let started = Started::spawn(
        "rabbitmq",
        Command::new(server)
            .env("HOME", &home)
            .env("RABBITMQ_NODENAME", format!("demo{port}@localhost"))
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_MNESIA_BASE", home.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", home.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                home.join("enabled_plugins"),
            )
            .env("RABBITMQ_CONFIG_FILE", home.join("none")),
        &home.join("server.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Ready once it answers the protocol header with Connection.Start.
        if let Ok(mut socket) = TcpStream::connect(("127.0.0.1", port)) {
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut reply = [0u8; 1];
            if socket.write_all(b"AMQP\x00\x00\x09\x01").is_ok()
                && socket.read_exact(&mut reply).is_ok()
                && reply[0] == 1
            {
                return Ok((started, port));
            }
        }
        if Instant::now() > deadline {
            bail!(
                "RabbitMQ did not start; see {}",
                home.join("server.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn pg_bin(name: &str) -> anyhow::Result<PathBuf> {
    let root = fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dir| dir.flatten().map(|e| e.path()).max())
        .context("PostgreSQL is missing: install postgresql (cargo xtask setup does)")?;
    Ok(root.join("bin").join(name))
}

fn as_postgres(program: PathBuf) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--",
    ])
    .arg(program);
    cmd
}

/// A PostgreSQL cluster (trust auth on loopback); stopped with `pg_ctl stop` by the guard.
pub struct Postgres {
    pub port: u16,
    data: PathBuf,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Ok(pg_ctl) = pg_bin("pg_ctl") {
            let _ = as_postgres(pg_ctl)
                .args(["stop", "-m", "fast", "-D"])
                .arg(&self.data)
                .output();
        }
    }
}

pub fn postgres(dir: &Path) -> anyhow::Result<Postgres> {
    postgres_named(dir, "postgres")
}

/// A PostgreSQL server of its own in `dir/<name>` (its command line names the directory:
/// `-D …/<name>/data`).
pub fn postgres_named(dir: &Path, name: &str) -> anyhow::Result<Postgres> {
    let port = free_port();
    let home = dir.join(name);
    fs::create_dir_all(&home)?;
    crate::exec::exec(
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&home),
    )?;
    let data = home.join("data");
    let init = as_postgres(pg_bin("initdb")?)
        .args(["--auth=trust", "--username=postgres", "-D"])
        .arg(&data)
        .output()?;
    if !init.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&init.stderr));
    }
    let options = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -k {}",
        home.display()
    );
    let started = as_postgres(pg_bin("pg_ctl")?)
        .args(["start", "-w", "-t", "60", "-l"])
        .arg(home.join("server.log"))
        .args(["-o", &options, "-D"])
        .arg(&data)
        .output()?;
    if !started.status.success() {
        bail!(
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&started.stderr)
        );
    }
    wait_for_port(port, "PostgreSQL", Duration::from_secs(30))?;
    Ok(Postgres { port, data })
}

/// Every span in an OTLP/JSON lines file (tracer's `--export file:`), unparsable lines
/// skipped.
pub fn otlp_file_spans(path: &Path) -> Vec<serde_json::Value> {
    let mut spans = Vec::new();
    for line in fs::read_to_string(path).unwrap_or_default().lines() {
        let Ok(mut batch) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        for resource in batch["resourceSpans"].as_array_mut().into_iter().flatten() {
            for scope in resource["scopeSpans"].as_array_mut().into_iter().flatten() {
                if let Some(found) = scope["spans"].as_array_mut() {
                    spans.append(found);
                }
            }
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    #[test]
    fn spans_of_an_otlp_json_file() {
        let path = std::env::temp_dir().join(format!("xtask-otlp-{}.jsonl", std::process::id()));
        let batch = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"a","kind":2},{"traceId":"b","kind":3}]}]},{"scopeSpans":[{"spans":[{"traceId":"c"}]}]}]}"#;
        std::fs::write(&path, format!("{batch}\nnot json\n{batch}\n")).unwrap();
        let spans = super::otlp_file_spans(&path);
        let _ = std::fs::remove_file(&path);
        let traces: Vec<&str> = spans.iter().filter_map(|s| s["traceId"].as_str()).collect();
        assert_eq!(traces, ["a", "b", "c", "a", "b", "c"]);
    }
}
