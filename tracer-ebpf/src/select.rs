//! Which processes are traced: everything but the agent, or an explicit tgid list.
use tracer_common::SELECT_LISTED;

use crate::maps::{CAPTURE_CONFIG, TRACED_PROCESSES};

/// Cheap early exit for the hot path: most syscalls on a host are not ours to look at.
#[inline(always)]
pub fn is_traced(tgid: u32) -> bool {
    let Some(config) = CAPTURE_CONFIG.get(0) else {
        return false;
    };
    if tgid == config.self_tgid || config.self_tgid == 0 {
        // self_tgid == 0 means userspace has not configured us yet.
        return false;
    }
    if config.mode == SELECT_LISTED {
        return TRACED_PROCESSES.get_ptr(tgid).is_some();
    }
    true
}
