//! End-to-end: a private PostgreSQL server, psycopg (Python) and node-postgres clients in
//! separate unmodified processes, the real eBPF programs, `tracer run`, a real receiver.
mod support;

use std::{process::Command, time::Duration};

use support::{
    agent::{curl, final_stats, AgentRun, Service, PEERS},
    otlp::{ReceivedSpan, Receiver},
    postgres::postgres,
};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const ERROR: i32 = 2;

fn run(cmd: &mut Command) -> serde_json::Value {
    let output = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn db_spans<'a>(spans: &'a [ReceivedSpan], service: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.attr("db.system.name") == "postgresql" && s.service.starts_with(service))
        .collect()
}

fn find<'a>(
    spans: &[&'a ReceivedSpan],
    name: &str,
    pred: impl Fn(&ReceivedSpan) -> bool,
) -> &'a ReceivedSpan {
    let names: Vec<String> = spans
        .iter()
        .map(|s| format!("{} [{}] {}", s.name, s.status, s.attr("db.query.text")))
        .collect();
    spans
        .iter()
        .copied()
        .find(|s| s.name == name && pred(s))
        .unwrap_or_else(|| panic!("no {name} span among {names:#?}"))
}

#[test]
fn simple_extended_failing_and_rolled_back_queries_from_two_client_libraries() {
    let port = postgres().port.to_string();
    let receiver = Receiver::start();
    let export = format!("otlp-grpc={}", receiver.grpc_url());
    let agent = AgentRun::start(&["--export", &export, "--settle-ms", "200"]);
    let python = run(Command::new("python3")
        .arg(format!("{PEERS}/pg_client.py"))
        .args(["--port", &port, "--order", "PY-1"]));
    assert_eq!(
        (python["duplicate"].as_str(), python["status"].as_str()),
        (Some("23505"), Some("SUBMITTED"))
    );
    let node = run(Command::new("node")
        .arg(format!("{PEERS}/pg_client.js"))
        .args([port.as_str(), "JS-1"]));
    assert_eq!(
        (node["duplicate"].as_str(), node["rows"].as_u64()),
        (Some("23505"), Some(1))
    );
    let spans = receiver.wait_for(
        "both clients' statements",
        Duration::from_secs(20),
        |spans| {
            db_spans(spans, "python")
                .iter()
                .any(|s| s.name == "SELECT orders")
                && db_spans(spans, "node")
                    .iter()
                    .any(|s| s.name == "SELECT orders")
        },
    );
    agent.stop();
    for service in ["python", "node"] {
        let spans = db_spans(&spans, service);
        for span in &spans {
            assert_eq!(span.kind, CLIENT);
            assert_eq!(span.attr("db.namespace"), "postgres");
            assert_eq!(span.attr("server.port"), port);
            let text = span.attr("db.query.text");
            assert!(
                !text.contains("PY-1") && !text.contains("JS-1") && !text.contains("anna@"),
                "literal leaked: {text}"
            );
        }
        let ok_insert = find(&spans, "INSERT orders", |s| s.status != ERROR);
        assert_eq!(ok_insert.attr("db.operation.name"), "INSERT");
        assert_eq!(ok_insert.attr("db.collection.name"), "orders");
        let duplicate = find(&spans, "INSERT orders", |s| s.status == ERROR);
        assert_eq!(
            duplicate.attr("db.response.status_code"),
            "23505",
            "{service}: SQLSTATE of the unique violation"
        );
        assert!(
            duplicate.status_message.contains("duplicate key"),
            "{}",
            duplicate.status_message
        );
        let rollback = find(&spans, "ROLLBACK", |_| true);
        assert_eq!(rollback.status, 0, "the ROLLBACK statement itself succeeds");
        find(&spans, "SELECT orders", |s| s.status != ERROR);
    }
    // Simple-protocol literals are replaced; extended statements keep their placeholders.
    let node_insert = find(&db_spans(&spans, "node"), "INSERT orders", |s| {
        s.status != ERROR
    });
    assert_eq!(
        node_insert.attr("db.query.text"),
        "INSERT INTO orders (order_id, status) VALUES (?, ?)"
    );
    let py_update = find(&db_spans(&spans, "python"), "UPDATE orders", |_| true);
    assert_eq!(
        py_update.attr("db.query.text"),
        "UPDATE orders SET status = $1 WHERE order_id = $2"
    );
    assert_eq!(
        py_update.attr("tracer.db.transaction_state"),
        "",
        "extended statements end at their own completion"
    );
    let node_delete = find(&db_spans(&spans, "node"), "DELETE orders", |_| true);
    assert_eq!(
        node_delete.attr("db.query.text"),
        "DELETE FROM orders WHERE order_id = $1"
    );
}

#[test]
fn the_insert_of_an_http_order_is_a_child_of_the_request_and_in_the_orders_trace() {
    let port = postgres().port.to_string();
    let receiver = Receiver::start();
    let service = Service::python(&["--db-port", &port]);
    let export = format!("otlp-grpc={}", receiver.grpc_url());
    let agent = AgentRun::start(&["--export", &export, "--settle-ms", "300"]);
    let order = "WEB-42";
    assert_eq!(
        curl(&[
            "-d",
            &format!(r#"{{"order_id": "{order}"}}"#),
            &service.url("/orders")
        ]),
        "201"
    );
    let spans = receiver.wait_for(
        "the request and its INSERT",
        Duration::from_secs(20),
        |spans| {
            spans.iter().any(|s| {
                s.kind == CLIENT && s.name == "INSERT orders" && s.service.starts_with("python")
            }) && spans
                .iter()
                .any(|s| s.kind == SERVER && s.name == "POST /orders")
        },
    );
    agent.stop();
    let request = spans
        .iter()
        .find(|s| s.kind == SERVER && s.name == "POST /orders")
        .unwrap();
    let insert = spans
        .iter()
        .find(|s| s.kind == CLIENT && s.name == "INSERT orders")
        .unwrap();
    assert_eq!(
        insert.parent_span_id, request.span_id,
        "the INSERT is the child of the request's SERVER span"
    );
    let order_trace = String::from_utf8(
        Command::new(env!("CARGO_BIN_EXE_tracer"))
            .args(["hash-id", order])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(insert.trace_id, order_trace.trim(), "in the order's trace");
    assert_eq!(request.trace_id, insert.trace_id);
    assert_eq!(
        insert.attr("app.order.id"),
        order,
        "the bound parameter names the order"
    );
    assert_eq!(
        insert.attr("db.query.text"),
        "INSERT INTO orders (order_id, status) VALUES ($1, $2)"
    );
}

/// A client whose connection was opened and used before the agent started, told to go on
/// (a line on stdin) once the agent runs; killed when dropped.
struct Pooled {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    ready: serde_json::Value,
}

impl Pooled {
    fn start(cmd: &mut Command) -> Self {
        use std::io::BufRead;
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = Self::line(&mut stdout, "ready");
        Self {
            child,
            stdin,
            stdout,
            ready,
        }
    }

    fn line(
        stdout: &mut std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
        what: &str,
    ) -> serde_json::Value {
        let line = stdout
            .next()
            .unwrap_or_else(|| panic!("the client ended before saying {what}"))
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value[what], true, "{line}");
        value
    }

    fn pids(&self) -> [String; 2] {
        ["pid", "backend_pid"].map(|k| self.ready[k].as_u64().unwrap().to_string())
    }

    fn go_on(&mut self) -> serde_json::Value {
        use std::io::Write;
        writeln!(self.stdin.as_mut().unwrap(), "go").unwrap();
        Self::line(&mut self.stdout, "done")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn connections_opened_before_the_agent_give_spans_at_both_ends_and_count_as_postgres() {
    let port = postgres().port.to_string();
    let mut clients = [
        Pooled::start(
            Command::new("python3")
                .arg(format!("{PEERS}/pg_pooled.py"))
                .args([port.as_str(), "POOL-PY-1"]),
        ),
        Pooled::start(
            Command::new("node")
                .arg(format!("{PEERS}/pg_pool.js"))
                .args([port.as_str(), "POOL-JS-1"]),
        ),
    ];
    let receiver = Receiver::start();
    let export = format!("otlp-grpc={}", receiver.grpc_url());
    let mut args = vec![
        "--export".to_owned(),
        export,
        "--settle-ms".into(),
        "200".into(),
    ];
    for pid in clients.iter().flat_map(Pooled::pids) {
        args.extend(["--pid".to_owned(), pid]);
    }
    let agent = AgentRun::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    for client in &mut clients {
        assert_eq!(client.go_on()["invalid"], "42601");
    }
    let statements = |spans: &[ReceivedSpan], service: &str, kind: i32| -> Vec<ReceivedSpan> {
        db_spans(spans, service)
            .into_iter()
            .filter(|s| s.kind == kind)
            .cloned()
            .collect()
    };
    let complete = |spans: &[ReceivedSpan], service: &str, kind: i32, n: usize| {
        let found = statements(spans, service, kind);
        ["INSERT pooled_orders", "SELECT pooled_orders", "postgresql"]
            .iter()
            .all(|name| found.iter().filter(|s| s.name == *name).count() == n)
    };
    let spans = receiver.wait_for(
        "the statements after the agent started, at both ends",
        Duration::from_secs(20),
        |spans| {
            complete(spans, "python", CLIENT, 1)
                && complete(spans, "node", CLIENT, 1)
                && complete(spans, "postgres", SERVER, 2)
        },
    );
    let stats = final_stats(&agent.stop());
    for service in ["python", "node", "postgres"] {
        let kind = if service == "postgres" {
            SERVER
        } else {
            CLIENT
        };
        let spans = statements(&spans, service, kind);
        let spans: Vec<&ReceivedSpan> = spans.iter().collect();
        for name in ["INSERT pooled_orders", "SELECT pooled_orders"] {
            let span = find(&spans, name, |s| s.status != ERROR);
            assert_eq!(span.attr("db.collection.name"), "pooled_orders");
            assert_eq!(span.attr("db.operation.name"), &name[..6]);
            assert_eq!(
                span.attr("db.namespace"),
                "",
                "{service}: the database is not known mid-stream"
            );
        }
        let invalid = find(&spans, "postgresql", |s| s.status == ERROR);
        assert_eq!(invalid.attr("db.response.status_code"), "42601");
        assert_eq!(
            invalid.attr("db.operation.name"),
            "",
            "{service}: no operation named after user text"
        );
        assert!(
            !invalid.status_message.contains("asdsdfdsf"),
            "{}",
            invalid.status_message
        );
    }
    let pipeline = &stats["pipeline"];
    assert_eq!(
        pipeline["connections_unrecognised"], 0,
        "PostgreSQL connections at either end count as postgres: {pipeline}"
    );
    assert_eq!(
        pipeline["connections_by_protocol"]["postgres"], 4,
        "two clients and their two server ends: {pipeline}"
    );
}

/// PostgreSQL serves each connection in a backend it forks after accepting: the
/// backend's statements are SERVER spans (with the database from the startup message the
/// backend read), each the child of the psycopg CLIENT span it answers, in one trace.
#[test]
fn forked_backends_give_server_spans_in_the_clients_trace() {
    let port = postgres().port.to_string();
    let receiver = Receiver::start();
    let export = format!("otlp-grpc={}", receiver.grpc_url());
    let agent = AgentRun::start(&["--export", &export, "--settle-ms", "200"]);
    run(Command::new("python3")
        .arg(format!("{PEERS}/pg_client.py"))
        .args(["--port", &port, "--order", "FORK-1"]));
    let server_side = |spans: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
        db_spans(spans, "postgres")
            .into_iter()
            .filter(|s| s.kind == SERVER)
            .cloned()
            .collect()
    };
    let spans = receiver.wait_for(
        "the backend's SERVER spans",
        Duration::from_secs(20),
        |spans| {
            let server = server_side(spans);
            ["INSERT orders", "UPDATE orders", "SELECT orders"]
                .iter()
                .all(|name| server.iter().any(|s| s.name == *name))
        },
    );
    agent.stop();
    let clients = db_spans(&spans, "python");
    let server = server_side(&spans);
    for span in &server {
        let client = clients
            .iter()
            .find(|c| c.span_id == span.parent_span_id)
            .unwrap_or_else(|| panic!("no psycopg CLIENT span is the parent of {span:?}"));
        assert_eq!(client.trace_id, span.trace_id, "one trace");
        assert_eq!(client.name, span.name);
        assert_eq!(span.attr("db.namespace"), "postgres");
        // Times are taken at syscall exits. On loopback the bytes reach the peer inside
        // the sending syscall, so the client's read can return before the backend's write
        // does (and the backend's read before the client's write): the two may overlap by
        // that return path, tens of microseconds, never by a statement.
        const RETURN_PATH_NS: u64 = 1_000_000;
        assert!(
            span.start_unix_nano + RETURN_PATH_NS >= client.start_unix_nano
                && span.end_unix_nano <= client.end_unix_nano + RETURN_PATH_NS,
            "the server's timing lies within the client's: {span:?} {client:?}"
        );
    }
    let duplicate = server
        .iter()
        .find(|s| s.status == ERROR)
        .expect("the unique violation at the server's end");
    assert_eq!(duplicate.attr("db.response.status_code"), "23505");
}
