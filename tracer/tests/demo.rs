//! The company in a box, headless: `cargo xtask demo` runs the Shop API, file storage,
//! CRM, B2B API and the C# MES (Mono) against a private RabbitMQ and PostgreSQL with the
//! real agent, places orders with every fault, and this test checks — from tracer's own
//! outputs only (`tracer orders`, the OTLP/JSON span file) — that each injected fault is
//! located in the right service and step.
mod support;

use std::{path::Path, process::Command};

use serde_json::Value;

/// Every fault the demo injects and where it must be found: (problem, service, step).
const FAULTS: [(&str, (&str, &str, &str)); 12] = [
    ("slow-price", ("slow", "mes", "deliver mes.orders")),
    ("invalid-model", ("failed", "mes", "deliver mes.orders")),
    ("lost-message", ("stuck", "mes", "deliver mes.orders")),
    // The database's own SERVER span: it refused the row (a check constraint).
    ("db-failure", ("failed", "shop-db", "UPDATE orders")),
    (
        "b2b-timeout",
        ("slow", "b2b-api", "POST /b2b/{order_id}/calculate"),
    ),
    (
        "upload-hang",
        ("slow", "storage", "PUT /objects/{order_id}"),
    ),
    // The broker took the message in and never let it out (its length limit dropped it).
    ("queue-overflow", ("lost", "rabbitmq", "queue mes.orders")),
    // The MES's backlog: the time went in the queue, not in the MES's handling.
    ("late-delivery", ("slow", "rabbitmq", "queue mes.orders")),
    (
        "crm-approval-slow",
        ("slow", "crm", "POST /orders/{order_id}/approval"),
    ),
    // The CRM recorded a price the MES never sent.
    (
        "status-out-of-sync",
        ("out_of_sync", "crm", "publish shop.events"),
    ),
    // The MES DB's own SERVER span: it refused the work order (a check constraint).
    ("mes-db-failure", ("failed", "mes-db", "INSERT work_orders")),
    // The MES's reply says why it rejected the model.
    ("validation-error", ("failed", "mes", "publish amq.default")),
];

fn expected(scenario: &str) -> Option<(&'static str, &'static str, &'static str)> {
    FAULTS
        .iter()
        .find(|(fault, _)| *fault == scenario)
        .map(|(_, want)| *want)
}

/// One exported span, as the test reads it.
struct Exported {
    trace: String,
    service: String,
    name: String,
    order: Option<String>,
}

/// Every span in the OTLP/JSON lines file.
fn exported_spans(path: &Path) -> Vec<Exported> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut spans = Vec::new();
    for line in text.lines() {
        let batch: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("an OTLP/JSON line that does not parse ({e}): {line}"));
        for resource in batch["resourceSpans"].as_array().into_iter().flatten() {
            let service = resource["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == "service.name")
                .and_then(|a| a["value"]["stringValue"].as_str())
                .unwrap_or_default()
                .to_owned();
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    let order = span["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["key"] == "app.order.id")
                        .and_then(|a| a["value"]["stringValue"].as_str())
                        .map(str::to_owned);
                    spans.push(Exported {
                        trace: span["traceId"].as_str().unwrap().to_owned(),
                        service: service.clone(),
                        name: span["name"].as_str().unwrap().to_owned(),
                        order,
                    });
                }
            }
        }
    }
    spans
}

fn orders(out: &Path, args: &[&str]) -> Value {
    let store = format!("sqlite:{}", out.join("journeys.sqlite").display());
    let json = [
        "--json",
        "--config",
        "../deploy/demo/tracer-demo.toml",
        "--store",
        &store,
    ];
    let stdout = support::tracer_ok([&["orders"], args, &json].concat());
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn every_injected_fault_is_located_in_the_right_service_and_step() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the demo runs the eBPF agent and must run as root"
    );
    let out = std::env::temp_dir().join(format!("tracer-demo-{}", std::process::id()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let demo = Command::new("cargo")
        .args(["xtask", "demo", "--headless"])
        .arg("--tracer")
        .arg(env!("CARGO_BIN_EXE_tracer"))
        .arg("--out")
        .arg(&out)
        .current_dir(root)
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&demo.stdout),
        String::from_utf8_lossy(&demo.stderr)
    );
    println!("{printed}");
    assert!(demo.status.success(), "cargo xtask demo failed:\n{printed}");

    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("orders.json")).unwrap()).unwrap();
    let manifest = manifest.as_array().unwrap();
    let scenarios: Vec<&str> = manifest
        .iter()
        .map(|o| o["scenario"].as_str().unwrap())
        .collect();
    for (fault, _) in FAULTS {
        assert!(
            scenarios.contains(&fault),
            "{fault} was not injected: {scenarios:?}"
        );
    }
    assert!(
        scenarios.iter().filter(|s| **s == "ok").count() >= 12,
        "healthy orders between the faults: {scenarios:?}"
    );
    // A complete report within 60 s of the end of the traffic.
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let took = report["report_after_traffic_s"].as_f64().unwrap();
    assert!(
        took <= 60.0,
        "the report was complete {took:.0} s after the traffic ended (at most 60 s)"
    );
    let spans = exported_spans(&out.join("spans.jsonl"));
    let mut wrong = Vec::new();
    let mut traces = std::collections::HashMap::new();
    for placed in manifest {
        let id = placed["order_id"].as_str().unwrap();
        let scenario = placed["scenario"].as_str().unwrap();
        let order = orders(&out, &["show", id]);
        let problem = &order["problem"];
        let found = (
            problem["problem"].as_str().unwrap_or(""),
            problem["service"].as_str().unwrap_or(""),
            problem["operation"].as_str().unwrap_or(""),
        );
        match expected(scenario) {
            Some(want) if found != want => {
                wrong.push(format!(
                    "{id} ({scenario}): expected {want:?}, tracer says {found:?} ({})",
                    problem["detail"]
                ));
            }
            None if !problem.is_null() || order["status"] != "SHIPPED" => {
                wrong.push(format!(
                    "{id} (healthy): ended {} with {problem}",
                    order["status"]
                ));
            }
            _ => {}
        }
        let trace = order["trace_id"].as_str().unwrap().to_owned();
        // Every span that names the order is in its trace, and there is at least one.
        let named: Vec<_> = spans
            .iter()
            .filter(|s| s.order.as_deref() == Some(id))
            .collect();
        assert!(!named.is_empty(), "{id}: no exported span names it");
        for span in &named {
            assert_eq!(
                span.trace, trace,
                "{id}: its span {:?} is in another trace",
                span.name
            );
        }
        let in_trace = |service: &str, name: &str| {
            spans
                .iter()
                .any(|s| s.trace == trace && s.service == service && s.name == name)
        };
        match scenario {
            "lost-message" => {
                assert_eq!(order["status"], "PRICE_CALCULATION", "{id}");
                assert!(
                    in_trace("tracer-journey", "order stuck in PRICE_CALCULATION"),
                    "{id}: the synthesized stuck span is exported in its trace"
                );
            }
            "queue-overflow" => {
                let detail = problem["detail"].as_str().unwrap_or_default();
                assert!(
                    detail.contains("taken in by the broker") && detail.contains("dropped"),
                    "{id}: the broker's view says the message came in and never left: {detail}"
                );
                assert!(
                    in_trace("crm", "message not delivered"),
                    "{id}: the report of the undelivered message is in its trace"
                );
            }
            "ok" => {
                // Every chain where "the created order was not saved" is traced end to end:
                // CRM API → 3D storage, MES API → MES DB (approve and ship), MES → MES DB.
                for (service, name) in [
                    ("crm", "GET /objects/{order_id}"),
                    ("storage", "GET /objects/{order_id}"),
                    ("mes", "UPDATE work_orders"),
                    ("mes-db", "UPDATE work_orders"),
                    ("mes-db", "INSERT work_orders"),
                ] {
                    assert!(
                        in_trace(service, name),
                        "{id}: no {service} span {name:?} in its trace"
                    );
                }
            }
            _ => {}
        }
        traces.insert(trace, id.to_owned());
    }
    assert_eq!(
        traces.len(),
        manifest.len(),
        "one trace per order: {traces:?}"
    );
    // And no order's trace holds a span naming another order.
    for span in &spans {
        if let (Some(owner), Some(named)) = (traces.get(&span.trace), &span.order) {
            assert_eq!(
                owner, named,
                "span {:?} naming {named} sits in {owner}'s trace",
                span.name
            );
        }
    }
    assert!(
        wrong.is_empty(),
        "faults not located:\n{}\n\n{printed}",
        wrong.join("\n")
    );
    let _ = std::fs::remove_dir_all(&out);
}
