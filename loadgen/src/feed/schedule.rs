//! The feed's schedule: message `n` is due at `start + n / rate`, exactly, whatever the sender did before.
//!
//! The rate is kept in milli-messages per second so that integer rates give exact integer nanosecond spacing
//! (1000 msg/s: 1,000,000 ns apart, no rounding drift over any run length) and fractional rates down to
//! 0.001 msg/s still work. All arithmetic is in `u128`: no overflow for any run shorter than centuries.

const NS_PER_S_MILLI: u128 = 1_000_000_000_000; // 1e9 ns/s × 1000 milli-messages per message

/// Due times of a fixed-rate open-loop schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// CLOCK_MONOTONIC ns of message 0.
    start_ns: u64,
    /// Messages per 1000 s.
    rate_milli: u128,
}

impl Schedule {
    /// `rate` in messages per second; `None` if it rounds to less than 0.001 msg/s or is not finite.
    pub fn new(start_ns: u64, rate: f64) -> Option<Self> {
        let rate_milli = (rate * 1000.0).round();
        if !(1.0..=1e15).contains(&rate_milli) {
            return None;
        }
        Some(Schedule { start_ns, rate_milli: rate_milli as u128 })
    }

    pub fn start_ns(&self) -> u64 {
        self.start_ns
    }

    /// Scheduled time of message `n`: `start + floor(n × 1e9 / rate)`.
    pub fn due_ns(&self, n: u64) -> u64 {
        let offset = u128::from(n) * NS_PER_S_MILLI / self.rate_milli;
        self.start_ns.saturating_add(u64::try_from(offset).unwrap_or(u64::MAX))
    }

    /// How many messages are due at `now_ns`: the smallest `k` such that every `n < k` has `due_ns(n) <= now_ns`
    /// and `due_ns(k) > now_ns`.
    pub fn due_count(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        // floor(n·1e12/r) <= d  ⇔  n·1e12/r < d+1  ⇔  n < (d+1)·r/1e12.
        let d = u128::from(now_ns - self.start_ns);
        let k = ((d + 1) * self.rate_milli).div_ceil(NS_PER_S_MILLI);
        u64::try_from(k).unwrap_or(u64::MAX)
    }

    /// How many messages a run of `duration_ns` holds: those due strictly before `start + duration`.
    pub fn count_within(&self, duration_ns: u64) -> u64 {
        // floor(n·1e12/r) < D  ⇔  n·1e12/r < D  ⇔  n < D·r/1e12.
        let k = (u128::from(duration_ns) * self.rate_milli).div_ceil(NS_PER_S_MILLI);
        u64::try_from(k).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_rates_are_exact() {
        let s = Schedule::new(5_000, 1000.0).unwrap();
        for n in [0u64, 1, 2, 999, 1_000_000, 10_000_000_000] {
            assert_eq!(s.due_ns(n), 5_000 + n * 1_000_000);
        }
        let s = Schedule::new(0, 2_500_000.0).unwrap();
        assert_eq!(s.due_ns(5), 2_000);
        assert_eq!(s.count_within(1_000_000_000), 2_500_000);
    }

    #[test]
    fn due_count_matches_due_ns() {
        for rate in [0.001, 0.5, 1.0, 3.0, 7.0, 1000.0, 2400.0, 99_999.0, 100_000.0, 2_500_000.0, 12_345.678] {
            let s = Schedule::new(1_000, rate).unwrap();
            assert_eq!(s.due_count(999), 0);
            assert_eq!(s.due_count(1_000), 1, "message 0 is due at start");
            for n in 0..2_000u64 {
                let t = s.due_ns(n);
                assert_eq!(s.due_count(t), (n + 1).max(s.due_count(t)), "rate {rate} n {n}");
                assert!(s.due_count(t) > n);
                assert!(t == 1_000 || s.due_count(t - 1) <= n, "rate {rate} n {n}: due early");
            }
        }
    }

    #[test]
    fn count_within_is_strict() {
        let s = Schedule::new(0, 1000.0).unwrap();
        assert_eq!(s.count_within(2_000_000_000), 2000);
        assert_eq!(s.count_within(2_000_000_001), 2001);
        assert_eq!(s.count_within(0), 0);
        assert_eq!(s.count_within(1), 1);
        let s = Schedule::new(0, 3.0).unwrap();
        assert_eq!(s.count_within(1_000_000_000), 3);
        assert!(s.due_ns(2) < 1_000_000_000 && s.due_ns(3) >= 1_000_000_000);
    }

    #[test]
    fn rejects_bad_rates() {
        for rate in [0.0, -1.0, 0.0004, f64::NAN, f64::INFINITY, 1e13] {
            assert_eq!(Schedule::new(0, rate), None, "rate {rate}");
        }
    }
}
