//! `cargo xtask setup`: everything a fresh Debian machine lacks, installed idempotently.
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

use crate::exec::{exec, is_root, probe, stdout_of};

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests and the demo use.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "python3",
    "python3-pip",
    "iproute2",
    "procps",
    "curl",
    // The TLS tests make a throw-away CA with the openssl CLI.
    "openssl",
    "nodejs",
    "util-linux",
    "rabbitmq-server",
    "postgresql",
    // The demo's MES stand-in is C#, compiled with mcs and run by mono.
    "mono-devel",
    // The deploy test runs the Jaeger auth proxy's read-only gate (nginx) for real.
    "nginx-light",
    // The alert rules are unit-tested with promtool and evaluated by a real Prometheus.
    "prometheus",
];

/// Python libraries the test peers use (installed with pip): (module, requirement).
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("pika", "pika>=1.3,<2"),
    ("psycopg", "psycopg[binary]>=3.1,<4"),
    // An asyncio (event-loop) service for the causality tests.
    ("aiohttp", "aiohttp>=3.9,<4"),
    // gRPC (HTTP/2) servers and clients for the HTTP/2 tests.
    ("grpc", "grpcio>=1.60,<2"),
    // Offline, strict validation of the deploy/ manifests.
    ("yamllint", "yamllint>=1.35,<2"),
    ("kubernetes_validate", "kubernetes-validate==1.37.0"),
];

/// Node.js libraries the test peers use (`tracer/tests/peers/package.json`).
const NODE_PEERS: &str = "tracer/tests/peers";

pub fn run() -> anyhow::Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    debian_packages()?;
    python_packages()?;
    node_packages()?;
    kernel_filesystems()?;
    eprintln!("setup: done");
    Ok(())
}

/// What building tracer needs (the image build runs exactly this, via `cargo xtask build`):
/// nightly's rust-src and bpf-linker.
pub fn build_tools() -> anyhow::Result<()> {
    if rust_src_installed() && bpf_linker_ok() {
        return Ok(());
    }
    nightly_rust_src()?;
    bpf_linker()
}

/// What running the agent needs besides the binary: tracefs (and bpffs) mounted.
pub fn runtime_filesystems() -> anyhow::Result<()> {
    if tracefs_mounted() {
        return Ok(());
    }
    kernel_filesystems()
}

/// Cheap check used by `test`: is anything missing?
pub fn needed() -> bool {
    !rust_src_installed()
        || !bpf_linker_ok()
        || !missing_packages().is_empty()
        || !missing_python().is_empty()
        || !node_peers_installed()
        || !tracefs_mounted()
}

fn missing_python() -> Vec<&'static str> {
    PYTHON_PACKAGES
        .iter()
        .filter(|(module, _)| {
            let import = format!("import {module}");
            !probe(Command::new("python3").args(["-c", &import]))
                .is_some_and(|o| o.status.success())
        })
        .map(|(_, requirement)| *requirement)
        .collect()
}

fn python_packages() -> anyhow::Result<()> {
    let missing = missing_python();
    if missing.is_empty() {
        eprintln!("setup: Python packages already installed");
        return Ok(());
    }
    // Debian's python3 refuses system-wide pip installs (PEP 668) unless told otherwise.
    let pip = |extra: &[&str]| {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "pip", "install", "--quiet"])
            .args(extra)
            .args(&missing)
            .env("PIP_ROOT_USER_ACTION", "ignore");
        cmd
    };
    exec(&mut pip(&["--break-system-packages"])).or_else(|_| exec(&mut pip(&[])))?;
    eprintln!("setup: installed Python packages: {}", missing.join(", "));
    Ok(())
}

fn node_peers_installed() -> bool {
    ["amqplib", "pg"].iter().all(|m| {
        std::path::Path::new(NODE_PEERS)
            .join("node_modules")
            .join(m)
            .exists()
    })
}

fn node_packages() -> anyhow::Result<()> {
    if node_peers_installed() {
        eprintln!("setup: Node.js packages already installed");
        return Ok(());
    }
    exec(Command::new("npm").args(["install", "--no-audit", "--no-fund", "--prefix", NODE_PEERS]))?;
    eprintln!("setup: installed Node.js packages in {NODE_PEERS}");
    Ok(())
}

fn rust_src_installed() -> bool {
    stdout_of(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .is_some_and(|list| list.lines().any(|l| l.starts_with("rust-src")))
}

fn nightly_rust_src() -> anyhow::Result<()> {
    if stdout_of(Command::new("rustc").args(["+nightly", "--version"])).is_none() {
        exec(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    if rust_src_installed() {
        eprintln!("setup: nightly rust-src already installed");
        return Ok(());
    }
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    eprintln!("setup: installed nightly rust-src");
    Ok(())
}

fn bpf_linker_ok() -> bool {
    stdout_of(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| v.ends_with(BPF_LINKER_VERSION))
}

/// bpf-linker built against nightly's own LLVM, so both agree on the bitcode format.
fn bpf_linker() -> anyhow::Result<()> {
    if bpf_linker_ok() {
        eprintln!("setup: bpf-linker {BPF_LINKER_VERSION} already installed");
        return Ok(());
    }
    let version = stdout_of(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("rustc +nightly -vV failed")?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("nightly rustc does not report its LLVM version")?
        .to_owned();
    let sysroot = PathBuf::from(
        stdout_of(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
            .context("no nightly sysroot")?,
    );
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let prefix = cargo_home
        .join("llvm-prefix")
        .join(format!("nightly-llvm-{major}"));
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let mut versioned = None;
    for entry in fs::read_dir(sysroot.join("lib"))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.starts_with("libLLVM") && name.contains(".so") {
            link(&path, &lib.join(&name))?;
            if name.starts_with("libLLVM.so.") {
                versioned = Some(path.clone());
            }
        }
    }
    let versioned =
        versioned.with_context(|| format!("no libLLVM.so.* in {}/lib", sysroot.display()))?;
    link(&versioned, &lib.join("libLLVM.so"))?;
    exec(
        Command::new("cargo")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !bpf_linker_ok() {
        bail!(
            "bpf-linker was installed but does not run; check {}",
            lib.display()
        );
    }
    eprintln!("setup: built bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major}");
    Ok(())
}

fn link(target: &std::path::Path, at: &std::path::Path) -> anyhow::Result<()> {
    let _ = fs::remove_file(at);
    std::os::unix::fs::symlink(target, at).with_context(|| format!("symlinking {}", at.display()))
}

fn missing_packages() -> Vec<&'static str> {
    missing_of(DEBIAN_PACKAGES)
}

fn missing_of(packages: &[&'static str]) -> Vec<&'static str> {
    packages
        .iter()
        .copied()
        .filter(|p| {
            !probe(Command::new("dpkg-query").args(["-W", "-f", "${Status}", p])).is_some_and(|o| {
                String::from_utf8_lossy(&o.stdout).contains("install ok installed")
            })
        })
        .collect()
}

fn debian_packages() -> anyhow::Result<()> {
    debian_packages_named(DEBIAN_PACKAGES)
}

/// Installs those of `packages` that are missing (apt-get, as root or with sudo).
pub fn debian_packages_named(packages: &[&'static str]) -> anyhow::Result<()> {
    let missing = missing_of(packages);
    if missing.is_empty() {
        eprintln!(
            "setup: Debian packages already installed ({})",
            packages.join(", ")
        );
        return Ok(());
    }
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo", "-E"] };
    let apt = |args: &[&str]| {
        let all: Vec<&str> = sudo
            .iter()
            .chain(["apt-get"].iter())
            .chain(args.iter())
            .copied()
            .collect();
        let mut cmd = Command::new(all[0]);
        cmd.args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    exec(&mut apt(&["update", "-q"]))?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    exec(&mut apt(&install))?;
    eprintln!("setup: installed Debian packages: {}", missing.join(", "));
    Ok(())
}

fn tracefs_mounted() -> bool {
    std::path::Path::new("/sys/kernel/tracing/events/syscalls").exists()
}

fn kernel_filesystems() -> anyhow::Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    for (fstype, target) in [("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")] {
        if mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(target))
            || (fstype == "tracefs" && tracefs_mounted())
        {
            eprintln!("setup: {fstype} already mounted at {target}");
            continue;
        }
        if !is_root() {
            bail!("{fstype} is not mounted at {target}; run `sudo mount -t {fstype} {fstype} {target}`");
        }
        exec(Command::new("mount").args(["-t", fstype, fstype, target]))?;
        eprintln!("setup: mounted {fstype} at {target}");
    }
    Ok(())
}
