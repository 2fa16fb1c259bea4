//! Kernel monotonic time (`bpf_ktime_get_ns`) to wall-clock time.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Converts kernel timestamps the way ebpf_exporter does: `now - (ktime_now - ktime_event)`.
/// The offset is re-read on `refresh`, so wall-clock steps (NTP) are followed.
#[derive(Clone, Copy, Debug)]
pub struct KernelClock {
    /// Wall-clock ns minus monotonic ns, at the last refresh.
    offset_ns: i128,
}

impl KernelClock {
    pub fn new() -> Self {
        let mut clock = Self { offset_ns: 0 };
        clock.refresh();
        clock
    }

    pub fn refresh(&mut self) {
        let mono = monotonic_ns() as i128;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        self.offset_ns = wall - mono;
    }

    /// Nanoseconds since the Unix epoch for a kernel timestamp.
    pub fn wall_ns(&self, ktime_ns: u64) -> u64 {
        (ktime_ns as i128 + self.offset_ns).max(0) as u64
    }

    pub fn wall_time(&self, ktime_ns: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.wall_ns(ktime_ns))
    }
}

impl Default for KernelClock {
    fn default() -> Self {
        Self::new()
    }
}

/// CLOCK_MONOTONIC, the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_time_now_maps_to_wall_clock_now() {
        let clock = KernelClock::new();
        let wall = clock.wall_time(monotonic_ns());
        let skew = SystemTime::now().duration_since(wall).unwrap_or_default();
        assert!(skew < Duration::from_secs(1), "skew {skew:?}");
    }

    #[test]
    fn earlier_kernel_time_is_earlier_wall_time() {
        let clock = KernelClock::new();
        let now = monotonic_ns();
        assert_eq!(clock.wall_ns(now) - clock.wall_ns(now - 5_000), 5_000);
    }
}
