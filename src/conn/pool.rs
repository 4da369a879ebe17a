//! A loop thread's pool of byte buffers: connections borrow one only while they have bytes in flight.

/// Free list of `Vec<u8>` bounded in bytes: a returned buffer is kept only while the capacity of all kept buffers
/// stays within `max_pooled_bytes`, and never when it grew past `max_pooled_capacity`; others are freed.
pub struct BufPool {
    free: Vec<Vec<u8>>,
    /// Sum of the capacities in `free`. INVARIANT: `<= max_pooled_bytes`.
    pooled_bytes: usize,
    max_pooled_bytes: usize,
    max_pooled_capacity: usize,
    initial_capacity: usize,
}

impl BufPool {
    pub fn new(max_pooled_bytes: usize, initial_capacity: usize, max_pooled_capacity: usize) -> Self {
        Self { free: Vec::new(), pooled_bytes: 0, max_pooled_bytes, max_pooled_capacity, initial_capacity }
    }

    /// An empty buffer with some capacity.
    pub fn take(&mut self) -> Vec<u8> {
        match self.free.pop() {
            Some(buf) => {
                self.pooled_bytes -= buf.capacity();
                buf
            }
            None => Vec::with_capacity(self.initial_capacity),
        }
    }

    /// Returns `buf` (whatever its contents) and leaves an unallocated `Vec` in its place.
    pub fn give(&mut self, buf: &mut Vec<u8>) {
        let mut buf = std::mem::take(buf);
        if buf.capacity() == 0 {
            return;
        }
        let capacity = buf.capacity();
        if capacity <= self.max_pooled_capacity && self.pooled_bytes + capacity <= self.max_pooled_bytes {
            buf.clear();
            self.pooled_bytes += capacity;
            self.free.push(buf);
        }
    }

    pub fn pooled(&self) -> usize {
        self.free.len()
    }

    /// Capacity of the buffers kept.
    pub fn pooled_bytes(&self) -> usize {
        self.pooled_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        let mut pool = BufPool::new(64, 16, 64);
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

    #[test]
    fn keeps_at_most_max_pooled_bytes() {
        let mut pool = BufPool::new(100, 16, 64);
        let mut bufs: Vec<Vec<u8>> = (0..4).map(|_| Vec::with_capacity(40)).collect();
        let caps: usize = bufs.iter().take(2).map(Vec::capacity).sum();
        for b in &mut bufs {
            pool.give(b);
        }
        assert_eq!(pool.pooled(), 2, "two 40-byte buffers fit in 100 bytes, a third does not");
        assert_eq!(pool.pooled_bytes(), caps);
        let _ = pool.take();
        assert_eq!(pool.pooled_bytes(), caps / 2);
    }
}
