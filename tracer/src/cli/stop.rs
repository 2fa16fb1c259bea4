//! SIGINT/SIGTERM as a flag the main loops poll, so they can drain and report before exit.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

#[derive(Clone)]
pub struct StopSignal {
    flag: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

impl StopSignal {
    /// Stops on SIGINT or SIGTERM, or after `duration` if given.
    pub fn install(duration: Option<Duration>) -> std::io::Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        // A shell starting us as a background job hands SIGINT down as ignored; an agent
        // must still stop cleanly on it, so take both signals back to their defaults first.
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: resetting a disposition before any handler of ours is installed.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
        signal_hook::flag::register(signal_hook::consts::SIGINT, flag.clone())?;
        signal_hook::flag::register(signal_hook::consts::SIGTERM, flag.clone())?;
        Ok(Self {
            flag,
            deadline: duration.map(|d| Instant::now() + d),
        })
    }

    pub fn stopped(&self) -> bool {
        self.flag.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}
