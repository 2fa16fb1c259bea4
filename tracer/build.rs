//! Builds the eBPF object (`tracer-ebpf`) with aya-build and nightly.
//!
//! `TRACER_EBPF_STUB=1` writes an empty object instead, so `cargo check`, `clippy` and the
//! parser unit tests work without nightly or bpf-linker; the agent then refuses to start
//! with a message that says so.
use std::{env, fs, path::PathBuf};

use anyhow::{anyhow, Context as _};

const STUB: &str = "TRACER_EBPF_STUB";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={STUB}");
    let out_dir = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR not set")?);
    if env::var(STUB).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        fs::write(out_dir.join("tracer"), []).context("writing the stub eBPF object")?;
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("tracer crate has no parent directory"))?
        .join("tracer-ebpf");
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path to tracer-ebpf")?;
    // The kernel side is built from tracer-common's constants and records too.
    let common_dir = ebpf_dir.with_file_name("tracer-common").join("src");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context("building tracer-ebpf (run `cargo xtask setup`, or set TRACER_EBPF_STUB=1 to skip)")
}
