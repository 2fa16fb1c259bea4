//! The capabilities the agent needs, checked at start so a container started with too few
//! says which one is missing instead of failing somewhere inside the kernel.

/// (capability number, name, what it is needed for). Each needed one, or CAP_SYS_ADMIN
/// (which the kernel accepts in place of BPF and PERFMON), must be effective.
const NEEDED: &[(u32, &str, &str)] = &[
    (
        39,
        "CAP_BPF",
        "load the eBPF programs and create their maps",
    ),
    (
        38,
        "CAP_PERFMON",
        "attach to tracepoints and read socket memory in the programs",
    ),
    (
        19,
        "CAP_SYS_PTRACE",
        "read other processes' /proc/<pid>/fd and net to adopt their open connections",
    ),
    (
        2,
        "CAP_DAC_READ_SEARCH",
        "open other processes' TLS libraries through /proc/<pid>/root",
    ),
];
const CAP_SYS_ADMIN: u32 = 21;
/// Stand-ins: CAP_SYS_ADMIN covers BPF and PERFMON.
const COVERED_BY_SYS_ADMIN: &[u32] = &[39, 38];

/// The effective capability set of this process (`CapEff` in `/proc/self/status`).
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_effective(&status)
}

fn parse_effective(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// The first needed capability `effective` lacks, with what it is for.
pub fn missing(effective: u64) -> Option<(&'static str, &'static str)> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    NEEDED
        .iter()
        .find(|(cap, _, _)| {
            let covered = COVERED_BY_SYS_ADMIN.contains(cap) && has(CAP_SYS_ADMIN);
            !has(*cap) && !covered
        })
        .map(|(_, name, why)| (*name, *why))
}

/// Whether CAP_SYS_ADMIN is effective: on some kernels (6.18 here) the uprobe PMU refuses
/// `perf_event_open` without it, even with CAP_PERFMON, so TLS libraries cannot be hooked.
pub fn has_sys_admin(effective: u64) -> bool {
    effective & (1 << CAP_SYS_ADMIN) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_missing_capability_is_named() {
        let status = "Name:\ttracer\nCapEff:\t000000c001080004\n";
        // BPF, PERFMON, SYS_RESOURCE, SYS_PTRACE, DAC_READ_SEARCH: the DaemonSet's set.
        let daemonset = parse_effective(status).unwrap();
        assert_eq!(missing(daemonset), None);
        let without_perfmon = daemonset & !(1 << 38);
        assert_eq!(missing(without_perfmon).unwrap().0, "CAP_PERFMON");
        let sys_admin_instead = without_perfmon & !(1 << 39) | 1 << CAP_SYS_ADMIN;
        assert_eq!(missing(sys_admin_instead), None);
        assert_eq!(missing(0).unwrap().0, "CAP_BPF");
        assert!(!has_sys_admin(daemonset) && has_sys_admin(sys_admin_instead));
    }
}
