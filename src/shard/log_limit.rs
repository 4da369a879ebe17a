//! Rate-limited logging for the loop threads: a client (or a thousand of them) that keeps triggering the same
//! refusal or slow-consumer rule must not turn the loop into a log writer. One [`LogLimit`] per log site; the
//! caller passes the clock, and says how many lines were held back when it logs again.
//!
//! ```ignore
//! if let Some(suppressed) = self.slow_log.allow(Instant::now()) {
//!     tracing::warn!(suppressed, "slow consumer: closing with 1008");
//! }
//! ```

use std::time::{Duration, Instant};

/// At most one line per `every` for one log site; counts the lines it held back.
#[derive(Debug, Clone)]
pub struct LogLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    pub const fn new(every: Duration) -> Self {
        LogLimit { every, last: None, suppressed: 0 }
    }

    /// One line per second: the loops' default.
    pub const fn per_second() -> Self {
        Self::new(Duration::from_secs(1))
    }

    /// Whether to log now. `Some(n)`: yes, and `n` lines were held back since the last one logged (say so in
    /// the line); `None`: not now (counted).
    #[must_use]
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now.saturating_duration_since(t) < self.every) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The one limit for lines about a broken invariant or a failing system call, logged from code that keeps no
/// [`LogLimit`] of its own (the output paths, connection set-up): shared by every loop thread, behind a lock
/// that only those rare paths take. Should one of them start failing for every connection, the log still gets
/// one line a second.
pub fn rare_path(now: Instant) -> Option<u64> {
    static LIMIT: std::sync::Mutex<LogLimit> = std::sync::Mutex::new(LogLimit::per_second());
    LIMIT.lock().unwrap_or_else(std::sync::PoisonError::into_inner).allow(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_and_a_count_of_the_rest() {
        let t = Instant::now();
        let mut l = LogLimit::per_second();
        assert_eq!(l.allow(t), Some(0), "the first line goes out");
        for ms in [1, 10, 500, 999] {
            assert_eq!(l.allow(t + Duration::from_millis(ms)), None);
        }
        assert_eq!(l.allow(t + Duration::from_millis(1000)), Some(4), "four held back");
        assert_eq!(l.allow(t + Duration::from_millis(1500)), None);
        assert_eq!(l.allow(t + Duration::from_millis(3000)), Some(1));
        // A clock that goes backwards (another thread's `now`) never panics; it just waits.
        assert_eq!(l.allow(t), None);
    }
}
