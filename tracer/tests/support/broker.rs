//! A private RabbitMQ node for the AMQP tests: started once per test binary from the
//! Debian package's own scripts, on free ports, with its data in a temporary directory,
//! and stopped (by its process group) when the test binary exits.
#![allow(dead_code)]

use std::{
    net::TcpStream,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicI32, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

use super::otlp::free_port;

const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

pub struct Broker {
    pub port: u16,
    pub dir: PathBuf,
}

static BROKER: OnceLock<Broker> = OnceLock::new();
static BROKER_GROUP: AtomicI32 = AtomicI32::new(0);

extern "C" fn stop_broker() {
    let group = BROKER_GROUP.load(Ordering::SeqCst);
    if group > 0 {
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
}

/// The shared broker, started on first use (about 10 s).
pub fn broker() -> &'static Broker {
    BROKER.get_or_init(start)
}

fn start() -> Broker {
    assert!(
        std::path::Path::new(RABBITMQ_SERVER).exists(),
        "{RABBITMQ_SERVER} is missing: the AMQP tests need the rabbitmq-server Debian package (cargo xtask setup installs it)"
    );
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("tracer-rabbitmq-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("enabled_plugins"), "[].").unwrap();
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    // Never waited for: it lives as long as the test binary and is killed, with its whole
    // process group, by `stop_broker` at exit.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(RABBITMQ_SERVER)
        .env("HOME", &dir)
        .env("RABBITMQ_NODENAME", format!("tracer{port}@localhost"))
        .env("RABBITMQ_NODE_PORT", port.to_string())
        .env("RABBITMQ_DIST_PORT", free_port().to_string())
        .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", dir.join("log"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
        .env("RABBITMQ_CONFIG_FILE", dir.join("none"))
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .process_group(0)
        .spawn()
        .expect("starting rabbitmq-server");
    BROKER_GROUP.store(child.id() as i32, Ordering::SeqCst);
    unsafe { libc::atexit(stop_broker) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Ready once it answers the AMQP protocol header with Connection.Start.
        if let Ok(mut socket) = TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut reply = [0u8; 1];
            if socket.write_all(b"AMQP\x00\x00\x09\x01").is_ok()
                && socket.read_exact(&mut reply).is_ok()
                && reply[0] == 1
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "rabbitmq-server did not become ready within 60 s; see {}",
            dir.join("server.log").display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    Broker { port, dir }
}
