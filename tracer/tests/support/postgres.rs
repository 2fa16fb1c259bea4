//! A private PostgreSQL server for the database tests: a fresh cluster made with the
//! Debian package's own initdb, run as the `postgres` user on a free port (trust auth on
//! loopback), started once per test binary and stopped at exit.
#![allow(dead_code)]

use std::{
    path::PathBuf,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

use super::otlp::free_port;

pub struct Postgres {
    pub port: u16,
    pub dir: PathBuf,
}

static SERVER: OnceLock<Postgres> = OnceLock::new();
static STARTED: AtomicBool = AtomicBool::new(false);
static DATA_DIR: OnceLock<PathBuf> = OnceLock::new();

fn bin(name: &str) -> PathBuf {
    let root = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dir| dir.flatten().map(|e| e.path()).max())
        .expect("PostgreSQL is missing: the database tests need the postgresql Debian package (cargo xtask setup installs it)");
    root.join("bin").join(name)
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

extern "C" fn stop_server() {
    if STARTED.load(Ordering::SeqCst) {
        if let Some(dir) = DATA_DIR.get() {
            let _ = as_postgres(bin("pg_ctl"))
                .args(["stop", "-m", "immediate", "-D"])
                .arg(dir)
                .output();
        }
    }
}

/// The shared server, started on first use (a few seconds).
pub fn postgres() -> &'static Postgres {
    SERVER.get_or_init(start)
}

fn start() -> Postgres {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("tracer-postgres-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let chown = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(chown.success(), "chown of {} failed", dir.display());
    let data = dir.join("data");
    let init = as_postgres(bin("initdb"))
        .args(["--auth=trust", "--username=postgres", "-D"])
        .arg(&data)
        .output()
        .expect("running initdb");
    assert!(
        init.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    DATA_DIR.set(data.clone()).unwrap();
    let options = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -k {}",
        dir.display()
    );
    let started = as_postgres(bin("pg_ctl"))
        .args(["start", "-w", "-t", "60", "-l"])
        .arg(dir.join("server.log"))
        .args(["-o", &options, "-D"])
        .arg(&data)
        .output()
        .expect("running pg_ctl");
    assert!(
        started.status.success(),
        "pg_ctl start failed: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    STARTED.store(true, Ordering::SeqCst);
    unsafe { libc::atexit(stop_server) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "PostgreSQL did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Postgres { port, dir }
}
