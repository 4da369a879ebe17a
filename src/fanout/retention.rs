//! How much of the broadcast log a connection may hold, whatever state it is in: the slow-consumer rule and the
//! loop's pull budget. Pure decisions over positions; the loop thread applies them (closes, cancels, trims).
//!
//! The rules, with `lag = head - cursor`:
//! - an open subscriber holds the log from its cursor while `lag <= max_lag`; past it, it is closed as a slow
//!   consumer and lets go (a closing connection never holds the log: it pins at most the one chunk it is in the
//!   middle of, see [`crate::fanout::Pinned`]);
//! - a subscriber whose send is in flight (io_uring) holds the log from its cursor until the completion, since
//!   the kernel may still read those bytes; past `max_lag` its send is cancelled, so the completion comes now;
//! - the loop takes no more from the feed while its log holds [`Retention::pull_budget`] bytes or more. The
//!   budget exceeds `max_lag` by two chunks, so whatever holds the log's oldest chunk then is past `max_lag`
//!   and is let go at the next trim: the log cannot stay at its budget;
//! - nor while half of `max_lag` or more has arrived since the last fan-out began (bytes not yet offered to
//!   every subscriber), so that a loop catching up after a stall never makes its well-behaved subscribers look
//!   like slow consumers: whoever was at the head when the pass began is at most half `max_lag` (plus a chunk)
//!   behind when its send is judged.
//!
//! So a loop's log holds at most `pull_budget` plus one chunk.

use super::log::Cursor;

/// A connection that may hold the log, as the trim phase sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub cursor: Cursor,
    /// Still an open subscriber (not closing).
    pub open: bool,
    /// A send is in flight: the kernel may read the log from `cursor` on until its completion.
    pub sending: bool,
    /// That send's cancel has been asked for already.
    pub cancel_sent: bool,
}

/// What the loop does with a [`Holder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Verdict {
    /// Keep the log from the holder's cursor on.
    pub hold: bool,
    /// Close it as a slow consumer (1008).
    pub close: bool,
    /// Cancel its send in flight.
    pub cancel_send: bool,
}

/// The retention policy of one loop thread's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most bytes an open subscriber may be behind the head.
    pub max_lag: u64,
    /// Largest chunk the log can hold (a batch: its cut size plus one frame).
    pub max_chunk: u64,
}

impl Retention {
    /// Bytes of log at or above which the loop stops taking batches from the feed.
    pub fn pull_budget(&self) -> u64 {
        self.max_lag.saturating_add(self.max_chunk.saturating_mul(2))
    }

    /// Whether the loop may take another batch while its log retains `retained` bytes, `unoffered` of them
    /// newer than what the last fan-out offered everyone. One batch is always taken into an empty window.
    pub fn may_pull(&self, retained: u64, unoffered: u64) -> bool {
        retained < self.pull_budget() && (unoffered == 0 || unoffered < self.max_lag / 2)
    }

    /// Whether a subscriber `lag` bytes behind is a slow consumer.
    pub fn too_far_behind(&self, lag: u64) -> bool {
        lag > self.max_lag
    }

    /// The rules in the module docs, for one holder when the log's head is at `head`.
    pub fn judge(&self, holder: Holder, head: Cursor) -> Verdict {
        self.judge_late(holder, self.too_far_behind(head.saturating_sub(holder.cursor)), holder.cursor < head)
    }

    /// The same, with whether the holder is past its backlog limits (`late`: in bytes, as [`Retention::judge`],
    /// or in messages too, `fanout::LagLimits`) and whether anything is pending for it decided by the caller.
    pub fn judge_late(&self, holder: Holder, late: bool, pending: bool) -> Verdict {
        if holder.sending {
            return Verdict { hold: true, close: late && holder.open, cancel_send: late && !holder.cancel_sent };
        }
        if !holder.open {
            return Verdict { hold: false, close: false, cancel_send: false };
        }
        Verdict { hold: !late && pending, close: late, cancel_send: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Retention = Retention { max_lag: 100, max_chunk: 10 };

    fn holder(cursor: Cursor, open: bool, sending: bool, cancel_sent: bool) -> Holder {
        Holder { cursor, open, sending, cancel_sent }
    }

    fn v(hold: bool, close: bool, cancel_send: bool) -> Verdict {
        Verdict { hold, close, cancel_send }
    }

    #[test]
    fn open_subscribers_hold_until_they_pass_the_lag_limit() {
        assert_eq!(R.judge(holder(1000, true, false, false), 1000), v(false, false, false), "at the head");
        assert_eq!(R.judge(holder(900, true, false, false), 1000), v(true, false, false), "exactly max_lag");
        assert_eq!(R.judge(holder(899, true, false, false), 1000), v(false, true, false), "past it: closed");
    }

    #[test]
    fn closing_connections_never_hold_the_log_unless_sending() {
        assert_eq!(R.judge(holder(0, false, false, false), 1000), v(false, false, false));
        assert_eq!(R.judge(holder(950, false, true, false), 1000), v(true, false, false));
        assert_eq!(R.judge(holder(0, false, true, false), 1000), v(true, false, true), "cancel, hold meanwhile");
        assert_eq!(R.judge(holder(0, false, true, true), 1000), v(true, false, false), "cancel once");
    }

    #[test]
    fn a_late_send_in_flight_is_cancelled_and_its_subscriber_closed() {
        assert_eq!(R.judge(holder(950, true, true, false), 1000), v(true, false, false));
        assert_eq!(R.judge(holder(0, true, true, false), 1000), v(true, true, true));
    }

    #[test]
    fn the_pull_budget_leaves_the_oldest_holder_past_the_limit() {
        assert_eq!(R.pull_budget(), 120);
        assert!(R.may_pull(119, 0) && !R.may_pull(120, 0));
        assert!(R.may_pull(60, 49) && !R.may_pull(60, 50), "half of max_lag not yet offered stops the pull");
        let tiny = Retention { max_lag: 1, max_chunk: 10 };
        assert!(tiny.may_pull(0, 0) && !tiny.may_pull(10, 10), "one batch at a time at least");
        // At the budget, a holder anywhere in the oldest chunk is more than max_lag behind.
        for cursor in 0..R.max_chunk {
            let lag = R.pull_budget() - cursor;
            assert!(R.too_far_behind(lag), "{cursor}");
        }
        let huge = Retention { max_lag: u64::MAX, max_chunk: 10 };
        assert!(huge.may_pull(u64::MAX - 1, 0));
    }
}
