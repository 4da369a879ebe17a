//! The subscribers of one topic on one loop thread: a dense list of connection keys, O(1) add and remove.

/// Dense set of subscriber keys. Removal swaps the last entry into the hole and reports which key moved, so
/// the owner can update the index it stores for that key.
#[derive(Debug, Default)]
pub struct Subscribers {
    keys: Vec<u64>,
}

impl Subscribers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key`; returns its index (store it to remove in O(1)).
    pub fn add(&mut self, key: u64) -> u32 {
        self.keys.push(key);
        (self.keys.len() - 1) as u32
    }

    /// Removes the entry at `index`. Returns the key that now occupies `index`, if one moved there.
    #[must_use]
    pub fn remove(&mut self, index: u32) -> Option<u64> {
        let index = index as usize;
        self.keys.swap_remove(index);
        self.keys.get(index).copied()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> &[u64] {
        &self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_remove_reports_moved_key() {
        let mut s = Subscribers::new();
        assert_eq!(s.add(10), 0);
        assert_eq!(s.add(11), 1);
        assert_eq!(s.add(12), 2);
        assert_eq!(s.remove(0), Some(12));
        assert_eq!(s.keys(), &[12, 11]);
        assert_eq!(s.remove(1), None);
        assert_eq!(s.keys(), &[12]);
    }
}
