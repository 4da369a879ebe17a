//! The loop's budget for private bytes (`max_loop_private_bytes`): what connections have queued for themselves
//! alone (pongs, echoes, replies, notices, close frames). Each connection is bounded by `max_private_bytes`; this
//! bounds their sum, so that many misbehaving clients (pinging and never reading) cannot multiply the
//! per-connection limit.
//!
//! Counting: every write of private bytes marks its connection dirty, and each flush of a connection counts what
//! it has pending then (`Conn::private_counted`), so the total is at most one pass behind. (Private bytes handed
//! to an io_uring send in flight leave the count until the completion puts back what was not written.) Past the
//! budget, the trim phase closes the connections holding the most with 1008 until the total is within it again.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::Shard;
use crate::client::Position;
use crate::conn::{Conn, ConnKey, Phase};
use crate::reactor::Reactor;
use crate::shard::input::{self, InputCx};
use crate::shard::stats::ShardStats;

/// The loop's new total after counting `conn`'s pending private bytes again (`total` before).
#[inline]
pub(super) fn recount(conn: &mut Conn, total: u64) -> u64 {
    let now = u32::try_from(conn.outbuf.len() - conn.out_pos).unwrap_or(u32::MAX);
    let before = std::mem::replace(&mut conn.private_counted, now);
    total - u64::from(before) + u64::from(now)
}

impl<R: Reactor> Shard<R> {
    /// A connection being freed leaves the count.
    pub(super) fn uncount_private(&mut self, conn: &Conn) {
        self.private_bytes -= u64::from(conn.private_counted);
    }

    /// Past `max_loop_private_bytes`: closes the open connections with the most private bytes pending (1008)
    /// until the rest are within it. Connections already closing keep what they have (their close frame is in
    /// it) and are gone within the linger time.
    pub(super) fn enforce_private_budget(&mut self) {
        let stats = &self.shared.shards[self.id];
        stats.loop_private_bytes.store(self.private_bytes, Relaxed);
        let budget = self.settings.max_loop_private_bytes;
        if self.private_bytes <= budget {
            return;
        }
        // Rare (an abuse case): a scan of the connections, largest holders first.
        // What closing connections hold goes with them (within the linger time): only the rest counts.
        let mut closing = 0u64;
        let mut holders: Vec<(u32, ConnKey)> = Vec::new();
        for (key, c) in self.conns.iter() {
            match c.phase {
                Phase::Open if c.private_counted > 0 => holders.push((c.private_counted, key)),
                Phase::Open => {}
                _ => closing += u64::from(c.private_counted),
            }
        }
        holders.sort_unstable_by_key(|&(bytes, _)| std::cmp::Reverse(bytes));
        let mut excess = (self.private_bytes - closing).saturating_sub(budget);
        let mut closed = 0u64;
        for (bytes, key) in holders {
            if excess == 0 {
                break;
            }
            excess = excess.saturating_sub(u64::from(bytes));
            let mut cx = input_cx!(self);
            let Some(conn) = self.conns.get_mut(key) else { continue };
            input::queue_close(conn, key, 1008, "slow consumer: the gateway's reply budget is spent", &mut cx);
            closed += 1;
        }
        ShardStats::add(&stats.private_budget_closes, closed);
        if let Some(suppressed) = self.private_log.allow(Instant::now()) {
            tracing::warn!(
                shard = self.id,
                private_bytes = self.private_bytes,
                budget,
                closed,
                suppressed,
                "max_loop_private_bytes reached: closing the connections holding the most with 1008"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recount_tracks_each_connections_pending_bytes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut c = Conn::new(stream);
        let mut total = 100; // other connections
        c.outbuf = vec![0; 50];
        total = recount(&mut c, total);
        assert_eq!((total, c.private_counted), (150, 50));
        c.out_pos = 20;
        total = recount(&mut c, total);
        assert_eq!(total, 130, "written bytes leave the count");
        c.outbuf.clear();
        c.out_pos = 0;
        assert_eq!(recount(&mut c, total), 100);
    }
}
