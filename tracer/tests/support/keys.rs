//! The HMAC key the order tests give the agent, and DESIGN.md's order → trace id
//! derivation computed independently of tracer.
#![allow(dead_code)]

use std::path::PathBuf;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Writes `key` to a file of this test binary and returns its path.
pub fn key_file(key: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tracer-test-key-{}-{}",
        std::process::id(),
        key.len()
    ));
    std::fs::write(&path, format!("{key}\n")).unwrap();
    path
}

/// The first 16 bytes of HMAC-SHA256(key, order id), in hex: the order's trace id.
pub fn order_trace(key: &str, order_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(order_id.as_bytes());
    mac.finalize().into_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
