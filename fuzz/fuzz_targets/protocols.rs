#![no_main]
//! Every protocol session in the registry on any byte stream, in any cut, with gaps: the
//! first byte picks the protocol (registry names in alphabetical order, which are also the
//! folder names `cargo xtask fuzz` seeds from), so a new protocol is fuzzed without a new
//! target.
mod session;

libfuzzer_sys::fuzz_target!(|data: &[u8]| session::run(data));
