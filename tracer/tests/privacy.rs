//! End-to-end privacy: personal data and secrets of every kind placed wherever a shop puts
//! them (HTTP paths, queries, headers, bodies; AMQP routing keys, headers, bodies; SQL
//! literals and error messages) never reach any output of the agent — the OTLP receiver,
//! the span file, the journey store, `/metrics`, its log, `tracer orders`; and with
//! pseudonymisation an order's raw ids are nowhere while its pseudonym is on every span.
mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use support::{
    agent::{curl, AgentRun, Service, PEERS},
    broker::broker,
    keys,
    otlp::{ReceivedSpan, Receiver},
    postgres::postgres,
};

const KEY: &str = "privacy-sweep-test-key";

/// What must never leave, by kind.
fn secrets() -> BTreeMap<&'static str, Vec<&'static str>> {
    BTreeMap::from([
        (
            "email",
            vec!["anna.schmidt@example.com", "jürgen.müller@bäckerei.de"],
        ),
        (
            "phone",
            vec![
                "+49 151 23456781",
                "+4915123456782",
                "0151 23456783",
                "0151-23456784",
                "030/2345678",
                "(555) 234 5671",
                "(555) 234-5672",
                "555-234-5673",
                "555.234.5674",
                "0049 151 23456785",
            ],
        ),
        (
            "card",
            vec![
                "4111 1111 1111 1111",
                "4012.8888.8888.1881",
                "4000+0566+5566+5556",
                "5555555555554444",
                "5105-1051-0510-5100",
                "3782 822463 10005",
            ],
        ),
        (
            "jwt",
            vec!["eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"],
        ),
        ("api key", vec!["sk_live_4eC39HqLyjWDarjtT1zdp7dc"]),
        ("oauth code", vec!["SplxlOBeZQQYbYS6WxSbIA"]),
        ("customer name", vec!["Jane Doe"]),
    ])
}

/// The forms a value takes on the wire and in exports: as typed, percent-encoded (paths,
/// queries), form-encoded (`+` for spaces), as digits only for numbers people type with
/// separators, and the parts that identify alone (a name's words, an e-mail's local part).
fn forms(value: &str) -> Vec<String> {
    let mut forms = vec![value.to_owned()];
    let percent: String = value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    forms.push(percent.clone());
    forms.push(percent.replace("%20", "+"));
    // Parts that identify on their own: a name's words, an e-mail's local part.
    if value.contains(' ') && !value.chars().any(|c| c.is_ascii_digit()) {
        forms.extend(value.split(' ').map(str::to_owned));
    }
    if let Some((local, _)) = value.split_once('@') {
        forms.push(local.to_owned());
    }
    let digits: String = value.chars().filter(char::is_ascii_digit).collect();
    if digits.len() >= 10 && value.chars().any(|c| !c.is_ascii_digit()) {
        forms.push(digits);
    }
    forms.sort();
    forms.dedup();
    forms
}

/// Everything the agent wrote or served: one text per place.
struct Outputs(Vec<(&'static str, String)>);

impl Outputs {
    fn occurrences(&self, needle: &str) -> Vec<&'static str> {
        self.0
            .iter()
            .filter(|(_, text)| text.contains(needle))
            .map(|(place, _)| *place)
            .collect()
    }
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// The journey store's bytes (database and write-ahead log).
fn store_bytes(store: &Path) -> String {
    ["", "-wal"]
        .iter()
        .map(|suffix| read_lossy(Path::new(&format!("{}{suffix}", store.display()))))
        .collect()
}

fn tracer_orders(store: &Path, args: &[&str]) -> String {
    let store = format!("sqlite:{}", store.display());
    let output = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(["orders"])
        .args(args)
        .args(["--store", &store])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "tracer orders {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tracer-privacy-{name}-{}", std::process::id()))
}

/// An agent with the test key (pseudonymisation on: the default with a key), exporting
/// over OTLP/gRPC and to a span file, keeping journeys in its own store.
struct Run {
    agent: AgentRun,
    receiver: Receiver,
    file: PathBuf,
    store: PathBuf,
    key: PathBuf,
}

impl Run {
    fn start(name: &str) -> Self {
        let receiver = Receiver::start();
        let (file, store) = (
            temp(&format!("{name}.otlp.jsonl")),
            temp(&format!("{name}.sqlite")),
        );
        for path in [&file, &store] {
            let _ = std::fs::remove_file(path);
        }
        let key = keys::key_file(KEY);
        let grpc = format!("otlp-grpc={}", receiver.grpc_url());
        let file_export = format!("file:{}", file.display());
        let store_arg = format!("sqlite:{}", store.display());
        let agent = AgentRun::start(&[
            "--export",
            &grpc,
            "--export",
            &file_export,
            "--hmac-key-file",
            key.to_str().unwrap(),
            "--journey-store",
            &store_arg,
            "--settle-ms",
            "300",
        ]);
        Self {
            agent,
            receiver,
            file,
            store,
            key,
        }
    }

    /// Stops the agent and gathers every output.
    fn outputs(self, order: &str) -> (Outputs, Vec<ReceivedSpan>) {
        let metrics = support::metrics::scrape(&self.agent.metrics);
        let metrics_text = format!("{metrics:?}");
        let log = self.agent.stop();
        for path in [&self.file, &self.store] {
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(path).unwrap().permissions(),
            );
            assert_eq!(
                mode & 0o777,
                0o600,
                "{} is readable by its owner only",
                path.display()
            );
        }
        let key = self.key.to_str().unwrap().to_owned();
        let listed = tracer_orders(&self.store, &["list"]);
        let pseudonym = support::tracer_ok(["hash-id", order, "--hmac-key-file", &key]);
        let shown = tracer_orders(&self.store, &["show", pseudonym.trim()]);
        let outputs = Outputs(vec![
            ("otlp receiver", self.receiver.raw()),
            ("span file", read_lossy(&self.file)),
            ("journey store", store_bytes(&self.store)),
            ("/metrics", metrics_text),
            ("agent log", log),
            ("tracer orders list", listed),
            ("tracer orders show", shown),
        ]);
        let spans = self.receiver.spans();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.store.display()));
        }
        let _ = std::fs::remove_file(&self.file);
        (outputs, spans)
    }
}

#[test]
fn no_personal_data_or_secret_of_any_kind_reaches_any_output() {
    let secrets = secrets();
    let values = temp("values.json");
    std::fs::write(
        &values,
        serde_json::json!({ "values": secrets }).to_string(),
    )
    .unwrap();
    broker();
    postgres();
    let shop = Service::python(&[]);
    let run = Run::start("sweep");
    let order = "ORD-SWEEP-1";
    let status = Command::new("python3")
        .arg(format!("{PEERS}/privacy_sweep.py"))
        .args(["--values", values.to_str().unwrap(), "--order-id", order])
        .args(["--http", &shop.port.to_string()])
        .args(["--amqp", &broker().port.to_string()])
        .args(["--pg", &postgres().port.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "the sweep's traffic failed");
    let count: usize = secrets.values().map(Vec::len).sum();
    // 3 HTTP requests (both ends), 1 message (publish, get) and 5 statements per value.
    run.receiver.wait_for(
        "every request, message and statement of the sweep",
        Duration::from_secs(60),
        |spans| {
            let by =
                |pred: &dyn Fn(&ReceivedSpan) -> bool| spans.iter().filter(|s| pred(s)).count();
            by(&|s| s.attr("db.system.name") == "postgresql") >= 5 * count
                && by(&|s| s.attr("messaging.operation.type") == "send") >= count
                && by(&|s| !s.attr("http.request.method").is_empty() && s.kind == 2) >= 3 * count
        },
    );
    let (outputs, spans) = run.outputs(order);
    let _ = std::fs::remove_file(&values);
    let mut leaks = Vec::new();
    for (kind, values) in &secrets {
        let mut found = 0;
        for value in values {
            for form in forms(value) {
                let places = outputs.occurrences(&form);
                if !places.is_empty() {
                    found += 1;
                    leaks.push(format!("{kind} {form:?} in {places:?}"));
                }
            }
        }
        println!(
            "{kind}: {} values, {found} occurrences in the outputs",
            values.len()
        );
    }
    assert!(
        leaks.is_empty(),
        "personal data or secrets left the agent:\n{}",
        leaks.join("\n")
    );
    // The outputs were there to search: spans of every protocol, the order's journey.
    assert!(spans
        .iter()
        .any(|s| s.attr("url.query").contains("token=REDACTED")));
    assert!(spans
        .iter()
        .any(|s| s.attr("messaging.rabbitmq.destination.routing_key") == "orders.{value}.created"));
    assert!(spans.iter().any(|s| s
        .status_message
        .contains("invalid input syntax for type integer")));
    let (_, journeys) = &outputs.0[2];
    assert!(!journeys.is_empty(), "the journey store was written");
}

#[test]
fn pseudonymised_ids_are_nowhere_raw_and_the_pseudonym_is_on_every_span_of_the_trace() {
    broker();
    let (shop, mes_api) = (Service::python(&[]), Service::node());
    let run = Run::start("four-hop");
    let (order, user) = ("ORD-4711", "+4915187654321");
    let key = run.key.to_str().unwrap().to_owned();
    let pseudonym = support::tracer_ok(["hash-id", order, "--hmac-key-file", &key])
        .trim()
        .to_owned();
    let user_pseudonym = support::tracer_ok(["hash-id", user, "--user", "--hmac-key-file", &key])
        .trim()
        .to_owned();
    assert_ne!(pseudonym, user_pseudonym);
    // Hop 1: the shop takes the order (HTTP, ids in the JSON body).
    let body = format!(r#"{{"order_id": "{order}", "user_id": "{user}"}}"#);
    assert_eq!(
        curl(&[
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            &shop.url("/orders")
        ]),
        "201"
    );
    // Hops 2 and 3: a message naming the order in its routing key and body, consumed.
    let routing_key = format!("orders.{order}.submitted");
    let status = Command::new("python3")
        .arg(format!("{PEERS}/amqp_publisher.py"))
        .args([
            "--port",
            &broker().port.to_string(),
            "--queue",
            &routing_key,
        ])
        .args(["--routing-key", &routing_key, "--order-id", order])
        .args(["--id-prefix", &format!("{order}-msg"), "--confirm"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("node")
        .arg(format!("{PEERS}/amqp_consumer.js"))
        .args([&broker().port.to_string(), routing_key.as_str(), "1"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    // Hop 4: an HTTP call naming the order in its path and query.
    let query = format!(
        "/orders/{order}/price?order_id={order}&user={}",
        "%2B4915187654321"
    );
    assert_eq!(curl(&[&mes_api.url(&query)]), "200");
    let spans = run.receiver.wait_for(
        "the order's spans: HTTP, publish, deliver, HTTP (both ends)",
        Duration::from_secs(30),
        |spans| {
            let in_trace: Vec<&ReceivedSpan> =
                spans.iter().filter(|s| s.trace_id == pseudonym).collect();
            let has = |p: &dyn Fn(&ReceivedSpan) -> bool| in_trace.iter().any(|s| p(s));
            has(&|s| s.name == "POST /orders" && s.kind == 2)
                && has(&|s| s.kind == 4)
                && has(&|s| s.kind == 5)
                && has(&|s| s.service == "node" && s.kind == 2)
        },
    );
    let (outputs, _) = run.outputs(order);
    let in_trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == pseudonym).collect();
    for span in &in_trace {
        assert_eq!(
            span.attr("app.order.id"),
            pseudonym,
            "{} {} (kind {}) carries the order's pseudonym",
            span.service,
            span.name,
            span.kind
        );
    }
    let shop_span = in_trace
        .iter()
        .find(|s| s.name == "POST /orders" && s.kind == 2)
        .unwrap();
    assert_eq!(shop_span.attr("app.user.id"), user_pseudonym);
    let mut leaks = Vec::new();
    for raw in [order, user] {
        for form in forms(raw) {
            let places = outputs.occurrences(&form);
            if !places.is_empty() {
                leaks.push(format!("{form:?} in {places:?}"));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "raw ids left the agent:\n{}",
        leaks.join("\n")
    );
    println!(
        "{} spans in the order's trace, each with app.order.id = {pseudonym}",
        in_trace.len()
    );
}

#[test]
fn untraced_executables_are_never_parsed() {
    // Node stands in for the auth proxy here: its traffic must not be traced at all.
    let config = temp("untraced.toml");
    std::fs::write(&config, "[privacy]\nuntraced_executables = [\"node\"]\n").unwrap();
    let receiver = Receiver::start();
    let grpc = format!("otlp-grpc={}", receiver.grpc_url());
    let agent = AgentRun::start(&[
        "--config",
        config.to_str().unwrap(),
        "--export",
        &grpc,
        "--settle-ms",
        "200",
    ]);
    let (python, node) = (Service::python(&[]), Service::node());
    assert_eq!(curl(&[&node.url("/staff/session")]), "200");
    assert_eq!(curl(&[&python.url("/shop")]), "200");
    // curl's CLIENT span of the node call still exists (curl is traced); node's SERVER does not.
    let spans = receiver.wait_for(
        "the python service's span",
        Duration::from_secs(20),
        |spans| {
            spans
                .iter()
                .any(|s| s.kind == 2 && s.service.starts_with("python"))
        },
    );
    let stats = support::agent::final_stats(&agent.stop());
    let _ = std::fs::remove_file(&config);
    assert!(
        !spans.iter().any(|s| s.service == "node"),
        "node was traced: {:?}",
        spans
            .iter()
            .map(|s| (&s.service, &s.name))
            .collect::<Vec<_>>()
    );
    assert!(
        stats["pipeline"]["connections_untraced"].as_u64() >= Some(1),
        "untraced connections are counted: {stats}"
    );
}
