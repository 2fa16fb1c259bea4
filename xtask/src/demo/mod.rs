//! `cargo xtask demo`: the jewellery company in a box. Starts a private RabbitMQ and
//! PostgreSQL, the agent, the company's services (deploy/demo: Shop API, file storage,
//! CRM, B2B API, the C# MES under Mono, the MES UI driver), places orders with a mix of
//! faults, then reports per order where it ended, how long each step took and which system
//! is at fault — from tracer's own outputs — and stops everything it started.
mod report;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    exec::exec,
    infra::{self, free_port, wait_for_port, Started},
    run::build_release,
    setup,
};
use anyhow::{bail, Context as _};
use clap::Args;

const DEMO: &str = "deploy/demo";
const CONFIG: &str = "deploy/demo/tracer-demo.toml";

/// Every way the company knows an order gets lost.
pub const FAULTS: [&str; 12] = [
    "slow-price",
    "invalid-model",
    "lost-message",
    "db-failure",
    "b2b-timeout",
    "upload-hang",
    "queue-overflow",
    "late-delivery",
    "crm-approval-slow",
    "status-out-of-sync",
    "mes-db-failure",
    "validation-error",
];

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Orders to place; the faults go to every second order, healthy ones in between.
    #[arg(long, default_value_t = 2 * FAULTS.len() + 1)]
    orders: usize,
    /// Faults to inject, comma-separated (or "none"); default: all of them.
    #[arg(long, default_value_t = FAULTS.join(","))]
    faults: String,
    /// Where the run keeps its files: spans.jsonl (OTLP/JSON), journeys.sqlite, orders.json
    /// (what was injected), report.json, logs.
    #[arg(long, default_value = "target/demo")]
    out: PathBuf,
    /// Spans only to the file (no OTLP export to localhost:4317, e.g. when no Jaeger runs).
    #[arg(long)]
    headless: bool,
    /// Run this tracer binary instead of building one.
    #[arg(long)]
    tracer: Option<PathBuf>,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if setup::needed() {
        setup::run()?;
    }
    let tracer = match &args.tracer {
        Some(path) => fs::canonicalize(path).with_context(|| format!("{}", path.display()))?,
        None => fs::canonicalize(build_release()?)?,
    };
    setup::runtime_filesystems()?;
    let _ = fs::remove_dir_all(&args.out);
    fs::create_dir_all(&args.out)?;
    let out = fs::canonicalize(&args.out)?;
    let mes = out.join("Mes.exe");
    let sources: Vec<PathBuf> = fs::read_dir(format!("{DEMO}/mes"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    exec(
        Command::new("mcs")
            .arg(format!("-out:{}", mes.display()))
            .args(&sources),
    )?;

    eprintln!("demo: starting PostgreSQL (Shop DB, MES DB) and RabbitMQ …");
    let shop_db = infra::postgres_named(&out, "shop-db")?;
    let mes_db = infra::postgres_named(&out, "mes-db")?;
    let (mut rabbitmq, amqp) = infra::rabbitmq(&out)?;
    let mut agent = start_agent(&tracer, &out, args.headless)?;
    let mut company = Company::start(
        &out,
        &mes,
        Ports {
            shop_db: shop_db.port,
            mes_db: mes_db.port,
            amqp,
        },
    )?;

    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() % 0x10000;
    let manifest = out.join("orders.json");
    eprintln!(
        "demo: placing {} orders (faults: {}) …",
        args.orders, args.faults
    );
    exec(
        Command::new("python3")
            .arg("customers.py")
            .args(["--shop", &company.url("shop"), "--b2b", &company.url("b2b")])
            .args([
                "--orders",
                &args.orders.to_string(),
                "--faults",
                &args.faults,
            ])
            .args(["--prefix", &format!("ORD-{run_id:04x}")])
            .arg("--manifest")
            .arg(&manifest)
            .current_dir(DEMO),
    )?;
    let traffic_ended = Instant::now();
    let placed: Vec<String> = report::manifest(&manifest)?
        .into_iter()
        .map(|o| o.order_id)
        .collect();
    eprintln!("demo: waiting for the orders to finish or for tracer to name their problem …");
    let settled =
        report::wait_until_settled(&tracer, &out, CONFIG, &placed, Duration::from_secs(90));
    company.stop();
    agent.stop(Duration::from_secs(30));
    rabbitmq.stop(Duration::from_secs(10));
    drop((shop_db, mes_db));
    let report = report::build(&tracer, &out, CONFIG, &manifest, traffic_ended)?;
    println!("{report}");
    settled
}

/// Where the company's infrastructure listens.
struct Ports {
    shop_db: u16,
    mes_db: u16,
    amqp: u16,
}

fn start_agent(tracer: &Path, out: &Path, headless: bool) -> anyhow::Result<Started> {
    let mut cmd = Command::new(tracer);
    cmd.arg("run")
        .args(["--config", CONFIG])
        .arg("--export")
        .arg(format!("file:{}", out.join("spans.jsonl").display()))
        .arg("--journey-store")
        .arg(format!("sqlite:{}", out.join("journeys.sqlite").display()))
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--settle-ms", "300", "--stats-every", "0"]);
    if !headless {
        cmd.args(["--export", "otlp"]);
    }
    let log = out.join("tracer.log");
    let mut agent = Started::spawn("tracer", &mut cmd, &log)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("agent started") {
            eprintln!("demo: tracer is running (log: {})", log.display());
            return Ok(agent);
        }
        if let Ok(Some(status)) = agent.child.try_wait() {
            bail!("tracer exited ({status}):\n{text}");
        }
        if Instant::now() > deadline {
            agent.stop(Duration::from_secs(5));
            bail!("tracer did not start within 60 s:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The company's services, each a process we started.
struct Company {
    ports: Vec<(&'static str, u16)>,
    processes: Vec<Started>,
}

impl Company {
    fn start(out: &Path, mes: &Path, infra: Ports) -> anyhow::Result<Self> {
        let ports: Vec<(&'static str, u16)> = ["storage", "shop", "crm", "b2b", "mes"]
            .into_iter()
            .map(|name| (name, free_port()))
            .collect();
        let mut company = Self {
            ports,
            processes: Vec::new(),
        };
        let (db, amqp) = (infra.shop_db.to_string(), infra.amqp.to_string());
        let storage = company.url("storage");
        company.python("storage", &["--port", &company.port("storage")], out)?;
        company.python(
            "crm_api",
            &[
                "--port",
                &company.port("crm"),
                "--db-port",
                &db,
                "--amqp-port",
                &amqp,
                "--storage",
                &storage,
            ],
            out,
        )?;
        company.python(
            "shop_api",
            &[
                "--port",
                &company.port("shop"),
                "--db-port",
                &db,
                "--storage",
                &storage,
                "--crm",
                &company.url("crm"),
                "--amqp-port",
                &amqp,
            ],
            out,
        )?;
        let mut cmd = Command::new("mono");
        cmd.arg(mes)
            .arg(&amqp)
            .arg(company.port("mes"))
            .arg(&storage)
            .arg(infra.mes_db.to_string());
        company
            .processes
            .push(Started::spawn("mes", &mut cmd, &out.join("mes.log"))?);
        company.python(
            "b2b_api",
            &["--port", &company.port("b2b"), "--mes", &company.url("mes")],
            out,
        )?;
        for (name, port) in &company.ports {
            wait_for_port(*port, name, Duration::from_secs(30))?;
        }
        company.python(
            "mes_ui",
            &["--mes", &company.url("mes"), "--seconds", "600"],
            out,
        )?;
        eprintln!("demo: the company is up: {:?}", company.ports);
        Ok(company)
    }

    fn python(&mut self, script: &str, args: &[&str], out: &Path) -> anyhow::Result<()> {
        let mut cmd = Command::new("python3");
        cmd.arg(format!("{script}.py")).args(args).current_dir(DEMO);
        let log = out.join(format!("{script}.log"));
        self.processes.push(Started::spawn(script, &mut cmd, &log)?);
        Ok(())
    }

    fn port(&self, name: &str) -> String {
        self.ports
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p.to_string())
            .expect("a known service")
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}", self.port(name))
    }

    fn stop(&mut self) {
        for process in self.processes.iter_mut().rev() {
            process.stop(Duration::from_secs(5));
        }
    }
}
