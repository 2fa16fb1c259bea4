//! The journey's notion of "now". Dwell limits are hours and days; tests and fire drills
//! move this clock forward (an offset in a file, re-read at every check) instead of waiting.
use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use super::span::unix_ns;

#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_file: Option<PathBuf>,
}

impl Clock {
    pub fn system() -> Self {
        Self::default()
    }

    /// The system clock plus the duration written in `path` ("26h", "90m"; missing or
    /// empty file: no offset).
    pub fn with_offset_file(path: PathBuf) -> Self {
        Self {
            offset_file: Some(path),
        }
    }

    pub fn now_ns(&self) -> i64 {
        unix_ns(SystemTime::now()) + self.offset().as_nanos() as i64
    }

    fn offset(&self) -> Duration {
        let Some(path) = &self.offset_file else {
            return Duration::ZERO;
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let text = text.trim();
        if text.is_empty() {
            return Duration::ZERO;
        }
        humantime::parse_duration(text).unwrap_or_else(|error| {
            tracing::warn!(path = %path.display(), %error, "ignoring an unreadable clock offset");
            Duration::ZERO
        })
    }
}

/// "26 h", "12 min", "45 s": how support staff say how long an order waited.
pub fn human(ns: i64) -> String {
    let seconds = ns.max(0) / 1_000_000_000;
    if seconds >= 2 * 86_400 {
        format!("{} d {} h", seconds / 86_400, seconds % 86_400 / 3600)
    } else if seconds >= 2 * 3600 {
        format!("{} h", seconds / 3600)
    } else if seconds >= 120 {
        format!("{} min", seconds / 60)
    } else if ns >= 1_000_000_000 {
        format!("{seconds} s")
    } else {
        if ns >= 10_000_000 {
            format!("{} ms", ns / 1_000_000)
        } else {
            format!("{:.1} ms", ns.max(0) as f64 / 1e6)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_file_moves_the_clock() {
        let path = std::env::temp_dir().join(format!("tracer-clock-{}", std::process::id()));
        let clock = Clock::with_offset_file(path.clone());
        let before = clock.now_ns();
        std::fs::write(&path, "26h\n").unwrap();
        let after = clock.now_ns();
        let _ = std::fs::remove_file(&path);
        assert!(after - before >= 26 * 3600 * 1_000_000_000);
        assert!(after - before < 26 * 3600 * 1_000_000_000 + 60 * 1_000_000_000);
    }

    #[test]
    fn durations_read_like_people_say_them() {
        let s = 1_000_000_000;
        assert_eq!(human(26 * 3600 * s + 5), "26 h");
        assert_eq!(human(3 * 86_400 * s + 4 * 3600 * s), "3 d 4 h");
        assert_eq!(human(12 * 60 * s), "12 min");
        assert_eq!(human(45 * s), "45 s");
        assert_eq!(human(12_000_000), "12 ms");
        assert_eq!(human(400_000), "0.4 ms");
    }
}
