//! End-to-end: Kubernetes identity without the API. A real process is placed in a fake pod
//! — a cgroup v2 group shaped like the kubelet's (`kubepods/besteffort/pod<uid>/<container
//! id>`) made under this test's own cgroup, the process moved into it — with the kubelet's
//! log directories for that pod made in a temporary directory; the agent reads both.
mod support;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use support::{
    agent::{curl, AgentRun, Service},
    otlp::{free_port, served, Receiver},
};

const UID: &str = "1d6c5b3e-6f1a-4c52-9a8e-2b7f0c9d4e11";
const CONTAINER_ID: &str = "3f2a9c1e0b7d46a58e9f0c1d2b3a4e5f60718293a4b5c6d7e8f90123456789ab";
const POD: &str = "shop-api-7c9d8b6f5d-x2k4q";

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `…/unified` on hybrid hosts).
fn cgroup2_mount() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("cgroup2 "))
        })
        .and_then(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .expect(
            "no cgroup v2 hierarchy is mounted: this test places a process in a cgroup v2 group",
        )
}

/// A pod-shaped cgroup under this process's own cgroup v2 group; removed when dropped
/// (its processes moved back first).
struct FakePod {
    own: PathBuf,
    top: PathBuf,
    leaf: PathBuf,
}

impl FakePod {
    fn new() -> Self {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let own_path = cgroup
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("this process is in no cgroup v2 group");
        let own = cgroup2_mount().join(own_path.trim_start_matches('/'));
        let top = own.join(format!("tracer-test-{}", std::process::id()));
        let leaf = top
            .join("kubepods/besteffort")
            .join(format!("pod{UID}"))
            .join(CONTAINER_ID);
        std::fs::create_dir_all(&leaf)
            .unwrap_or_else(|e| panic!("creating the cgroup {}: {e}", leaf.display()));
        Self { own, top, leaf }
    }

    fn place(&self, pid: u32) {
        std::fs::write(self.leaf.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.leaf.display()));
        let seen = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(seen.contains(CONTAINER_ID), "{seen}");
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        let procs = std::fs::read_to_string(self.leaf.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            let _ = std::fs::write(self.own.join("cgroup.procs"), pid);
        }
        let mut dir = self.leaf.clone();
        while dir.starts_with(&self.top) {
            let _ = std::fs::remove_dir(&dir);
            if !dir.pop() {
                break;
            }
        }
    }
}

/// The kubelet's log directories for the pod: `pods/<ns>_<pod>_<uid>/<container>/` and
/// `containers/<pod>_<ns>_<container>-<id>.log`.
fn log_dirs(root: &Path) {
    let pod_dir = root.join(format!("pods/shop_{POD}_{UID}/shop-api"));
    std::fs::create_dir_all(&pod_dir).unwrap();
    std::fs::write(pod_dir.join("0.log"), "").unwrap();
    let containers = root.join("containers");
    std::fs::create_dir_all(&containers).unwrap();
    std::os::unix::fs::symlink(
        pod_dir.join("0.log"),
        containers.join(format!("{POD}_shop_shop-api-{CONTAINER_ID}.log")),
    )
    .unwrap();
}

#[test]
fn a_process_in_a_pod_carries_its_kubernetes_identity_and_one_outside_none() {
    let root = std::env::temp_dir().join(format!("tracer-k8s-test-{}", free_port()));
    log_dirs(&root);
    let config = root.join("tracer.toml");
    std::fs::write(
        &config,
        format!(
            "[kubernetes]\npod_log_dir = \"{}\"\ncontainer_log_dir = \"{}\"\n",
            root.join("pods").display(),
            root.join("containers").display()
        ),
    )
    .unwrap();
    let pod = FakePod::new();
    let in_pod = Service::python(&[]);
    pod.place(in_pod.pid());
    let outside = Service::node();
    let receiver = Receiver::start();
    let export = format!("otlp-grpc={}", receiver.grpc_url());
    let agent = AgentRun::start(&[
        "--config",
        config.to_str().unwrap(),
        "--export",
        &export,
        "--settle-ms",
        "200",
    ]);
    assert_eq!(curl(&[&in_pod.url("/in-pod")]), "200");
    assert_eq!(curl(&[&outside.url("/outside")]), "200");
    let spans = receiver.wait_for(
        "the SERVER spans inside and outside the pod",
        Duration::from_secs(20),
        |spans| served(spans, "/in-pod").is_some() && served(spans, "/outside").is_some(),
    );
    agent.stop();
    drop(in_pod);
    drop(pod);
    let _ = std::fs::remove_dir_all(&root);

    let inside = served(&spans, "/in-pod").unwrap();
    for (key, value) in [
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", POD),
        ("k8s.pod.uid", UID),
        ("k8s.container.name", "shop-api"),
        ("container.id", CONTAINER_ID),
        ("k8s.deployment.name", "shop-api"),
    ] {
        assert_eq!(
            inside.resource.get(key).map(String::as_str),
            Some(value),
            "{key} of the process in the pod: {:?}",
            inside.resource
        );
    }
    assert_eq!(
        inside.service, "shop-api",
        "service.name from the container"
    );
    let outside = served(&spans, "/outside").unwrap();
    let k8s: Vec<&String> = outside
        .resource
        .keys()
        .filter(|k| {
            k.starts_with("k8s.pod") || k.starts_with("container.") || *k == "k8s.namespace.name"
        })
        .collect();
    assert!(k8s.is_empty(), "a process outside any pod: {k8s:?}");
    assert_eq!(outside.service, "node");
}
