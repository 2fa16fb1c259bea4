//! End-to-end for order ids, privacy and sampling: unmodified services (Python, Node.js,
//! curl, pika, amqplib), a real RabbitMQ, the real eBPF programs and a real OTLP receiver.
mod support;

use std::{process::Command, time::Duration};

use support::{
    agent::{curl, AgentRun, Service, PEERS},
    broker::broker,
    keys,
    otlp::{everything, ReceivedSpan, Receiver},
};

const KEY: &str = "order-journey-test-key";
const SERVER: i32 = 2;

fn key_file() -> std::path::PathBuf {
    keys::key_file(KEY)
}

/// The agent as the order tests run it: the test's HMAC key, a short settle time.
fn order_agent(receiver: &Receiver, key: &std::path::Path, extra: &[&str]) -> AgentRun {
    let export = format!("otlp-grpc={}", receiver.grpc_url());
    let key = key.to_str().unwrap();
    AgentRun::start(
        &[
            &[
                "--export",
                export.as_str(),
                "--hmac-key-file",
                key,
                "--settle-ms",
                "300",
            ],
            extra,
        ]
        .concat(),
    )
}

/// DESIGN.md's derivation, computed here independently of tracer.
fn documented_trace_id(order_id: &str) -> String {
    keys::order_trace(KEY, order_id)
}

fn hash_id(id: &str, key: &std::path::Path) -> String {
    let key = key.display().to_string();
    support::tracer_ok(["hash-id", id, "--hmac-key-file", &key])
        .trim()
        .to_owned()
}

fn publish_order(order_prefix: &str) {
    let status = Command::new("python3")
        .arg(format!("{PEERS}/amqp_publisher.py"))
        .args([
            "--port",
            &broker().port.to_string(),
            "--queue",
            "mes.journey",
            "--routing-key",
            "mes.journey",
        ])
        .args(["--id-prefix", order_prefix, "--confirm"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("node")
        .arg(format!("{PEERS}/amqp_consumer.js"))
        .args([&broker().port.to_string(), "mes.journey", "1"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Everything a receiver saw, as one string, to search for leaks.
/// The order's spans, from the HTTP service that created it (id in a JSON body), a second
/// service that used it in a path, and a message carrying it to a third process.
fn order_journey(
    order: &str,
    agent: AgentRun,
    receiver: &Receiver,
    a: &Service,
    b: &Service,
) -> Vec<ReceivedSpan> {
    let body = format!(
        r#"{{"order_id": "{order}", "email": "anna.schmidt@example.com", "model": "ring.stl"}}"#
    );
    let create = a.url("/orders?contact=anna.schmidt@example.com");
    assert_eq!(
        curl(&[
            "-H",
            "Authorization: Bearer s3cret-token",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            &create
        ]),
        "201"
    );
    assert_eq!(curl(&[&b.url(&format!("/orders/{order}"))]), "200");
    publish_order("ORD");
    let spans = receiver.wait_for("the order's six spans", Duration::from_secs(30), |spans| {
        spans
            .iter()
            .filter(|s| !s.attr("app.order.id").is_empty())
            .count()
            >= 6
    });
    agent.stop();
    spans
}

#[test]
fn one_order_is_one_trace_across_http_bodies_paths_and_amqp() {
    let key = key_file();
    let receiver = Receiver::start();
    broker();
    let (a, b) = (Service::python(&[]), Service::node());
    // Raw ids on purpose (pseudonymisation is on by default with a key).
    let agent = order_agent(&receiver, &key, &["--pseudonymise-ids=false"]);
    let order = "ORD-0"; // the publisher's first message carries {"order_id": "ORD-0"}
    let spans = order_journey(order, agent, &receiver, &a, &b);
    let expected = documented_trace_id(order);
    assert_eq!(
        hash_id(order, &key),
        expected,
        "tracer hash-id prints the same derivation"
    );
    let ordered: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.attr("app.order.id") == order)
        .collect();
    let what: Vec<String> = ordered
        .iter()
        .map(|s| format!("{} {} kind={}", s.service, s.name, s.kind))
        .collect();
    for (service, kind, name) in [
        ("python", SERVER, "POST /orders"),
        ("node", SERVER, "GET /orders/{id}"),
        ("python", 4, "publish amq.default"),
        ("node", 5, "deliver mes.journey"),
    ] {
        let span = ordered
            .iter()
            .find(|s| s.service.starts_with(service) && s.kind == kind && s.name == name)
            .unwrap_or_else(|| panic!("no {service} {name} span with app.order.id; have {what:?}"));
        assert_eq!(span.trace_id, expected, "{name} is in the order's trace");
    }
    assert!(
        ordered.iter().all(|s| s.trace_id == expected),
        "every span of the order in one trace: {what:?}"
    );

    // Privacy, without pseudonymisation: no e-mail, no credentials.
    let all = everything(&spans);
    assert!(
        !all.contains("anna.schmidt@example.com") && !all.contains("anna.schmidt%40example.com"),
        "{all}"
    );
    assert!(!all.contains("s3cret-token"), "{all}");
    let create = spans
        .iter()
        .find(|s| s.kind == SERVER && s.name == "POST /orders")
        .unwrap();
    assert_eq!(
        create.attr("url.query"),
        "contact=REDACTED",
        "query values are not on the allow-list"
    );
}

#[test]
fn pseudonymised_ids_are_the_only_form_that_leaves_the_agent() {
    let key = key_file();
    let receiver = Receiver::start();
    broker();
    let (a, b) = (Service::python(&[]), Service::node());
    let agent = order_agent(&receiver, &key, &["--pseudonymise-ids"]);
    let order = "ORD-0";
    let pseudonym = hash_id(order, &key);
    let body = format!(r#"{{"order_id": "{order}", "email": "anna.schmidt@example.com"}}"#);
    assert_eq!(
        curl(&[
            "-H",
            "Authorization: Basic dXNlcjpwYXNz",
            "-d",
            &body,
            &a.url("/orders")
        ]),
        "201"
    );
    assert_eq!(curl(&[&b.url(&format!("/orders/{order}"))]), "200");
    publish_order("ORD");
    let spans = receiver.wait_for("the order's spans", Duration::from_secs(30), |spans| {
        spans
            .iter()
            .filter(|s| s.attr("app.order.id") == pseudonym)
            .count()
            >= 6
    });
    agent.stop();
    let all = everything(&spans);
    assert!(
        !all.contains(order),
        "the raw order id never reaches the receiver:\n{all}"
    );
    assert!(!all.contains("dXNlcjpwYXNz"), "{all}");
    let path = spans
        .iter()
        .find(|s| s.kind == SERVER && s.service == "node")
        .unwrap();
    assert_eq!(path.attr("url.path"), "/orders/{id}");
    assert!(spans
        .iter()
        .filter(|s| s.attr("app.order.id") == pseudonym)
        .all(|s| s.trace_id == pseudonym));
}

#[test]
fn ten_percent_of_successful_traces_and_every_error_are_exported() {
    let receiver = Receiver::start();
    let a = Service::python(&[]);
    let export = format!("otlp-grpc={}", receiver.grpc_url());
    let agent = AgentRun::start(&[
        "--export",
        &export,
        "--sample-success-ratio",
        "0.1",
        "--settle-ms",
        "200",
    ]);
    let load = |path: &str, count: usize| {
        let output = Command::new("python3")
            .arg(format!("{PEERS}/http_load.py"))
            .args([
                "--port",
                &a.port.to_string(),
                "--count",
                &count.to_string(),
                "--path",
                path,
            ])
            .output()
            .unwrap();
        assert!(output.status.success());
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    load("/hello/", 1000);
    load("/fail?", 50);
    // Distinct span ids: an export retried after a time-out may reach the receiver twice
    // (OTLP delivery is at-least-once), and sampling is about spans, not deliveries.
    let count = |spans: &[ReceivedSpan], prefix: &str| {
        spans
            .iter()
            .filter(|s| s.kind == SERVER && s.attr("url.path").starts_with(prefix))
            .map(|s| s.span_id.clone())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    receiver.wait_for("all error spans", Duration::from_secs(90), |spans| {
        count(spans, "/fail") == 50
    });
    // Sampled successes are settled by now too; give stragglers a moment.
    std::thread::sleep(Duration::from_secs(2));
    agent.stop();
    let spans = receiver.spans();
    let successes = count(&spans, "/hello/");
    let deliveries = spans
        .iter()
        .filter(|s| s.kind == SERVER && s.attr("url.path").starts_with("/hello/"))
        .count();
    assert_eq!(count(&spans, "/fail"), 50, "every 5xx is exported");
    assert!(
        (70..=130).contains(&successes),
        "10 % ± 3 % of 1,000 successful requests, got {successes} distinct spans ({deliveries} deliveries)"
    );
}

#[test]
fn a_config_typo_is_rejected_at_start_with_line_and_field() {
    let file = std::env::temp_dir().join(format!("tracer-typo-{}.toml", std::process::id()));
    std::fs::write(&file, "[[service]]\nname = \"shop-api\"\ncmdline_contains = \"shop\"\n\n[sampling]\nsucess_ratio = 0.2\n").unwrap();
    for args in [
        vec!["config", "check"],
        vec!["run", "--duration", "1", "--config"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_tracer"))
            .args(&args)
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} accepted a typo");
        assert!(
            stderr.contains("line 6") && stderr.contains("sucess_ratio"),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains(&file.display().to_string()),
            "{args:?} names the file: {stderr}"
        );
    }
    std::fs::write(&file, "[sampling]\nsuccess_ratio = 0.2\n").unwrap();
    support::tracer_ok(["config".as_ref(), "check".as_ref(), file.as_os_str()]);
}
