//! End-to-end: a real RabbitMQ broker, a pika (Python) publisher and an amqplib (Node.js)
//! consumer in separate unmodified processes, the real eBPF programs, `tracer run`, and a
//! real OTLP receiver.
mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::{
    agent::{final_stats, AgentRun, PEERS},
    broker::broker,
    otlp::{ReceivedSpan, Receiver},
};

const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;
const INTERNAL: i32 = 1;
const ERROR: i32 = 2;

/// Runs the pika publisher; returns its per-message JSON lines.
fn publish(args: &[&str]) -> Vec<serde_json::Value> {
    let port = broker().port.to_string();
    let output = Command::new("python3")
        .arg(format!("{PEERS}/amqp_publisher.py"))
        .args(["--port", &port])
        .args(args)
        .output()
        .expect("python3 with pika is needed (cargo xtask setup installs it)");
    assert!(
        output.status.success(),
        "publisher failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs the amqplib consumer until it has handled `count` messages.
fn consume(queue: &str, count: usize, extra: &[&str]) -> Vec<serde_json::Value> {
    let port = broker().port.to_string();
    let mut child = Command::new("node")
        .arg(format!("{PEERS}/amqp_consumer.js"))
        .args([port.as_str(), queue, &count.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("node with amqplib is needed (cargo xtask setup installs it)");
    let lines: Vec<serde_json::Value> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert!(child.wait().unwrap().success(), "consumer failed");
    lines
}

fn agent(receiver: &Receiver, extra: &[&str]) -> AgentRun {
    broker(); // the broker predates the agent, as in production
    let export = format!("otlp-grpc={}", receiver.grpc_url());
    AgentRun::start(&[&["--export", export.as_str(), "--settle-ms", "300"], extra].concat())
}

/// Slack for timer and scheduling granularity around the residence bounds a test sets.
const MARGIN_MS: f64 = 50.0;

/// Checks a CONSUMER span's queue residence against what the test itself did: the
/// message sat in the queue at least `held_ms` (the test kept the consumer away that
/// long) and at most from the publisher's clock before publishing to the consumer's on
/// arrival; both ± [`MARGIN_MS`]. It must come from the broker's own sockets, which the
/// agent sees (the broker runs on this host).
fn assert_residence(
    consumer: &ReceivedSpan,
    held_ms: f64,
    published: &serde_json::Value,
    consumed: &serde_json::Value,
) {
    let residence: f64 = consumer
        .attr("tracer.messaging.queue_residence_ms")
        .parse()
        .unwrap_or_else(|_| panic!("no residence attribute: {consumer:?}"));
    let most = consumed["received_at_ms"].as_f64().unwrap()
        - published["published_at_ms"].as_f64().unwrap();
    assert!(
        residence >= held_ms - MARGIN_MS && residence <= most + MARGIN_MS,
        "residence {residence} ms outside {held_ms}..{most} ms (± {MARGIN_MS}): {consumer:?}"
    );
    assert_eq!(
        consumer.attr("tracer.messaging.queue_residence_source"),
        "broker",
        "measured on the broker's own sockets: {consumer:?}"
    );
}

fn by_id<'a>(lines: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["message_id"] == id)
        .unwrap_or_else(|| panic!("no line for {id}: {lines:?}"))
}

fn with_id<'a>(spans: &'a [ReceivedSpan], kind: i32, id: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.kind == kind && s.attr("messaging.message.id") == id)
        .collect()
}

const HELD_MS: u64 = 1_000;

#[test]
fn confirmed_publishes_and_acked_deliveries_are_linked_producer_to_consumer() {
    const N: usize = 5;
    let receiver = Receiver::start();
    let agent = agent(&receiver, &[]);
    let published = publish(&[
        "--exchange",
        "orders",
        "--declare-exchange",
        "--queue",
        "mes.orders",
        "--routing-key",
        "order.submitted",
        "--count",
        &N.to_string(),
        "--id-prefix",
        "order",
        "--confirm",
    ]);
    assert!(published.iter().all(|p| p["ok"] == true), "{published:?}");
    // The messages wait in the queue at least this long: no consumer yet.
    let held = Instant::now();
    std::thread::sleep(Duration::from_millis(HELD_MS));
    let held_ms = held.elapsed().as_millis() as f64;
    let consumed = consume("mes.orders", N, &[]);
    assert_eq!(consumed.len(), N);
    let spans = receiver.wait_for(
        "N producer and N consumer spans",
        Duration::from_secs(20),
        |spans| {
            (0..N).all(|n| {
                let id = format!("order-{n}");
                with_id(spans, PRODUCER, &id).len() == 1 && with_id(spans, CONSUMER, &id).len() == 1
            })
        },
    );
    agent.stop();
    for n in 0..N {
        let id = format!("order-{n}");
        let producer = with_id(&spans, PRODUCER, &id)[0];
        let consumer = with_id(&spans, CONSUMER, &id)[0];
        assert!(producer.service.starts_with("python"), "{producer:?}");
        assert_eq!(consumer.service, "node");
        for span in [producer, consumer] {
            assert_eq!(span.attr("messaging.system"), "rabbitmq");
            assert_eq!(span.attr("messaging.destination.name"), "orders");
            assert_eq!(
                span.attr("messaging.rabbitmq.destination.routing_key"),
                "order.submitted"
            );
            assert_eq!(
                span.attr("messaging.message.conversation_id"),
                format!("conv-{n}")
            );
            assert_ne!(span.status, ERROR, "{span:?}");
        }
        assert_eq!(producer.name, "publish orders");
        assert_eq!(producer.attr("messaging.operation.type"), "send");
        assert_eq!(consumer.name, "deliver mes.orders");
        assert_eq!(
            consumer.attr("messaging.destination.subscription.name"),
            "mes.orders"
        );
        assert_eq!(consumer.attr("messaging.operation.type"), "process");
        assert_eq!(
            consumer.trace_id, producer.trace_id,
            "{id}: consumer in the producer's trace"
        );
        assert_eq!(
            consumer.parent_span_id, producer.span_id,
            "{id}: consumer is the producer's child"
        );
        assert!(
            consumer
                .links
                .contains(&(producer.trace_id.clone(), producer.span_id.clone())),
            "{id}: and links to it"
        );
        assert_residence(
            consumer,
            held_ms,
            by_id(&published, &id),
            by_id(&consumed, &id),
        );
    }
}

#[test]
fn rejected_nacked_and_unroutable_messages_are_errors_with_reasons() {
    let receiver = Receiver::start();
    let agent = agent(&receiver, &[]);
    let published = publish(&[
        "--queue",
        "mes.verdicts",
        "--routing-key",
        "mes.verdicts",
        "--count",
        "2",
        "--id-prefix",
        "verdict",
        "--confirm",
    ]);
    assert!(published.iter().all(|p| p["ok"] == true));
    consume(
        "mes.verdicts",
        2,
        &["--reject", "verdict-0", "--nack", "verdict-1"],
    );
    let missing = publish(&[
        "--exchange",
        "no-such-exchange",
        "--routing-key",
        "x",
        "--id-prefix",
        "lost",
        "--confirm",
    ]);
    assert_eq!(
        missing[0]["ok"], false,
        "the broker closes the channel: {missing:?}"
    );
    let spans = receiver.wait_for(
        "reject, nack and 404 spans",
        Duration::from_secs(20),
        |spans| {
            !with_id(spans, CONSUMER, "verdict-0").is_empty()
                && !with_id(spans, CONSUMER, "verdict-1").is_empty()
                && !with_id(spans, PRODUCER, "lost-0").is_empty()
        },
    );
    agent.stop();
    let rejected = with_id(&spans, CONSUMER, "verdict-0")[0];
    assert_eq!(
        (rejected.status, rejected.attr("error.type")),
        (ERROR, "reject")
    );
    let nacked = with_id(&spans, CONSUMER, "verdict-1")[0];
    assert_eq!((nacked.status, nacked.attr("error.type")), (ERROR, "nack"));
    let unroutable = with_id(&spans, PRODUCER, "lost-0")[0];
    assert_eq!(
        (unroutable.status, unroutable.attr("error.type")),
        (ERROR, "404")
    );
    assert!(
        unroutable.status_message.contains("NOT_FOUND"),
        "reason from Channel.Close: {unroutable:?}"
    );
}

#[test]
fn late_consumption_shows_the_brokers_residence_and_an_unconsumed_message_is_reported_stuck() {
    let receiver = Receiver::start();
    let agent = agent(&receiver, &["--message-stuck-after", "8"]);
    let late_published = publish(&[
        "--queue",
        "mes.late",
        "--routing-key",
        "mes.late",
        "--id-prefix",
        "late",
        "--confirm",
    ]);
    publish(&[
        "--queue",
        "mes.never",
        "--routing-key",
        "mes.never",
        "--id-prefix",
        "never",
        "--confirm",
    ]);
    let held = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let held_ms = held.elapsed().as_millis() as f64;
    let late_consumed = consume("mes.late", 1, &[]);
    let spans = receiver.wait_for(
        "the late delivery and the stuck report",
        Duration::from_secs(20),
        |spans| {
            !with_id(spans, CONSUMER, "late-0").is_empty()
                && !with_id(spans, INTERNAL, "never-0").is_empty()
        },
    );
    let stderr = agent.stop();
    let late = with_id(&spans, CONSUMER, "late-0")[0];
    assert_residence(late, held_ms, &late_published[0], &late_consumed[0]);
    let stuck = with_id(&spans, INTERNAL, "never-0")[0];
    let producer = with_id(&spans, PRODUCER, "never-0")[0];
    assert_eq!(
        stuck.attr("tracer.synthesized"),
        "true",
        "an invented span says so"
    );
    assert_eq!(
        (stuck.status, stuck.trace_id.as_str()),
        (ERROR, producer.trace_id.as_str())
    );
    assert_eq!(stuck.parent_span_id, producer.span_id);
    assert!(
        with_id(&spans, INTERNAL, "late-0").is_empty(),
        "the delivered message is not reported"
    );
    assert!(
        stderr.contains("was not delivered within"),
        "a log line says so:\n{stderr}"
    );
    let _ = final_stats(&stderr);
    assert!(
        stderr.contains("\"messages_stuck\":1"),
        "and a counter:\n{stderr}"
    );
}

#[test]
fn interleaved_channels_and_a_one_mib_body_split_across_frames() {
    const N: usize = 6;
    let receiver = Receiver::start();
    let agent = agent(&receiver, &[]);
    let published = publish(&[
        "--queue",
        "mes.big",
        "--routing-key",
        "mes.big",
        "--count",
        &N.to_string(),
        "--id-prefix",
        "big",
        "--channels",
        "3",
        "--body-size",
        &(1 << 20).to_string(),
        "--confirm",
    ]);
    assert!(published.iter().all(|p| p["ok"] == true));
    let consumed = consume("mes.big", N, &[]);
    assert!(consumed.iter().all(|c| c["bytes"] == 1 << 20));
    let spans = receiver.wait_for(
        "spans for every big message",
        Duration::from_secs(30),
        |spans| (0..N).all(|n| !with_id(spans, CONSUMER, &format!("big-{n}")).is_empty()),
    );
    agent.stop();
    for n in 0..N {
        let id = format!("big-{n}");
        let producer = with_id(&spans, PRODUCER, &id);
        let consumer = with_id(&spans, CONSUMER, &id);
        assert_eq!((producer.len(), consumer.len()), (1, 1), "{id}");
        assert_eq!(
            producer[0].attr("messaging.message.body.size"),
            (1 << 20).to_string()
        );
        assert_eq!(consumer[0].parent_span_id, producer[0].span_id, "{id}");
    }
}

#[test]
fn refusals_and_a_return_without_confirms_are_errors_with_code_and_text() {
    let receiver = Receiver::start();
    let agent = agent(&receiver, &[]);
    // Words only: names with digits would be templated by the privacy stage.
    let run: String = (std::process::id().to_string().bytes())
        .map(|d| char::from(b'a' + d - b'0'))
        .collect();
    let prefix = format!("refusal-{run}");
    let output = Command::new("python3")
        .arg(format!("{PEERS}/amqp_errors.py"))
        .args(["--port", &broker().port.to_string(), "--prefix", &prefix])
        .output()
        .expect("python3 with pika is needed (cargo xtask setup installs it)");
    let steps = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && steps.contains("312") && steps.contains("530"),
        "the pika peer did not see the broker's refusals: {steps}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let named = |spans: &[ReceivedSpan], name: &str| -> Vec<ReceivedSpan> {
        spans
            .iter()
            .filter(|s| s.name == name && s.service.starts_with("python"))
            .cloned()
            .collect()
    };
    let calls = ["exchange.declare", "queue.declare", "connection.open"];
    let spans = receiver.wait_for(
        "a span for the return and for each refused call",
        Duration::from_secs(20),
        |spans| {
            with_id(spans, PRODUCER, &format!("{prefix}-returned")).len() == 1
                && with_id(spans, PRODUCER, &format!("{prefix}-routed")).len() == 1
                && calls.iter().all(|c| !named(spans, c).is_empty())
        },
    );
    agent.stop();
    let returned = with_id(&spans, PRODUCER, &format!("{prefix}-returned"))[0];
    assert_eq!(
        (returned.status, returned.attr("error.type")),
        (ERROR, "312"),
        "{returned:?}"
    );
    assert!(returned.status_message.contains("NO_ROUTE"), "{returned:?}");
    let routed = with_id(&spans, PRODUCER, &format!("{prefix}-routed"))[0];
    assert_ne!(
        routed.status, ERROR,
        "a routed mandatory publish: {routed:?}"
    );
    for (call, code, text) in [
        ("exchange.declare", "406", "PRECONDITION_FAILED"),
        ("queue.declare", "404", "NOT_FOUND"),
        ("connection.open", "530", "NOT_ALLOWED"),
    ] {
        let refused = named(&spans, call);
        assert_eq!(refused.len(), 1, "one {call} error: {refused:?}");
        let refused = &refused[0];
        assert_eq!(
            (refused.status, refused.attr("error.type"), refused.kind),
            (ERROR, code, 3),
            "{refused:?}"
        );
        assert_eq!(refused.attr("messaging.rabbitmq.reply_code"), code);
        assert!(refused.status_message.contains(text), "{refused:?}");
    }
    assert_eq!(
        named(&spans, "exchange.declare")[0].attr("messaging.destination.name"),
        format!("{prefix}-orders"),
        "the refused call names its exchange"
    );
}
