//! deploy/ checked offline and strictly: every Kubernetes manifest against the API schemas
//! of the cluster versions we support (kubernetes-validate --strict), yamllint, the
//! agents' and journey service's configs through `tracer config check`, alert rules and
//! dashboard against the metrics tracer really serves, and the image built the one way
//! the README builds.
mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use support::{agent::AgentRun, metrics::scrape, otlp::free_port};

/// Kubernetes minor versions the manifests are supported on.
const KUBERNETES_VERSIONS: &[&str] = &["1.32.0", "1.33.0", "1.34.0", "1.35.0"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn k8s() -> PathBuf {
    root().join("deploy/k8s")
}

/// The Kubernetes objects (not the kustomization, not the monitoring files).
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| p.file_name().unwrap() != "kustomization.yaml")
        .collect();
    files.sort();
    assert!(files.len() >= 6, "manifests missing: {files:?}");
    files
}

fn tool(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} is needed for this test ({e}); `cargo xtask setup` installs it from PyPI")
        })
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// YAML documents of a file as JSON values (PyYAML, which yamllint brings).
fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    let script =
        "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let output = tool("python3", &["-c", script, path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn every_manifest_is_valid_for_each_supported_kubernetes_version() {
    let files: Vec<String> = manifests()
        .iter()
        .map(|p| p.to_str().unwrap().to_owned())
        .collect();
    for version in KUBERNETES_VERSIONS {
        let mut args = vec!["--strict", "--no-warn", "-k", version];
        args.extend(files.iter().map(String::as_str));
        let output = tool("kubernetes-validate", &args);
        assert!(
            output.status.success(),
            "manifests invalid for Kubernetes {version}:\n{}",
            text(&output)
        );
    }
}

#[test]
fn strict_validation_rejects_a_misspelt_field() {
    // The validator above must be able to fail: a typo in the DaemonSet is caught.
    let agent = std::fs::read_to_string(k8s().join("agent.yaml")).unwrap();
    assert!(agent.contains("hostPID: true"));
    let bad = std::env::temp_dir().join(format!("tracer-bad-agent-{}.yaml", std::process::id()));
    std::fs::write(&bad, agent.replace("hostPID: true", "hostPid: true")).unwrap();
    let output = tool(
        "kubernetes-validate",
        &[
            "--strict",
            "--no-warn",
            "-k",
            KUBERNETES_VERSIONS[0],
            bad.to_str().unwrap(),
        ],
    );
    let _ = std::fs::remove_file(&bad);
    assert!(
        !output.status.success() && text(&output).contains("hostPid"),
        "{}",
        text(&output)
    );
}

#[test]
fn deploy_yaml_is_lint_clean() {
    let output = tool(
        "yamllint",
        &["--strict", "-c", "deploy/.yamllint", "deploy/"],
    );
    assert!(output.status.success(), "yamllint:\n{}", text(&output));
}

#[test]
fn the_kustomization_lists_every_manifest_and_file() {
    let kustomization = &yaml_documents(&k8s().join("kustomization.yaml"))[0];
    let resources: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for manifest in manifests() {
        let name = manifest.file_name().unwrap().to_str().unwrap();
        assert!(
            resources.contains(&name),
            "{name} is not in kustomization.yaml"
        );
    }
    for generator in kustomization["configMapGenerator"].as_array().unwrap() {
        for file in generator["files"].as_array().unwrap() {
            let file = file.as_str().unwrap();
            assert!(
                k8s().join(file).is_file(),
                "kustomization names missing {file}"
            );
        }
    }
}

/// The `tracer.toml` of a ConfigMap in a manifest.
fn configmap_toml(manifest: &str, name: &str) -> String {
    yaml_documents(&k8s().join(manifest))
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no ConfigMap {name} in {manifest}"))["data"]["tracer.toml"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn config_check(toml: &str, what: &str) {
    let path =
        std::env::temp_dir().join(format!("tracer-deploy-{what}-{}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        output.status.success(),
        "{what} config rejected:\n{}",
        text(&output)
    );
}

#[test]
fn the_daemonset_and_journey_configs_pass_tracer_config_check() {
    config_check(
        &configmap_toml("agent.yaml", "tracer-agent-config"),
        "agent",
    );
    config_check(
        &configmap_toml("journey.yaml", "tracer-journey-config"),
        "journey",
    );
    // And the DaemonSet runs the agent with that file, probes its health endpoints and
    // has exactly the capabilities documented.
    let daemonset = yaml_documents(&k8s().join("agent.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .unwrap();
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(&args[..3], ["run", "--config", "/etc/tracer/tracer.toml"]);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let added: Vec<&str> = container["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        added,
        [
            "BPF",
            "PERFMON",
            "SYS_RESOURCE",
            "SYS_PTRACE",
            "DAC_READ_SEARCH",
            "SYS_ADMIN",
            "SYS_NICE"
        ]
    );
    assert_eq!(container["securityContext"]["privileged"], false);
}

/// Metric family names a running agent and journey service expose (from `# TYPE` lines).
fn exposed_families() -> Vec<String> {
    let agent = AgentRun::start(&["--export", "file:/dev/null"]);
    // The agent copies its counters into /metrics once a second.
    std::thread::sleep(Duration::from_millis(2500));
    let mut names: Vec<String> = scrape(&agent.metrics).docs.keys().cloned().collect();
    agent.stop();
    let (port, otlp) = (free_port(), free_port());
    let store = std::env::temp_dir().join(format!(
        "tracer-deploy-journeys-{}.sqlite",
        std::process::id()
    ));
    let mut journey = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(["journey", "--otlp-grpc", "none", "--store"])
        .arg(format!("sqlite:{}", store.display()))
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .args(["--otlp-http", &format!("127.0.0.1:{otlp}")])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stderr =
        support::wait_until_ready(&mut journey, "journey service started", "tracer journey");
    // Series with labels exist once something happened: an order that is created, fails a
    // B2B price and ships, sent as OTLP/JSON.
    let sent = Command::new("curl")
        .args(["-sf", "-H", "Content-Type: application/json"])
        .args(["--data-binary", ORDER_AS_OTLP_JSON])
        .arg(format!("http://127.0.0.1:{otlp}/v1/traces"))
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "OTLP/JSON to tracer journey: {}",
        text(&sent)
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let journey_metrics = loop {
        let metrics = scrape(&base);
        if metrics
            .docs
            .contains_key("tracer_order_status_dwell_seconds")
        {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "tracer journey did not take the OTLP/JSON spans"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    names.extend(journey_metrics.docs.keys().cloned());
    unsafe { libc::kill(journey.id() as i32, libc::SIGINT) };
    let _ = journey.wait();
    let _ = std::fs::remove_file(&store);
    names
}

const ORDER_AS_OTLP_JSON: &str = r#"{"resourceSpans": [{
  "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "b2b-api"}}]},
  "scopeSpans": [{"spans": [
    {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b173", "name": "POST /orders", "kind": 2,
     "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000001000000000",
     "attributes": [{"key": "app.order.id", "value": {"stringValue": "D-1"}},
                    {"key": "app.order.status", "value": {"stringValue": "INITIATED"}}]},
    {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "POST /b2b/{order_id}/calculate",
     "kind": 2, "startTimeUnixNano": "1700000002000000000", "endTimeUnixNano": "1700000003000000000",
     "status": {"code": 2, "message": "timeout"},
     "attributes": [{"key": "app.order.id", "value": {"stringValue": "D-1"}}]},
    {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b175", "name": "POST /orders/{order_id}/ship",
     "kind": 2, "startTimeUnixNano": "1700000004000000000", "endTimeUnixNano": "1700000005000000000",
     "attributes": [{"key": "app.order.id", "value": {"stringValue": "D-1"}},
                    {"key": "app.order.status", "value": {"stringValue": "SHIPPED"}}]}
  ]}]}]}"#;

/// `tracer_…` names in a PromQL expression, as families (`_total`, `_bucket`, … removed).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("tracer_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn alerts_and_dashboard_use_only_metrics_tracer_serves() {
    let families = exposed_families();
    let known = |name: &str| {
        families.iter().any(|f| {
            name == f
                || ["_total", "_bucket", "_count", "_sum"]
                    .iter()
                    .any(|suffix| name == format!("{f}{suffix}"))
        })
    };
    let rules = &yaml_documents(&k8s().join("monitoring/tracer-alerts.rules.yaml"))[0];
    let mut alerts = Vec::new();
    let mut exprs = Vec::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().expect("every rule is an alert");
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{name} has no summary"
            );
            assert!(
                rule["labels"]["severity"].is_string(),
                "{name} has no severity"
            );
            alerts.push(name.to_owned());
            exprs.push((name.to_owned(), rule["expr"].as_str().unwrap().to_owned()));
        }
    }
    for required in [
        "OrdersStuckInSubmitted",
        "PriceCalculationOver10Minutes",
        "B2BCalculateSlaBreached",
        "TracerEventLoss",
        "TracerSpansDropped",
    ] {
        assert!(
            alerts.iter().any(|a| a == required),
            "no {required} alert in {alerts:?}"
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(k8s().join("monitoring/tracer-dashboard.json")).unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push((
                panel["title"].as_str().unwrap().to_owned(),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    for (what, expr) in &exprs {
        let names = metric_names(expr);
        assert!(
            !names.is_empty() || expr.contains("up{"),
            "{what}: no tracer metric in {expr}"
        );
        for name in names {
            assert!(
                known(&name),
                "{what}: {name} is not a metric tracer serves ({families:?})"
            );
        }
    }
}

/// The Dockerfile's instructions, continuation lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        current.push_str(line.trim_end_matches('\\'));
        current.push(' ');
        if !line.ends_with('\\') {
            let (op, args) = current
                .trim()
                .split_once(' ')
                .unwrap_or((current.trim(), ""));
            instructions.push((op.to_uppercase(), args.trim().to_owned()));
            current.clear();
        }
    }
    instructions
}

#[test]
fn the_image_builds_the_way_the_readme_does() {
    let instructions = dockerfile();
    let stages: Vec<&str> = instructions
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, args)| args.as_str())
        .collect();
    assert_eq!(
        stages.len(),
        2,
        "multi-stage: build and runtime; {stages:?}"
    );
    assert!(stages[0].ends_with(" AS build"), "{stages:?}");
    let build_stage: Vec<&(String, String)> = instructions
        .iter()
        .skip(1)
        .take_while(|(op, _)| op != "FROM")
        .collect();
    let runs: Vec<&str> = build_stage
        .iter()
        .filter(|(op, _)| op == "RUN")
        .map(|(_, args)| args.as_str())
        .collect();
    assert_eq!(
        runs,
        ["cargo xtask build"],
        "the image builds only with `cargo xtask build`"
    );
    let all = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    for other in ["cargo build", "cargo install", "rustc ", "bpf-linker"] {
        assert!(
            !all.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .any(|l| l.contains(other)),
            "the Dockerfile must not build with `{other}`: that would be a second recipe"
        );
    }
    let workdir = build_stage
        .iter()
        .find(|(op, _)| op == "WORKDIR")
        .map(|(_, args)| args.clone())
        .expect("WORKDIR in the build stage");
    let copied = instructions
        .iter()
        .find(|(op, args)| op == "COPY" && args.starts_with("--from=build "))
        .map(|(_, args)| args.split_whitespace().nth(1).unwrap().to_owned())
        .expect("COPY --from=build of the binary");

    // README: the two commands, of which `cargo xtask run` builds.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme.contains("cargo xtask run ") && readme.contains("cargo xtask test "));

    // Run the Dockerfile's build step here, then `cargo xtask run` as the README does: the
    // same step, the same artifact, which is what the image copies.
    let build = Command::new("sh")
        .args(["-c", runs[0]])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", text(&build));
    let built = text(&build)
        .lines()
        .find_map(|l| l.strip_prefix("xtask: built ").map(str::to_owned))
        .expect("`cargo xtask build` names what it built");
    assert_eq!(
        copied,
        format!("{workdir}/{built}"),
        "the image copies what the build step produced"
    );
    let run = Command::new("cargo")
        .args(["xtask", "run", "--", "--version"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run));
    assert!(
        text(&run).contains(&format!("xtask: built {built}")),
        "`cargo xtask run` builds with the same step:\n{}",
        text(&run)
    );
    assert!(
        text(&run).contains(concat!("tracer ", env!("CARGO_PKG_VERSION"))),
        "and runs what it built:\n{}",
        text(&run)
    );
}

/// A child process ended when the test ends, pass or fail: SIGTERM, so nginx's master
/// takes its workers with it, then waited for.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// An upstream standing in for Jaeger: answers every method with 200 and `jaeger saw
/// METHOD PATH`, so a refusal can be told from a forwarded request.
fn fake_jaeger(port: u16) -> Reaped {
    let script = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        body = f"jaeger saw {self.command} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = answer
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;
    Reaped(
        Command::new("python3")
            .args(["-c", script, &port.to_string()])
            .spawn()
            .unwrap(),
    )
}

/// (status, body) of one request.
fn request(method: &str, url: &str) -> (String, String) {
    let mut args = vec!["-s", "--max-time", "10", "-w", "\n%{http_code}"];
    if method == "HEAD" {
        args.push("-I");
    } else {
        args.extend(["-X", method]);
    }
    if method == "POST" || method == "PUT" {
        args.extend(["-d", "{}"]);
    }
    let output = tool("curl", &[&args[..], &[url]].concat());
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().to_owned(), body.to_owned())
}

#[test]
fn support_can_only_read_jaeger_through_the_auth_proxy() {
    let documents = yaml_documents(&k8s().join("auth-proxy.yaml"));
    // oauth2-proxy: the Support role only, re-checked every few minutes, and its only
    // upstream is the read-only gate in its pod.
    let deployment = documents
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let args: Vec<&str> = containers[0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for expected in [
        "--allowed-group=Support",
        "--upstream=http://127.0.0.1:8080",
        "--cookie-refresh=2m",
    ] {
        assert!(
            args.contains(&expected),
            "oauth2-proxy lacks {expected}: {args:?}"
        );
    }
    assert!(
        containers.iter().any(|c| c["name"] == "read-only-gate"),
        "the gate runs in the proxy's pod"
    );
    // The gate's nginx.conf, run for real with a stand-in for Jaeger behind it.
    let conf = documents
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "jaeger-read-only-gate")
        .expect("the gate's ConfigMap")["data"]["nginx.conf"]
        .as_str()
        .unwrap()
        .to_owned();
    let (gate, jaeger) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("tracer-gate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = dir.display().to_string();
    let conf = conf
        .replace(
            "listen 127.0.0.1:8080;",
            &format!("listen 127.0.0.1:{gate};"),
        )
        .replace(
            "http://jaeger-query.tracer.svc:16686",
            &format!("http://127.0.0.1:{jaeger}"),
        )
        .replace("/tmp/", &format!("{tmp}/"));
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let nginx = "/usr/sbin/nginx";
    assert!(
        Path::new(nginx).exists(),
        "nginx is needed for this test; `cargo xtask setup` installs nginx-light"
    );
    let prefix = format!("{tmp}/");
    let conf_arg = conf_path.to_str().unwrap();
    let syntax = tool(nginx, &["-t", "-p", &prefix, "-c", conf_arg]);
    assert!(syntax.status.success(), "nginx -t:\n{}", text(&syntax));
    let _jaeger = fake_jaeger(jaeger);
    let _gate = Reaped(
        Command::new(nginx)
            .args(["-p", &prefix, "-c", conf_arg, "-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{gate}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while request("GET", &format!("{base}/")).0 != "200" {
        assert!(
            Instant::now() < deadline,
            "the gate or its upstream never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (method, path) in [
        ("GET", "/api/traces?service=shop-api"),
        ("GET", "/search"),
        ("HEAD", "/"),
    ] {
        let (status, body) = request(method, &format!("{base}{path}"));
        assert_eq!(status, "200", "{method} {path} is a read");
        if method == "GET" {
            assert_eq!(body, format!("jaeger saw GET {path}"));
        }
    }
    for (method, path) in [
        ("POST", "/api/archive/5bdcc146bf60754e6a042426089575c7"),
        ("PUT", "/api/archive/5bdcc146bf60754e6a042426089575c7"),
        ("POST", "/api/traces"),
        ("PUT", "/api/traces/1"),
        ("DELETE", "/api/traces/1"),
        ("PATCH", "/api/services"),
    ] {
        let (status, body) = request(method, &format!("{base}{path}"));
        assert_eq!(status, "403", "{method} {path} is refused");
        assert!(
            !body.contains("jaeger saw"),
            "{method} {path} reached Jaeger"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_agent_never_traces_the_auth_proxy_or_jaeger() {
    let toml = configmap_toml("agent.yaml", "tracer-agent-config");
    let config: toml::Value = toml::from_str(&toml).unwrap();
    let privacy = &config["privacy"];
    assert_eq!(privacy["pseudonymise_ids"].as_bool(), Some(true));
    let untraced: Vec<&str> = privacy["untraced_executables"]
        .as_array()
        .expect("the DaemonSet lists its untraced executables")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for name in ["oauth2-proxy", "jaeger", "jaeger-query"] {
        assert!(untraced.contains(&name), "{name} is traced: {untraced:?}");
    }
}

fn monitoring() -> PathBuf {
    k8s().join("monitoring")
}

fn promtool(args: &[&str]) -> Output {
    Command::new("promtool")
        .args(args)
        .current_dir(monitoring())
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool is needed for this test ({e}); `cargo xtask setup` installs Debian's prometheus")
        })
}

#[test]
fn promtool_checks_the_rules_and_every_alert_has_unit_tests_that_pass() {
    let check = promtool(&["check", "rules", "tracer-alerts.rules.yaml"]);
    assert!(check.status.success(), "{}", text(&check));
    let rules = &yaml_documents(&monitoring().join("tracer-alerts.rules.yaml"))[0];
    let tests = std::fs::read_to_string(monitoring().join("tracer-alerts.test.yaml")).unwrap();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let Some(alert) = rule["alert"].as_str() else {
                continue;
            };
            assert!(
                tests.contains(&format!("alertname: {alert}\n")),
                "{alert} has no unit test in tracer-alerts.test.yaml"
            );
        }
    }
    let unit = promtool(&["test", "rules", "tracer-alerts.test.yaml"]);
    assert!(unit.status.success(), "{}", text(&unit));
}

/// A real Prometheus scrapes a running agent with the shipped rules loaded; a service
/// that keeps failing (twenty 500s) makes `OrderErrorsRising` fire in its API.
#[test]
fn a_real_prometheus_fires_an_alert_from_a_running_agent() {
    let agent = AgentRun::start(&["--export", "file:/dev/null", "--settle-ms", "100"]);
    let service = support::agent::Service::python(&[]);
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("tracer-prometheus-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let target = agent.metrics.trim_start_matches("http://");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: tracer-agent\n    static_configs:\n      - targets: ['{target}']\n",
        monitoring().join("tracer-alerts.rules.yaml").display()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let prometheus = Reaped(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("prometheus.log")).unwrap(),
            ))
            .spawn()
            .expect("prometheus is needed for this test; `cargo xtask setup` installs Debian's prometheus"),
    );
    let api = |path: &str| -> serde_json::Value {
        let output = Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{port}{path}")])
            .output()
            .unwrap();
        serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
    };
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "Prometheus: {what} within 90 s; its log: {}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    // A counter series is born with its first error; Prometheus must have sampled it
    // before the rest, or `increase` cannot see them.
    assert_eq!(support::agent::curl(&[&service.url("/fail")]), "500");
    wait("the error counter scraped", &|| {
        api("/api/v1/query?query=tracer_span_errors_total%7Bjob%3D%22tracer-agent%22%7D")["data"]
            ["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    });
    for _ in 0..20 {
        assert_eq!(support::agent::curl(&[&service.url("/fail")]), "500");
    }
    let firing = || {
        api("/api/v1/alerts")["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["labels"]["alertname"] == "OrderErrorsRising" && a["state"] == "firing")
    };
    wait("OrderErrorsRising firing", &firing);
    let alerts = api("/api/v1/alerts");
    drop(prometheus);
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let alert = alerts["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == "OrderErrorsRising")
        .unwrap()
        .clone();
    assert!(
        alert["labels"]["service"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "the alert names the failing service: {alert}"
    );
}

/// The capabilities the DaemonSet adds (`deploy/k8s/agent.yaml`), as `setpriv` names them.
fn daemonset_capabilities() -> Vec<String> {
    let agent = yaml_documents(&k8s().join("agent.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("the DaemonSet");
    let container = &agent["spec"]["template"]["spec"]["containers"][0];
    let security = &container["securityContext"]["capabilities"];
    assert_eq!(security["drop"], serde_json::json!(["ALL"]));
    security["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_ascii_lowercase())
        .collect()
}

/// `unshare` (its own mount namespace, a copy of this one's mounts: tracefs, bpffs, /proc)
/// then `setpriv` with exactly `capabilities` as the bounding set, as the container runs.
fn as_in_the_daemonset(capabilities: &[String]) -> Vec<String> {
    let set: String = std::iter::once("-all".to_owned())
        .chain(capabilities.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    ["unshare", "--mount", "--propagation", "private", "--"]
        .into_iter()
        .chain(["setpriv", "--bounding-set"])
        .map(str::to_owned)
        .chain([set, "--".to_owned()])
        .collect()
}

#[test]
fn the_agent_works_with_exactly_the_daemonsets_capabilities_and_names_a_missing_one() {
    use support::{
        agent::{curl, Service, PEERS},
        otlp::Receiver,
        tls::Pki,
    };
    let capabilities = daemonset_capabilities();
    let wrapper = as_in_the_daemonset(&capabilities);
    let broker = support::broker::broker();
    let pki = Pki::new();
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let http = Service::python(&[]);
    let https = Service::python(&["--tls", &cert, &key]);
    let receiver = Receiver::start();
    let export = format!("otlp-grpc={}", receiver.grpc_url());
    let wrapper_args: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let agent =
        AgentRun::start_wrapped(&wrapper_args, &["--export", &export, "--settle-ms", "200"]);
    assert_eq!(curl(&[&http.url("/plain")]), "200");
    assert_eq!(
        curl(&["--cacert", &ca, &https.https_url("/encrypted")]),
        "200"
    );
    let published = Command::new("python3")
        .arg(format!("{PEERS}/amqp_publisher.py"))
        .args(["--port", &broker.port.to_string(), "--queue", "caps.check"])
        .args([
            "--routing-key",
            "caps.check",
            "--id-prefix",
            "caps",
            "--confirm",
        ])
        .output()
        .unwrap();
    assert!(published.status.success(), "{}", text(&published));
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        receiver.wait_for(
            "HTTP, HTTPS and AMQP spans",
            Duration::from_secs(30),
            |spans| {
                let server = |path: &str| {
                    spans
                        .iter()
                        .any(|s| s.kind == 2 && s.attr("url.path") == path)
                };
                server("/plain")
                    && server("/encrypted")
                    && spans
                        .iter()
                        .any(|s| s.kind == 4 && s.attr("messaging.message.id") == "caps-0")
            },
        )
    }));
    let log = agent.stop();
    let spans = match waited {
        Ok(spans) => spans,
        Err(panic) => {
            eprintln!("agent log with {capabilities:?}:\n{log}");
            std::panic::resume_unwind(panic)
        }
    };
    let https_span = spans
        .iter()
        .find(|s| s.attr("url.path") == "/encrypted")
        .unwrap();
    assert_eq!(https_span.attr("url.scheme"), "https", "{https_span:?}");
    assert!(
        !log.contains("cannot hook"),
        "every TLS hook attached:\n{log}"
    );
    assert!(
        !log.contains("cannot run at idle CPU priority"),
        "idle CPU priority, and back while behind:\n{log}"
    );

    // One capability fewer: the agent refuses to start and names it.
    let fewer: Vec<String> = capabilities
        .iter()
        .filter(|c| *c != "sys_ptrace")
        .cloned()
        .collect();
    let wrapper = as_in_the_daemonset(&fewer);
    let refused = Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .arg(env!("CARGO_BIN_EXE_tracer"))
        .args(["run", "--export", "file:/dev/null", "--duration", "5"])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "started without SYS_PTRACE: {}",
        text(&refused)
    );
    assert!(
        text(&refused).contains("CAP_SYS_PTRACE"),
        "the message names the missing capability: {}",
        text(&refused)
    );
}
