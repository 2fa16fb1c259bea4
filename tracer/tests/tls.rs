//! End-to-end: encrypted connections traced from their plaintext. A throw-away CA and
//! server certificate made with the openssl CLI; unmodified HTTPS servers and clients in
//! Python (ssl module → libssl), curl (libssl) and Node.js (OpenSSL linked statically);
//! the real uprobes and agent, and a real OTLP receiver.
mod support;

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use support::{
    agent::{curl, AgentRun, Service, PEERS},
    otlp::{everything, find, ReceivedSpan, Receiver},
    tls::{fresh_copy, run_json, wait_for_openssl_files, wait_then_stop, which, Pki},
};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const TRACEPARENT: &str = "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "5bf92f3577b34da6a3ce929d0e0e4736";

/// IDs of the loaded TLS uprobe programs (kernel names are cut at 15 bytes).
fn tls_program_ids() -> BTreeSet<u32> {
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| {
            p.name_as_str()
                .is_some_and(|n| n.starts_with("tls_") || n == "library_loaded")
        })
        .map(|p| p.id())
        .collect()
}

fn assert_https(span: &ReceivedSpan, what: &str) {
    assert_eq!(span.attr("url.scheme"), "https", "{what}: {span:#?}");
    assert_eq!(span.attr("tls.established"), "true", "{what}: {span:#?}");
}

/// curl → A (Python, ssl) → B (Node, https); a Python client → A; a Node client → B. All
/// services and clients start after the agent; B runs from a fresh copy of `node`.
#[test]
fn https_spans_from_python_curl_and_node_with_parents_order_ids_and_no_credentials() {
    let pki = Pki::new();
    let receiver = Receiver::start();
    let before = tls_program_ids();
    let agent = AgentRun::start(&[
        "--export",
        &format!("otlp-grpc={}", receiver.grpc_url()),
        "--settle-ms",
        "200",
    ]);
    let ours: BTreeSet<u32> = tls_program_ids().difference(&before).copied().collect();
    assert!(
        ours.len() >= 6,
        "the agent loaded its TLS uprobe programs: {ours:?}"
    );

    let node_copy = fresh_copy(&which("node"), &pki.dir.join("node"));
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let hooked_before = wait_for_openssl_files(&agent, |n| n >= 1.0);
    let b = Service::node_at(&node_copy, &["--tls", &cert, &key]);
    // Uprobes cover a file from the moment they are attached; the agent finds the new
    // executable through its exec event within tens of milliseconds. Wait for that, so
    // the test does not depend on node's start-up being slower than the hooking.
    wait_for_openssl_files(&agent, |n| n > hooked_before);
    let a = Service::python(&[
        "--tls",
        &cert,
        &key,
        "--downstream",
        &format!("127.0.0.1:{}", b.port),
        "--ca",
        &ca,
    ]);

    let status = curl(&[
        "--cacert",
        &ca,
        "-H",
        &format!("traceparent: {TRACEPARENT}"),
        "-H",
        "Authorization: Bearer curl-s3cret",
        &a.https_url("/quotes/1001"),
    ]);
    assert_eq!(status, "200");
    let python = run_json(Command::new("python3").args([
        &format!("{PEERS}/https_client.py"),
        "--port",
        &a.port.to_string(),
        "--ca",
        &ca,
        "--order",
        "TLS-PY-1",
        "--token",
        "py-s3cret",
    ]));
    assert_eq!(python["statuses"], serde_json::json!([201]));
    // The client runs from the same fresh executable: its exec is found and the file is
    // already hooked (a node started within the hooking window — tens of ms after its
    // exec — would have its first calls missed; see README).
    let node = run_json(Command::new(&node_copy).args([
        &format!("{PEERS}/https_client.js"),
        &b.port.to_string(),
        "/orders",
        "2",
        &ca,
        "TLS-NODE-2",
        "node-s3cret",
    ]));
    assert_eq!(node["statuses"], serde_json::json!([201, 201]));

    let (spans, stderr) = wait_then_stop(agent, &receiver, "the HTTPS spans", |spans| {
        let chain = spans.iter().filter(|s| s.trace_id == TRACE_ID).count();
        let py = spans
            .iter()
            .filter(|s| s.attr("app.order.id") == "TLS-PY-1")
            .count();
        let node = spans
            .iter()
            .filter(|s| s.attr("app.order.id") == "TLS-NODE-2")
            .count();
        chain >= 4 && py >= 2 && node >= 4
    });
    let detached: Vec<u32> = tls_program_ids().intersection(&ours).copied().collect();
    assert!(
        detached.is_empty(),
        "the agent's uprobe programs are gone after it exits: {detached:?}"
    );
    assert_eq!(
        curl(&["--cacert", &ca, &a.https_url("/after")]),
        "200",
        "services unharmed after detach"
    );
    assert!(
        stderr.contains(&format!("tls: hooked {node_copy} (openssl")),
        "the fresh node executable, started after the agent, was found and hooked:\n{stderr}"
    );

    // The chain, as for plaintext.
    let chain: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == TRACE_ID).collect();
    assert_eq!(chain.len(), 4, "{chain:#?}");
    let user = find(&spans, "curl CLIENT", |s| {
        s.trace_id == TRACE_ID && s.kind == CLIENT && s.service == "curl"
    });
    assert_eq!(
        user.parent_span_id, "00f067aa0ba902b7",
        "the incoming traceparent is continued"
    );
    let a_server = find(&spans, "A SERVER", |s| {
        s.trace_id == TRACE_ID && s.kind == SERVER && s.service.starts_with("python")
    });
    let a_client = find(&spans, "A CLIENT", |s| {
        s.trace_id == TRACE_ID && s.kind == CLIENT && s.service.starts_with("python")
    });
    let b_server = find(&spans, "B SERVER", |s| {
        s.trace_id == TRACE_ID && s.kind == SERVER && s.service == "node"
    });
    assert_eq!(
        (a_server.name.as_str(), a_server.attr("http.request.method")),
        ("GET /quotes/{id}", "GET")
    );
    assert_eq!(a_server.attr("http.route"), "/quotes/{id}");
    assert_eq!(a_server.attr("http.response.status_code"), "200");
    assert_eq!(a_client.name, "GET /prices/{id}");
    assert_eq!(b_server.attr("http.route"), "/prices/{id}");
    assert_eq!(b_server.attr("http.response.status_code"), "200");
    assert_eq!(
        a_server.parent_span_id, user.span_id,
        "A SERVER is the child of curl's CLIENT"
    );
    assert_eq!(
        a_client.parent_span_id, a_server.span_id,
        "A CLIENT is the child of A SERVER"
    );
    assert_eq!(
        b_server.parent_span_id, a_client.span_id,
        "B SERVER is the child of A CLIENT"
    );
    for span in &chain {
        assert_https(span, "chain");
    }

    // Python client → Python server: the order id from the encrypted JSON body.
    let py_client = find(&spans, "Python client CLIENT", |s| {
        s.kind == CLIENT && s.attr("app.order.id") == "TLS-PY-1"
    });
    let py_server = find(&spans, "A SERVER for the Python client", |s| {
        s.kind == SERVER && s.attr("app.order.id") == "TLS-PY-1"
    });
    assert_eq!(py_client.resource["process.pid"], python["pid"].to_string());
    assert_eq!(
        (
            py_server.name.as_str(),
            py_server.attr("http.response.status_code")
        ),
        ("POST /orders", "201")
    );
    assert_eq!(py_server.parent_span_id, py_client.span_id);
    assert_https(py_client, "python client");
    assert_https(py_server, "python server");

    // Node client → Node server, twice on one keep-alive connection.
    let node_clients: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.kind == CLIENT && s.attr("app.order.id") == "TLS-NODE-2")
        .collect();
    let node_servers: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.kind == SERVER && s.attr("app.order.id") == "TLS-NODE-2")
        .collect();
    assert_eq!(
        (node_clients.len(), node_servers.len()),
        (2, 2),
        "{spans:#?}"
    );
    for server in &node_servers {
        assert_eq!(
            (
                server.name.as_str(),
                server.attr("http.response.status_code")
            ),
            ("POST /orders", "201")
        );
        assert_eq!(server.resource["process.pid"], b.pid().to_string());
        assert!(
            node_clients
                .iter()
                .any(|c| c.span_id == server.parent_span_id),
            "Node SERVER has its Node CLIENT as parent: {server:#?}"
        );
        assert_https(server, "node server");
    }
    for client in &node_clients {
        assert_eq!(client.resource["process.pid"], node["pid"].to_string());
        assert_https(client, "node client");
    }

    let all = everything(&spans);
    for secret in ["curl-s3cret", "py-s3cret", "node-s3cret"] {
        assert!(
            !all.contains(secret),
            "the Authorization header never leaves: {secret}\n{all}"
        );
    }
}

/// A process that maps its own libssl (a copy no one else uses) only when it imports
/// `ssl`, long after it started: the dlopen uretprobe makes the agent look again.
#[test]
fn a_libssl_loaded_late_by_dlopen_is_hooked_and_traced() {
    let pki = Pki::new();
    let receiver = Receiver::start();
    let agent = AgentRun::start(&[
        "--export",
        &format!("otlp-grpc={}", receiver.grpc_url()),
        "--settle-ms",
        "200",
    ]);
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let server = Service::python(&["--tls", &cert, &key]);

    let libs = pki.dir.join("lib");
    std::fs::create_dir_all(&libs).unwrap();
    let system_libssl = which_libssl();
    let own_libssl = fresh_copy(
        &system_libssl,
        &libs.join(system_libssl.file_name().unwrap()),
    );
    let report = run_json(
        Command::new("python3")
            .args([
                &format!("{PEERS}/https_client.py"),
                "--port",
                &server.port.to_string(),
                "--ca",
                &ca,
                "--order",
                "LATE-1",
                "--count",
                "2",
                "--import-after",
                "1.5",
                "--settle",
                "0.3",
            ])
            .env("LD_LIBRARY_PATH", &libs),
    );
    assert_eq!(
        report["libssl_before"],
        serde_json::json!([]),
        "libssl was not mapped at start"
    );
    assert_eq!(
        report["libssl_after"],
        serde_json::json!([own_libssl]),
        "the import mapped our copy"
    );
    assert_eq!(report["statuses"], serde_json::json!([201, 201]));

    let (spans, stderr) = wait_then_stop(agent, &receiver, "the late client's spans", |spans| {
        spans
            .iter()
            .filter(|s| s.kind == CLIENT && s.attr("app.order.id") == "LATE-1")
            .count()
            >= 2
    });
    assert!(
        stderr.contains(&format!("tls: hooked {own_libssl} (openssl"))
            && stderr.contains(&format!("pid={}", report["pid"])),
        "the late libssl was hooked for the client:\n{stderr}"
    );
    let clients: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.kind == CLIENT && s.attr("app.order.id") == "LATE-1")
        .collect();
    assert_eq!(clients.len(), 2);
    for client in clients {
        assert_eq!(client.resource["process.pid"], report["pid"].to_string());
        assert_eq!(client.name, "POST /orders");
        assert_https(client, "late client");
    }
}

fn which_libssl() -> PathBuf {
    let output = Command::new("python3")
        .args(["-c", "import ssl, _ssl; print(_ssl.__file__)"])
        .output()
        .unwrap();
    let module = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let ldd = Command::new("ldd").arg(&module).output().expect("ldd");
    let text = String::from_utf8_lossy(&ldd.stdout).into_owned();
    let path = text
        .lines()
        .find(|l| l.contains("libssl.so"))
        .and_then(|l| l.split("=>").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("python's _ssl module links no libssl:\n{text}"));
    std::fs::canonicalize(path).unwrap()
}
