//! When a worker's topic connections drop on purpose and when they come back: churn, the resume storm, and the
//! queue of reconnections. Pure scheduling over connection slots and CLOCK_MONOTONIC times; the worker closes
//! and opens the sockets.
//!
//! - **Churn** (`--churn-interval MS`): every connection drops once per interval and reconnects at once,
//!   resuming each topic from its last position. The process's `n` connections are spread evenly over the
//!   interval — drop `e` is of connection `e mod n`, at `t0 + e·interval/n`, `t0` being when the parent sent
//!   the window (the start of the warm-up) — so reconnections arrive at a steady `N / interval` per second
//!   over all processes, never in bursts. Churn stops at the end of the window; connections away then still
//!   come back (during the grace period, which must be long enough for their replay).
//! - **Storm** (`--storm-at S --storm-away MS`): `S` seconds into the window, every open connection of every
//!   process drops at once (the processes share the clock and the window), and all reconnect `MS` later.
//! - **Reconnections** wait in a queue by due time: at once after a churn drop, after `--storm-away` for the
//!   storm, and [`RETRY_NS`] after a failed attempt or a close by the server. They start like first
//!   connections, within `--max-pending` attempts in flight.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::topics::TopicPlan;

/// Wait before retrying a failed reconnection, or reconnecting after the server closed.
pub const RETRY_NS: u64 = 100_000_000;

#[derive(Debug)]
struct Churn {
    interval_ns: u64,
    /// Schedule origin and end (no drop due at or after it); 0 until the window arrives.
    t0: u64,
    end: u64,
    /// Next drop number `e`.
    next: u64,
}

#[derive(Debug)]
struct Storm {
    at_ms: u64,
    away_ns: u64,
    /// Absolute time, once the window is known.
    at_ns: Option<u64>,
    fired: bool,
}

/// Counts for the report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResumeCounts {
    pub drops: u64,
    pub reconnects: u64,
    pub reconnect_failures: u64,
    pub churn_skipped: u64,
}

#[derive(Debug)]
pub struct Resumer {
    churn: Option<Churn>,
    storm: Option<Storm>,
    /// Reconnections by due time (then slot). INVARIANT: a slot is in here at most once, while it has no socket.
    queue: BinaryHeap<Reverse<(u64, usize)>>,
    pub counts: ResumeCounts,
}

impl Resumer {
    /// `None` when the plan neither churns nor storms (connections are then never reopened).
    pub fn new(plan: &TopicPlan) -> Option<Self> {
        if !plan.resumes() {
            return None;
        }
        Some(Resumer {
            churn: plan.churn_interval_ms.map(|ms| Churn { interval_ns: ms * 1_000_000, t0: 0, end: 0, next: 0 }),
            storm: plan.storm_at_ms.map(|at_ms| Storm {
                at_ms,
                away_ns: plan.storm_away_ms * 1_000_000,
                at_ns: None,
                fired: false,
            }),
            queue: BinaryHeap::new(),
            counts: ResumeCounts::default(),
        })
    }

    /// The window arrived at `now`: churn starts, the storm gets its time.
    pub fn set_window(&mut self, now: u64, start_ns: u64, end_ns: u64) {
        if let Some(c) = &mut self.churn {
            c.t0 = now;
            c.end = end_ns;
        }
        if let Some(s) = &mut self.storm {
            s.at_ns = Some(start_ns + s.at_ms * 1_000_000);
        }
    }

    fn churn_time(c: &Churn, e: u64, n: u64) -> u64 {
        c.t0 + (u128::from(e) * u128::from(c.interval_ns) / u128::from(n)) as u64
    }

    /// The next connection (of `n`) whose churn drop is due at `now`, if any; each is returned once.
    pub fn next_churn(&mut self, now: u64, n: usize) -> Option<usize> {
        let c = self.churn.as_mut()?;
        if c.t0 == 0 || n == 0 {
            return None;
        }
        let at = Self::churn_time(c, c.next, n as u64);
        if at > now || at >= c.end {
            return None;
        }
        let slot = (c.next % n as u64) as usize;
        c.next += 1;
        Some(slot)
    }

    /// `true` once, when the storm is due: the caller drops every open connection and [`Self::schedule`]s each
    /// to come back [`Self::storm_away_ns`] later.
    pub fn storm_due(&mut self, now: u64) -> bool {
        match &mut self.storm {
            Some(s) if !s.fired && s.at_ns.is_some_and(|at| now >= at) => {
                s.fired = true;
                true
            }
            _ => false,
        }
    }

    /// How long storm victims stay away.
    pub fn storm_away_ns(&self) -> u64 {
        self.storm.as_ref().map_or(0, |s| s.away_ns)
    }

    /// Queues `slot` to reconnect at `at`.
    pub fn schedule(&mut self, slot: usize, at: u64) {
        self.queue.push(Reverse((at, slot)));
    }

    /// The next slot whose reconnection is due at `now`.
    pub fn next_reconnect(&mut self, now: u64) -> Option<usize> {
        match self.queue.peek() {
            Some(Reverse((at, _))) if *at <= now => self.queue.pop().map(|Reverse((_, slot))| slot),
            _ => None,
        }
    }

    /// The earliest time something is due (a drop, the storm, a reconnection), for the loop's timer.
    pub fn next_deadline(&self, n: usize) -> Option<u64> {
        let churn = self.churn.as_ref().filter(|c| c.t0 != 0 && n > 0).map(|c| Self::churn_time(c, c.next, n as u64));
        let churn = churn.filter(|&at| self.churn.as_ref().is_some_and(|c| at < c.end));
        let storm = self.storm.as_ref().filter(|s| !s.fired).and_then(|s| s.at_ns);
        let queued = self.queue.peek().map(|Reverse((at, _))| *at);
        [churn, storm, queued].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topics::Format;

    fn plan(churn: Option<u64>, storm: Option<u64>) -> TopicPlan {
        TopicPlan::new(10, 2, Format::Json).with_churn(churn).with_storm(storm, 300)
    }

    #[test]
    fn churn_spreads_drops_evenly_until_the_window_ends() {
        assert!(Resumer::new(&plan(None, None)).is_none());
        let mut r = Resumer::new(&plan(Some(1_000), None)).unwrap();
        assert_eq!(r.next_churn(5, 4), None, "nothing before the window");
        let t0 = 1_000_000_000;
        r.set_window(t0, t0 + 500_000_000, t0 + 2_500_000_000);
        // 4 connections, 1 s: one drop every 250 ms, in slot order, then round again.
        let mut drops = Vec::new();
        let mut now = t0;
        while now < t0 + 3_000_000_000 {
            while let Some(slot) = r.next_churn(now, 4) {
                drops.push((slot, (now - t0) / 1_000_000));
            }
            now += 50_000_000;
        }
        let want: Vec<(usize, u64)> = (0..10).map(|e| (e % 4, e as u64 * 250)).collect();
        assert_eq!(drops, want, "10 drops before the window's end at 2.5 s");
        assert_eq!(r.next_deadline(4), None);
    }

    #[test]
    fn storm_fires_once_and_reconnections_come_in_due_order() {
        let mut r = Resumer::new(&plan(None, Some(200))).unwrap();
        assert!(!r.storm_due(u64::MAX - 1), "no window yet");
        r.set_window(10, 1_000, 9_000_000_000);
        assert_eq!(r.next_deadline(3), Some(1_000 + 200_000_000));
        assert!(!r.storm_due(1_000));
        assert!(r.storm_due(200_001_000));
        assert!(!r.storm_due(200_001_001));
        assert_eq!(r.storm_away_ns(), 300_000_000);
        r.schedule(2, 50);
        r.schedule(0, 40);
        r.schedule(1, 60);
        assert_eq!(r.next_deadline(3), Some(40));
        assert_eq!(r.next_reconnect(39), None);
        assert_eq!(r.next_reconnect(55), Some(0));
        assert_eq!(r.next_reconnect(55), Some(2));
        assert_eq!(r.next_reconnect(55), None);
        assert_eq!(r.next_reconnect(60), Some(1));
    }
}
