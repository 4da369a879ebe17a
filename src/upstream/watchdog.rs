//! The silence watchdog and the upstream sequence check: sans-IO, driven by the feed thread (no thread of their
//! own), which passes `now` in and applies what they return (log, counters, `/healthz`, a reconnect).

use std::time::{Duration, Instant};

/// Watches a progress count (messages and connections of the watched source) for silence.
#[derive(Debug)]
pub struct Watchdog {
    /// Zero: off.
    silence: Duration,
    progress: u64,
    last_change: Instant,
    silent: bool,
}

/// What the watchdog has to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Verdict {
    /// No progress for this long (reported once per silence).
    Silent { for_: Duration },
    /// Progress again after a silence that lasted this long.
    Resumed { after: Duration },
}

impl Watchdog {
    pub fn new(silence: Duration, now: Instant) -> Self {
        Self { silence, progress: 0, last_change: now, silent: false }
    }

    /// The watched count now (any value that changes on every message and every new connection).
    pub fn handle_progress(&mut self, progress: u64, now: Instant) -> Option<Verdict> {
        if progress == self.progress {
            return None;
        }
        self.progress = progress;
        let after = now.saturating_duration_since(self.last_change);
        self.last_change = now;
        std::mem::take(&mut self.silent).then_some(Verdict::Resumed { after })
    }

    /// Reports a silence once it has lasted `silence`.
    pub fn poll(&mut self, now: Instant) -> Option<Verdict> {
        let due = self.deadline()?;
        if now < due {
            return None;
        }
        self.silent = true;
        Some(Verdict::Silent { for_: now.saturating_duration_since(self.last_change) })
    }

    /// When [`Watchdog::poll`] next has something to say (none: off, or silent already).
    pub fn deadline(&self) -> Option<Instant> {
        (!self.silence.is_zero() && !self.silent).then(|| self.last_change + self.silence)
    }

    /// Starts the silence count again (the watched connection was just replaced).
    pub fn restart(&mut self, now: Instant) {
        self.last_change = now;
    }
}

/// Checks the upstream's own sequence numbers: each should be the last plus one.
#[derive(Debug, Default)]
pub struct SeqCheck {
    last: Option<u64>,
}

/// What one sequence number says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum SeqEvent {
    /// The first one seen, or the last plus one.
    InOrder,
    /// A jump forward: `missing` numbers were skipped (from `last + 1` to `got - 1`).
    Gap { last: u64, got: u64, missing: u64 },
    /// Not after the last one: the upstream restarted its numbering or repeats itself. Checking goes on from it.
    Reset { last: u64, got: u64 },
}

impl SeqCheck {
    /// The last number seen.
    pub fn last(&self) -> Option<u64> {
        self.last
    }

    /// One message's sequence number. Kept across reconnects: a jump over a disconnection is a gap too (what was
    /// published meanwhile is lost), which is the point.
    pub fn handle_seq(&mut self, seq: u64) -> SeqEvent {
        let last = self.last.replace(seq);
        match last {
            None => SeqEvent::InOrder,
            Some(last) if seq == last.wrapping_add(1) => SeqEvent::InOrder,
            Some(last) if seq > last => SeqEvent::Gap { last, got: seq, missing: seq - last - 1 },
            Some(last) => SeqEvent::Reset { last, got: seq },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_reported_once_then_its_end() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = Watchdog::new(ms(100), t0);
        assert_eq!(w.handle_progress(0, t0 + ms(10)), None, "no change");
        assert_eq!(w.poll(t0 + ms(99)), None);
        assert_eq!(w.deadline(), Some(t0 + ms(100)));
        assert_eq!(w.poll(t0 + ms(150)), Some(Verdict::Silent { for_: ms(150) }));
        assert_eq!(w.poll(t0 + ms(500)), None, "once per silence");
        assert_eq!(w.deadline(), None);
        assert_eq!(w.handle_progress(1, t0 + ms(600)), Some(Verdict::Resumed { after: ms(600) }));
        assert_eq!(w.handle_progress(2, t0 + ms(650)), None, "not silent: no news");
        assert_eq!(w.poll(t0 + ms(749)), None);
        assert_eq!(w.poll(t0 + ms(750)), Some(Verdict::Silent { for_: ms(100) }));
    }

    #[test]
    fn zero_silence_is_off() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(Duration::ZERO, t0);
        assert_eq!(w.deadline(), None);
        assert_eq!(w.poll(t0 + Duration::from_secs(3600)), None);
    }

    #[test]
    fn restart_counts_from_the_new_connection() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = Watchdog::new(ms(100), t0);
        w.restart(t0 + ms(80));
        assert_eq!(w.poll(t0 + ms(150)), None);
        assert!(w.poll(t0 + ms(180)).is_some());
    }

    #[test]
    fn sequence_jumps_are_gaps_and_steps_back_are_resets() {
        let mut c = SeqCheck::default();
        assert_eq!(c.handle_seq(41), SeqEvent::InOrder, "the first one sets the base");
        assert_eq!(c.handle_seq(42), SeqEvent::InOrder);
        assert_eq!(c.handle_seq(45), SeqEvent::Gap { last: 42, got: 45, missing: 2 });
        assert_eq!(c.handle_seq(46), SeqEvent::InOrder);
        assert_eq!(c.handle_seq(46), SeqEvent::Reset { last: 46, got: 46 });
        assert_eq!(c.handle_seq(1), SeqEvent::Reset { last: 46, got: 1 });
        assert_eq!(c.handle_seq(2), SeqEvent::InOrder);
        assert_eq!(c.handle_seq(u64::MAX), SeqEvent::Gap { last: 2, got: u64::MAX, missing: u64::MAX - 3 });
        assert_eq!(c.handle_seq(0), SeqEvent::InOrder, "wraps");
    }
}
