//! Rarely used per-connection state kept beside the slab, keyed like it, so that `Conn` stays in its size
//! budget (a TLS session is a few hundred bytes; a plain gateway's table stays empty).

use super::ConnKey;

/// One optional `T` per slab slot. An entry answers only to the key it was inserted with: a slot reused by a
/// new connection finds nothing, even if the old entry was never removed.
#[derive(Debug)]
pub struct SideTable<T> {
    slots: Vec<Option<(ConnKey, T)>>,
}

impl<T> Default for SideTable<T> {
    fn default() -> Self {
        Self { slots: Vec::new() }
    }
}

impl<T> SideTable<T> {
    pub fn get_mut(&mut self, key: ConnKey) -> Option<&mut T> {
        match self.slots.get_mut(key.index()) {
            Some(Some((k, value))) if *k == key => Some(value),
            _ => None,
        }
    }

    /// Sets the entry of `key` (replacing a stale one of an earlier user of the slot).
    pub fn insert(&mut self, key: ConnKey, value: T) -> &mut T {
        let i = key.index();
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        &mut self.slots[i].insert((key, value)).1
    }

    /// Drops the entry of `key`, if any; called when the connection is freed.
    pub fn remove(&mut self, key: ConnKey) -> Option<T> {
        match self.slots.get_mut(key.index()) {
            Some(slot) if slot.as_ref().is_some_and(|(k, _)| *k == key) => slot.take().map(|(_, v)| v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(index: u64, generation: u64) -> ConnKey {
        ConnKey(generation << 32 | index)
    }

    #[test]
    fn an_entry_answers_only_to_its_key() {
        let mut t = SideTable::default();
        let (a, a_reused) = (key(3, 1), key(3, 2));
        t.insert(a, "a");
        assert_eq!(t.get_mut(a), Some(&mut "a"));
        assert_eq!(t.get_mut(a_reused), None, "a new connection in the same slot");
        assert_eq!(t.remove(a_reused), None);
        t.insert(a_reused, "b");
        assert_eq!(t.get_mut(a), None);
        assert_eq!(t.remove(a_reused), Some("b"));
        assert_eq!(t.get_mut(key(99, 1)), None);
    }
}
