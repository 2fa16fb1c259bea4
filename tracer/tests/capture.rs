//! End-to-end: the real eBPF programs in this kernel, unmodified Python peers, and the
//! `tracer capture` output they produce.
mod support;

use serde_json::Value;
use support::{exchange, pattern, server, sha256_hex, CaptureRun, Captured, Peer};

const FAMILIES: [&str; 6] = [
    "write_read",
    "send_recv",
    "sendto_recvfrom",
    "sendmsg_recvmsg",
    "writev_readv",
    "writev_readv_two",
];

/// Both directions of the peer's connection equal, byte for byte, what the peer reports.
fn assert_matches_report(captured: &Captured, report: &Value, role: &str, what: &str) {
    let pid = report["pid"].as_u64().unwrap();
    let local = report["local"].as_str().unwrap();
    let opened: Vec<&Value> = captured
        .for_pid(pid)
        .filter(|r| r["local"] == local && r["type"] != "gap")
        .collect();
    assert!(
        !opened.is_empty(),
        "{what}: nothing captured for pid {pid} at {local}"
    );
    for record in &opened {
        assert_eq!(record["role"], role, "{what}: role of {record}");
        assert_eq!(
            record["remote"], report["remote"],
            "{what}: remote address of {record}"
        );
    }
    for (direction, len, sha) in [
        ("egress", "sent_len", "sent_sha256"),
        ("ingress", "recv_len", "recv_sha256"),
    ] {
        let bytes = captured.stream(pid, local, direction).contiguous();
        assert_eq!(
            bytes.len() as u64,
            report[len].as_u64().unwrap(),
            "{what}: {direction} length"
        );
        assert_eq!(
            sha256_hex(&bytes),
            report[sha].as_str().unwrap(),
            "{what}: {direction} bytes differ"
        );
    }
}

#[test]
fn every_syscall_family_is_reassembled_byte_for_byte() {
    every_family_byte_for_byte(&["--comm", "python3"]);
}

/// The same through the other data hook: one program at `raw_syscalls:sys_exit` that
/// tells the data syscalls by number (measured by `cargo xtask bench --only syscalls`).
#[test]
fn the_raw_syscalls_hook_reassembles_every_family_byte_for_byte() {
    every_family_byte_for_byte(&["--comm", "python3", "--data-hook", "raw-syscalls"]);
}

fn every_family_byte_for_byte(capture_args: &[&str]) {
    let capture = CaptureRun::start(capture_args);
    let reports: Vec<(&str, Value, Value)> = FAMILIES
        .iter()
        .map(|family| {
            // Odd sizes and chunking so reads and writes do not line up.
            let (client, server) = exchange(
                family,
                &["--send", "70001", "--reply", "33333", "--chunk", "4099"],
            );
            (*family, client, server)
        })
        .collect();
    let captured = capture.stop();
    for (family, client, server) in &reports {
        assert_matches_report(&captured, client, "client", &format!("{family} client"));
        assert_matches_report(&captured, server, "server", &format!("{family} server"));
    }
}

#[test]
fn large_transfer_is_exact_up_to_the_capture_limit_and_counted_beyond_it() {
    const MIB: usize = 1 << 20;
    let capture = CaptureRun::start(&["--comm", "python3"]);
    let mib = MIB.to_string();
    let (client, server) = exchange(
        "write_read",
        &["--send", &mib, "--reply", "10", "--chunk", &mib],
    );
    let captured = capture.stop();
    let expected = pattern(MIB, 1);
    for (report, direction) in [(&client, "egress"), (&server, "ingress")] {
        let pid = report["pid"].as_u64().unwrap();
        let stream = captured.stream(pid, report["local"].as_str().unwrap(), direction);
        assert_eq!(
            stream.captured_len() + stream.gap_len(),
            MIB as u64,
            "{direction}: captured + gap bytes must add up to the transfer"
        );
        assert!(
            stream.captured_len() >= 16 * 1024,
            "{direction}: at least one full record is captured"
        );
        for (offset, chunk) in &stream.chunks {
            let at = *offset as usize;
            assert!(
                chunk.len() <= 16 * 1024,
                "{direction}: a record is at most 16 KiB"
            );
            assert_eq!(
                chunk.as_slice(),
                &expected[at..at + chunk.len()],
                "{direction}: bytes at offset {offset}"
            );
        }
        for (offset, _, reason) in &stream.gaps {
            assert_eq!(
                reason, "not_captured",
                "{direction}: gap at {offset} should be the capture limit"
            );
        }
    }
}

#[test]
fn connection_opened_before_the_agent_is_attributed_to_its_process() {
    let (server, port) = server(&["--send", "0", "--reply", "500"]);
    let mut client = Peer::spawn(&["client", "--port", &port, "--wait", "--send", "2000"]);
    assert_eq!(client.read_line(), "CONNECTED");
    let capture = CaptureRun::start(&["--comm", "python3"]);
    client.go();
    let client = client.report();
    let server = server.report();
    let captured = capture.stop();
    for (report, role) in [(&client, "client"), (&server, "server")] {
        let pid = report["pid"].as_u64().unwrap();
        let seeded = captured
            .for_pid(pid)
            .find(|r| r["type"] == "conn_open" && r["seeded"] == true)
            .unwrap_or_else(|| panic!("no seeded conn_open for {role} pid {pid}"));
        assert_eq!(seeded["local"], report["local"], "{role} local address");
        assert_eq!(seeded["remote"], report["remote"], "{role} remote address");
        for record in captured
            .for_pid(pid)
            .filter(|r| r["local"] == report["local"])
        {
            assert_eq!(record["role"], role, "{role}: role of {record}");
        }
    }
    // The client waited for us before writing: its bytes are complete in both directions.
    assert_matches_report(&captured, &client, "client", "pre-existing client");
    // The server was already blocked in recv() when the programs were attached; that one
    // syscall is invisible (its exit carries no fd), so its stream starts at the next one.
    let local = server["local"].as_str().unwrap();
    let ingress = captured
        .stream(server["pid"].as_u64().unwrap(), local, "ingress")
        .contiguous();
    let sent = pattern(2000, 1);
    assert!(
        !ingress.is_empty() && sent.ends_with(&ingress),
        "server ingress must be an exact suffix of what was sent"
    );
    let egress = captured
        .stream(server["pid"].as_u64().unwrap(), local, "egress")
        .contiguous();
    assert_eq!(
        sha256_hex(&egress),
        server["sent_sha256"].as_str().unwrap(),
        "server reply bytes"
    );
}

#[test]
fn file_and_pipe_io_produce_no_payload_records() {
    let capture = CaptureRun::start(&["--comm", "python3"]);
    let files = Peer::spawn(&["files"]).report();
    // A socket exchange in the same run proves the capture was live.
    let (client, _server) = exchange("write_read", &[]);
    let captured = capture.stop();
    let files_pid = files["pid"].as_u64().unwrap();
    let leaked: Vec<&Value> = captured.for_pid(files_pid).collect();
    assert!(
        leaked.is_empty(),
        "file/pipe I/O produced records: {leaked:?}"
    );
    let client_pid = client["pid"].as_u64().unwrap();
    assert!(
        captured.for_pid(client_pid).any(|r| r["type"] == "data"),
        "control: the socket exchange in the same run was not captured"
    );
}

#[test]
fn tiny_ring_buffer_counts_drops_and_streams_resynchronise() {
    const SENT: usize = 8 << 20;
    let capture = CaptureRun::start(&[
        "--comm",
        "python3",
        "--ring-buffer-bytes",
        "4096",
        "--poll-ms",
        "50",
    ]);
    let sent = SENT.to_string();
    let (client, server) = exchange(
        "send_recv",
        &["--send", &sent, "--reply", "10", "--chunk", "1500"],
    );
    let captured = capture.stop();
    let lost = captured.kernel_counter("ringbuf_data_lost");
    assert!(
        lost > 0,
        "a 4 KiB ring buffer under an 8 MiB transfer must drop records"
    );
    let expected = pattern(SENT, 1);
    let mut resynchronised = false;
    for (report, direction) in [(&client, "egress"), (&server, "ingress")] {
        let pid = report["pid"].as_u64().unwrap();
        let stream = captured.stream(pid, report["local"].as_str().unwrap(), direction);
        // Every byte is accounted for: delivered, or inside a gap that says why.
        assert_eq!(
            stream.captured_len() + stream.gap_len(),
            SENT as u64,
            "{direction}: bytes accounted for"
        );
        for (offset, chunk) in &stream.chunks {
            let at = *offset as usize;
            assert_eq!(
                chunk.as_slice(),
                &expected[at..at + chunk.len()],
                "{direction}: bytes at offset {offset} misplaced"
            );
        }
        if let Some(first_lost) = stream.gaps.iter().find(|g| g.2 == "lost") {
            resynchronised |= stream.chunks.keys().any(|offset| *offset > first_lost.0);
        }
    }
    assert!(
        resynchronised,
        "after a lost gap, later bytes must still be delivered in place"
    );
}

#[test]
fn pid_selection_follows_only_the_listed_process() {
    let (server, port) = server(&["--reply", "100"]);
    let server_pid = server.pid().to_string();
    let capture = CaptureRun::start(&["--pid", &server_pid]);
    let client = Peer::spawn(&["client", "--port", &port]).report();
    let server = server.report();
    let captured = capture.stop();
    assert_matches_report(&captured, &server, "server", "selected server");
    let client_pid = client["pid"].as_u64().unwrap();
    assert_eq!(
        captured.for_pid(client_pid).count(),
        0,
        "the client was not selected"
    );
}

#[test]
fn refuses_to_start_without_root_and_says_why() {
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_tracer"))
        .args(["capture", "--duration", "1"])
        .output()
        .expect("setpriv (util-linux) runs the agent as an unprivileged user");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "an unprivileged agent must not start"
    );
    assert!(
        stderr.contains("must run as root"),
        "unclear error: {stderr}"
    );
}

/// A connection no protocol claims is given up: the kernel side stops copying its bytes
/// (positions keep counting), so it costs its process a lookup per syscall, not a copy.
#[test]
fn an_unrecognised_connection_is_no_longer_copied_by_the_kernel() {
    use std::io::Write;
    use support::{agent::AgentRun, metrics};

    const ROUNDS: u64 = 100;
    let mut peer = Peer::spawn(&["unrecognised", "--rounds", &ROUNDS.to_string()]);
    assert_eq!(peer.read_line(), "READY");
    let pid = peer.pid().to_string();
    let spans = std::env::temp_dir().join(format!("tracer-test-unrecognised-{pid}.jsonl"));
    let export = format!("file:{}", spans.display());
    let agent = AgentRun::start(&["--pid", &pid, "--export", &export]);
    let go = |peer: &mut Peer| {
        let stdin = peer.stdin.as_mut().unwrap();
        writeln!(stdin).unwrap();
        stdin.flush().unwrap();
    };
    go(&mut peer);
    assert_eq!(peer.read_line(), "SNIFFED");
    // Both ends were looked at and given up; /metrics is updated after the agent acted on it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let unrecognised = loop {
        let scrape = metrics::scrape(&agent.metrics);
        let found = metrics::try_value(
            &scrape,
            "tracer_connections_unparsed_total",
            &[("reason", "unrecognised")],
        )
        .unwrap_or(0.0);
        if found >= 2.0 || std::time::Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(unrecognised, 2.0, "both ends of the connection given up");
    go(&mut peer);
    assert_eq!(peer.read_line(), "DONE");
    let stats = support::agent::final_stats(&agent.stop());
    let _ = std::fs::remove_file(&spans);
    let kernel = &stats["capture"]["kernel"];
    let records = kernel
        .as_array()
        .and_then(|pairs| pairs.iter().find(|p| p[0] == "data_records"))
        .and_then(|p| p[1].as_u64())
        .unwrap_or_else(|| panic!("no data_records counter in {kernel}"));
    // The 300-byte greetings each way (a record per call); none of the ROUNDS sends or
    // receives after that.
    assert!(
        records < 10,
        "{records} payload records: the {ROUNDS} round trips after the connection was given up were copied"
    );
}
