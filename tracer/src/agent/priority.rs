//! The agent's CPU priority. By default its threads run under `SCHED_IDLE`: on CPU time
//! the traced applications leave unused, so that they are never preempted by the agent's
//! work (on two saturated cores, the agent's bursts of parsing delayed the services'
//! answers by milliseconds at p99). When the agent falls behind — its oldest unread record
//! older than [`BEHIND_NS`], or an export or journey queue half full — it catches up at
//! normal priority, and goes back once it is within [`CAUGHT_UP_NS`]: the kernel ring
//! buffer holds seconds of traffic, so yielding never costs an event.
use std::io;

use clap::ValueEnum;

/// Behind by more than this: catch up at normal priority.
pub const BEHIND_NS: u64 = 100_000_000;
/// Back to idle priority once the oldest record read is younger than this.
pub const CAUGHT_UP_NS: u64 = 10_000_000;
/// A queue to the export or journey threads this full also means catching up.
pub const QUEUE_SHARE_BEHIND: f64 = 0.5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CpuPriority {
    /// `SCHED_IDLE`, at normal priority while behind (see README "Cost").
    Idle,
    /// Normal priority (`SCHED_OTHER`) all the time.
    Normal,
}

/// What the agent's threads run at now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    Idle,
    Normal,
}

impl Policy {
    fn sched(self) -> libc::c_int {
        match self {
            Self::Idle => libc::SCHED_IDLE,
            Self::Normal => libc::SCHED_OTHER,
        }
    }
}

/// Decides, after each read of the ring, whether the agent runs idle or catches up.
pub struct Priority {
    mode: CpuPriority,
    now: Policy,
    /// Times the agent fell behind and caught up at normal priority.
    pub catch_ups: u64,
    /// Changes of policy that failed (after the first, the agent stays at normal).
    pub errors: u64,
}

impl Priority {
    /// Puts every thread of the agent at idle priority if `mode` asks for it and the
    /// agent may come back from it (`CAP_SYS_NICE`); else everything stays normal, said
    /// in the log.
    pub fn start(mode: CpuPriority) -> Self {
        let mut priority = Self {
            mode,
            now: Policy::Normal,
            catch_ups: 0,
            errors: 0,
        };
        if mode == CpuPriority::Idle {
            // Try the way back first on this thread alone: without it, idle would be for good.
            let can_return =
                set_thread(0, Policy::Idle).and_then(|()| set_thread(0, Policy::Normal));
            match can_return.and_then(|()| set_all(Policy::Idle)) {
                Ok(()) => priority.now = Policy::Idle,
                Err(error) => {
                    priority.errors += 1;
                    let _ = set_all(Policy::Normal);
                    tracing::warn!(%error, "cannot run at idle CPU priority (SCHED_IDLE and back need CAP_SYS_NICE); running at normal priority");
                }
            }
        }
        priority
    }

    /// Whether the agent runs at idle priority now.
    pub fn is_idle(&self) -> bool {
        self.now == Policy::Idle
    }

    /// After a read of the ring: `backlog_ns` is the age of the oldest record it held,
    /// `queue_share` how full the fullest queue to the export and journey threads is.
    pub fn observe(&mut self, backlog_ns: u64, queue_share: f64) {
        if self.mode != CpuPriority::Idle || self.errors > 0 {
            return;
        }
        let wanted = match self.now {
            Policy::Idle if backlog_ns > BEHIND_NS || queue_share >= QUEUE_SHARE_BEHIND => {
                Policy::Normal
            }
            Policy::Normal
                if backlog_ns < CAUGHT_UP_NS && queue_share < QUEUE_SHARE_BEHIND / 2.0 =>
            {
                Policy::Idle
            }
            now => now,
        };
        if wanted == self.now {
            return;
        }
        if let Err(error) = set_all(wanted) {
            self.errors += 1;
            let _ = set_all(Policy::Normal);
            self.now = Policy::Normal;
            tracing::warn!(%error, "changing the agent's CPU priority failed; staying at normal priority");
            return;
        }
        if wanted == Policy::Normal {
            self.catch_ups += 1;
            tracing::debug!(
                backlog_ms = backlog_ns / 1_000_000,
                queue_share,
                "behind: catching up at normal CPU priority"
            );
        }
        self.now = wanted;
    }
}

/// Every thread of the agent (threads started later inherit their creator's policy).
fn set_all(policy: Policy) -> io::Result<()> {
    for entry in std::fs::read_dir("/proc/self/task")? {
        let Some(tid) = entry?.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        match set_thread(tid, policy) {
            // A thread that ended since the directory was read.
            Err(error) if error.raw_os_error() == Some(libc::ESRCH) => {}
            other => other?,
        }
    }
    Ok(())
}

/// One thread (`0`: the calling one).
fn set_thread(tid: libc::pid_t, policy: Policy) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain syscall on a thread id with a valid parameter block.
    if unsafe { libc::sched_setscheduler(tid, policy.sched(), &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy is set for every thread of the process: one test at a time.
    static PROCESS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// The calling thread's policy.
    fn policy_of_this_thread() -> libc::c_int {
        // SAFETY: plain syscall.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn falls_behind_catches_up_and_goes_back_to_idle() {
        // Runs on a thread of its own: the policy is per thread (set for every thread of
        // the process, so the other tests are idle meanwhile, which changes nothing).
        let _one = PROCESS.lock().unwrap();
        std::thread::spawn(|| {
            let mut priority = Priority::start(CpuPriority::Idle);
            assert_eq!(
                priority.errors, 0,
                "tests run as root: SCHED_IDLE must be allowed"
            );
            assert!(priority.is_idle());
            assert_eq!(policy_of_this_thread(), libc::SCHED_IDLE);
            priority.observe(BEHIND_NS / 2, 0.0);
            assert!(priority.is_idle(), "half the threshold is not behind");
            priority.observe(BEHIND_NS + 1, 0.0);
            assert!(!priority.is_idle());
            assert_eq!(policy_of_this_thread(), libc::SCHED_OTHER);
            assert_eq!(priority.catch_ups, 1);
            priority.observe(CAUGHT_UP_NS * 2, 0.0);
            assert!(
                !priority.is_idle(),
                "stays normal until within CAUGHT_UP_NS"
            );
            priority.observe(0, 0.0);
            assert!(priority.is_idle());
            priority.observe(0, QUEUE_SHARE_BEHIND);
            assert!(!priority.is_idle(), "a half-full queue is behind too");
            assert_eq!(priority.catch_ups, 2);
            priority.observe(0, QUEUE_SHARE_BEHIND / 2.0);
            assert!(!priority.is_idle(), "until the queue is below a quarter");
            priority.observe(0, 0.0);
            assert!(priority.is_idle());
            // Leave the process as the other tests expect it.
            set_all(Policy::Normal).unwrap();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn normal_mode_never_changes_the_policy() {
        let _one = PROCESS.lock().unwrap();
        std::thread::spawn(|| {
            let mut priority = Priority::start(CpuPriority::Normal);
            priority.observe(BEHIND_NS * 10, 1.0);
            priority.observe(0, 0.0);
            assert!(!priority.is_idle());
            assert_eq!(priority.catch_ups, 0);
            assert_eq!(policy_of_this_thread(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }
}
