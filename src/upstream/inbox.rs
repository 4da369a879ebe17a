//! Messages that clients publish (`{"op":"publish"}`), on their way from the loop threads to the feed thread,
//! which sequences them with the feed's own records: so every subscriber, on every loop thread and transport,
//! sees one order. Bounded in bytes; a loop thread that finds it full refuses the publish (`rate_limited`).
//! Not on the broadcast path: one lock per published message.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use mio::Waker;

/// One message a client published: topic and text payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub topic: Box<str>,
    pub payload: Box<[u8]>,
}

/// The queue (see the module docs).
#[derive(Debug)]
pub struct PublishInbox {
    queue: Mutex<Queue>,
    max_bytes: usize,
    waker: Arc<Waker>,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Published>,
    bytes: usize,
}

/// The inbox is full: the feed thread is behind (or the loops' backpressure holds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many published messages waiting for the feed thread")]
pub struct InboxFull;

impl PublishInbox {
    pub(super) fn new(max_bytes: usize, waker: Arc<Waker>) -> Self {
        PublishInbox { queue: Mutex::new(Queue::default()), max_bytes, waker }
    }

    /// Queues a message for the feed thread and wakes it.
    pub fn offer(&self, topic: &str, payload: &[u8]) -> Result<(), InboxFull> {
        let size = topic.len() + payload.len();
        {
            let mut q = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if q.bytes + size > self.max_bytes {
                return Err(InboxFull);
            }
            q.bytes += size;
            q.items.push_back(Published { topic: topic.into(), payload: payload.into() });
        }
        if let Err(e) = self.waker.wake() {
            tracing::error!(error = %e, "could not wake the feed thread for a published message");
        }
        Ok(())
    }

    /// Takes up to `max` messages, oldest first.
    pub(super) fn take(&self, max: usize, into: &mut Vec<Published>) {
        let mut guard = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let q = &mut *guard;
        let n = max.min(q.items.len());
        for p in q.items.drain(..n) {
            q.bytes -= p.topic.len() + p.payload.len();
            into.push(p);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_bytes_and_in_order() {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let inbox = PublishInbox::new(10, waker);
        assert_eq!(inbox.offer("a", b"1234"), Ok(()));
        assert_eq!(inbox.offer("b", b"1234"), Ok(()));
        assert_eq!(inbox.offer("c", b"12"), Err(InboxFull), "10 bytes at most");
        let mut got = Vec::new();
        inbox.take(1, &mut got);
        assert_eq!(inbox.offer("c", b"12"), Ok(()), "room again");
        inbox.take(10, &mut got);
        let topics: Vec<&str> = got.iter().map(|p| &*p.topic).collect();
        assert_eq!(topics, ["a", "b", "c"]);
        assert!(inbox.is_empty());
    }
}
