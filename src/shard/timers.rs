//! Coarse deadlines. Each queue has one fixed duration, so deadlines arrive in insertion order and a queue is
//! a FIFO: adding and expiring are O(1), and nothing is kept per connection but a queue entry. Entries for
//! connections that moved on (or were freed: generational keys) are skipped when they expire.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use crate::conn::ConnKey;

#[derive(Debug)]
pub struct DeadlineQueue {
    after: Duration,
    entries: VecDeque<(Instant, ConnKey)>,
}

impl DeadlineQueue {
    pub fn new(after: Duration) -> Self {
        Self { after, entries: VecDeque::new() }
    }

    pub fn push(&mut self, now: Instant, key: ConnKey) {
        self.entries.push_back((now + self.after, key));
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.front().map(|e| e.0)
    }

    /// The keys queued, oldest first (may include connections gone since: their keys match no live slot).
    pub fn keys(&self) -> impl Iterator<Item = ConnKey> + '_ {
        self.entries.iter().map(|&(_, key)| key)
    }

    /// Pops the next entry whose deadline has passed.
    pub fn pop_expired(&mut self, now: Instant) -> Option<ConnKey> {
        match self.entries.front() {
            Some(&(deadline, key)) if deadline <= now => {
                self.entries.pop_front();
                Some(key)
            }
            _ => None,
        }
    }
}

/// Deadlines of any length (token expiries: each connection's own), in a min-heap. A connection whose deadline
/// moved (a refreshed token) leaves its old entry behind; callers check an expired entry against the
/// connection's current deadline. Stale entries are dropped when they outnumber the live ones
/// ([`ExpiryQueue::compact`]), so the heap stays within twice the connections that have a deadline, plus a
/// constant.
#[derive(Debug, Default)]
pub struct ExpiryQueue {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl ExpiryQueue {
    pub fn push(&mut self, at: Instant, key: ConnKey) {
        self.heap.push(Reverse((at, key.0)));
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops the next entry whose deadline has passed, with that deadline.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(Instant, ConnKey)> {
        match self.heap.peek() {
            Some(&Reverse((at, key))) if at <= now => {
                self.heap.pop();
                Some((at, ConnKey(key)))
            }
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Keeps only the entries `live` says are current (O(n); called when the heap has grown past twice what
    /// is live, so amortised O(1) per push).
    pub fn compact(&mut self, mut live: impl FnMut(Instant, ConnKey) -> bool) {
        self.heap.retain(|Reverse((at, key))| live(*at, ConnKey(*key)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_expiry() {
        let t0 = Instant::now();
        let mut q = DeadlineQueue::new(Duration::from_millis(10));
        q.push(t0, ConnKey(1 << 32));
        q.push(t0 + Duration::from_millis(5), ConnKey(2 << 32));
        assert_eq!(q.pop_expired(t0 + Duration::from_millis(9)), None);
        assert_eq!(q.pop_expired(t0 + Duration::from_millis(12)), Some(ConnKey(1 << 32)));
        assert_eq!(q.pop_expired(t0 + Duration::from_millis(12)), None);
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(15)));
        assert_eq!(q.keys().collect::<Vec<_>>(), vec![ConnKey(2 << 32)]);
    }

    #[test]
    fn expiries_in_deadline_order_and_compaction() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = ExpiryQueue::default();
        q.push(t0 + ms(30), ConnKey(1 << 32));
        q.push(t0 + ms(10), ConnKey(2 << 32));
        q.push(t0 + ms(20), ConnKey(3 << 32));
        q.push(t0 + ms(40), ConnKey(1 << 32)); // key 1 refreshed: its entry at 30 ms is stale
        assert_eq!(q.next_deadline(), Some(t0 + ms(10)));
        assert_eq!(q.pop_expired(t0 + ms(5)), None);
        assert_eq!(q.pop_expired(t0 + ms(25)), Some((t0 + ms(10), ConnKey(2 << 32))));
        assert_eq!(q.pop_expired(t0 + ms(25)), Some((t0 + ms(20), ConnKey(3 << 32))));
        assert_eq!(q.pop_expired(t0 + ms(25)), None);
        q.compact(|at, key| !(key == ConnKey(1 << 32) && at == t0 + ms(30)));
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop_expired(t0 + ms(100)), Some((t0 + ms(40), ConnKey(1 << 32))));
    }
}
