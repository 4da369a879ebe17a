//! A token bucket: the one rate limiter of the gateway (published messages, client messages, new connections
//! per address). Pure: the caller passes the time in.

use std::time::{Duration, Instant};

/// Tokens refilled at `rate` per second up to `burst`; one per event.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket holding its whole burst.
    pub fn full(burst: u32, now: Instant) -> Self {
        TokenBucket { tokens: f64::from(burst), last: now }
    }

    /// Takes a token if there is one (after refilling for the time since the last call).
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token will be there (zero if one is).
    pub fn wait(&self, rate: u32) -> Duration {
        let missing = 1.0 - self.tokens;
        if missing <= 0.0 || rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(missing / f64::from(rate))
    }

    /// Whether the bucket is full again at `now`: it then remembers nothing a fresh one would not.
    pub fn is_full(&self, rate: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * f64::from(rate) >= f64::from(burst)
    }

    fn refill(&mut self, rate: u32, burst: u32, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t = Instant::now();
        let mut b = TokenBucket::full(3, t);
        assert!((0..3).all(|_| b.take(3, 3, t)), "a burst of 3");
        assert!(!b.take(3, 3, t));
        assert!(!b.take(3, 3, t + Duration::from_millis(300)), "0.9 tokens");
        assert!(b.take(3, 3, t + Duration::from_millis(340)), "1 token after 1/3 s");
        let later = t + Duration::from_secs(60);
        assert!((0..3).all(|_| b.take(3, 3, later)) && !b.take(3, 3, later));
    }

    #[test]
    fn a_burst_larger_than_the_rate_and_the_wait_for_the_next_token() {
        let t = Instant::now();
        let mut b = TokenBucket::full(10, t);
        assert!((0..10).all(|_| b.take(5, 10, t)) && !b.take(5, 10, t));
        assert_eq!(b.wait(5), Duration::from_millis(200));
        assert!(!b.is_full(5, 10, t + Duration::from_millis(1900)));
        assert!(b.is_full(5, 10, t + Duration::from_secs(2)));
        assert!(b.take(5, 10, t + Duration::from_millis(200)));
    }
}
