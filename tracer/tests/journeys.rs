//! End-to-end for order journeys: unmodified HTTP services, pika and amqplib through a real
//! RabbitMQ, the real eBPF agent keeping journeys in SQLite, a clock moved forward instead
//! of waiting 26 hours, `/metrics` scraped and parsed, `tracer orders` read back, an agent
//! restart; and `tracer journey` merging two agents' spans in a real PostgreSQL.
mod support;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::{
    agent::{curl, AgentRun, Service, PEERS},
    broker::broker,
    keys,
    metrics::{names, scrape, try_value, value},
    otlp::{free_port, Receiver},
    postgres::postgres,
    tracer_ok,
};

const KEY: &str = "journey-test-key";

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tracer-journeys-{}-{name}", std::process::id()))
}

fn key_file() -> PathBuf {
    keys::key_file(KEY)
}

fn order_trace(order_id: &str) -> String {
    keys::order_trace(KEY, order_id)
}

fn post(service: &Service, path: &str, body: &str) {
    let status = curl(&[
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        &service.url(path),
    ]);
    assert_eq!(status, "201", "POST {path}");
}

fn order_body(order: &str, status: Option<&str>) -> String {
    match status {
        Some(status) => format!(r#"{{"order_id": "{order}", "status": "{status}"}}"#),
        None => format!(r#"{{"order_id": "{order}"}}"#),
    }
}

/// Waits until `done` holds for a fresh scrape; panics with the last one.
fn wait_for_metrics(
    base: &str,
    what: &str,
    done: impl Fn(&prometheus_parse::Scrape) -> bool,
) -> prometheus_parse::Scrape {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = scrape(base);
        if done(&metrics) {
            return metrics;
        }
        if Instant::now() > deadline {
            let samples: Vec<String> = metrics
                .samples
                .iter()
                .filter(|s| {
                    s.metric.starts_with("tracer_order") || s.metric.starts_with("tracer_sla")
                })
                .map(|s| format!("{} {:?} {:?}", s.metric, s.labels, s.value))
                .collect();
            panic!(
                "timed out waiting for {what}; metrics:\n{}",
                samples.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The CRM publishes order `{prefix}-0` and the MES consumes it. Both are short-lived
/// processes, kept alive until their spans are exported: a process gone before the agent
/// reads `/proc` can only be named by its command (`node`), not by the config's rules.
fn publish_and_consume(prefix: &str, queue: &str, receiver: &Receiver) {
    let port = broker().port.to_string();
    let hold = |command: &mut Command| {
        command
            .arg("--hold")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut publisher = hold(
        Command::new("python3")
            .arg(format!("{PEERS}/amqp_publisher.py"))
            .args(["--port", &port, "--queue", queue, "--routing-key", queue])
            .args(["--id-prefix", prefix, "--confirm"]),
    );
    // Its line says the message is published (and the queue declared).
    let mut published = String::new();
    BufReader::new(publisher.stdout.take().unwrap())
        .read_line(&mut published)
        .unwrap();
    assert!(published.contains("\"ok\": true"), "{published}");
    let mut consumer = hold(
        Command::new("node")
            .arg(format!("{PEERS}/amqp_consumer.js"))
            .args([&port, queue, "1"]),
    );
    let message = format!("{prefix}-0");
    receiver.wait_for(
        "the CRM's publish and the MES's delivery",
        Duration::from_secs(30),
        |spans| {
            [(4, "crm"), (5, "mes")].iter().all(|(kind, service)| {
                spans.iter().any(|s| {
                    s.kind == *kind
                        && s.service == *service
                        && s.attr("messaging.message.id") == message
                })
            })
        },
    );
    for child in [&mut publisher, &mut consumer] {
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
    }
}

fn agent_config(path: &Path, shop: &Service, crm: &Service, mes: &Service) {
    let config = format!(
        r#"
[[service]]
name = "shop-api"
port = {shop}
[[service]]
name = "crm"
port = {crm}
[[service]]
name = "crm"
cmdline_contains = "amqp_publisher.py"
[[service]]
name = "mes-api"
port = {mes}
[[service]]
name = "mes"
cmdline_contains = "amqp_consumer.js"
[[service]]
name = "customer"
exe = "curl"

[http]
routes = ["/orders/{{order_id}}/files", "/orders/{{order_id}}/submit", "/orders/{{order_id}}/price", "/orders/{{order_id}}/ship"]

[journey]
check_every = "1s"
jaeger_url = "https://jaeger.example"

[[journey.status]]
status = "FILE_UPLOADED"
span = "POST /orders/*/files"

[[journey.status]]
status = "SUBMITTED"
span = "POST /orders/*/submit"
"#,
        shop = shop.port,
        crm = crm.port,
        mes = mes.port,
    );
    std::fs::write(path, config).unwrap();
    let checked = tracer_ok(["config", "check", path.to_str().unwrap()]);
    assert!(checked.contains("ok"), "{checked}");
}

#[test]
fn orders_move_through_statuses_and_one_held_in_submitted_is_reported_stuck() {
    let key = key_file();
    let config = temp("agent.toml");
    let store = temp("journeys.sqlite");
    let clock = temp("clock");
    let _ = std::fs::remove_file(&store);
    std::fs::write(&clock, "").unwrap();
    let receiver = Receiver::start();
    broker();
    let (shop, crm, mes) = (
        Service::python(&[]),
        Service::python(&[]),
        Service::python(&[]),
    );
    agent_config(&config, &shop, &crm, &mes);
    let store_arg = format!("sqlite:{}", store.display());
    let export = format!("otlp-grpc={}", receiver.grpc_url());
    let agent_args = [
        "--config",
        config.to_str().unwrap(),
        "--export",
        export.as_str(),
        "--hmac-key-file",
        key.to_str().unwrap(),
        // Raw ids, so the test can look orders up by them.
        "--pseudonymise-ids=false",
        "--journey-store",
        store_arg.as_str(),
        "--test-clock-offset-file",
        clock.to_str().unwrap(),
    ];
    let agent = AgentRun::start(&agent_args);

    // J-0: created, file uploaded, submitted, handed to the MES over RabbitMQ — and then
    // nothing. J-1 goes all the way, with a failed request and a B2B price on the way.
    post(&shop, "/orders", &order_body("J-0", Some("INITIATED")));
    post(&shop, "/orders/J-0/files", &order_body("J-0", None));
    post(&crm, "/orders/J-0/submit", &order_body("J-0", None));
    publish_and_consume("J", "mes.journeys", &receiver);
    post(&shop, "/orders", &order_body("J-1", Some("INITIATED")));
    post(&crm, "/orders/J-1/submit", &order_body("J-1", None));
    post(&mes, "/b2b/calculate", &order_body("J-1", None));
    assert_eq!(curl(&[&shop.url("/fail?order_id=J-1")]), "500");
    post(
        &mes,
        "/orders/J-1/price",
        &order_body("J-1", Some("PRICE_CALCULATED")),
    );
    post(
        &shop,
        "/orders/J-1/ship",
        &order_body("J-1", Some("SHIPPED")),
    );

    let reached = |m: &prometheus_parse::Scrape, status: &str| {
        try_value(
            m,
            "tracer_orders_reached_status_total",
            &[("status", status)],
        )
    };
    wait_for_metrics(&agent.metrics, "both journeys", |m| {
        reached(m, "SHIPPED") == Some(1.0)
            && reached(m, "SUBMITTED") == Some(2.0)
            && reached(m, "FILE_UPLOADED") == Some(1.0)
    });
    let before = scrape(&agent.metrics);
    assert_eq!(
        value(&before, "tracer_orders_stuck", &[("status", "SUBMITTED")]),
        0.0
    );

    // 26 hours later.
    std::fs::write(&clock, "26h").unwrap();
    let stuck_spans = receiver.wait_for("the stuck-order span", Duration::from_secs(30), |spans| {
        spans
            .iter()
            .any(|s| s.attr("tracer.synthesized") == "true" && s.attr("app.order.id") == "J-0")
    });
    let stuck: Vec<_> = stuck_spans
        .iter()
        .filter(|s| s.attr("tracer.synthesized") == "true" && s.name.contains("stuck"))
        .collect();
    assert_eq!(stuck.len(), 1, "only J-0 is stuck: {stuck:#?}");
    let stuck = stuck[0];
    assert_eq!(stuck.name, "order stuck in SUBMITTED");
    assert_eq!(stuck.status, 2, "an error status");
    assert_eq!(
        stuck.status_message,
        "stuck in SUBMITTED for 26 h, last seen by mes"
    );
    assert_eq!(stuck.trace_id, order_trace("J-0"), "in the order's trace");
    let consumer = stuck_spans
        .iter()
        .find(|s| s.service == "mes" && s.attr("app.order.id") == "J-0")
        .expect("the MES consumer span of J-0");
    assert_eq!(
        stuck.parent_span_id, consumer.span_id,
        "under the last span that saw it"
    );
    assert_eq!(stuck.service, "tracer-journey");

    let metrics = wait_for_metrics(&agent.metrics, "the stuck gauge", |m| {
        try_value(m, "tracer_orders_stuck", &[("status", "SUBMITTED")]) == Some(1.0)
    });
    let expect = |name: &str, labels: &[(&str, &str)], want: f64| {
        assert_eq!(
            value(&metrics, name, labels),
            want,
            "{name} {labels:?}; have {:?}",
            names(&metrics)
        );
    };
    expect(
        "tracer_orders_stuck_reported_total",
        &[("status", "SUBMITTED")],
        1.0,
    );
    expect("tracer_orders_seen_total", &[], 2.0);
    expect(
        "tracer_orders_reached_status_total",
        &[("status", "INITIATED")],
        2.0,
    );
    expect(
        "tracer_orders_reached_status_total",
        &[("status", "PRICE_CALCULATED")],
        1.0,
    );
    expect("tracer_order_lead_time_seconds", &[], 1.0);
    expect(
        "tracer_order_status_dwell_seconds",
        &[("status", "SUBMITTED")],
        1.0,
    );
    expect(
        "tracer_order_status_dwell_seconds",
        &[("status", "INITIATED")],
        2.0,
    );
    expect(
        "tracer_span_errors_total",
        &[("service", "shop-api"), ("operation", "GET /fail")],
        1.0,
    );
    expect(
        "tracer_sla_operations_total",
        &[("sla", "b2b_calculate"), ("outcome", "met")],
        1.0,
    );
    expect("tracer_sla_ratio", &[("sla", "b2b_calculate")], 1.0);
    expect(
        "tracer_spans_dropped_total",
        &[("reason", "queue_full")],
        0.0,
    );
    assert!(value(&metrics, "tracer_events_read_total", &[]) > 0.0);
    assert!(value(&metrics, "tracer_spans_exported_total", &[]) > 0.0);
    assert!(value(&metrics, "tracer_exchanges_total", &[("protocol", "amqp")]) > 0.0);

    // What support staff see.
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend([
            "--config",
            config.to_str().unwrap(),
            "--store",
            store_arg.as_str(),
            "--test-clock-offset-file",
            clock.to_str().unwrap(),
        ]);
        tracer_ok(&all)
    };
    let shown = cli(&["orders", "show", "J-0"]);
    println!("{shown}");
    for expected in [
        "order J-0",
        "status      SUBMITTED for 26 h — STUCK (limit 24 h)",
        "last seen by mes",
        &format!("https://jaeger.example/trace/{}", order_trace("J-0")),
        "stuck in SUBMITTED for 26 h, last seen by mes",
    ] {
        assert!(
            shown.contains(expected),
            "missing {expected:?} in:\n{shown}"
        );
    }
    let history: Vec<&str> = shown
        .split("status history")
        .nth(1)
        .and_then(|h| h.split("timeline").next())
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    // Who set a status is the service that answered, even though the traced client's
    // (curl, "customer") read of the answer can return microseconds before the server's
    // write does on loopback.
    let expected_history = [
        ("INITIATED", "shop-api"),
        ("FILE_UPLOADED", "shop-api"),
        ("SUBMITTED", "crm"),
    ];
    assert_eq!(history.len(), 3, "{shown}");
    for (line, (status, service)) in history.iter().zip(expected_history) {
        assert!(
            line.contains(status) && line.contains(&format!("set by {service}")),
            "{line:?} in:\n{shown}"
        );
    }
    let timeline = shown.split("timeline").nth(1).unwrap();
    for (service, operation) in [
        ("shop-api", "POST /orders "),
        ("shop-api", "POST /orders/{order_id}/files"),
        ("crm", "POST /orders/{order_id}/submit"),
        ("crm", "publish amq.default"),
        ("mes", "deliver mes.journeys"),
    ] {
        assert!(
            timeline
                .lines()
                .any(|l| l.contains(service) && l.contains(operation)),
            "no {service} {operation} step in:\n{shown}"
        );
    }
    let listed = cli(&["orders", "list", "--stuck"]);
    assert!(
        listed.contains("J-0") && listed.contains("SUBMITTED STUCK"),
        "{listed}"
    );
    assert!(!listed.contains("J-1"), "{listed}");
    let all = cli(&["orders", "list"]);
    assert!(all.contains("J-1") && all.contains("SHIPPED"), "{all}");
    agent.stop();

    // A new agent on the same store knows the orders, and J-0's report.
    let agent = AgentRun::start(&agent_args);
    wait_for_metrics(&agent.metrics, "the stuck order after the restart", |m| {
        try_value(m, "tracer_orders_stuck", &[("status", "SUBMITTED")]) == Some(1.0)
    });
    post(
        &mes,
        "/orders/J-0/price",
        &order_body("J-0", Some("PRICE_CALCULATED")),
    );
    let metrics = wait_for_metrics(&agent.metrics, "J-0 to move on", |m| {
        try_value(m, "tracer_orders_stuck", &[("status", "SUBMITTED")]) == Some(0.0)
    });
    assert_eq!(
        value(
            &metrics,
            "tracer_orders_stuck_reported_total",
            &[("status", "SUBMITTED")]
        ),
        0.0,
        "not reported again"
    );
    let shown = cli(&["orders", "show", "J-0"]);
    let history = shown
        .split("status history")
        .nth(1)
        .unwrap()
        .split("timeline")
        .next()
        .unwrap();
    let statuses: Vec<&str> = [
        "INITIATED",
        "FILE_UPLOADED",
        "SUBMITTED",
        "PRICE_CALCULATED",
    ]
    .into_iter()
    .filter(|s| history.contains(&format!(" {s} ")))
    .collect();
    assert_eq!(
        statuses.len(),
        4,
        "the whole history, before and after the restart:\n{shown}"
    );
    assert!(shown.contains("status      PRICE_CALCULATED"), "{shown}");
    agent.stop();
}

struct JourneyService {
    child: Child,
    _stderr: std::thread::JoinHandle<String>,
}

impl Drop for JourneyService {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

#[test]
fn the_journey_service_merges_two_agents_into_one_journey_in_postgresql() {
    let key = key_file();
    let db = postgres();
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", db.port);
    // A clean slate for this order in the shared cluster.
    let _ = Command::new("psql")
        .args([&url, "-qc", "DELETE FROM journey_steps WHERE order_id = 'M-1'; DELETE FROM journey_orders WHERE order_id = 'M-1'"])
        .stderr(Stdio::null())
        .status();
    let (grpc, http, metrics) = (free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(["journey", "--store", &url])
        .args(["--otlp-grpc", &format!("127.0.0.1:{grpc}")])
        .args(["--otlp-http", &format!("127.0.0.1:{http}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = support::wait_until_ready(&mut child, "journey service started", "tracer journey");
    let service = JourneyService {
        child,
        _stderr: stderr,
    };

    let (shop, crm) = (Service::python(&[]), Service::python(&[]));
    let config = temp("two-agents.toml");
    std::fs::write(
        &config,
        format!(
            "[[service]]\nname = \"shop-api\"\nport = {}\n[[service]]\nname = \"crm\"\nport = {}\n",
            shop.port, crm.port
        ),
    )
    .unwrap();
    let start = |pid: u32, export: String| {
        AgentRun::start(&[
            "--config",
            config.to_str().unwrap(),
            "--pid",
            &pid.to_string(),
            "--export",
            &export,
            "--hmac-key-file",
            key.to_str().unwrap(),
            "--pseudonymise-ids=false",
            "--journey-store",
            "none",
        ])
    };
    // One agent per "host": each sees one service, one over OTLP/gRPC, one over OTLP/HTTP.
    let a = start(shop.pid(), format!("otlp-grpc=http://127.0.0.1:{grpc}"));
    let b = start(
        crm.pid(),
        format!("otlp-http=http://127.0.0.1:{http}/v1/traces"),
    );
    post(&shop, "/orders", &order_body("M-1", Some("INITIATED")));
    post(
        &crm,
        "/orders/M-1/submit",
        &order_body("M-1", Some("SUBMITTED")),
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let output = Command::new(env!("CARGO_BIN_EXE_tracer"))
            .args(["orders", "show", "M-1", "--store", &url])
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&output.stdout).into_owned();
        if shown.contains("services    crm, shop-api") && shown.contains("status      SUBMITTED") {
            break shown;
        }
        assert!(
            Instant::now() < deadline,
            "no merged journey for M-1 in PostgreSQL:\n{shown}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    a.stop();
    b.stop();
    assert!(
        shown.contains("set by shop-api") && shown.contains("set by crm"),
        "{shown}"
    );
    assert!(shown.contains(&order_trace("M-1")), "{shown}");
    let m = scrape(&format!("http://127.0.0.1:{metrics}"));
    assert_eq!(
        value(&m, "tracer_orders_seen_total", &[]),
        1.0,
        "one journey, not two"
    );
    assert_eq!(
        value(
            &m,
            "tracer_orders_reached_status_total",
            &[("status", "SUBMITTED")]
        ),
        1.0
    );
    let rows = Command::new("psql")
        .args([
            &url,
            "-tAc",
            "SELECT count(DISTINCT service) FROM journey_steps WHERE order_id = 'M-1'",
        ])
        .output()
        .expect("psql");
    assert_eq!(
        String::from_utf8_lossy(&rows.stdout).trim(),
        "2",
        "both agents' spans in PostgreSQL"
    );
    drop(service);
}
