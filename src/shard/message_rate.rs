//! The per-connection limit on what a WebSocket client sends: control messages (subscribe, unsubscribe,
//! publish, and anything that fails to parse as one) and pings, `client_message_rate` per second with a burst
//! twice as large. A client beyond it is abusing the gateway (each of those costs a parse and usually a reply)
//! and is closed with `1008`. Pongs do not count (they answer the gateway's pings), nor does anything in `echo`
//! mode (conformance suites flood on purpose).
//!
//! A connection gets a bucket with its first counted message: the many clients that only listen hold none.

use std::collections::HashMap;
use std::time::Instant;

use crate::conn::{ConnKey, TokenBucket};

/// The buckets of the connections of one loop thread that sent something.
#[derive(Debug)]
pub struct MessageRate {
    /// Per second; 0 = no limit.
    rate: u32,
    buckets: HashMap<ConnKey, TokenBucket>,
}

impl MessageRate {
    pub fn new(rate: u32) -> Self {
        Self { rate, buckets: HashMap::new() }
    }

    /// The burst a client may send at once.
    pub fn burst(&self) -> u32 {
        self.rate.saturating_mul(2)
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Counts one message of `key`; false when it is over the limit.
    pub fn allow(&mut self, key: ConnKey, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let (rate, burst) = (self.rate, self.burst());
        self.buckets.entry(key).or_insert_with(|| TokenBucket::full(burst, now)).take(rate, burst, now)
    }

    /// The connection is freed.
    pub fn forget(&mut self, key: ConnKey) {
        if !self.buckets.is_empty() {
            self.buckets.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_of_twice_the_rate_then_the_rate_per_connection() {
        let t = Instant::now();
        let mut limit = MessageRate::new(10);
        let (a, b) = (ConnKey(1 << 32), ConnKey(2 << 32));
        assert!((0..20).all(|_| limit.allow(a, t)));
        assert!(!limit.allow(a, t));
        assert!(limit.allow(b, t), "each connection has its own bucket");
        assert!(limit.allow(a, t + Duration::from_millis(100)));
        limit.forget(a);
        assert!(limit.allow(a, t + Duration::from_millis(100)), "a new connection in a reused slot starts full");
        assert!((0..1000).all(|_| MessageRate::new(0).allow(a, t)), "0 = no limit");
    }
}
