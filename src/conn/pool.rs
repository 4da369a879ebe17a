//! A loop thread's pool of byte buffers: connections borrow one only while they have bytes in flight.

/// Bounded free list of `Vec<u8>`. Buffers that grew too large are freed rather than pooled, so the pool's
/// memory stays at most `max_pooled × max_pooled_capacity`.
pub struct BufPool {
    free: Vec<Vec<u8>>,
    max_pooled: usize,
    max_pooled_capacity: usize,
    initial_capacity: usize,
}

impl BufPool {
    pub fn new(max_pooled: usize, initial_capacity: usize, max_pooled_capacity: usize) -> Self {
        Self { free: Vec::new(), max_pooled, max_pooled_capacity, initial_capacity }
    }

    /// An empty buffer with some capacity.
    pub fn take(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_else(|| Vec::with_capacity(self.initial_capacity))
    }

    /// Returns `buf` (whatever its contents) and leaves an unallocated `Vec` in its place.
    pub fn give(&mut self, buf: &mut Vec<u8>) {
        let mut buf = std::mem::take(buf);
        if buf.capacity() == 0 {
            return;
        }
        if self.free.len() < self.max_pooled && buf.capacity() <= self.max_pooled_capacity {
            buf.clear();
            self.free.push(buf);
        }
    }

    pub fn pooled(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        let mut pool = BufPool::new(1, 16, 64);
        let mut a = pool.take();
        a.extend_from_slice(b"abc");
        let cap = a.capacity();
        pool.give(&mut a);
        assert_eq!(a.capacity(), 0, "connection keeps no memory");
        let b = pool.take();
        assert!(b.is_empty() && b.capacity() == cap);
        let mut big = Vec::with_capacity(1000);
        big.push(1);
        pool.give(&mut big);
        assert_eq!(pool.pooled(), 0, "oversized buffers are freed");
    }
}
