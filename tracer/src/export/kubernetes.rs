//! Kubernetes identity without the API (the agent has no token): the container id and pod
//! uid from a process's cgroup path, the pod's name and namespace and the container's name
//! from the kubelet's log directories (mounted read-only), rescanned when a pod is not
//! found there (at most every 2 s). What cannot be read off these is left out, never
//! guessed: a workload name only where the pod name has a Deployment's shape.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Where the kubelet keeps pod and container logs (`[kubernetes]` in the config).
#[derive(Clone, Debug)]
pub struct LogDirs {
    /// `<namespace>_<pod>_<uid>/<container>/`.
    pub pods: PathBuf,
    /// `<pod>_<namespace>_<container>-<container id>.log` links.
    pub containers: PathBuf,
}

impl Default for LogDirs {
    fn default() -> Self {
        Self {
            pods: PathBuf::from("/var/log/pods"),
            containers: PathBuf::from("/var/log/containers"),
        }
    }
}

/// A process's place in Kubernetes, as far as it can be known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub container_id: String,
    pub pod_uid: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub deployment: Option<String>,
}

impl PodIdentity {
    /// Resource attributes, OpenTelemetry names.
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("container.id", self.container_id.clone())];
        for (key, value) in [
            ("k8s.pod.uid", &self.pod_uid),
            ("k8s.namespace.name", &self.namespace),
            ("k8s.pod.name", &self.pod),
            ("k8s.container.name", &self.container),
            ("k8s.deployment.name", &self.deployment),
        ] {
            if let Some(value) = value {
                out.push((key, value.clone()));
            }
        }
        out
    }

    /// Whether everything the log directories can tell is known (else look again later).
    pub fn complete(&self) -> bool {
        self.pod_uid.is_none() || (self.pod.is_some() && self.container.is_some())
    }
}

struct PodDir {
    namespace: String,
    pod: String,
    containers: Vec<String>,
}

pub struct Kubernetes {
    dirs: LogDirs,
    pods: HashMap<String, PodDir>,
    /// container id → container name, from the container log links.
    containers: HashMap<String, String>,
    scanned: Option<Instant>,
}

const RESCAN_AFTER: Duration = Duration::from_secs(2);

impl Kubernetes {
    pub fn new(dirs: LogDirs) -> Self {
        Self {
            dirs,
            pods: HashMap::new(),
            containers: HashMap::new(),
            scanned: None,
        }
    }

    /// The identity of a process with this `/proc/<pid>/cgroup`; None outside containers.
    /// While the log directories do not tell all of it, they are read again (at most
    /// every 2 s): a pod's directory appears when it starts.
    pub fn identify(&mut self, cgroup: &str) -> Option<PodIdentity> {
        let (pod_uid, container_id) = container_in_cgroup(cgroup)?;
        let identity = self.lookup(pod_uid.clone(), container_id.clone());
        let stale = self.scanned.is_none_or(|at| at.elapsed() >= RESCAN_AFTER);
        if identity.complete() || !stale {
            return Some(identity);
        }
        self.scan();
        Some(self.lookup(pod_uid, container_id))
    }

    fn lookup(&self, pod_uid: Option<String>, container_id: String) -> PodIdentity {
        let dir = pod_uid.as_ref().and_then(|uid| self.pods.get(uid));
        let container = self.containers.get(&container_id).cloned().or_else(|| {
            // One container in the pod's log directory: it is this one.
            dir.filter(|d| d.containers.len() == 1)
                .map(|d| d.containers[0].clone())
        });
        PodIdentity {
            deployment: dir.and_then(|d| deployment_of(&d.pod)).map(str::to_owned),
            namespace: dir.map(|d| d.namespace.clone()),
            pod: dir.map(|d| d.pod.clone()),
            container,
            container_id,
            pod_uid,
        }
    }

    fn scan(&mut self) {
        self.scanned = Some(Instant::now());
        self.pods.clear();
        for entry in read_dir(&self.dirs.pods) {
            let name = entry.file_name().to_string_lossy().into_owned();
            // <namespace>_<pod>_<uid>: namespaces and pod names never hold '_'.
            let mut parts = name.splitn(3, '_');
            let (Some(namespace), Some(pod), Some(uid)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let mut containers: Vec<String> = read_dir(&entry.path())
                .filter(|c| c.path().is_dir())
                .map(|c| c.file_name().to_string_lossy().into_owned())
                .collect();
            containers.sort();
            self.pods.insert(
                uid.to_owned(),
                PodDir {
                    namespace: namespace.to_owned(),
                    pod: pod.to_owned(),
                    containers,
                },
            );
        }
        self.containers.clear();
        for entry in read_dir(&self.dirs.containers) {
            let name = entry.file_name().to_string_lossy().into_owned();
            // <pod>_<namespace>_<container>-<64 hex>.log
            let Some(stem) = name.strip_suffix(".log") else {
                continue;
            };
            let Some((rest, id)) = stem.rsplit_once('-') else {
                continue;
            };
            let Some(container) = rest.rsplit('_').next() else {
                continue;
            };
            if is_container_id(id) {
                self.containers.insert(id.to_owned(), container.to_owned());
            }
        }
    }
}

fn read_dir(path: &Path) -> impl Iterator<Item = std::fs::DirEntry> {
    std::fs::read_dir(path).into_iter().flatten().flatten()
}

fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// (pod uid, container id) from `/proc/<pid>/cgroup` (v1 or v2), for the layouts of the
/// kubelet's cgroupfs and systemd drivers with containerd, CRI-O and Docker, and plain
/// Docker (no pod uid).
pub fn container_in_cgroup(cgroup: &str) -> Option<(Option<String>, String)> {
    for line in cgroup.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or(line);
        let mut pod_uid = None;
        let mut container = None;
        for part in path.split('/') {
            let part = part.strip_suffix(".slice").unwrap_or(part);
            // kubepods-besteffort-pod<uid with _>.slice or pod<uid>
            if let Some(at) = part.rfind("pod") {
                let uid = part[at + 3..].replace('_', "-");
                if uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                    pod_uid = Some(uid);
                    continue;
                }
            }
            let id = part.strip_suffix(".scope").unwrap_or(part);
            let id = id.rsplit(['-', ':']).next().unwrap_or(id);
            if is_container_id(id) {
                container = Some(id.to_owned());
            }
        }
        if let Some(container) = container {
            return Some((pod_uid, container));
        }
    }
    None
}

/// The Deployment of a pod named `<deployment>-<replicaset hash>-<5 characters>`: the
/// only workload a pod's name tells for sure (a DaemonSet's or Job's pod has one suffix,
/// a StatefulSet's a number, and a bare pod can be named like either).
pub fn deployment_of(pod: &str) -> Option<&str> {
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let (rest, pod_hash) = pod.rsplit_once('-')?;
    let (deployment, rs_hash) = rest.rsplit_once('-')?;
    let safe = |s: &str| s.bytes().all(|b| SAFE.contains(&b));
    let shaped = pod_hash.len() == 5 && (6..=10).contains(&rs_hash.len());
    (shaped && safe(pod_hash) && safe(rs_hash) && !deployment.is_empty()).then_some(deployment)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "3f2a9c1e0b7d46a58e9f0c1d2b3a4e5f60718293a4b5c6d7e8f90123456789ab";

    #[test]
    fn container_and_pod_from_every_cgroup_layout() {
        let uid = "1d6c5b3e-6f1a-4c52-9a8e-2b7f0c9d4e11";
        let under = uid.replace('-', "_");
        for (cgroup, pod) in [
            // cgroup v2, systemd driver, containerd
            (format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{under}.slice/cri-containerd-{CID}.scope\n"), true),
            // CRI-O
            (format!("0::/kubepods.slice/kubepods-pod{under}.slice/crio-{CID}.scope\n"), true),
            // cgroup v1, cgroupfs driver (several hierarchies)
            (format!("12:memory:/kubepods/burstable/pod{uid}/{CID}\n11:cpu:/kubepods/burstable/pod{uid}/{CID}\n"), true),
            // plain Docker
            (format!("0::/system.slice/docker-{CID}.scope\n"), false),
            (format!("4:memory:/docker/{CID}\n0::/\n"), false),
        ] {
            let (found_uid, found_cid) = container_in_cgroup(&cgroup).expect(&cgroup);
            assert_eq!(found_cid, CID, "{cgroup}");
            assert_eq!(found_uid.as_deref(), pod.then_some(uid), "{cgroup}");
        }
        assert_eq!(
            container_in_cgroup("0::/user.slice/session-3.scope\n"),
            None
        );
        assert_eq!(container_in_cgroup("0::/\n"), None);
    }

    #[test]
    fn names_from_the_log_directories_and_none_guessed() {
        let root = std::env::temp_dir().join(format!("tracer-k8s-unit-{}", std::process::id()));
        let uid = "1d6c5b3e-6f1a-4c52-9a8e-2b7f0c9d4e11";
        let other = "2e7d6c4f-7a2b-4d63-8b9f-3c8a1d0e5f22";
        for (dir, containers) in [
            (
                format!("shop_shop-api-7c9d8b6f5d-x2k4q_{uid}"),
                &["shop-api"][..],
            ),
            (format!("crm_crm-0_{other}"), &["crm", "envoy"][..]),
        ] {
            for container in containers {
                std::fs::create_dir_all(root.join("pods").join(&dir).join(container)).unwrap();
            }
        }
        std::fs::create_dir_all(root.join("containers")).unwrap();
        let mut k8s = Kubernetes::new(LogDirs {
            pods: root.join("pods"),
            containers: root.join("containers"),
        });
        let cgroup = |pod: &str| format!("0::/kubepods/besteffort/pod{pod}/{CID}\n");
        let shop = k8s.identify(&cgroup(uid)).unwrap();
        assert_eq!(
            shop.attributes(),
            [
                ("container.id", CID.to_owned()),
                ("k8s.pod.uid", uid.to_owned()),
                ("k8s.namespace.name", "shop".to_owned()),
                ("k8s.pod.name", "shop-api-7c9d8b6f5d-x2k4q".to_owned()),
                ("k8s.container.name", "shop-api".to_owned()),
                ("k8s.deployment.name", "shop-api".to_owned()),
            ]
        );
        // Two containers and no log link naming this one: which it is stays unknown.
        let crm = k8s.identify(&cgroup(other)).unwrap();
        assert_eq!(
            (crm.pod.as_deref(), crm.container.as_deref()),
            (Some("crm-0"), None)
        );
        assert!(!crm.complete() && crm.deployment.is_none());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_deployment_only_from_a_deployments_pod_name() {
        assert_eq!(deployment_of("shop-api-7c9d8b6f5d-x2k4q"), Some("shop-api"));
        assert_eq!(deployment_of("tracer-agent-x2k4q"), None, "DaemonSet pod");
        assert_eq!(deployment_of("web-0"), None, "StatefulSet pod");
        assert_eq!(deployment_of("my-pod-name-here"), None);
    }
}
