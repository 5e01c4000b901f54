//! Rate-limited logging for messages a guest can trigger (a refused BAR move, a bad MSI-X
//! access, an unclaimed MMIO access...): a guest repeating the access must not flood the
//! host's log or slow the VMM down with formatting and writes.
//!
//! Each call site of [`warn_limited!`] (and its siblings) has its own limiter: a burst of
//! [`BURST`] messages passes, then the site is quiet until [`PERIOD`] has passed since the
//! burst began; the first message after that says how many were dropped meanwhile, e.g.
//! `... (12 similar messages suppressed)`.
//!
//! Hand-rolled rather than a crate: the ecosystem's limiters (`governor`, `ratelimit`) answer
//! "may I?" but do not count what was dropped, which is what the log line needs; this is
//! twenty lines over a `Mutex`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Messages that pass at once from one call site.
pub const BURST: u32 = 10;
/// How long a site stays quiet after a burst (from the burst's first message).
pub const PERIOD: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    passed: u32,
    suppressed: u64,
}

/// A limiter for one call site; `const`, so it can be a `static` next to the message.
#[derive(Debug)]
pub struct RateLimiter {
    burst: u32,
    period: Duration,
    window: Mutex<Window>,
}

impl RateLimiter {
    pub const fn new(burst: u32, period: Duration) -> Self {
        Self { burst, period, window: Mutex::new(Window { start: None, passed: 0, suppressed: 0 }) }
    }

    /// Whether a message may be logged now: `Some(n)` with the number of messages dropped
    /// since the last one that passed, `None` to drop this one.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    /// [`Self::check`] at a given time (tests).
    pub fn check_at(&self, now: Instant) -> Option<u64> {
        // A panic while the lock is held cannot leave the counters inconsistent (plain
        // integers), so a poisoned limiter keeps working.
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let expired = w.start.is_none_or(|s| now.saturating_duration_since(s) >= self.period);
        if expired {
            w.start = Some(now);
            w.passed = 0;
        }
        if w.passed < self.burst {
            w.passed += 1;
            return Some(std::mem::take(&mut w.suppressed));
        }
        w.suppressed += 1;
        None
    }
}

/// `log::log!` at `$lvl`, limited per call site (see the crate docs).
#[macro_export]
macro_rules! log_limited {
    ($lvl:expr, $($arg:tt)+) => {{
        static LIMITER: $crate::RateLimiter = $crate::RateLimiter::new($crate::BURST, $crate::PERIOD);
        let lvl = $lvl;
        if ::log::log_enabled!(lvl) {
            match LIMITER.check() {
                Some(0) => ::log::log!(lvl, $($arg)+),
                Some(n) => ::log::log!(lvl, "{} ({n} similar messages suppressed)", format_args!($($arg)+)),
                None => {}
            }
        }
    }};
}

/// `log::warn!`, limited per call site.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => { $crate::log_limited!(::log::Level::Warn, $($arg)+) };
}

/// `log::error!`, limited per call site.
#[macro_export]
macro_rules! error_limited {
    ($($arg:tt)+) => { $crate::log_limited!(::log::Level::Error, $($arg)+) };
}

/// `log::info!`, limited per call site.
#[macro_export]
macro_rules! info_limited {
    ($($arg:tt)+) => { $crate::log_limited!(::log::Level::Info, $($arg)+) };
}

/// `log::debug!`, limited per call site.
#[macro_export]
macro_rules! debug_limited {
    ($($arg:tt)+) => { $crate::log_limited!(::log::Level::Debug, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_suppression_then_the_count() {
        let l = RateLimiter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!((0..3).map(|i| l.check_at(at(i))).collect::<Vec<_>>(), vec![Some(0); 3], "the burst passes");
        for i in 0..5 {
            assert_eq!(l.check_at(at(100 + i)), None, "then the site is quiet");
        }
        assert_eq!(l.check_at(at(9_999)), None, "still inside the period");
        assert_eq!(l.check_at(at(10_000)), Some(6), "the first after the period reports what was dropped");
        assert_eq!(l.check_at(at(10_001)), Some(0), "and the count starts again");
    }

    #[test]
    fn sites_are_independent() {
        struct Capture(Mutex<Vec<String>>);
        impl log::Log for Capture {
            fn enabled(&self, _: &log::Metadata) -> bool {
                true
            }
            fn log(&self, r: &log::Record) {
                self.0.lock().unwrap().push(r.args().to_string());
            }
            fn flush(&self) {}
        }
        static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));
        log::set_logger(&CAPTURE).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
        for i in 0..(BURST + 5) {
            warn_limited!("site a {i}");
        }
        error_limited!("site b");
        let lines = CAPTURE.0.lock().unwrap().clone();
        assert_eq!(lines.len(), BURST as usize + 1, "{lines:?}");
        assert_eq!(lines.last().unwrap(), "site b", "another site is not limited by the first");
    }
}
