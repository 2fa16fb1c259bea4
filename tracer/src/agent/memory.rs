//! How the agent's memory is backed.

/// No transparent huge pages for the agent. mimalloc asks for them on its arenas
/// (`MADV_HUGEPAGE`) and gives freed pages back after a short delay; each later fault
/// there then zeroes a whole 2 MiB page. Under saturating HTTP load that zeroing was
/// 10 % of the agent's CPU (`clear_page_erms` under `do_huge_pmd_anonymous_page`),
/// and 1 % with 4 KiB pages. The setting is the process's own (`PR_SET_THP_DISABLE`);
/// traced programs and the host's setting are untouched. Returns whether it took.
pub fn without_transparent_huge_pages() -> bool {
    // SAFETY: a prctl with plain integer arguments.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_turns_huge_pages_off_for_itself() {
        assert!(super::without_transparent_huge_pages());
        // SAFETY: as above.
        let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(disabled, 1, "PR_GET_THP_DISABLE after setting it");
    }
}
