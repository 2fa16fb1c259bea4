//! `cargo xtask bench --record-corpus`: records the pipeline bench's corpus from real
//! programs with `tracer capture --format jsonl`, both ends of every connection the agent
//! can see: a Python client (http.client) POSTing JSON orders to a Node.js server and
//! reading prices, pika publishing with confirms through RabbitMQ to an amqplib consumer
//! (the broker's sockets too), and psycopg sessions against PostgreSQL (client and server
//! backend). Written to tracer/benches/corpus/shop.capture.jsonl.
use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::{
    exec::exec,
    infra::{self, free_port, wait_for_port, Started},
};

pub const CORPUS: &str = "tracer/benches/corpus/shop.capture.jsonl";
const PEERS: &str = "tracer/tests/peers";

pub fn record(tracer: &Path, out: &Path) -> anyhow::Result<()> {
    let (mut broker, amqp) = infra::rabbitmq(out)?;
    let database = infra::postgres(out)?;
    let http = free_port();
    let mut server = Started::spawn(
        "http service",
        Command::new("node")
            .arg(format!("{PEERS}/http_service.js"))
            .arg(http.to_string()),
        &out.join("corpus-http.log"),
    )?;
    wait_for_port(http, "the HTTP service", Duration::from_secs(10))?;
    let recording = out.join("corpus.capture.jsonl");
    let log = out.join("corpus-capture.log");
    let mut capture = Command::new(tracer);
    capture.args(["capture", "--format", "jsonl", "--no-tls"]);
    for port in [http, amqp, database.port] {
        capture.args(["--port", &port.to_string()]);
    }
    let mut capture = capture
        .stdout(fs::File::create(&recording)?)
        .stderr(fs::File::create(&log)?)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fs::read_to_string(&log)?.contains("capture started") {
        if Instant::now() > deadline || capture.try_wait()?.is_some() {
            let _ = capture.kill();
            bail!(
                "tracer capture did not start: {}",
                fs::read_to_string(&log)?
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    exec(Command::new("python3").args([
        "xtask/bench/orders_client.py",
        "--port",
        &http.to_string(),
        "--count",
        "150",
    ]))?;
    exec(
        Command::new("python3")
            .arg(format!("{PEERS}/amqp_publisher.py"))
            .args(["--port", &amqp.to_string(), "--queue", "mes.orders"])
            .args(["--routing-key", "mes.orders", "--count", "100", "--confirm"])
            .args(["--id-prefix", "ORD"])
            .stdout(Stdio::null()),
    )?;
    exec(
        Command::new("node")
            .arg(format!("{PEERS}/amqp_consumer.js"))
            .args([&amqp.to_string(), "mes.orders", "100"])
            .stdout(Stdio::null()),
    )?;
    for n in 0..10 {
        exec(
            Command::new("python3")
                .arg(format!("{PEERS}/pg_client.py"))
                .args(["--port", &database.port.to_string()])
                .args(["--order", &format!("ORD-{n:06}")])
                .stdout(Stdio::null()),
        )?;
    }
    // Until everything read from the ring is written.
    let mut size = 0;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = fs::metadata(&recording)?.len();
        if now == size {
            break;
        }
        size = now;
    }
    unsafe { libc::kill(capture.id() as i32, libc::SIGINT) };
    capture.wait()?;
    server.stop(Duration::from_secs(5));
    broker.stop(Duration::from_secs(10));
    drop(database);
    fs::copy(&recording, CORPUS)?;
    eprintln!("bench: recorded {size} bytes to {CORPUS}");
    Ok(())
}
