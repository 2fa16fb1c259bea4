//! Rebuild the eBPF object when the linker changes (a new bpf-linker means a new object).
use which::which;

fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!(
        "cargo:rerun-if-changed={}",
        bpf_linker.to_str().expect("utf-8 path")
    );
}
