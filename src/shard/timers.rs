//! Coarse deadlines. Each queue has one fixed duration, so deadlines arrive in insertion order and a queue is
//! a FIFO: adding and expiring are O(1), and nothing is kept per connection but a queue entry. Entries for
//! connections that moved on (or were freed: generational keys) are skipped when they expire.

use std::collections::VecDeque;
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
}
