//! Right parents in event-loop and thread-pool services, with real runtimes and sockets:
//! a chain A → B → C where B is a Node.js `http` server, a Python aiohttp server, a C#
//! HttpListener/HttpClient service under Mono (async/await on the thread pool) or a
//! thread-per-request Python server. A sends 30 concurrent requests, each with its own id
//! in the path or the body; C answers after 50–200 ms, so B's requests overlap. Every CLIENT
//! span B makes is graded against the truth, which tracer cannot see: A prints which of
//! its ports carried which id, and C prints which of B's ports carried which id (from a
//! cookie, which tracer never reads). A wrong parent fails the test in every runtime.
mod support;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use support::{
    agent::{AgentRun, Service, PEERS},
    broker::broker,
    metrics::{scrape, try_value},
    otlp::{ReceivedSpan, Receiver},
};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;
const REQUESTS: usize = 30;

#[derive(Clone, Copy, Debug)]
enum Runtime {
    Node,
    Aiohttp,
    Mono,
    Threaded,
}

impl Runtime {
    const ALL: [Runtime; 4] = [Self::Node, Self::Aiohttp, Self::Mono, Self::Threaded];

    fn start_b(self, c_port: u16, mode: &str, mono_exe: &Path) -> Service {
        let relay = format!("{PEERS}/relay");
        let port = c_port.to_string();
        let (program, script) = match self {
            Self::Node => ("node", format!("{relay}/relay.js")),
            Self::Aiohttp => ("python3", format!("{relay}/relay_aiohttp.py")),
            Self::Threaded => ("python3", format!("{relay}/relay_threaded.py")),
            Self::Mono => ("mono", mono_exe.display().to_string()),
        };
        let mut command = Command::new(program);
        command.arg(script);
        Service::spawn(command.args([port.as_str(), mode]))
    }
}

/// B's CLIENT spans, graded.
#[derive(Debug, Default)]
struct Grades {
    correct: usize,
    wrong: Vec<String>,
    unparented: usize,
}

fn port_attr(span: &ReceivedSpan, name: &str) -> u16 {
    span.attr(name).parse().unwrap_or_default()
}

/// "port → id" from JSON lines with those two fields.
fn ids_by_port(lines: &[String], port: &str, id: &str) -> HashMap<u16, String> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v[port].as_u64()? as u16, v[id].as_str()?.to_owned())))
        .collect()
}

fn mono_relay() -> PathBuf {
    let exe = std::env::temp_dir().join(format!("tracer-relay-{}.exe", std::process::id()));
    let status = Command::new("mcs")
        .arg(format!("-out:{}", exe.display()))
        .args(["-r:System.Net.Http.dll", &format!("{PEERS}/relay/Relay.cs")])
        .status()
        .expect("mcs (mono-devel) is needed: cargo xtask setup installs it");
    assert!(status.success(), "compiling Relay.cs failed");
    exe
}

/// Runs A → B → C once with B in `runtime`, and grades B's CLIENT spans.
fn chain(runtime: Runtime, mode: &str, receiver: &Receiver, mono_exe: &Path) -> (Grades, String) {
    let c = Service::spawn(Command::new("python3").arg(format!("{PEERS}/relay/slow_server.py")));
    let b = runtime.start_b(c.port, mode, mono_exe);
    let prefix = format!("{runtime:?}-{mode}").to_uppercase();
    let a = Command::new("python3")
        .arg(format!("{PEERS}/relay/load.py"))
        .args(["--port", &b.port.to_string(), "--prefix", &prefix])
        .args(["--count", &REQUESTS.to_string()])
        .output()
        .expect("python3");
    assert!(a.status.success(), "{a:?}");
    let a_lines: Vec<String> = String::from_utf8_lossy(&a.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        a_lines.len() == REQUESTS && a_lines.iter().all(|l| l.contains("\"status\": 200")),
        "{runtime:?}: A's requests must all succeed: {a_lines:#?}\n{}",
        String::from_utf8_lossy(&a.stderr)
    );
    let b_pid = b.pid();
    let is_call = |s: &ReceivedSpan| {
        s.kind == CLIENT && s.pid() == b_pid && port_attr(s, "network.peer.port") == c.port
    };
    let is_request = |s: &ReceivedSpan| s.kind == SERVER && s.pid() == b_pid;
    let spans = receiver.wait_for(
        &format!("{runtime:?} ({mode}): B's {REQUESTS} requests and {REQUESTS} calls"),
        Duration::from_secs(30),
        |spans| {
            spans.iter().filter(|s| is_request(s)).count() == REQUESTS
                && spans.iter().filter(|s| is_call(s)).count() == REQUESTS
        },
    );
    let witnessed = ids_by_port(&c.printed(), "peer_port", "tag");
    let sent = ids_by_port(&a_lines, "port", "id");
    let request_of: HashMap<String, &ReceivedSpan> = spans
        .iter()
        .filter(|s| is_request(s))
        .map(|s| match sent.get(&port_attr(s, "network.peer.port")) {
            Some(id) => (id.clone(), s),
            None => {
                panic!("{runtime:?} ({mode}): A never sent the request {s:#?} (A sent: {sent:?})")
            }
        })
        .collect();
    let mut grades = Grades::default();
    for call in spans.iter().filter(|s| is_call(s)) {
        let Some(id) = witnessed.get(&port_attr(call, "network.local.port")) else {
            panic!("{runtime:?} ({mode}): C never saw the call {call:#?} (C saw: {witnessed:?})");
        };
        let truth = request_of[id];
        if call.parent_span_id.is_empty() {
            grades.unparented += 1;
        } else if call.parent_span_id == truth.span_id {
            assert_eq!(call.trace_id, truth.trace_id);
            grades.correct += 1;
        } else {
            grades.wrong.push(format!(
                "call for {id} ({}) under span {} (source {:?}), not {}",
                call.attr("url.path"),
                call.parent_span_id,
                call.attr("tracer.parent.source"),
                truth.span_id
            ));
        }
    }
    let service = spans.iter().find(|s| is_call(s)).unwrap().service.clone();
    (grades, service)
}

fn run_all(mode: &str) -> Vec<(Runtime, Grades, f64)> {
    let receiver = Receiver::start();
    let export = format!("otlp-grpc={}", receiver.grpc_url());
    let agent = AgentRun::start(&["--export", &export, "--settle-ms", "200"]);
    let mono_exe = mono_relay();
    let mut results = Vec::new();
    let ambiguous_of = |service: &str| {
        try_value(
            &scrape(&agent.metrics),
            "tracer_parent_ambiguous_total",
            &[("service", service)],
        )
        .unwrap_or(0.0)
    };
    let mut counted: HashMap<String, f64> = HashMap::new();
    for runtime in Runtime::ALL {
        let (grades, service) = chain(runtime, mode, &receiver, &mono_exe);
        // Services named after their executable (python3.11) share a series: this
        // runtime's share is what was added since the last one. /metrics is refreshed
        // once a second: wait for the count to arrive.
        let before = counted.get(&service).copied().unwrap_or(0.0);
        let want = grades.unparented as f64;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let ambiguous = loop {
            let added = ambiguous_of(&service) - before;
            if added >= want || std::time::Instant::now() > deadline {
                break added;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        counted.insert(service.clone(), before + ambiguous);
        println!(
            "{runtime:?} ({mode}): {} correct, {} wrong, {} unparented of {REQUESTS} calls; tracer_parent_ambiguous_total{{service=\"{service}\"}} +{ambiguous}",
            grades.correct,
            grades.wrong.len(),
            grades.unparented
        );
        results.push((runtime, grades, ambiguous));
    }
    let _ = std::fs::remove_file(&mono_exe);
    let stderr = agent.stop();
    assert!(
        stderr.contains("parents_ambiguous"),
        "the stats line says it:\n{stderr}"
    );
    results
}

#[test]
fn calls_that_carry_their_requests_id_get_the_right_parent_in_every_runtime() {
    for (runtime, grades, _) in run_all("id") {
        assert!(
            grades.wrong.is_empty(),
            "{runtime:?}: wrong parents: {:#?}",
            grades.wrong
        );
        let least = match runtime {
            Runtime::Threaded => REQUESTS,
            _ => REQUESTS * 95 / 100,
        };
        assert!(
            grades.correct >= least,
            "{runtime:?}: only {} of {REQUESTS} calls under their request",
            grades.correct
        );
    }
}

#[test]
fn calls_without_evidence_stay_roots_and_are_counted_never_misfiled() {
    for (runtime, grades, ambiguous) in run_all("none") {
        assert!(
            grades.wrong.is_empty(),
            "{runtime:?}: wrong parents: {:#?}",
            grades.wrong
        );
        assert!(
            ambiguous >= grades.unparented as f64,
            "{runtime:?}: {} calls unparented but tracer_parent_ambiguous_total is {ambiguous}",
            grades.unparented
        );
    }
}

#[test]
fn replies_published_from_an_event_loop_are_children_of_the_delivery_they_answer() {
    let receiver = Receiver::start();
    let export = format!("otlp-grpc={}", receiver.grpc_url());
    let port = broker().port.to_string();
    let agent = AgentRun::start(&["--export", &export, "--settle-ms", "200"]);
    let published = Command::new("python3")
        .arg(format!("{PEERS}/amqp_publisher.py"))
        .args([
            "--port",
            &port,
            "--queue",
            "quotes",
            "--routing-key",
            "quotes",
        ])
        .args(["--count", &REQUESTS.to_string(), "--id-prefix", "quote"])
        .output()
        .expect("python3 with pika");
    assert!(published.status.success(), "{published:?}");
    let mut responder = Command::new("node")
        .arg(format!("{PEERS}/relay/amqp_responder.js"))
        .args([port.as_str(), "quotes", &REQUESTS.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("node with amqplib");
    let responder_pid = responder.id();
    assert!(responder.wait().unwrap().success(), "the responder failed");
    let ours = |s: &ReceivedSpan, kind| s.kind == kind && s.pid() == responder_pid;
    let spans = receiver.wait_for(
        "30 deliveries and 30 replies",
        Duration::from_secs(30),
        |spans| {
            spans.iter().filter(|s| ours(s, CONSUMER)).count() == REQUESTS
                && spans.iter().filter(|s| ours(s, PRODUCER)).count() == REQUESTS
        },
    );
    agent.stop();
    let deliveries: HashMap<&str, &ReceivedSpan> = spans
        .iter()
        .filter(|s| ours(s, CONSUMER))
        .map(|s| (s.attr("messaging.message.id"), s))
        .collect();
    let delivery_ids: Vec<&str> = deliveries.values().map(|d| d.span_id.as_str()).collect();
    let (mut correct, mut wrong) = (0, Vec::new());
    for reply in spans.iter().filter(|s| ours(s, PRODUCER)) {
        let answered = reply.attr("messaging.message.conversation_id");
        let truth = deliveries[answered];
        // A parent in another order's trace is exported as a link: wrong all the same.
        let linked_elsewhere = reply
            .links
            .iter()
            .any(|(_, span)| span != &truth.span_id && delivery_ids.contains(&span.as_str()));
        if reply.parent_span_id == truth.span_id {
            assert_eq!(reply.attr("tracer.parent.source"), "message", "{reply:?}");
            correct += 1;
        } else if !reply.parent_span_id.is_empty() || linked_elsewhere {
            wrong.push(format!("reply to {answered}: {reply:?}"));
        }
    }
    println!(
        "amqplib replies: {correct} correct, {} wrong of {REQUESTS}",
        wrong.len()
    );
    assert!(wrong.is_empty(), "wrong parents: {wrong:#?}");
    assert_eq!(
        correct, REQUESTS,
        "every reply under the delivery it answers"
    );
}
