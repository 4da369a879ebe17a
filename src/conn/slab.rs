//! A slab whose keys carry a generation, so a stale event for a freed and reused slot is ignored, never
//! delivered to the new occupant.

/// Slot index (low 32 bits) and generation (the 28 bits above). Also the mio token, and (with an operation kind
/// above it) the io_uring `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey(pub u64);

impl ConnKey {
    fn new(index: usize, generation: u32) -> Self {
        Self((u64::from(generation) << 32) | index as u64)
    }

    pub fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// Generations use 28 bits, so that a key and a 4-bit operation kind fit in one io_uring `user_data`.
const GENERATION_MASK: u32 = (1 << 28) - 1;

struct Entry<T> {
    generation: u32,
    value: T,
}

/// Slab of `T` addressed by generational keys.
pub struct GenSlab<T> {
    slots: slab::Slab<Entry<T>>,
    next_generation: u32,
}

impl<T> GenSlab<T> {
    /// Generation 0 is never used, so no key equals a small integer (the loop's fixed tokens stay distinct).
    pub fn new() -> Self {
        Self { slots: slab::Slab::new(), next_generation: 1 }
    }

    pub fn insert(&mut self, value: T) -> ConnKey {
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & GENERATION_MASK;
        self.next_generation = self.next_generation.max(1);
        let index = self.slots.insert(Entry { generation, value });
        ConnKey::new(index, generation)
    }

    pub fn get(&self, key: ConnKey) -> Option<&T> {
        self.slots.get(key.index()).filter(|e| e.generation == key.generation()).map(|e| &e.value)
    }

    pub fn get_mut(&mut self, key: ConnKey) -> Option<&mut T> {
        self.slots.get_mut(key.index()).filter(|e| e.generation == key.generation()).map(|e| &mut e.value)
    }

    pub fn remove(&mut self, key: ConnKey) -> Option<T> {
        self.get(key)?;
        Some(self.slots.remove(key.index()).value)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Keys of every live entry.
    pub fn keys(&self) -> impl Iterator<Item = ConnKey> + '_ {
        self.slots.iter().map(|(i, e)| ConnKey::new(i, e.generation))
    }

    /// Every live entry with its key.
    pub fn iter(&self) -> impl Iterator<Item = (ConnKey, &T)> + '_ {
        self.slots.iter().map(|(i, e)| (ConnKey::new(i, e.generation), &e.value))
    }
}

impl<T> Default for GenSlab<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_key_is_ignored_after_reuse() {
        let mut s = GenSlab::new();
        let a = s.insert("a");
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert("b");
        assert_eq!(a.index(), b.index(), "slot reused");
        assert_ne!(a, b);
        assert_eq!(s.get(a), None);
        assert_eq!(s.remove(a), None);
        assert_eq!(s.get(b), Some(&"b"));
        assert!(a.0 > u32::MAX as u64, "generation never 0, so keys never collide with small tokens");
    }
}
