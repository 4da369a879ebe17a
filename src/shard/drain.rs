//! Draining a loop thread at shutdown or restart: which close each client gets and when. Sans-IO: the loop
//! passes the clock and a seed, and applies what this returns.
//!
//! Closing every client at once turns a restart into a reconnect storm: thousands of clients reconnect, resume
//! and replay in the same few milliseconds. So the connections a loop holds when the drain starts are closed one
//! by one over `shutdown_spread` (the `i`-th of `n`, from 0, at `start + spread * (i + 1) / (n + 1)`: evenly,
//! and none at the very moment of the stop, so a connection accepted just before it still gets served a moment),
//! each close carrying a
//! suggested reconnect delay (a per-connection random value in `0..=spread`). Every loop spreads its own
//! connections over the same window, so the whole process closes at an even rate. Connections that arrive
//! after the drain started (an accept that raced the stop) are closed at the end of the window, which gives
//! them the most time to get what they came for.
//!
//! What it does not do: touch connections or sockets (the loop does, in `check_shutdown`/`drain_due`), or know
//! the shutdown deadline (the loop cuts whatever is left at `shutdown_timeout`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Why the gateway drains: it decides the close code clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGTERM/SIGINT: the gateway goes away (1001 Going Away).
    Shutdown,
    /// SIGUSR1 or a handoff to a new process: another process serves the same address (1012 Service Restart).
    Restart,
}

impl StopMode {
    /// The WebSocket close code (RFC 6455 §7.4.1; 1012 is in the IANA registry).
    pub fn close_code(self) -> u16 {
        match self {
            StopMode::Shutdown => 1001,
            StopMode::Restart => 1012,
        }
    }

    /// What the close reason and the notice say.
    pub fn reason(self) -> &'static str {
        match self {
            StopMode::Shutdown => "server shutting down",
            StopMode::Restart => "server restarting",
        }
    }

    /// For `Shared::stop_mode` (an atomic): 0 is "not stopping".
    pub fn to_u8(self) -> u8 {
        match self {
            StopMode::Shutdown => 1,
            StopMode::Restart => 2,
        }
    }

    pub fn from_u8(v: u8) -> Option<StopMode> {
        match v {
            1 => Some(StopMode::Shutdown),
            2 => Some(StopMode::Restart),
            _ => None,
        }
    }
}

/// The close reason: `"server restarting: retry after 1234 ms"` (at most 123 bytes, as a close reason must be).
pub fn close_reason(mode: StopMode, retry_after_ms: u64) -> String {
    format!("{}: retry after {retry_after_ms} ms", mode.reason())
}

/// One loop thread's drain: the connections to close, in order, each with its due time.
///
/// INVARIANT: `taken <= planned + late` where `late` counts entries pushed with [`Drain::push_late`]; the
/// first `planned` entries popped are due over the window, every later one at its end.
#[derive(Debug)]
pub struct Drain<K> {
    pub mode: StopMode,
    start: Instant,
    window: Duration,
    /// Entries spread over the window (those queued at the start).
    planned: usize,
    /// Entries popped so far.
    taken: usize,
    queue: VecDeque<K>,
    /// Jitter state for the reconnect hints (splitmix64).
    seed: u64,
}

impl<K> Drain<K> {
    /// A drain that starts at `start` and spreads `keys`, in order, over `window`.
    pub fn new(mode: StopMode, start: Instant, window: Duration, keys: Vec<K>, seed: u64) -> Self {
        Drain { mode, start, window, planned: keys.len(), taken: 0, queue: keys.into(), seed }
    }

    /// When the window ends: late arrivals are due then.
    pub fn end(&self) -> Instant {
        self.start + self.window
    }

    /// Queues a connection that arrived after the start: due at the end of the window (or now, after it).
    pub fn push_late(&mut self, key: K) {
        self.queue.push_back(key);
    }

    /// When the next entry is due; `None` when none is left.
    pub fn next_due(&self) -> Option<Instant> {
        if self.queue.is_empty() {
            return None;
        }
        Some(self.due_at(self.taken))
    }

    fn due_at(&self, i: usize) -> Instant {
        if i >= self.planned {
            return self.end();
        }
        // i < planned, so the product is below window * (planned + 1): computed in u128 nanoseconds.
        let nanos = self.window.as_nanos() * (i as u128 + 1) / (self.planned as u128 + 1);
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The next entry if it is due by `now`, with the reconnect delay to suggest to it (ms, in `0..=window`).
    pub fn pop_due(&mut self, now: Instant) -> Option<(K, u64)> {
        if self.next_due()? > now {
            return None;
        }
        let key = self.queue.pop_front()?;
        self.taken += 1;
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        let hint = match window_ms.checked_add(1) {
            Some(span) => splitmix64(&mut self.seed) % span,
            None => window_ms,
        };
        Some((key, hint))
    }

    /// Entries not yet popped.
    #[cfg(test)]
    pub fn remaining(&self) -> usize {
        self.queue.len()
    }
}

/// One step of splitmix64: a well-mixed 64-bit value from a counter (not for secrets).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn closes_spread_evenly_over_the_window() {
        let t0 = Instant::now();
        let mut d = Drain::new(StopMode::Restart, t0, ms(1000), (0..4).collect(), 7);
        // At 200 ms steps, none at the start or the end.
        assert_eq!(d.pop_due(t0), None, "nobody is closed at the very moment of the stop");
        assert_eq!(d.next_due(), Some(t0 + ms(200)));
        assert_eq!(d.pop_due(t0 + ms(200)).map(|(k, _)| k), Some(0));
        assert_eq!(d.pop_due(t0 + ms(200)), None, "the second is not due yet");
        assert_eq!(d.pop_due(t0 + ms(399)), None);
        assert_eq!(d.pop_due(t0 + ms(400)).map(|(k, _)| k), Some(1));
        // A late pass takes everything due by then, in order.
        let late: Vec<u32> = std::iter::from_fn(|| d.pop_due(t0 + ms(900))).map(|(k, _)| k).collect();
        assert_eq!(late, vec![2, 3]);
        assert_eq!(d.next_due(), None);
        assert_eq!(d.remaining(), 0);
    }

    #[test]
    fn late_arrivals_are_due_at_the_end_of_the_window() {
        let t0 = Instant::now();
        let mut d = Drain::new(StopMode::Shutdown, t0, ms(1000), vec![1u32], 1);
        assert!(d.pop_due(t0 + ms(500)).is_some());
        d.push_late(9);
        assert_eq!(d.next_due(), Some(t0 + ms(1000)));
        assert_eq!(d.pop_due(t0 + ms(999)), None);
        assert_eq!(d.pop_due(t0 + ms(1000)).map(|(k, _)| k), Some(9));
    }

    #[test]
    fn a_zero_window_closes_everyone_at_once_with_a_zero_hint() {
        let t0 = Instant::now();
        let mut d = Drain::new(StopMode::Shutdown, t0, Duration::ZERO, (0..100).collect::<Vec<u32>>(), 3);
        let all: Vec<(u32, u64)> = std::iter::from_fn(|| d.pop_due(t0)).collect();
        assert_eq!(all.len(), 100);
        assert!(all.iter().all(|&(_, hint)| hint == 0));
    }

    #[test]
    fn hints_stay_within_the_window_and_vary() {
        let t0 = Instant::now();
        let mut d = Drain::new(StopMode::Restart, t0, ms(2000), (0..1000).collect::<Vec<u32>>(), 42);
        let hints: Vec<u64> = std::iter::from_fn(|| d.pop_due(t0 + ms(2000))).map(|(_, h)| h).collect();
        assert_eq!(hints.len(), 1000);
        assert!(hints.iter().all(|&h| h <= 2000));
        let (lo, hi) = (hints.iter().filter(|&&h| h < 1000).count(), hints.iter().filter(|&&h| h >= 1000).count());
        assert!(lo > 400 && hi > 400, "hints should spread over the window: {lo} below 1 s, {hi} above");
    }

    #[test]
    fn modes_name_their_close_code_and_fit_a_close_reason() {
        assert_eq!(StopMode::Shutdown.close_code(), 1001);
        assert_eq!(StopMode::Restart.close_code(), 1012);
        for mode in [StopMode::Shutdown, StopMode::Restart] {
            assert_eq!(StopMode::from_u8(mode.to_u8()), Some(mode));
            assert!(close_reason(mode, u64::MAX).len() <= 123);
        }
        assert_eq!(StopMode::from_u8(0), None);
        assert_eq!(close_reason(StopMode::Restart, 1234), "server restarting: retry after 1234 ms");
    }
}
