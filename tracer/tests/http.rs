//! End-to-end: unmodified HTTP services in Python, Node.js and curl, the real eBPF
//! programs, the `tracer run` agent, and a real OTLP receiver (gRPC and HTTP).
mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use support::{
    agent::{curl, final_stats, AgentRun, Service},
    metrics::{scrape, try_value},
    otlp::{find, free_port, reserve_port, served, ReceivedSpan, Receiver},
};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const ERROR: i32 = 2;
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// curl → A (Python) → B (Node.js): four spans, one trace, the right parents.
fn two_hop_chain(export: impl Fn(&Receiver) -> String, extra: &[&str]) {
    let receiver = Receiver::start();
    let b = Service::node();
    let a = Service::python(&["--downstream", &format!("127.0.0.1:{}", b.port)]);
    let export = export(&receiver);
    let mut args = vec!["--export", &export, "--settle-ms", "200"];
    args.extend_from_slice(extra);
    let agent = AgentRun::start(&args);
    let status = curl(&[
        "-H",
        &format!("traceparent: {TRACEPARENT}"),
        &a.url("/quotes/1001"),
    ]);
    assert_eq!(status, "200");
    let spans = receiver.wait_for(
        "the four spans of the chain",
        Duration::from_secs(20),
        |spans| spans.iter().filter(|s| s.trace_id == TRACE_ID).count() >= 4,
    );
    agent.stop();
    let spans: Vec<ReceivedSpan> = spans
        .into_iter()
        .filter(|s| s.trace_id == TRACE_ID)
        .collect();
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let a_port = a.port.to_string();
    let b_port = b.port.to_string();

    let user = find(&spans, "curl CLIENT span", |s| {
        s.kind == CLIENT && s.service == "curl"
    });
    assert_eq!(
        user.parent_span_id, "00f067aa0ba902b7",
        "the incoming traceparent is continued"
    );
    assert_eq!(user.attr("server.port"), a_port);

    let a_server = find(&spans, "A SERVER span", |s| {
        s.kind == SERVER && s.service.starts_with("python")
    });
    assert_eq!(a_server.name, "GET /quotes/{id}");
    assert_eq!(a_server.attr("http.request.method"), "GET");
    assert_eq!(a_server.attr("http.route"), "/quotes/{id}");
    assert_eq!(
        a_server.attr("url.path"),
        "/quotes/{id}",
        "ids in paths are templated"
    );
    assert_eq!(a_server.attr("http.response.status_code"), "200");
    assert_eq!(a_server.attr("server.port"), a_port);
    assert_eq!(
        a_server.attr("network.peer.port"),
        user.attr("network.local.port"),
        "peer is curl's socket"
    );
    assert_eq!(
        a_server.parent_span_id, user.span_id,
        "A SERVER is the child of curl's CLIENT span"
    );

    let a_client = find(&spans, "A CLIENT span", |s| {
        s.kind == CLIENT && s.service.starts_with("python")
    });
    assert_eq!(a_client.name, "GET /prices/{id}");
    assert_eq!(a_client.attr("server.port"), b_port);
    assert_eq!(a_client.attr("http.response.status_code"), "200");
    assert_eq!(
        a_client.parent_span_id, a_server.span_id,
        "A CLIENT is the child of A SERVER"
    );

    let b_server = find(&spans, "B SERVER span", |s| {
        s.kind == SERVER && s.service == "node"
    });
    assert_eq!(b_server.attr("http.route"), "/prices/{id}");
    assert_eq!(
        b_server.attr("network.peer.port"),
        a_client.attr("network.local.port")
    );
    assert_eq!(
        b_server.parent_span_id, a_client.span_id,
        "B SERVER is the child of A CLIENT"
    );

    for span in &spans {
        assert!(
            span.start_unix_nano > 0 && span.end_unix_nano >= span.start_unix_nano,
            "{span:?}"
        );
        assert_eq!(span.resource["telemetry.sdk.name"], "tracer");
    }
    // Nesting in time, from kernel timestamps.
    assert!(
        a_server.start_unix_nano <= a_client.start_unix_nano
            && a_client.end_unix_nano <= a_server.end_unix_nano
    );
}

#[test]
fn two_hop_chain_over_otlp_grpc() {
    two_hop_chain(|r| format!("otlp-grpc={}", r.grpc_url()), &[]);
}

#[test]
fn two_hop_chain_over_otlp_http() {
    two_hop_chain(|r| format!("otlp-http={}", r.http_url()), &[]);
}

/// The same with sampling, privacy, journeys and encoding on a second thread.
#[test]
fn two_hop_chain_with_two_pipeline_threads() {
    two_hop_chain(
        |r| format!("otlp-grpc={}", r.grpc_url()),
        &["--pipeline-threads", "2"],
    );
}

#[test]
fn pipelining_chunked_large_upload_errors_and_garbage() {
    let receiver = Receiver::start();
    let b = Service::node();
    let a = Service::python(&[]);
    let agent = AgentRun::start(&[
        "--export",
        &format!("otlp-grpc={}", receiver.grpc_url()),
        "--settle-ms",
        "200",
    ]);

    // Three pipelined requests in one write on one connection.
    let mut socket = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
    socket
        .write_all(
            b"GET /p1 HTTP/1.1\r\nHost: a\r\n\r\nGET /p2 HTTP/1.1\r\nHost: a\r\n\r\nGET /p3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let mut answers = String::new();
    socket.read_to_string(&mut answers).unwrap();
    assert_eq!(answers.matches("HTTP/1.1 200").count(), 3, "{answers}");

    assert_eq!(curl(&[&b.url("/chunked")]), "200");
    let upload = std::env::temp_dir().join(format!("tracer-upload-{}", std::process::id()));
    std::fs::write(&upload, vec![b'x'; 5 << 20]).unwrap();
    let data = format!("@{}", upload.display());
    assert_eq!(
        curl(&["-H", "Expect:", "--data-binary", &data, &b.url("/upload")]),
        "201"
    );
    std::fs::remove_file(&upload).unwrap();
    assert_eq!(curl(&[&a.url("/fail")]), "500");

    // Garbage on another connection: no span for it, and no harm to the others.
    let mut garbage = TcpStream::connect(("127.0.0.1", b.port)).unwrap();
    let garbage_port = garbage.local_addr().unwrap().port().to_string();
    garbage
        .write_all(
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 this is not http \x00\xff\r\n\r\n",
        )
        .unwrap();
    let mut sink = Vec::new();
    let _ = garbage.read_to_end(&mut sink);
    assert_eq!(curl(&[&b.url("/after-garbage")]), "200");

    let spans = receiver.wait_for(
        "spans for every request and curl's CLIENT /fail",
        Duration::from_secs(20),
        |spans| {
            let servers: Vec<&str> = spans
                .iter()
                .filter(|s| s.kind == SERVER)
                .map(|s| s.attr("url.path"))
                .collect();
            [
                "/p1",
                "/p2",
                "/p3",
                "/chunked",
                "/upload",
                "/fail",
                "/after-garbage",
            ]
            .iter()
            .all(|p| servers.contains(p))
                && spans
                    .iter()
                    .any(|s| s.kind == CLIENT && s.attr("url.path") == "/fail")
        },
    );
    let mut agent = agent;
    assert!(agent.is_running(), "the agent survived the garbage");
    agent.stop();

    let server = |path: &str| {
        find(&spans, &format!("SERVER span for {path}"), |s| {
            s.kind == SERVER && s.attr("url.path") == path
        })
    };
    for path in ["/p1", "/p2", "/p3"] {
        assert_eq!(
            server(path).attr("http.response.status_code"),
            "200",
            "{path}"
        );
        assert_eq!(
            server(path).attr("network.peer.port"),
            server("/p1").attr("network.peer.port"),
            "one connection"
        );
    }
    assert!(
        server("/p1").end_unix_nano <= server("/p2").end_unix_nano,
        "pipelined answers in order"
    );
    let chunked = server("/chunked");
    assert_eq!(
        chunked.attr("http.response.body.size"),
        "30",
        "first chunk\\nsecond chunk\\nlast\\n"
    );
    let upload = server("/upload");
    assert_eq!(upload.attr("http.request.body.size"), (5 << 20).to_string());
    assert_eq!(upload.attr("http.response.status_code"), "201");
    let fail = server("/fail");
    assert_eq!((fail.status, fail.attr("error.type")), (ERROR, "500"));
    let curl_fail = find(&spans, "curl CLIENT /fail", |s| {
        s.kind == CLIENT && s.attr("url.path") == "/fail"
    });
    assert_eq!(
        curl_fail.status, ERROR,
        "a 500 is an error for the client too"
    );
    assert!(
        spans
            .iter()
            .all(|s| s.attr("network.peer.port") != garbage_port
                && s.attr("network.local.port") != garbage_port),
        "no span for the garbage connection"
    );
}

const QUEUE_SPANS: usize = 20;
/// 500 queues' worth.
const SPANS_PUSHED: usize = 10_000;

/// Spans dropped for either reason; 0 until the agent first serves the series.
fn spans_dropped(m: &prometheus_parse::Scrape) -> f64 {
    ["queue_full", "export_failed"]
        .iter()
        .filter_map(|reason| try_value(m, "tracer_spans_dropped_total", &[("reason", reason)]))
        .sum()
}

/// `count` GETs over one keep-alive connection (`http_load.py`) while the receiver is
/// down; waits until the agent has parsed both ends of each and counted the drop of all
/// but at most a queue's worth of their spans (the queue plus the batch held for retry).
fn http_load_to_dead_receiver(agent: &AgentRun, port: u16, path: &str, count: usize) {
    let before = scrape(&agent.metrics);
    let exchanges = |m: &prometheus_parse::Scrape| {
        try_value(m, "tracer_exchanges_total", &[("protocol", "http")]).unwrap_or(0.0)
    };
    let output = std::process::Command::new("python3")
        .arg(format!("{}/http_load.py", support::agent::PEERS))
        .args(["--port", &port.to_string(), "--path", path])
        .args(["--count", &count.to_string()])
        .output()
        .expect("python3");
    assert!(output.status.success(), "{output:?}");
    let spans = 2.0 * count as f64;
    let want_exchanges = exchanges(&before) + spans;
    let want_dropped = spans_dropped(&before) + spans - 2.0 * QUEUE_SPANS as f64;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = scrape(&agent.metrics);
        if exchanges(&m) >= want_exchanges && spans_dropped(&m) >= want_dropped {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent parsed {} of {want_exchanges} HTTP exchanges and counted {} of at least {want_dropped} dropped spans",
            exchanges(&m),
            spans_dropped(&m)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn receiver_outage_counts_drops_and_export_resumes() {
    // Held, not listened on: the agent's exports are refused, and no other socket can take
    // the port before the receiver comes up on it.
    let grpc = reserve_port();
    let a = Service::python(&[]);
    // Node answers in one write: no Nagle/delayed-ACK pause per keep-alive request.
    let load = Service::node();
    let mut agent = AgentRun::start(&[
        "--export",
        &format!("otlp-grpc=http://127.0.0.1:{}", grpc.port),
        "--queue-spans",
        &QUEUE_SPANS.to_string(),
        "--settle-ms",
        "100",
    ]);
    // Nobody listens. Both ends of each request are traced (the load client is a process
    // too), so N requests are 2N spans.
    http_load_to_dead_receiver(&agent, load.port, "/warm-up/", 200);
    let rss_before = agent.rss_bytes();
    http_load_to_dead_receiver(&agent, load.port, "/before/", SPANS_PUSHED / 2);
    let rss_after = agent.rss_bytes();
    assert!(
        agent.is_running(),
        "the agent keeps running while the receiver is down"
    );
    println!(
        "receiver down, {SPANS_PUSHED} spans pushed: agent RSS {} MiB → {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
    // All but a queue's worth were dropped (checked above). What does grow is the
    // correlator's memory of recent spans (a few hundred bytes each, kept a minute to
    // parent late children): a few MiB here.
    let growth = rss_after.saturating_sub(rss_before);
    assert!(
        growth < 32 << 20,
        "agent memory grew by {} MiB with {SPANS_PUSHED} spans pushed at a dead receiver and a queue of {QUEUE_SPANS}",
        growth >> 20
    );

    let receiver = Receiver::start_reserved(grpc);
    for i in 0..3 {
        assert_eq!(curl(&[&a.url(&format!("/after/{i}"))]), "200");
    }
    // Export resumes within the longest back-off (10 s) after the receiver is back.
    let after = |spans: &[ReceivedSpan]| {
        spans
            .iter()
            .filter(|s| s.kind == SERVER && s.attr("url.path").starts_with("/after/"))
            .count()
    };
    if let Err(spans) = receiver.try_wait_for(Duration::from_secs(30), |spans| after(spans) == 3) {
        panic!(
            "{} of 3 /after/ server spans and {} spans in all reached the receiver 30 s after it came back; the agent's log:\n{}",
            after(&spans),
            spans.len(),
            agent.stop()
        );
    }
    let stats = final_stats(&agent.stop())["export"].clone();
    let dropped = stats["spans_dropped"]["queue_full"].as_u64().unwrap()
        + stats["spans_dropped"]["export_failed"].as_u64().unwrap();
    assert!(dropped > 0, "drops are counted: {stats}");
    assert!(
        stats["export_errors"].as_u64().unwrap() > 0,
        "failed exports are counted: {stats}"
    );
}

/// A server that accepts in one process and serves in a forked child (socketserver's
/// ForkingMixIn, as prefork servers do): each request is a SERVER span of the child that
/// served it.
#[test]
fn an_accept_then_fork_server_is_traced_in_the_child_that_serves() {
    let receiver = Receiver::start();
    let server = Service::spawn(
        std::process::Command::new("python3")
            .arg(format!("{}/prefork_server.py", support::agent::PEERS)),
    );
    let export = format!("otlp-grpc={}", receiver.grpc_url());
    let agent = AgentRun::start(&["--export", &export, "--settle-ms", "200"]);
    let mut served_by = Vec::new();
    for n in 0..3 {
        let output = std::process::Command::new("curl")
            .args(["-s", &server.url(&format!("/forked/{n}"))])
            .output()
            .expect("curl");
        let body: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        served_by.push(body["pid"].as_u64().unwrap() as u32);
    }
    assert!(
        !served_by.contains(&server.pid()),
        "children serve, not the parent: {served_by:?}"
    );
    let is_served =
        |s: &ReceivedSpan| s.kind == SERVER && s.attr("url.path").starts_with("/forked/");
    let spans = receiver.wait_for(
        "a SERVER span for each forked child's request",
        Duration::from_secs(20),
        |spans| spans.iter().filter(|s| is_served(s)).count() >= 3,
    );
    agent.stop();
    let mut pids: Vec<u32> = spans
        .iter()
        .filter(|s| is_served(s))
        .map(ReceivedSpan::pid)
        .collect();
    pids.sort();
    served_by.sort();
    assert_eq!(pids, served_by, "each span from the child that served it");
    for span in spans.iter().filter(|s| is_served(s)) {
        assert_eq!(span.attr("http.response.status_code"), "200");
        assert!(span.service.starts_with("python"), "{}", span.service);
    }
}

/// A process that was a Python HTTP client and then exec'd Node.js, which serves: the
/// node spans name node (the pid's identity is read again at exec), the python span python.
#[test]
fn an_execd_process_reports_its_new_executable() {
    let receiver = Receiver::start();
    let target = Service::node();
    let export = format!("otlp-grpc={}", receiver.grpc_url());
    let agent = AgentRun::start(&["--export", &export, "--settle-ms", "200"]);
    let peers = support::agent::PEERS;
    let go = std::env::temp_dir().join(format!("tracer-exec-go-{}", free_port()));
    let before_exec = |s: &ReceivedSpan| s.kind == CLIENT && s.attr("url.path") == "/before-exec";
    // Spawned on a thread: the service helper waits for the port line, printed after exec.
    let command = {
        let mut command = std::process::Command::new("python3");
        command
            .arg(format!("{peers}/exec_into.py"))
            .arg(target.url("/before-exec"))
            .arg(&go)
            .args(["node", &format!("{peers}/http_service.js")]);
        command
    };
    let spawned = std::thread::spawn(move || {
        let mut command = command;
        Service::spawn(&mut command)
    });
    // The agent has named the process before it execs (it reads a process's identity when
    // it first sees it; see README).
    receiver.wait_for(
        "the client span before the exec",
        Duration::from_secs(20),
        |spans| spans.iter().any(before_exec),
    );
    std::fs::write(&go, b"").unwrap();
    let execd = spawned.join().unwrap();
    let _ = std::fs::remove_file(&go);
    assert_eq!(curl(&[&execd.url("/after-exec")]), "200");
    let spans = receiver.wait_for(
        "the server span after the exec",
        Duration::from_secs(20),
        |spans| served(spans, "/after-exec").is_some(),
    );
    agent.stop();
    let before = find(&spans, "the python client span", before_exec);
    let after = find(&spans, "the node server span", |s| {
        s.kind == SERVER && s.attr("url.path") == "/after-exec"
    });
    assert_eq!(
        before.pid(),
        after.pid(),
        "one process, before and after exec"
    );
    assert_eq!(after.pid(), execd.pid());
    assert!(before.service.starts_with("python"), "{}", before.service);
    assert_eq!(after.service, "node");
    assert_eq!(
        after
            .resource
            .get("process.executable.name")
            .map(String::as_str),
        Some("node")
    );
}
