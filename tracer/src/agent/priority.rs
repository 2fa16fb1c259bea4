//! The agent's CPU priority. By default the thread that reads the kernel rings and parses
//! what it reads — nearly all of the agent's CPU — runs under `SCHED_IDLE`: on CPU time the
//! traced applications leave unused, so that the agent's bursts of parsing never preempt
//! them (on two saturated cores they delayed the services' answers by milliseconds at
//! p99). A watchdog thread at normal priority, awake every [`WATCH_EVERY`], puts it back at
//! normal priority while it is behind — its last read of the rings found a record older
//! than [`BEHIND_NS`], or it has not finished a read for [`STALLED_NS`] (a busy host leaves
//! an idle thread next to no time) — and idle again once a read is within
//! [`CAUGHT_UP_NS`]. The rings are never left unread for long, so yielding costs no event.
//! The export, journey and metrics threads stay at normal priority: they wake for a batch
//! and sleep again.
use std::{
    io,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use clap::ValueEnum;

use crate::capture::monotonic_now;

/// Behind by more than this: catch up at normal priority.
pub const BEHIND_NS: u64 = 100_000_000;
/// No read of the rings finished for this long: catch up too.
pub const STALLED_NS: u64 = 50_000_000;
/// Back to idle priority once the oldest record of a read is younger than this.
pub const CAUGHT_UP_NS: u64 = 10_000_000;
/// How often the watchdog looks.
pub const WATCH_EVERY: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CpuPriority {
    /// The reading thread at `SCHED_IDLE`, at normal priority while behind (README "Cost").
    Idle,
    /// Normal priority (`SCHED_OTHER`) all the time.
    Normal,
}

impl CpuPriority {
    /// The scheduling policy (also what the reading thread runs under now).
    fn sched(self) -> libc::c_int {
        match self {
            Self::Idle => libc::SCHED_IDLE,
            Self::Normal => libc::SCHED_OTHER,
        }
    }
}

/// What the reading thread tells the watchdog, and what the watchdog did.
#[derive(Default)]
struct Shared {
    /// When the last read of the rings finished (kernel monotonic ns).
    polled_ns: AtomicU64,
    /// The age of the oldest record of that read.
    backlog_ns: AtomicU64,
    idle: AtomicBool,
    catch_ups: AtomicU64,
    stop: AtomicBool,
}

/// The reading thread's side; stops the watchdog when dropped.
pub struct Priority {
    shared: Arc<Shared>,
    watchdog: Option<thread::JoinHandle<()>>,
}

impl Priority {
    /// Called on the reading thread. In `Idle` mode puts it at idle priority and starts
    /// the watchdog, if the thread may come back from idle (`CAP_SYS_NICE`); else it stays
    /// at normal priority, said in the log.
    pub fn start(mode: CpuPriority) -> Self {
        let shared = Arc::new(Shared::default());
        shared.polled_ns.store(monotonic_now(), Ordering::Relaxed);
        let mut priority = Self {
            shared: shared.clone(),
            watchdog: None,
        };
        if mode == CpuPriority::Normal {
            return priority;
        }
        // SAFETY: plain syscall.
        let tid = unsafe { libc::gettid() };
        // Try the way back first: without it, idle would be for good.
        let can_return = set(tid, CpuPriority::Idle).and_then(|()| set(tid, CpuPriority::Normal));
        if let Err(error) = can_return {
            let _ = set(tid, CpuPriority::Normal);
            tracing::warn!(%error, "cannot run at idle CPU priority (leaving SCHED_IDLE needs CAP_SYS_NICE); running at normal priority");
            return priority;
        }
        // Started at normal priority (a thread inherits its creator's policy).
        let watchdog = thread::Builder::new()
            .name("priority".into())
            .spawn(move || watch(tid, &shared));
        match watchdog {
            Ok(handle) => {
                priority.watchdog = Some(handle);
                if set(tid, CpuPriority::Idle).is_ok() {
                    priority.shared.idle.store(true, Ordering::Relaxed);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "no priority watchdog; running at normal priority")
            }
        }
        priority
    }

    /// After each read of the rings: the age of its oldest record (0 if it read none).
    pub fn polled(&self, backlog_ns: u64) {
        self.shared.backlog_ns.store(backlog_ns, Ordering::Relaxed);
        self.shared
            .polled_ns
            .store(monotonic_now(), Ordering::Release);
    }

    /// Whether the reading thread runs at idle priority now.
    pub fn is_idle(&self) -> bool {
        self.shared.idle.load(Ordering::Relaxed)
    }

    /// Times it fell behind and caught up at normal priority.
    pub fn catch_ups(&self) -> u64 {
        self.shared.catch_ups.load(Ordering::Relaxed)
    }
}

impl Drop for Priority {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
    }
}

/// The policy the reading thread should have now, if it should change.
fn decide(idle: bool, now_ns: u64, polled_ns: u64, backlog_ns: u64) -> Option<CpuPriority> {
    let since_poll = now_ns.saturating_sub(polled_ns);
    if idle && (backlog_ns > BEHIND_NS || since_poll > STALLED_NS) {
        return Some(CpuPriority::Normal);
    }
    if !idle && backlog_ns < CAUGHT_UP_NS && since_poll <= STALLED_NS {
        return Some(CpuPriority::Idle);
    }
    None
}

/// The watchdog: until stopped, moves thread `tid` between idle and normal priority.
fn watch(tid: libc::pid_t, shared: &Shared) {
    while !shared.stop.load(Ordering::Relaxed) {
        thread::sleep(WATCH_EVERY);
        let idle = shared.idle.load(Ordering::Relaxed);
        let polled_ns = shared.polled_ns.load(Ordering::Acquire);
        let backlog_ns = shared.backlog_ns.load(Ordering::Relaxed);
        let Some(policy) = decide(idle, monotonic_now(), polled_ns, backlog_ns) else {
            continue;
        };
        if let Err(error) = set(tid, policy) {
            let _ = set(tid, CpuPriority::Normal);
            shared.idle.store(false, Ordering::Relaxed);
            tracing::warn!(%error, "changing the agent's CPU priority failed; staying at normal priority");
            return;
        }
        shared
            .idle
            .store(policy == CpuPriority::Idle, Ordering::Relaxed);
        if policy == CpuPriority::Normal {
            shared.catch_ups.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                backlog_ms = backlog_ns / 1_000_000,
                since_read_ms = monotonic_now().saturating_sub(polled_ns) / 1_000_000,
                "behind: catching up at normal CPU priority"
            );
        }
    }
}

fn set(tid: libc::pid_t, policy: CpuPriority) -> io::Result<()> {
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

    const MS: u64 = 1_000_000;

    #[test]
    fn behind_or_stalled_catches_up_and_caught_up_goes_back() {
        let now = 10_000 * MS;
        assert_eq!(decide(true, now, now - MS, BEHIND_NS / 2), None);
        assert_eq!(
            decide(true, now, now - MS, BEHIND_NS + 1),
            Some(CpuPriority::Normal)
        );
        assert_eq!(
            decide(true, now, now - STALLED_NS - 1, 0),
            Some(CpuPriority::Normal),
            "no read finished for too long"
        );
        assert_eq!(
            decide(false, now, now - MS, CAUGHT_UP_NS * 2),
            None,
            "normal until within CAUGHT_UP_NS"
        );
        assert_eq!(
            decide(false, now, now - STALLED_NS - 1, 0),
            None,
            "a read still going on"
        );
        assert_eq!(decide(false, now, now - MS, 0), Some(CpuPriority::Idle));
    }

    /// The calling thread's policy.
    fn policy_of_this_thread() -> libc::c_int {
        // SAFETY: plain syscall.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn the_watchdog_moves_the_reading_thread_between_idle_and_normal() {
        thread::spawn(|| {
            let priority = Priority::start(CpuPriority::Idle);
            assert!(
                priority.is_idle(),
                "tests run as root: SCHED_IDLE and back are allowed"
            );
            assert_eq!(policy_of_this_thread(), libc::SCHED_IDLE);
            let wait_for = |what: &str, done: &dyn Fn() -> bool| {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while !done() {
                    assert!(std::time::Instant::now() < deadline, "{what}");
                    thread::sleep(Duration::from_millis(5));
                }
            };
            priority.polled(BEHIND_NS + 1);
            wait_for("a backlog over BEHIND_NS catches up", &|| {
                policy_of_this_thread() == libc::SCHED_OTHER
            });
            assert!(!priority.is_idle());
            assert_eq!(priority.catch_ups(), 1);
            wait_for("caught up goes back to idle", &|| {
                priority.polled(0);
                policy_of_this_thread() == libc::SCHED_IDLE
            });
            // No read for longer than STALLED_NS: the watchdog catches up by itself.
            wait_for("a stalled reader catches up", &|| {
                policy_of_this_thread() == libc::SCHED_OTHER
            });
            assert_eq!(priority.catch_ups(), 2);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn normal_mode_never_changes_the_policy() {
        thread::spawn(|| {
            let priority = Priority::start(CpuPriority::Normal);
            priority.polled(BEHIND_NS * 10);
            thread::sleep(WATCH_EVERY * 3);
            assert!(!priority.is_idle());
            assert_eq!(priority.catch_ups(), 0);
            assert_eq!(policy_of_this_thread(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }
}
