#![no_main]
//! The http session on any byte stream, in any cut, with gaps.
mod session;

libfuzzer_sys::fuzz_target!(|data: &[u8]| session::run("http", data));
