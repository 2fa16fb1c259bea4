//! End-to-end: HTTP/2 and gRPC from unmodified programs. Python grpcio (unary, server
//! streaming, a non-OK status, 50 calls at once on one connection), Node's http2 server and
//! client (a body split across frames both ways, a reset stream), curl with prior knowledge
//! (h2c) and over TLS (ALPN h2, through the TLS hooks); the real agent and a real OTLP
//! receiver.
mod support;

use std::{collections::BTreeSet, process::Command};

use support::{
    agent::{curl, final_stats, AgentRun, Service, PEERS},
    keys::{key_file, order_trace},
    otlp::{find, ReceivedSpan, Receiver},
    tls::{fresh_copy, run_json, wait_for_openssl_files, wait_then_stop, which, Pki},
};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const KEY: &str = "http2 end-to-end key";
/// OTLP status code ERROR.
const ERROR: i32 = 2;

fn agent(receiver: &Receiver) -> AgentRun {
    let key = key_file(KEY);
    AgentRun::start(&[
        "--export",
        &format!("otlp-grpc={}", receiver.grpc_url()),
        "--hmac-key-file",
        &key.display().to_string(),
        // Raw order ids in the spans, so the test can tell them apart.
        "--pseudonymise-ids=false",
        "--settle-ms",
        "200",
    ])
}

/// The SERVER span of an order and the CLIENT span it answered, in the order's trace.
fn pair<'a>(spans: &'a [ReceivedSpan], order: &str) -> (&'a ReceivedSpan, &'a ReceivedSpan) {
    let server = find(spans, &format!("SERVER of {order}"), |s| {
        s.kind == SERVER && s.attr("app.order.id") == order
    });
    let client = find(spans, &format!("CLIENT of {order}"), |s| {
        s.kind == CLIENT && s.attr("app.order.id") == order
    });
    let trace = order_trace(KEY, order);
    assert_eq!(
        server.trace_id, trace,
        "{order}: its order's trace: {server:#?}"
    );
    assert_eq!(
        client.trace_id, trace,
        "{order}: its order's trace: {client:#?}"
    );
    assert_eq!(
        server.parent_span_id, client.span_id,
        "{order}: the SERVER span is the child of its own CLIENT span: {server:#?} {client:#?}"
    );
    assert_eq!(server.attr("network.protocol.version"), "2", "{server:#?}");
    (server, client)
}

#[test]
fn grpc_unary_streaming_errors_and_fifty_concurrent_streams_on_one_connection() {
    let receiver = Receiver::start();
    let agent = agent(&receiver);
    let server = Service::spawn(
        Command::new("python3")
            .arg(format!("{PEERS}/grpc_peer.py"))
            .arg("serve"),
    );
    let report = run_json(Command::new("python3").args([
        &format!("{PEERS}/grpc_peer.py"),
        "call",
        &server.port.to_string(),
        "ORD-G",
        "50",
    ]));
    assert_eq!(report["ok"], "ORD-G");
    assert_eq!(report["missing"], "NOT_FOUND");
    assert_eq!(report["watched"], 3);
    assert_eq!(report["concurrent"].as_array().unwrap().len(), 50);

    let (spans, stderr) = wait_then_stop(agent, &receiver, "the gRPC spans", |spans| {
        let calls = |kind| {
            spans
                .iter()
                .filter(|s| s.kind == kind && s.attr("rpc.system") == "grpc")
                .count()
        };
        calls(SERVER) >= 53 && calls(CLIENT) >= 53
    });
    let grpc: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.attr("rpc.system") == "grpc")
        .collect();
    assert_eq!(grpc.len(), 106, "53 calls, seen at both ends: {grpc:#?}");

    // Unary, OK, the order id in metadata: in its order's trace at both ends.
    let (server_span, client_span) = pair(&spans, "ORD-G");
    for span in [server_span, client_span] {
        assert_eq!(span.name, "shop.v1.Orders/GetOrder", "{span:#?}");
        assert_eq!(
            (
                span.attr("rpc.service"),
                span.attr("rpc.method"),
                span.attr("rpc.grpc.status_code")
            ),
            ("shop.v1.Orders", "GetOrder", "0")
        );
        assert_eq!(span.status, 0, "unset: OK {span:#?}");
    }
    assert_eq!(
        server_span.resource["process.pid"],
        server.pid().to_string()
    );
    assert_eq!(
        client_span.resource["process.pid"],
        report["pid"].to_string()
    );

    // NOT_FOUND: an error for the caller, not for the server (semantic conventions).
    let missing = |kind| {
        find(&spans, "the NOT_FOUND call", |s| {
            s.kind == kind && s.attr("rpc.grpc.status_code") == "5"
        })
    };
    let (missing_client, missing_server) = (missing(CLIENT), missing(SERVER));
    assert_eq!(missing_client.status, ERROR, "{missing_client:#?}");
    assert_eq!(missing_client.status_message, "no such order");
    assert_eq!(missing_client.attr("error.type"), "NOT_FOUND");
    assert_ne!(missing_server.status, ERROR, "{missing_server:#?}");
    assert_eq!(missing_server.parent_span_id, missing_client.span_id);

    // Server streaming: one span per call, OK at the end of the stream.
    for kind in [SERVER, CLIENT] {
        let watch = find(&spans, "Watch", |s| {
            s.kind == kind && s.name == "shop.v1.Orders/Watch"
        });
        assert_eq!(watch.attr("rpc.grpc.status_code"), "0");
    }

    // Fifty calls at once on one connection: fifty streams, each its own span at both ends,
    // each SERVER span the child of its own CLIENT span, each in its own order's trace.
    let mut connections = BTreeSet::new();
    let mut span_ids = BTreeSet::new();
    for i in 0..50 {
        let (s, c) = pair(&spans, &format!("ORD-G-{i}"));
        connections.insert(c.attr("network.local.port").to_owned());
        span_ids.insert(s.span_id.clone());
        span_ids.insert(c.span_id.clone());
    }
    assert_eq!(connections.len(), 1, "one connection: {connections:?}");
    assert_eq!(span_ids.len(), 100);
    let pipeline = &final_stats(&stderr)["pipeline"];
    assert_eq!(pipeline["exchanges"]["http2"], 106, "{pipeline:#}");
    // gRPC's C core writes many streams' headers in one sendmsg of hundreds of iovecs:
    // every header block was captured and decoded.
    assert_eq!(
        pipeline["protocol_events"]["http2.streams_headers_unknown"],
        0
    );
    // The receiver's side of the agent's own OTLP/gRPC exports is HTTP/2 too: never a
    // span (each would add a span to the next export), counted.
    assert!(
        pipeline["telemetry_exports_skipped"].as_u64().unwrap() > 0,
        "{pipeline:#}"
    );
    // From its first export on, the receiver's side of that connection is no longer
    // copied: one export per connection is parsed, not one per batch.
    let connections = pipeline["connections_telemetry_export"].as_u64().unwrap();
    assert!(connections >= 1, "{pipeline:#}");
    assert_eq!(
        pipeline["telemetry_exports_skipped"].as_u64(),
        Some(connections),
        "{pipeline:#}"
    );
    assert!(spans.iter().all(|s| !s.name.contains("TraceService")));
}

#[test]
fn node_http2_and_curl_over_h2c_and_tls_with_large_bodies_resets_and_order_ids() {
    let pki = Pki::new();
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let receiver = Receiver::start();
    let agent = agent(&receiver);
    let node = fresh_copy(&which("node"), &pki.dir.join("node"));
    let hooked_before = wait_for_openssl_files(&agent, |n| n >= 1.0);
    let h2c = Service::spawn(
        Command::new(&node)
            .arg(format!("{PEERS}/http2_peer.js"))
            .arg("serve"),
    );
    let tls = Service::spawn(
        Command::new(&node)
            .arg(format!("{PEERS}/http2_peer.js"))
            .args(["serve", "--tls", &cert, &key]),
    );
    // The fresh node executable is hooked once its exec is seen (see tests/tls.rs).
    wait_for_openssl_files(&agent, |n| n > hooked_before);

    let plain = run_json(Command::new(&node).args([
        &format!("{PEERS}/http2_peer.js"),
        "call",
        &h2c.url(""),
        "ORD-N1",
    ]));
    assert_eq!(plain["price"]["status"], 200);
    assert_eq!(plain["upload"]["status"], 201);
    assert_eq!(plain["big"]["size"], 300 * 1024);
    assert_eq!(plain["reset"]["reset"], 7, "REFUSED_STREAM");
    let encrypted = run_json(Command::new(&node).args([
        &format!("{PEERS}/http2_peer.js"),
        "call",
        &tls.https_url(""),
        "ORD-T2",
        &ca,
    ]));
    assert_eq!(encrypted["price"]["status"], 200);
    assert_eq!(
        curl(&["--http2-prior-knowledge", &h2c.url("/orders/ORD-C1/price")]),
        "200"
    );
    assert_eq!(
        curl(&[
            "--http2",
            "--cacert",
            &ca,
            &tls.https_url("/orders/ORD-T1/price")
        ]),
        "200"
    );

    let (spans, stderr) = wait_then_stop(agent, &receiver, "the HTTP/2 spans", |spans| {
        let order = |id: &str| {
            spans
                .iter()
                .filter(|s| s.attr("app.order.id") == id)
                .count()
        };
        let resets = spans
            .iter()
            .filter(|s| s.attr("http.route") == "/reset")
            .count();
        order("ORD-N1") >= 2
            && order("ORD-T2") >= 2
            && order("ORD-C1") >= 2
            && order("ORD-T1") >= 2
            && resets >= 4
    });

    // h2c, Node to Node: the order id in the path, both ends in its trace.
    let (server, client) = pair(&spans, "ORD-N1");
    assert_eq!(server.name, "GET /orders/{id}/price");
    assert_eq!(server.attr("http.route"), "/orders/{id}/price");
    assert_eq!(server.attr("http.response.status_code"), "200");
    assert_eq!(server.attr("url.scheme"), "http");
    assert_eq!(server.resource["process.pid"], h2c.pid().to_string());
    assert_eq!(client.resource["process.pid"], plain["pid"].to_string());
    // Large bodies, split across DATA frames, at both ends.
    let by_route = |kind, route: &str, port: u16| {
        find(&spans, &format!("{route} {kind}"), |s| {
            s.kind == kind
                && s.attr("http.route") == route
                && [s.attr("network.local.port"), s.attr("network.peer.port")]
                    .contains(&port.to_string().as_str())
        })
    };
    for kind in [SERVER, CLIENT] {
        let upload = by_route(kind, "/upload", h2c.port);
        assert_eq!(
            upload.attr("http.request.body.size"),
            "204800",
            "{upload:#?}"
        );
        assert_eq!(upload.attr("http.response.status_code"), "201");
        let big = by_route(kind, "/big", h2c.port);
        assert_eq!(big.attr("http.response.body.size"), "307200", "{big:#?}");
        // A reset stream is an error.
        let reset = by_route(kind, "/reset", h2c.port);
        assert_eq!(reset.status, ERROR, "{reset:#?}");
        assert_eq!(reset.attr("error.type"), "RST_STREAM REFUSED_STREAM");
        assert_eq!(reset.attr("tracer.http2.reset_by"), "server");
    }
    let upload_server = by_route(SERVER, "/upload", h2c.port);
    let upload_client = by_route(CLIENT, "/upload", h2c.port);
    assert_eq!(upload_server.parent_span_id, upload_client.span_id);

    // curl with prior knowledge.
    let (server, client) = pair(&spans, "ORD-C1");
    assert_eq!(client.service, "curl");
    assert_eq!(server.attr("url.scheme"), "http");

    // Over TLS (ALPN h2), through the TLS hooks: curl (libssl) and Node (static OpenSSL).
    for order in ["ORD-T1", "ORD-T2"] {
        let (server, client) = pair(&spans, order);
        for span in [server, client] {
            assert_eq!(span.attr("url.scheme"), "https", "{span:#?}");
            assert_eq!(span.attr("tls.established"), "true", "{span:#?}");
        }
        assert_eq!(server.resource["process.pid"], tls.pid().to_string());
        // A TLS write is stamped when the application hands its bytes to the library,
        // before they reach the socket: the call starts before it is served, whenever
        // the client thread is scheduled again after its write.
        assert!(
            client.start_unix_nano <= server.start_unix_nano,
            "{order}: the call starts before it is served: {client:#?} {server:#?}"
        );
    }
    let (_, curl_tls) = pair(&spans, "ORD-T1");
    assert_eq!(curl_tls.service, "curl");
    let pipeline = &final_stats(&stderr)["pipeline"];
    // Node and curl, plain and encrypted, at both ends: eight connections (and the
    // receiver's side of the agent's own exports).
    let http2 = pipeline["connections_by_protocol"]["http2"]
        .as_u64()
        .unwrap();
    assert!(http2 >= 8, "{pipeline:#}");
    assert_eq!(
        pipeline["protocol_events"]["http2.header_blocks_undecodable"],
        0
    );
    assert_eq!(
        pipeline["protocol_events"]["http2.streams_headers_unknown"],
        0
    );
}
