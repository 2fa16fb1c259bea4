//! Service identity: `service.name` from config rules (executable, command line, port),
//! else the Kubernetes container's name, else the executable's name; plus process, host
//! and Kubernetes resource attributes.
use std::sync::Arc;

use foldhash::HashMap;

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

use super::kubernetes::{Kubernetes, LogDirs, PodIdentity};
use crate::{
    capture::procfs::{self, ProcessInfo},
    config::ServiceRule,
};

/// A resource made for a process: the process as it was read (program, command line,
/// cgroup), and whether its Kubernetes identity was all there was to know.
struct Made {
    process: ProcessInfo,
    complete: bool,
    resource: Arc<Resource>,
}

pub struct Services {
    rules: Vec<ServiceRule>,
    host_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`, added to every service.
    extra: Vec<KeyValue>,
    /// By pid: an exec, or a pid reused by another process (read afresh after the old one
    /// exited), makes a new one, and so does a pod whose log directory had not appeared.
    by_pid: HashMap<u32, Made>,
    kubernetes: Kubernetes,
}

impl Services {
    pub fn new(rules: Vec<ServiceRule>) -> Self {
        let extra = std::env::var("OTEL_RESOURCE_ATTRIBUTES")
            .unwrap_or_default()
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| KeyValue::new(k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_owned();
        Self {
            rules,
            host_name,
            extra,
            by_pid: HashMap::default(),
            kubernetes: Kubernetes::new(LogDirs::default()),
        }
    }

    /// Where the kubelet's log directories are (`[kubernetes]`).
    pub fn with_log_dirs(mut self, dirs: LogDirs) -> Self {
        self.kubernetes = Kubernetes::new(dirs);
        self
    }

    /// The resource for a process (computed once per process).
    pub fn resource(&mut self, process: &ProcessInfo) -> Arc<Resource> {
        if let Some(made) = self.by_pid.get(&process.pid) {
            if made.process == *process && made.complete {
                return made.resource.clone();
            }
        }
        let pod = self.kubernetes.identify(&process.cgroup);
        let name = self.service_name(process, pod.as_ref());
        let mut attributes = vec![
            KeyValue::new("service.name", name),
            KeyValue::new("process.pid", i64::from(process.pid)),
            KeyValue::new("host.name", self.host_name.clone()),
            KeyValue::new("telemetry.sdk.name", "tracer"),
            KeyValue::new("telemetry.sdk.language", "rust"),
            KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ];
        if let Some(exe) = executable_name(process) {
            attributes.push(KeyValue::new("process.executable.name", exe.to_owned()));
        }
        if !process.exe.is_empty() {
            attributes.push(KeyValue::new(
                "process.executable.path",
                process.exe.clone(),
            ));
        }
        if let Some(command) = process.cmdline.first() {
            // Only argv[0]: arguments can hold secrets.
            attributes.push(KeyValue::new("process.command", command.clone()));
        }
        for (key, value) in pod.iter().flat_map(PodIdentity::attributes) {
            attributes.push(KeyValue::new(key, value));
        }
        attributes.extend(self.extra.iter().cloned());
        let resource = Arc::new(
            Resource::builder_empty()
                .with_attributes(attributes)
                .build(),
        );
        let made = Made {
            process: process.clone(),
            complete: pod.as_ref().is_none_or(PodIdentity::complete),
            resource: resource.clone(),
        };
        self.by_pid.insert(process.pid, made);
        resource
    }

    /// The `service.name` of a resource built here.
    pub fn name_of(resource: &Resource) -> String {
        resource
            .get(&opentelemetry::Key::new("service.name"))
            .map(|v| v.to_string())
            .unwrap_or_default()
    }

    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }

    fn service_name(&self, process: &ProcessInfo, pod: Option<&PodIdentity>) -> String {
        let mut listening = None;
        for rule in &self.rules {
            let exe_ok = rule.exe.as_deref().is_none_or(|exe| {
                process.exe == exe || executable_name(process) == Some(exe) || process.comm == exe
            });
            let cmdline_ok = rule
                .cmdline_contains
                .as_deref()
                .is_none_or(|needle| process.cmdline.join(" ").contains(needle));
            let port_ok = rule.port.is_none_or(|port| {
                listening
                    .get_or_insert_with(|| procfs::listening_ports(process.pid))
                    .contains(&port)
            });
            if exe_ok && cmdline_ok && port_ok {
                return rule.name.clone();
            }
        }
        if let Some(container) = pod.and_then(|p| p.container.as_deref()) {
            return container.to_owned();
        }
        executable_name(process)
            .unwrap_or(process.comm.as_str())
            .to_owned()
    }
}

fn executable_name(process: &ProcessInfo) -> Option<&str> {
    let name = process.exe.rsplit('/').next().filter(|n| !n.is_empty())?;
    // A deleted executable shows as "name (deleted)".
    Some(name.strip_suffix(" (deleted)").unwrap_or(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(exe: &str, cmdline: &[&str]) -> ProcessInfo {
        ProcessInfo {
            pid: 4242,
            comm: "python3".into(),
            exe: exe.into(),
            cmdline: cmdline.iter().map(|s| s.to_string()).collect(),
            cgroup: String::new(),
        }
    }

    #[test]
    fn rules_by_cmdline_then_executable_name_fallback() {
        let rules = vec![ServiceRule {
            name: "shop-api".into(),
            exe: Some("python3.11".into()),
            cmdline_contains: Some("shop_api.py".into()),
            port: None,
        }];
        let mut services = Services::new(rules);
        let shop = process("/usr/bin/python3.11", &["python3", "shop_api.py"]);
        assert_eq!(Services::name_of(&services.resource(&shop)), "shop-api");
        let mut other = process("/usr/bin/python3.11", &["python3", "crm.py"]);
        other.pid = 7;
        assert_eq!(Services::name_of(&services.resource(&other)), "python3.11");
        // The shop's pid reused by another script of the same interpreter, then the
        // process execs node: each time a new identity.
        let reused = process("/usr/bin/python3.11", &["python3", "crm.py"]);
        assert_eq!(Services::name_of(&services.resource(&reused)), "python3.11");
        let execd = ProcessInfo {
            comm: "node".into(),
            ..process("/usr/bin/node", &["node", "server.js"])
        };
        assert_eq!(Services::name_of(&services.resource(&execd)), "node");
    }
}
