//! The chunks closing connections keep apart from the log ([`Pinned`]), each counted once however many
//! connections share it, against one byte budget per loop thread.

use std::collections::HashMap;

use super::log::{Cursor, FrameLog, Pinned};

/// A new chunk would take the pins past their budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

/// Pinned chunks, keyed by the address of their bytes (unique while pinned, whatever log they came from).
///
/// INVARIANT: `bytes` is the sum of the lengths in `by_start`, and `bytes <= budget` except that a budget
/// smaller than one chunk still admits one.
#[derive(Debug)]
pub struct Pins {
    /// Chunk address → (pins on it, its length).
    by_start: HashMap<usize, (u32, u64)>,
    bytes: u64,
    budget: u64,
}

impl Pins {
    pub fn new(budget: u64) -> Self {
        Pins { by_start: HashMap::new(), bytes: 0, budget }
    }

    /// Bytes of distinct chunks pinned now.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A pin on the chunk `cursor` is inside of (`None` at a chunk boundary, the head, or before the log).
    /// A chunk already pinned costs nothing more; a new one must fit the budget.
    pub fn pin(&mut self, log: &FrameLog, cursor: Cursor) -> Result<Option<Pinned>, OverBudget> {
        let Some(pin) = log.pin(cursor) else { return Ok(None) };
        let len = pin.chunk.len() as u64;
        match self.by_start.get_mut(&key(&pin)) {
            Some((refs, _)) => *refs += 1,
            None => {
                if self.bytes + len > self.budget && !self.by_start.is_empty() {
                    return Err(OverBudget);
                }
                self.by_start.insert(key(&pin), (1, len));
                self.bytes += len;
            }
        }
        Ok(Some(pin))
    }

    /// Gives a pin back.
    pub fn unpin(&mut self, pin: &Pinned) {
        let Some((refs, len)) = self.by_start.get_mut(&key(pin)) else {
            debug_assert!(false, "unpinning a chunk that is not pinned");
            return;
        };
        *refs -= 1;
        if *refs == 0 {
            self.bytes -= *len;
            self.by_start.remove(&key(pin));
        }
    }
}

/// A pinned chunk's key: the address of its bytes.
fn key(pin: &Pinned) -> usize {
    pin.chunk.as_ptr() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn shared_chunks_count_once_and_the_budget_holds() {
        let mut log = FrameLog::new();
        for _ in 0..3 {
            log.push(Arc::from(vec![0u8; 10]));
        }
        let mut pins = Pins::new(20);
        assert!(matches!(pins.pin(&log, 10), Ok(None)), "a chunk boundary needs no pin");
        let a = pins.pin(&log, 3).unwrap().unwrap();
        let b = pins.pin(&log, 5).unwrap().unwrap();
        assert_eq!(pins.bytes(), 10, "two connections in one chunk: counted once");
        let c = pins.pin(&log, 15).unwrap().unwrap();
        assert_eq!(pins.bytes(), 20);
        assert!(matches!(pins.pin(&log, 25), Err(OverBudget)));
        assert!(pins.pin(&log, 16).unwrap().is_some(), "a chunk already pinned still fits");
        pins.unpin(&a);
        assert_eq!(pins.bytes(), 20);
        pins.unpin(&b);
        assert_eq!(pins.bytes(), 10);
        pins.unpin(&c);
        pins.unpin(&c);
        assert_eq!(pins.bytes(), 0);
        // Two logs whose chunks start at the same position: two different chunks.
        let mut other = FrameLog::new();
        other.push(Arc::from(vec![1u8; 10]));
        let d = pins.pin(&log, 3).unwrap().unwrap();
        let e = pins.pin(&other, 3).unwrap().unwrap();
        assert_eq!(pins.bytes(), 20, "same start, different chunks: both counted");
        pins.unpin(&d);
        pins.unpin(&e);
        assert_eq!(pins.bytes(), 0);
        let tiny = &mut Pins::new(1);
        assert!(tiny.pin(&log, 1).unwrap().is_some(), "one chunk always fits");
    }
}
